"""Two processes on one project (issue 7, item 5): never a corrupt database or a lost label; the
second writer waits, or fails with a clear 'another boxloop process is writing' message.

- `boxloop import` and a second `boxloop train` while a real `boxloop train` subprocess runs;
- `boxloop import` while another process holds a write transaction: it waits and succeeds, or, held
  past the busy timeout, fails clearly and writes nothing; the next run succeeds;
- four processes writing `set_annotation` transactions to one WAL store while this one reads: every
  write lands, a reader never sees half a transaction, `PRAGMA integrity_check` is ok.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from boxloop.cli import app
from boxloop.store import ImageRecord, Project
from boxloop.structures import Annotation, Boxes

runner = CliRunner()
LABELLED = 8
TRAIN = ["--model", "fcos", "--backbone", "mobilenet_v3_large", "--no-pretrained", "--image-size", "64",
         "--batch-size", "4", "--device", "cpu"]


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line(res) -> str:
    return " ".join(res.output.split())


def label_rows(project: Path) -> dict:
    con = sqlite3.connect(project / "boxloop.db")
    try:
        return {
            "integrity": con.execute("PRAGMA integrity_check").fetchone()[0],
            "foreign_keys": con.execute("PRAGMA foreign_key_check").fetchall(),
            "images": con.execute("SELECT * FROM images ORDER BY id").fetchall(),
            "boxes": con.execute("SELECT * FROM boxes ORDER BY id").fetchall(),
            "queries": con.execute("SELECT * FROM queries ORDER BY id").fetchall(),
        }
    finally:
        con.close()


@pytest.fixture()
def project(make_synthetic, tmp_path: Path) -> tuple[Path, list[str], Path]:
    """12 images, 8 labelled, and an open query batch of 2 pool images with its answers (the truth)
    in VOC: the state `boxloop query` leaves for an annotator, made here without training."""
    from boxloop.loop.config import LoopConfig

    syn = make_synthetic(n_images=12, image_size=64, seed=0)
    ann = tmp_path / "annotations"
    ann.mkdir()
    for xml in sorted(syn.annotations_dir.glob("*.xml"))[:LABELLED]:
        shutil.copy(xml, ann / xml.name)
    proj = tmp_path / "proj"
    res = cli("init", proj, "--images", syn.images, "--annotations", ann, "--test-fraction", "0.25")
    assert res.exit_code == 0, res.output
    with Project.open(proj) as p:
        keys = [r.path for r in p.images(split=None)][:2]
        cfg = LoopConfig.make(model="fcos", backbone="mobilenet_v3_large", pretrained_backbone=False, strategy="random",
                              budget=2)
        rid = p.start_round(cfg.to_dict(), step="oracle")
        p.add_queries(rid, [(k, None, 0.5) for k in keys], strategy="random", batch=rid)
    answers = tmp_path / "answers"
    answers.mkdir()
    for k in keys:
        shutil.copy(syn.annotations_dir / (Path(k).stem + ".xml"), answers)
    return proj, keys, answers


def labelled_paths(rows: dict) -> set[str]:
    return {r[1] for r in rows["images"] if r[6] == "labelled"}


# -- import and a second train while `boxloop train` runs ----------------------------------------------------

def test_import_and_second_train_while_training(project, tmp_path: Path) -> None:
    import boxloop.loop.round, boxloop.train.fit  # noqa: E401,F401  (so that the timings below measure the lock, not imports)

    proj, keys, answers = project
    before = label_rows(proj)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("BOXLOOP_DEBUG", None)
    trainer = subprocess.Popen([sys.executable, "-m", "boxloop.cli", "train", str(proj), *TRAIN, "--steps", "12"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # writer_lock() writes its pid into PROJECT/.lock once it holds the lock
        deadline = time.monotonic() + 90
        lock = proj / ".lock"
        while not (lock.exists() and lock.read_text().strip() == str(trainer.pid)):
            assert trainer.poll() is None, trainer.communicate()
            assert time.monotonic() < deadline, "the trainer never took the project's writer lock"
            time.sleep(0.05)

        # a second long-running writer fails at once (not after its training), clearly, and touches nothing
        t0 = time.monotonic()
        second = cli("train", proj, *TRAIN, "--steps", "2", "--seed", "9")
        assert second.exit_code == 1 and isinstance(second.exception, SystemExit), second.output
        assert f"another boxloop process is writing {proj}; wait for it or stop it" in one_line(second)
        assert time.monotonic() - t0 < 5

        # a short writer (the annotator's answers) goes through: its transaction does not wait on training
        imported = cli("import", proj, "--annotations", answers, "--format", "voc")
        assert imported.exit_code == 0, imported.output
        assert "imported 2 images" in imported.output
        assert trainer.poll() is None, "training ended before the import: nothing ran concurrently"
        mid = label_rows(proj)
        assert mid["integrity"] == "ok"
        out, err = trainer.communicate(timeout=180)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    assert trainer.returncode == 0, err
    assert "trained fcos on" in out and "Traceback" not in err

    after = label_rows(proj)
    assert after["integrity"] == "ok" and after["foreign_keys"] == []
    assert labelled_paths(after) == labelled_paths(before) | set(keys)  # no label lost, the answers kept
    old_boxes = {r[0]: r for r in before["boxes"]}
    assert all(old_boxes[r[0]] == r for r in after["boxes"] if r[0] in old_boxes)  # earlier boxes untouched
    assert len(after["boxes"]) > len(before["boxes"])
    assert {q[-1] for q in after["queries"]} == {"answered"}
    with Project.open(proj) as p:
        assert p.get_path_meta("current_checkpoint").is_file()
        with p.writer_lock():  # released with the trainer: the next long-running writer may start
            pass


# -- import while another process holds a write transaction -----------------------------------------------

def _hold_transaction(project_dir: str, image: str, ready, release, hold: float) -> None:
    """Another process in the middle of a write: one image re-labelled inside an open transaction."""
    with Project.open(project_dir) as p:
        ann = Annotation(image=image, boxes=Boxes(np.array([[2.0, 2.0, 20.0, 20.0]]), p.image(image).size),
                         labels=(p.classes[0],))
        with p.transaction():
            p.set_annotation(image, ann, round=0)
            ready.set()
            release.wait(hold)


def test_import_waits_for_a_writer_or_fails_clearly(project) -> None:
    proj, keys, answers = project
    before = label_rows(proj)
    other = next(r[1] for r in before["images"] if r[6] == "labelled")
    ctx = mp.get_context("spawn")

    # held past the busy timeout (5 s): import gives up with a clear message and writes nothing
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_transaction, args=(str(proj), other, ready, release, 60))
    holder.start()
    try:
        assert ready.wait(60)
        res = cli("import", proj, "--annotations", answers, "--format", "voc")
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
        text = one_line(res)
        assert "error:" in text and "Traceback" not in text
        assert f"another boxloop process is writing {proj}; wait for it or stop it" in text
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0
    mid = label_rows(proj)
    assert mid["integrity"] == "ok"
    assert mid["queries"] == before["queries"] and labelled_paths(mid) == labelled_paths(before)

    # held for a moment: import waits for it, then succeeds; both writes are kept
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_transaction, args=(str(proj), other, ready, release, 1.5))
    holder.start()
    try:
        assert ready.wait(60)
        t0 = time.monotonic()
        res = cli("import", proj, "--annotations", answers, "--format", "voc")
        waited = time.monotonic() - t0
    finally:
        holder.join(30)
    assert res.exit_code == 0, res.output
    assert "imported 2 images" in res.output and waited >= 1.0
    after = label_rows(proj)
    assert after["integrity"] == "ok" and after["foreign_keys"] == []
    assert labelled_paths(after) == labelled_paths(before) | set(keys)
    with Project.open(proj) as p:
        anns = p.annotations("labelled")
    assert len(anns[other]) == 1 and anns[other].boxes.xyxy.tolist() == [[2.0, 2.0, 20.0, 20.0]]
    assert all(len(anns[k]) > 0 for k in keys)


# -- many writers, one reader --------------------------------------------------------------------------------

WORKERS, OWN, REPEATS = 4, 5, 6
SIZE = (100, 80)


def _writer(project_dir: str, worker: int, start) -> None:
    """Worker w writes, REPEATS times, w+1 boxes of round r to each of its own images and to 'shared.png'."""
    with Project.open(project_dir, timeout=60) as p:
        start.wait(60)
        for r in range(REPEATS):
            for key in [f"w{worker}_{i}.png" for i in range(OWN)] + ["shared.png"]:
                xyxy = np.array([[1.0 + k, 1.0, 10.0 + k, 10.0 + r] for k in range(worker + 1)])
                p.set_annotation(key, Annotation(image=key, boxes=Boxes(xyxy, SIZE),
                                                 labels=("cat",) * (worker + 1)), round=r)


def test_concurrent_set_annotation_all_writes_land(tmp_path: Path) -> None:
    keys = [f"w{w}_{i}.png" for w in range(WORKERS) for i in range(OWN)] + ["shared.png"]
    with Project.create(tmp_path / "proj", tmp_path / "images", ["cat"]) as p:
        p.add_images([ImageRecord(k, *SIZE) for k in keys])
        assert p.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "proj"), w, start)) for w in range(WORKERS)]
    for pr in procs:
        pr.start()
    reads = 0
    with Project.open(tmp_path / "proj") as reader:
        time.sleep(0.5)
        start.set()
        while any(pr.is_alive() for pr in procs):
            # one snapshot: every image shows exactly one write (one round, that writer's box count)
            rows = reader.connection.execute(
                "SELECT i.path, COUNT(*), MIN(b.round), MAX(b.round) FROM boxes b JOIN images i "
                "ON i.id = b.image_id WHERE b.active = 1 GROUP BY i.id").fetchall()
            for path, n, lo, hi in rows:
                assert lo == hi, f"{path}: boxes of two writes active at once"
                if path != "shared.png":
                    assert n == int(path[1]) + 1, f"{path}: {n} boxes, half a write"
            reads += 1
            time.sleep(0.01)
    for pr in procs:
        pr.join(60)
        assert pr.exitcode == 0
    assert reads > 3

    con = sqlite3.connect(tmp_path / "proj" / "boxloop.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        total = con.execute("SELECT COUNT(*) FROM boxes").fetchone()[0]
        active = dict(((p, (n, r)) for p, n, r in con.execute(
            "SELECT i.path, COUNT(*), MAX(b.round) FROM boxes b JOIN images i ON i.id = b.image_id "
            "WHERE b.active = 1 GROUP BY i.id")))
        status = dict(con.execute("SELECT path, status FROM images"))
    finally:
        con.close()
    # every write landed: each worker wrote (w+1) boxes x (OWN + 1 images) x REPEATS, kept as history
    assert total == sum((w + 1) * (OWN + 1) * REPEATS for w in range(WORKERS))
    for w in range(WORKERS):
        for i in range(OWN):
            assert active[f"w{w}_{i}.png"] == (w + 1, REPEATS - 1)
    n_shared, r_shared = active["shared.png"]
    assert r_shared == REPEATS - 1 and 1 <= n_shared <= WORKERS  # the last writer's last answer, whole
    assert set(status.values()) == {"labelled"}
