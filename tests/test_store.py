"""The SQLite project store: schema, transactions, locks, Annotation <-> rows, status numbers."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from boxloop.store import (
    SCHEMA_VERSION,
    ImageRecord,
    NotAProject,
    Project,
    ProjectBusy,
    ProjectExists,
    detections_from_bytes,
    detections_to_bytes,
)
from boxloop.structures import Annotation, Boxes, Detections, Provenance, Source

CLASSES = ["cat", "dog", "bird"]


def _ann(path: str, boxes: list, labels: list, size=(100, 80), **kw) -> Annotation:
    return Annotation(image=path, boxes=Boxes(np.array(boxes, dtype=float).reshape(-1, 4), size),
                      labels=tuple(labels), **kw)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    p = Project.create(tmp_path / "proj", tmp_path / "images", CLASSES, seed=3)
    p.add_images([
        ImageRecord("a.png", 100, 80, "h1", split="train"),
        ImageRecord("b.png", 100, 80, "h2", split="val"),
        ImageRecord("sub/c.png", 100, 80, "h3", split="test"),
        ImageRecord("d.png", 100, 80, "h4"),
        ImageRecord("e.png", 100, 80, "h5"),
    ])
    yield p
    p.close()


def test_create_open_and_schema(tmp_path: Path, project: Project) -> None:
    assert project.schema_version == SCHEMA_VERSION >= 1
    con = project.connection
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert project.classes == CLASSES and project.class_id("bird") == 2
    assert project.seed == 3 and project.image_root == (tmp_path / "images").resolve()
    with pytest.raises(ProjectExists, match="--force"):
        Project.create(tmp_path / "proj", tmp_path / "images")
    with pytest.raises(NotAProject, match="not a boxloop project"):
        Project.open(tmp_path)
    with pytest.raises(NotAProject, match="does not exist"):
        Project.open(tmp_path / "nope")
    # a reopened project keeps everything; a newer schema is refused
    project.close()
    with Project.open(tmp_path / "proj") as p2:
        assert len(p2.images()) == 5 and p2.classes == CLASSES
        p2.connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(NotAProject, match="newer"):
        Project.open(tmp_path / "proj")


def test_force_replaces(tmp_path: Path, project: Project) -> None:
    project.close()
    p = Project.create(tmp_path / "proj", tmp_path / "images", ["x"], force=True)
    assert p.classes == ["x"] and p.images() == []
    p.close()


def test_annotation_round_trip_keeps_provenance_and_negatives(project: Project) -> None:
    a = _ann("a.png", [[1, 2, 30, 40], [10.5, 11.25, 50, 60]], ["cat", "bird"],
             difficult=(True, False), truncated=(False, True))
    project.set_annotation("a.png", a, round=0)
    project.set_annotation("b.png", _ann("b.png", [], []), round=0)  # a negative
    pseudo = Annotation(
        image="d.png", boxes=Boxes(np.array([[5.0, 5, 20, 20]]), (100, 80)), labels=("dog",),
        provenance=(Provenance(Source.PSEUDO, round=2, model="m1", score=0.91, loc_quality=0.7),),
    )
    project.add_boxes("d.png", pseudo)
    lab = project.annotations("labelled")
    assert set(lab) == {"a.png", "b.png"}
    got = lab["a.png"]
    np.testing.assert_array_equal(got.boxes.xyxy, a.boxes.xyxy)
    assert got.labels == ("cat", "bird") and got.difficult == (True, False) and got.truncated == (False, True)
    assert got.image_size == (100, 80) and all(p.source == Source.HUMAN for p in got.provenance)
    assert lab["b.png"].is_negative
    ps = project.annotations("pseudo")
    assert list(ps) == ["d.png"]
    assert ps["d.png"].provenance[0] == Provenance(Source.PSEUDO, 2, "m1", 0.91, 0.7)
    assert set(project.annotations("all")) == {"a.png", "b.png", "d.png"}
    assert set(project.annotations("train")) == {"a.png"} and set(project.annotations("val")) == {"b.png"}
    assert project.annotations("labelled", split=None) == {}
    # box_table carries weights and ids
    t = project.box_table("all")
    assert len(t["id"]) == 3 and sorted(t["source"]) == ["human", "human", "pseudo"]
    np.testing.assert_array_equal(t["weight"], [1.0, 1.0, 1.0])


def test_set_annotation_replaces_and_keeps_history(project: Project) -> None:
    project.set_annotation("a.png", _ann("a.png", [[1, 1, 5, 5]], ["cat"]))
    project.add_boxes("a.png", _ann("a.png", [[2, 2, 9, 9]], ["dog"],
                                    provenance=(Provenance(Source.PREDICTED, 1),)))
    project.set_annotation("a.png", _ann("a.png", [[3, 3, 7, 7], [0, 0, 4, 4]], ["dog", "dog"]), round=1)
    got = project.annotations("labelled")["a.png"]
    assert got.labels == ("dog", "dog") and [p.round for p in got.provenance] == [1, 1]
    n_all, n_active = project.connection.execute("SELECT COUNT(*), SUM(active) FROM boxes").fetchone()
    assert (n_all, n_active) == (4, 2)  # the replaced human and predicted boxes are kept inactive
    assert project.image("a.png").round_labelled == 1


def test_transaction_rolls_back_everything(project: Project) -> None:
    before = project.connection.execute("SELECT COUNT(*) FROM boxes").fetchone()[0]
    good = _ann("a.png", [[1, 1, 5, 5]], ["cat"])
    bad = _ann("b.png", [[1, 1, 5, 5]], ["unicorn"])
    with pytest.raises(ValueError, match="unknown class 'unicorn'"):
        project.set_annotations({"a.png": good, "b.png": bad})
    assert project.connection.execute("SELECT COUNT(*) FROM boxes").fetchone()[0] == before
    assert project.image("a.png").status == "unlabelled"
    with pytest.raises(RuntimeError):
        with project.transaction():
            project.add_classes(["fish"])
            project.set_annotation("e.png", _ann("e.png", [[1, 1, 5, 5]], ["fish"]))
            raise RuntimeError("crash halfway")
    assert project.classes == CLASSES and project.image("e.png").status == "unlabelled"
    with pytest.raises(ValueError, match="already in the project"):
        project.add_images([ImageRecord("new.png", 10, 10), ImageRecord("a.png", 10, 10)])
    assert "new.png" not in project.image_ids()


def test_schema_constraints(project: Project) -> None:
    con = project.connection
    with pytest.raises(sqlite3.IntegrityError):  # foreign key
        con.execute("INSERT INTO boxes(image_id, class_id, x1, y1, x2, y2, source) VALUES (999, 0, 0,0,1,1,'human')")
    with pytest.raises(sqlite3.IntegrityError):  # source check
        con.execute("INSERT INTO boxes(image_id, class_id, x1, y1, x2, y2, source) VALUES (1, 0, 0,0,1,1,'robot')")
    with pytest.raises(sqlite3.IntegrityError):  # only background boxes may lack a class
        con.execute("INSERT INTO boxes(image_id, class_id, x1, y1, x2, y2, source) VALUES (1, NULL, 0,0,1,1,'human')")
    with pytest.raises(ValueError, match="split"):
        project.set_split(["a.png"], "holdout")


def _hold_write_lock(db: str, ready, release) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO meta(key, value) VALUES ('other', '1')")
    ready.set()
    release.wait(30)
    con.execute("ROLLBACK")
    con.close()


def _hold_writer_lock(project_dir: str, ready, release) -> None:
    with Project.open(project_dir) as p, p.writer_lock():
        ready.set()
        release.wait(30)


def test_second_process_gets_busy_not_corruption(tmp_path: Path, project: Project) -> None:
    project.close()
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_write_lock, args=(str(tmp_path / "proj" / "boxloop.db"), ready, release))
    proc.start()
    try:
        assert ready.wait(60)
        p = Project.open(tmp_path / "proj", timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(ProjectBusy, match="another boxloop process is writing .*proj; wait for it or stop it"):
            p.set_annotation("a.png", _ann("a.png", [[1, 1, 5, 5]], ["cat"]))
        assert time.monotonic() - t0 < 5
        assert p.annotations("labelled") == {}  # reading still works while another process writes
    finally:
        release.set()
        proc.join(30)
    p.set_annotation("a.png", _ann("a.png", [[1, 1, 5, 5]], ["cat"]))
    assert p.get_meta("other") is None and len(p.annotations()) == 1
    assert p.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    p.close()


def test_writer_lock_across_processes(tmp_path: Path, project: Project) -> None:
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_writer_lock, args=(str(tmp_path / "proj"), ready, release))
    proc.start()
    try:
        assert ready.wait(60)
        with pytest.raises(ProjectBusy, match="wait for it or stop it"):
            with project.writer_lock():
                pass
    finally:
        release.set()
        proc.join(30)
    with project.writer_lock(), project.writer_lock():  # free again, and re-entrant in-process
        pass


def test_status_counts(project: Project) -> None:
    project.set_annotation("a.png", _ann("a.png", [[1, 1, 5, 5], [2, 2, 8, 8], [0, 0, 3, 3]], ["cat", "cat", "dog"]))
    project.set_annotation("b.png", _ann("b.png", [], []))
    project.set_annotation("sub/c.png", _ann("sub/c.png", [[1, 1, 5, 5]], ["bird"]))
    project.add_boxes("d.png", _ann("d.png", [[1, 1, 5, 5]], ["dog"], provenance=(Provenance(Source.PSEUDO, 1, score=0.9),)))
    project.add_boxes("e.png", Annotation("e.png", Boxes(np.array([[1.0, 1, 5, 5], [2, 2, 6, 6]]), (100, 80)),
                                          labels=("", "cat"),
                                          provenance=(Provenance(Source.BACKGROUND, 1), Provenance(Source.HUMAN, 1))),
                      status="partial", round=1)
    r = project.start_round({"strategy": "random"})
    project.update_round(r, step="train", status="done")
    s = project.status()
    assert s["images"] == 5 and s["test_images"] == 1 and s["train_images"] == 1 and s["val_images"] == 1
    assert s["pool_images"] == 2 and s["labelled_images"] == 3 and s["partial_images"] == 1
    assert s["unlabelled_images"] == 1 and s["negative_images"] == 1 and s["pseudo_images"] == 1
    assert s["boxes"] == 5  # human: 3 + 1 + 1
    assert s["boxes_per_class"] == {"cat": 3, "dog": 1, "bird": 1}
    assert s["boxes_per_source"] == {"human": 5, "pseudo": 1, "predicted": 0, "background": 1}
    assert s["rounds"] == 1 and s["last_round"] == {"id": 1, "step": "train", "status": "done"}
    assert project.rounds()[0].config == {"strategy": "random"} and project.rounds()[0].finished


def test_metrics_queries_predictions(project: Project) -> None:
    project.set_metrics(1, {"map50": 0.5, "per_class": {"cat": 0.25}})
    project.set_metric(1, "map50", 0.75)
    project.set_metric(2, "map50", 0.8)
    assert project.metrics() == {1: {"map50": 0.75, "per_class": {"cat": 0.25}}, 2: {"map50": 0.8}}
    qids = project.add_queries(1, [("d.png", None, 0.3), ("e.png", None, 0.1)], strategy="random")
    project.set_query_state(qids[:1], "answered")
    qs = project.queries(round=1)
    assert [q.path for q in qs] == ["d.png", "e.png"] and [q.state for q in qs] == ["answered", "open"]
    assert project.status()["open_queries"] == 1
    rng = np.random.default_rng(0)
    det = Detections(Boxes(rng.uniform(0, 50, (4, 4)), (100, 80)), labels=[0, 2, 1, 0],
                     scores=rng.uniform(size=4), class_probs=rng.uniform(size=(4, 3)),
                     loc_quality=rng.uniform(size=4), features=rng.normal(size=(4, 8)))
    empty = Detections.empty(3, (100, 80))
    project.save_predictions(1, {"d.png": det, "e.png": empty}, model="m")
    back = project.load_predictions(1)
    assert set(back) == {"d.png", "e.png"} and len(back["e.png"]) == 0 and back["e.png"].loc_quality is None
    for f in ("labels", "scores", "class_probs", "loc_quality", "features"):
        np.testing.assert_array_equal(getattr(back["d.png"], f), getattr(det, f))
    np.testing.assert_array_equal(back["d.png"].boxes.xyxy, det.boxes.xyxy)
    assert detections_from_bytes(detections_to_bytes(det)).image_size == (100, 80)
