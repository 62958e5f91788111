"""Issue 12: the defects found by trying to break the CLI, one test (or more) per case.

Real SQLite projects, the real CLI through typer's CliRunner (and subprocesses where the hash seed
matters), real images generated in code (tests/hostile), one real tiny FCOS trained once for the
commands that need a model (mobilenet_v3_large, random init, 64 px, 2 steps). Each test names its
case: 1-9 are the numbered defects, a-i the items under "Also" (i: the two left alone last time).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hostile as H
from boxloop.cli import app
from boxloop.loop.human import batch_names
from boxloop.store import DB_NAME, Project
from boxloop.synthetic import CLASSES

runner = CliRunner()
TRAIN = ("--model", "fcos", "--backbone", "mobilenet_v3_large", "--no-pretrained", "--image-size", "64",
         "--batch-size", "4", "--device", "cpu")


def cli(*args: object, code: int | None = None):
    res = runner.invoke(app, [str(a) for a in args])
    text = " ".join((res.output + (res.stderr if res.stderr_bytes is not None else "")).split())
    assert "Traceback" not in text, text
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"boxloop crashed: {res.exception!r}\n{text}")
    if code is not None:
        assert res.exit_code == code, text
    res.text = text  # type: ignore[attr-defined]
    return res


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every file under root with its md5 (what a failed command must leave as it was)."""
    return {p.relative_to(root).as_posix(): md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


def voc_project(root: Path, n: int = 4, labelled: int = 2, classes: str | None = None) -> tuple[Path, Path, Path]:
    """n images of 32 px, the first `labelled` with one VOC box; returns (project, images, annotations)."""
    images, ann = root / "images", root / "ann"
    ann.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        H.write_image(images / f"img{i}.png", color=(40 * i, 80, 120))
    for i in range(labelled):
        (ann / f"img{i}.xml").write_text(H.voc_xml(f"img{i}.png", [("circle", 2, 3, 20, 25)]))
    args = ["--classes", classes] if classes else []
    cli("init", root / "p", "--images", images, "--annotations", ann, *args, code=0)
    return root / "p", images, ann


@pytest.fixture(scope="module")
def model(make_synthetic, tmp_path_factory) -> Path:
    """A checkpoint for the synthetic classes, trained 2 steps through the CLI."""
    syn = make_synthetic(n_images=12, image_size=64, seed=0)
    root = tmp_path_factory.mktemp("breaking")
    cli("init", root / "trained", "--images", syn.images, "--annotations", syn.annotations_dir, code=0)
    cli("train", root / "trained", *TRAIN, "--steps", "2", code=0)
    with Project.open(root / "trained") as p:
        return p.get_path_meta("current_checkpoint")


def names(model: Path) -> str:
    """The checkpoint's class list, in its order, for --classes (a project must match it exactly)."""
    from boxloop.train.checkpoints import load_checkpoint

    return ",".join(load_checkpoint(model)["class_names"])


def query(project: Path, model: Path, out: Path, *extra: object, budget: int = 2):
    return cli("query", project, "--checkpoint", model, "--strategy", "random", "--budget", budget, "--out", out,
               "--image-size", "64", "--device", "cpu", *extra)


# -- 1. names that flatten to the same batch name ----------------------------------------------------------

def test_1_batch_names_are_unique_and_independent_of_order() -> None:
    names = batch_names(H.COLLIDING_NAMES)
    assert sorted(names.values()) == sorted(H.COLLIDING_NAMES)  # every image, once
    stems = [n.rsplit(".", 1)[0].casefold() for n in names]
    assert len(set(stems)) == len(stems) == 6  # no two answer files can share a stem, in any case
    assert names["x__y__z.jpg"] == "x__y__z.jpg" and names["A__B.png"] == "A__B.png"  # real names kept first
    assert names["a__b~2.jpg"] == "a__b.jpg" and names["a__b~3.jpg"] == "a/b.jpg"  # before: both 'a__b.jpg'
    rng = random.Random(0)
    for _ in range(200):  # any order, any mixture of folders, underscores and case: unique and stable
        keys = {"/".join(rng.choice(["a", "A", "_", "a_", "__"]) for _ in range(rng.randint(1, 3)))
                + rng.choice([".jpg", ".png", ".JPG"]) for _ in range(rng.randint(1, 12))}
        shuffled = list(keys)
        rng.shuffle(shuffled)
        got = batch_names(shuffled)
        assert got == batch_names(sorted(keys)) and sorted(got.values()) == sorted(keys)
        assert len({n.rsplit(".", 1)[0].casefold() for n in got}) == len(keys)


def test_1_colliding_names_query_writes_all_and_import_labels_the_right_image(model: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i, name in enumerate(H.COLLIDING_NAMES):
        H.write_image(images / name, color=(30 * i, 60, 90))
    project = tmp_path / "p"
    cli("init", project, "--images", images, "--classes", names(model), code=0)
    res = query(project, model, tmp_path / "batch", budget=6)
    assert res.exit_code == 0 and "asked about 6 images" in res.text, res.text
    batch = tmp_path / "batch"
    manifest = json.loads((batch / "batch.json").read_text())
    assert sorted(manifest["images"].values()) == sorted(H.COLLIDING_NAMES)
    written = sorted(p.name for p in batch.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(written) == 6 and len(list(batch.glob("*.xml"))) == 6  # before: 6 reported, 5 written
    for name, key in manifest["images"].items():  # each batch file is its own image's copy
        assert md5(batch / name) == md5(images / key)
    for xml in batch.glob("*.xml"):
        xml.write_text(H.voc_xml(xml.stem, []))  # every image a negative ...
    name = {k: n for n, k in manifest["images"].items()}["a__b.jpg"]
    stem = name.rsplit(".", 1)[0]
    (batch / f"{stem}.xml").write_text(H.voc_xml(name, [("square", 1, 1, 9, 9)]))  # ... but the real a__b.jpg
    for seed in ("0", "1", "2", "3"):  # the answer must land on the same image under any hash seed
        copy = tmp_path / f"copy{seed}"
        shutil.copytree(project, copy)
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-m", "boxloop.cli", "import", str(copy), "--annotations", str(batch)],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        with Project.open(copy) as p:
            labelled = p.annotations("labelled")
        assert sorted(labelled) == sorted(H.COLLIDING_NAMES)
        assert [k for k, a in labelled.items() if len(a)] == ["a__b.jpg"], seed
        assert labelled["a__b.jpg"].labels == ("square",)


# -- 2. init --force leaves nothing of the old project --------------------------------------------------------

def test_2_init_force_removes_the_old_projects_models(model: Path, tmp_path: Path) -> None:
    project, images, ann = voc_project(tmp_path, classes=names(model))
    old = project / "models" / "round_001"
    old.mkdir(parents=True)
    shutil.copy(model, old / "best.pt")
    shutil.copy(model, old / "last.pt")
    (project / "models" / "train_fcos_0123456789").mkdir()
    (project / "autolabel.json").write_text("[]")
    (project / "models" / "my_notes.txt").write_text("mine")  # not boxloop's: must stay
    cli("init", project, "--images", images, "--annotations", ann, "--classes", names(model), "--force", code=0)
    assert not old.exists() and not (project / "autolabel.json").exists()
    assert not (project / "models" / "train_fcos_0123456789").exists()
    assert (project / "models" / "my_notes.txt").read_text() == "mine"
    assert not list(project.glob(".retired-*")) and not list((project / "models").glob(".retired-*"))
    assert "no trained model yet" in cli("evaluate", project, code=1).text
    # the next query trains round 1 on the new labels instead of reusing the old best.pt
    res = cli("query", project, "--strategy", "random", "--budget", "1", "--out", tmp_path / "b", *TRAIN,
              "--steps", "1", code=0)
    assert (old / "best.pt").exists() and md5(old / "best.pt") != md5(model), res.text
    # a folder with an old project's models but no database: refused without --force
    (project / DB_NAME).unlink()
    res = cli("init", project, "--images", images, code=1)
    assert "models/round_001" in res.text and "--force" in res.text


# -- 3. export and predict never overwrite a user's file ------------------------------------------------------

def test_3_export_refuses_to_overwrite_user_files(tmp_path: Path) -> None:
    project, images, ann = voc_project(tmp_path)
    originals = tree(ann)
    res = cli("export", project, "--format", "voc", "--out", ann, code=1)
    assert "would be overwritten" in res.text and "img0.xml" in res.text and "--overwrite" in res.text
    assert tree(ann) == originals and not list(ann.parent.glob(".*staging*"))
    # unrelated files beside an export are left alone
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "README.txt").write_text("mine")
    cli("export", project, "--format", "yolo", "--out", out, code=0)
    assert (out / "README.txt").read_text() == "mine" and (out / "classes.txt").exists()
    assert "would be overwritten" in cli("export", project, "--format", "yolo", "--out", out, code=1).text
    cli("export", project, "--format", "voc", "--out", ann, "--overwrite", code=0)
    assert (ann / "ImageSets" / "Main" / "train.txt").exists()


def test_3_predict_refuses_to_overwrite_user_files(model: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(3):
        H.write_image(images / f"img{i}.png", size=(64, 64), color=(50 * i, 90, 90))
    human = tmp_path / "annotations"
    human.mkdir()
    (human / "img1.xml").write_text(H.voc_xml("img1.png", [("circle", 5, 5, 30, 30)]))
    before = tree(human)
    args = ("predict", "--checkpoint", model, "--images", images, "--out", human, "--device", "cpu")
    res = cli(*args, code=1)
    assert "img1.xml" in res.text and "would be overwritten" in res.text
    assert tree(human) == before
    cli(*args, "--overwrite", code=0)
    assert sorted(p.name for p in human.glob("*.xml")) == ["img0.xml", "img1.xml", "img2.xml"]


# -- the keep-going rule after init: predict and query meet images that went bad ---------------------------

def test_predict_and_query_leave_out_images_that_went_bad(model: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(4):
        H.write_image(images / f"img{i}.png", size=(64, 64), color=(50 * i, 90, 90))
    H.write_short(images / "short.jpg")
    (images / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    args = ("predict", "--checkpoint", model, "--images", images, "--device", "cpu")
    res = cli(*args, "--out", tmp_path / "strict", "--strict", code=1)
    assert "garbage.jpg" in res.text and not (tmp_path / "strict").exists()
    res = cli(*args, "--out", tmp_path / "pred", code=0)
    assert "predicted 5 images" in res.text and "1 image(s) could not be decoded" in res.text
    assert "garbage.jpg" in res.text and "short.jpg" in res.text and "loaded the part that is there" in res.text
    assert sorted(p.stem for p in (tmp_path / "pred").glob("*.xml")) == ["img0", "img1", "img2", "img3", "short"]
    # a project's pool image overwritten with garbage after init: left out of the query, recorded
    (images / "garbage.jpg").unlink()
    project = tmp_path / "p"
    cli("init", project, "--images", images, "--classes", names(model), code=0)
    (images / "img2.png").write_bytes(b"garbage now")
    res = query(project, model, tmp_path / "strict_batch", "--strict", budget=5)
    assert res.exit_code == 1 and "img2.png" in res.text and "without --strict" in res.text
    res = query(project, model, tmp_path / "batch", budget=5)
    assert res.exit_code == 0 and "asked about 4 images" in res.text and "img2.png" in res.text, res.text
    s = json.loads(cli("status", project, "--json", code=0).stdout)
    assert [(x["path"], x["stage"]) for x in s["skipped_images"]] == [("img2.png", "predict")]
    assert "not an image" in s["skipped_images"][0]["reason"]


# -- 4. a class name holding a line break -----------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["do\ng", "do\r\ng", "do\u2028g", "do\x00g"])
def test_4_class_names_must_be_one_line(bad: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    H.write_image(images / "img0.png")
    res = cli("init", tmp_path / "p", "--images", images, "--classes", f"cat,{bad}", code=1)
    assert "line break or control character" in res.text and "--classes" in res.text
    coco = H.write_coco(tmp_path / "c.json", [{"id": 1, "file_name": "img0.png", "width": 32, "height": 32}],
                        [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]}], ["cat", bad])
    res = cli("init", tmp_path / "p", "--images", images, "--annotations", coco, code=1)
    assert "c.json" in res.text and "line break or control character" in res.text
    assert not (tmp_path / "p").exists()
    cli("init", tmp_path / "q", "--images", images, code=0)
    with Project.open(tmp_path / "q") as p:
        with pytest.raises(ValueError, match="line break"):
            p.add_classes([bad])
        assert p.classes == []
    from boxloop.formats.yolo import dump_yolo  # a project made before this check cannot split classes.txt

    with pytest.raises(ValueError, match="line break"):
        dump_yolo([], ["cat", bad], tmp_path / "y")
    assert not (tmp_path / "y").exists()


# -- 5. export paths that are files ---------------------------------------------------------------------------

def test_5_export_to_a_file_name(tmp_path: Path) -> None:
    from boxloop import formats

    project, images, _ = voc_project(tmp_path)
    for fmt, name in (("coco", "out.json"), ("labelstudio", "tasks.json"), ("cvat", "c.xml")):
        cli("export", project, "--format", fmt, "--out", tmp_path / name, code=0)
        assert (tmp_path / name).is_file(), fmt
        assert sorted(formats.load(fmt, tmp_path / name, images).annotations) == ["img0.png", "img1.png"]
        assert "would be overwritten" in cli("export", project, "--format", fmt, "--out", tmp_path / name,
                                             code=1).text
        cli("export", project, "--format", fmt, "--out", tmp_path / name, "--overwrite", code=0)
    (tmp_path / "plain").write_text("mine")
    res = cli("export", project, "--format", "voc", "--out", tmp_path / "plain", code=1)
    assert "is a file, not a folder" in res.text and (tmp_path / "plain").read_text() == "mine"
    (tmp_path / "dir.json").mkdir()
    assert "is a folder" in cli("export", project, "--format", "coco", "--out", tmp_path / "dir.json", code=1).text


# -- 6 (and f). query checks its arguments before any work ------------------------------------------------------

@pytest.mark.parametrize("bad", [("--format", "xml"), ("--empty-share", "2"), ("--empty-share", "-0.5"),
                                 ("--empty-share", "nan"), ("--out", "NONEMPTY")])
def test_6_query_refuses_bad_arguments_before_changing_anything(bad: tuple[str, str], tmp_path: Path) -> None:
    project, _, _ = voc_project(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    args = ["--out", tmp_path / "full"] if bad[0] == "--out" else ["--out", tmp_path / "batch", *bad]
    before = tree(project)
    res = cli("query", project, *args, *TRAIN, "--steps", "1", code=1)
    assert any(w in res.text for w in ("--format must be one of", "empty share", "not empty")), res.text
    assert tree(project) == before and not (project / "models").exists()
    with Project.open(project) as p:
        assert p.rounds() == [] and p.queries() == []


def test_6_query_with_the_right_format_after_a_wrong_one(model: Path, tmp_path: Path) -> None:
    project, _, _ = voc_project(tmp_path, classes=names(model))
    assert "--format must be one of" in query(project, model, tmp_path / "b", "--format", "xml").text
    res = query(project, model, tmp_path / "b", "--format", "voc")  # no --force needed
    assert res.exit_code == 0 and "asked about 2 images" in res.text, res.text


# -- 7. a read command never writes to a database that is not boxloop's -------------------------------------------

@pytest.mark.parametrize("kind", ["empty", "foreign-sqlite", "garbage"])
def test_7_commands_refuse_a_foreign_database_without_touching_it(kind: str, tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    db = project / DB_NAME
    if kind == "empty":
        db.write_bytes(b"")
    elif kind == "foreign-sqlite":
        H.write_foreign_sqlite(db)
    else:
        db.write_bytes(b"\x00garbage" * 100)
    before = tree(project)
    for args in (("status",), ("status", "--json"), ("export", "--format", "voc", "--out", tmp_path / "o"),
                 ("evaluate",), ("import", "--annotations", tmp_path), ("report", "--out", tmp_path / "r.html")):
        res = cli(args[0], project, *args[1:], code=1)
        assert "not a boxloop database" in res.text and "did not change it" in res.text, (args, res.text)
        assert tree(project) == before, args  # no tables added, no -wal/-shm left
    if kind == "foreign-sqlite":
        con = sqlite3.connect(db)
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["contacts"]
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        con.close()


# -- 8. a learning rate that is not finite --------------------------------------------------------------------

def test_8_train_refuses_non_finite_learning_rates(tmp_path: Path) -> None:
    project, _, _ = voc_project(tmp_path)
    for lr in ("inf", "nan", "-1", "0"):
        res = cli("train", project, *TRAIN, "--steps", "1", "--lr", lr, code=1)
        assert "learning rate must be a finite number > 0" in res.text
    assert not (project / "models").exists()


def test_8_diverged_weights_never_become_a_checkpoint(make_synthetic, tmp_path: Path) -> None:
    from boxloop.train.data import Sample
    from boxloop.detectors import create_detector
    from boxloop.train.config import TrainConfig
    from boxloop.train.checkpoints import TrainingDiverged
    from boxloop.train.fit import fit

    syn = make_synthetic(n_images=12, image_size=64, seed=0)
    samples = [Sample(syn.images / k, a) for k, a in sorted(syn.annotations.items())[:4]]
    det = create_detector("fcos", num_classes=3, backbone="mobilenet_v3_large", pretrained_backbone=False,
                          min_size=64, max_size=64, seed=0)
    cfg = TrainConfig(steps=1, batch_size=4, image_size=64, warmup_steps=0, grad_clip=None, device="cpu")
    object.__setattr__(cfg, "lr", float("inf"))  # what `--lr inf` handed fit() before the CLI refused it
    with pytest.raises(TrainingDiverged, match="NaN or inf.*was not saved.*Lower the learning rate"):
        fit(det, samples, [], list(CLASSES), cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()


# -- 9. status reads one snapshot ----------------------------------------------------------------------------

class _Interleaving:
    """A connection stand-in that lets another writer commit after the n-th statement of a read."""

    def __init__(self, conn: sqlite3.Connection, after: int, write) -> None:
        self.conn, self.after, self.write, self.n = conn, after, write, 0

    def execute(self, *args):
        cur = self.conn.execute(*args)
        self.n += 1
        if self.n == self.after:
            self.write()
        return cur

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_9_status_never_mixes_before_and_after(tmp_path: Path) -> None:
    from boxloop.structures import Annotation, Boxes

    project, _, _ = voc_project(tmp_path, n=6, labelled=3)
    negative = Annotation(image="img4.png", boxes=Boxes.empty((32, 32)))
    two = Annotation(image="img4.png", boxes=Boxes([[1, 1, 5, 5], [6, 6, 9, 9]], (32, 32)), labels=("circle",) * 2)
    with Project.open(project) as reader, Project.open(project) as writer:
        writer.set_annotation("img4.png", two)
        state_b = reader.status()
        writer.set_annotation("img4.png", negative)
        state_a = reader.status()
        assert state_a != state_b
        real = reader._conn
        mixed = 0
        for after in range(1, 20):  # the writer commits after each of status's statements in turn
            for read in (reader.status, reader._status):  # with the snapshot, and without (the old way)
                writer.set_annotation("img4.png", negative)
                reader._conn = _Interleaving(real, after, lambda: writer.set_annotation("img4.png", two))
                try:
                    got = read()
                finally:
                    reader._conn = real
                if read == reader.status:
                    assert got in (state_a, state_b), after  # one state, never a mixture
                    assert got["boxes"] == sum(got["boxes_per_class"].values())
                else:
                    mixed += got not in (state_a, state_b)
        assert mixed > 0  # the interleaving does catch the unsnapshotted reads: the test can fail


# -- b/c/d/e: labels that load wrong or give unclear errors -------------------------------------------------------

def yolo_dataset(root: Path, lines: list[str], classes: list[str], bom: bool = False) -> tuple[Path, Path]:
    images, labels = root / "images", root / "labels"
    for i in range(2):
        H.write_image(images / f"img{i}.png")
    labels.mkdir()
    H.write_classes_txt(labels / "classes.txt", classes, bom=bom)
    (labels / "img0.txt").write_text("\n".join(lines) + "\n")
    return images, labels


def test_c_yolo_confidence_column(tmp_path: Path) -> None:
    images, labels = yolo_dataset(tmp_path, ["0 0.5 0.5 0.2 0.2 0.9"], ["cat"])
    res = cli("init", tmp_path / "p", "--images", images, "--annotations", labels, code=0)
    assert "6th number, a confidence" in res.text and "img0.txt" in res.text and "stay unlabelled" in res.text
    for bad in ("7", "nan", "-0.1"):
        (labels / "img0.txt").write_text(f"0 0.5 0.5 0.2 0.2 {bad}\n")
        res = cli("init", tmp_path / f"q{bad}", "--images", images, "--annotations", labels, code=1)
        assert "img0.txt:1" in res.text and "must lie in [0, 1]" in res.text, bad


def test_d_byte_order_mark_in_classes_txt(tmp_path: Path) -> None:
    images, labels = yolo_dataset(tmp_path, ["0 0.5 0.5 0.2 0.2", "1 0.3 0.3 0.1 0.1"], ["cat", "dog"], bom=True)
    cli("init", tmp_path / "p", "--images", images, "--annotations", labels, code=0)
    with Project.open(tmp_path / "p") as p:
        assert p.classes == ["cat", "dog"] and p.annotations()["img0.png"].labels == ("cat", "dog")
    # and round trip: export, re-init from the export, same labels
    cli("export", tmp_path / "p", "--format", "yolo", "--out", tmp_path / "y", code=0)
    cli("init", tmp_path / "q", "--images", images, "--annotations", tmp_path / "y", code=0)
    with Project.open(tmp_path / "q") as q:
        assert q.classes == ["cat", "dog"] and q.annotations()["img0.png"].labels == ("cat", "dog")


def test_e_blank_line_in_classes_txt_names_the_file(tmp_path: Path) -> None:
    images, labels = yolo_dataset(tmp_path, ["0 0.5 0.5 0.2 0.2"], ["cat", "", "dog"])
    res = cli("init", tmp_path / "p", "--images", images, "--annotations", labels, code=1)
    assert "classes.txt:2" in res.text and "blank" in res.text and "every later id would shift" in res.text
    assert not (tmp_path / "p").exists()


# -- g/h: importing answers ----------------------------------------------------------------------------------

def open_batch(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    from boxloop.loop.human import write_batch
    from boxloop.structures import Detections

    project, _, _ = voc_project(tmp_path, n=5)
    with Project.open(project) as p:
        p.start_round({"unit": "images", "budget": 3}, step="oracle", round_id=1)
        pool = ["img2.png", "img3.png", "img4.png"]
        p.save_predictions(1, {k: Detections.empty(1, (32, 32)) for k in pool})
        p.add_queries(1, [(k, None, 0.5) for k in pool], strategy="random")
        batch = write_batch(p, 1, tmp_path / "batch", fmt)
    return project, batch


def test_g_the_same_label_studio_export_imported_twice(tmp_path: Path) -> None:
    project, batch = open_batch(tmp_path, "labelstudio")
    export = H.write_labelstudio_export(batch / "tasks.json", tmp_path / "export1.json",
                                        {"img2.png": [("circle", 1, 1, 9, 9)], "img3.png": []})
    assert "imported 2 images" in cli("import", project, "--annotations", export, "--format", "labelstudio",
                                      code=0).text
    res = cli("import", project, "--annotations", export, "--format", "labelstudio", code=1)
    assert "every answer in it was imported before (round 1)" in res.text
    assert "not in this project" not in res.text
    # the annotator labels the last image; the new export holds all three: only the new one is taken
    export2 = H.write_labelstudio_export(batch / "tasks.json", tmp_path / "export2.json",
                                         {"img2.png": [("circle", 2, 2, 9, 9)], "img3.png": [],
                                          "img4.png": [("circle", 3, 3, 9, 9)]})
    res = cli("import", project, "--annotations", export2, "--format", "labelstudio", code=0)
    assert "imported 1 images" in res.text and "left as imported: img2.png, img3.png" in res.text
    with Project.open(project) as p:
        anns = p.annotations()
        assert anns["img2.png"].boxes.xyxy.tolist() == [[1, 1, 9, 9]]  # as first imported
        assert len(anns["img4.png"]) == 1 and p.queries(state="open") == []
    res = cli("import", project, "--annotations", export2, "--format", "labelstudio", code=1)
    assert "no open query batch" in res.text and "answered and imported already" in res.text


def test_h_answer_for_an_already_labelled_image(tmp_path: Path) -> None:
    project, batch = open_batch(tmp_path, "voc")
    (batch / "img0.xml").write_text(H.voc_xml("img0.png", [("circle", 1, 1, 5, 5)]))  # labelled at init
    res = cli("import", project, "--annotations", batch, code=1)
    assert "img0 (labelled already, in round 0)" in res.text or "img0.png (labelled already" in res.text, res.text
    assert "--images" not in res.text and "nothing was imported" in res.text


# -- i: the two left alone last time ------------------------------------------------------------------------------

def test_i_query_checkpoint_killed_after_its_copy(model: Path, tmp_path: Path) -> None:
    """Killed after copying --checkpoint to round_001/best.pt and before the round row: the rerun
    starts the round at evaluate with that model; it does not train a fresh one."""
    project, _, _ = voc_project(tmp_path, classes=names(model))
    (project / "models" / "round_001").mkdir(parents=True)
    shutil.copy(model, project / "models" / "round_001" / "best.pt")
    res = query(project, model, tmp_path / "b")
    assert res.exit_code == 0 and "asked about 2 images" in res.text, res.text
    assert not (project / "models" / "round_001" / "last.pt").exists()  # fit() never ran
    assert md5(project / "models" / "round_001" / "best.pt") == md5(model)
    with Project.open(project) as p:
        assert "best_val_map50" not in p.metrics(1).get(1, {})


def test_i_read_only_project_with_a_non_empty_wal(tmp_path: Path) -> None:
    from test_faults import read_only_view

    project, _, _ = voc_project(tmp_path, n=4, labelled=2)
    # a writer killed after committing: the label is in the WAL, not yet in the database file
    code = ("import sys; from boxloop.store import Project; from boxloop.structures import Annotation, Boxes; "
            "p = Project.open(sys.argv[1]); p.connection.execute('PRAGMA wal_autocheckpoint = 0'); "
            "p.set_annotation('img3.png', Annotation(image='img3.png', boxes=Boxes([[1, 1, 9, 9]], (32, 32)), "
            "labels=('circle',))); import os; os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(project)], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert (project / f"{DB_NAME}-wal").stat().st_size > 0
    for keep_shm in (True, False):
        if not keep_shm:
            (project / f"{DB_NAME}-shm").unlink()
        with read_only_view(project, tmp_path / f"ro{keep_shm}") as ro:
            s = json.loads(cli("status", ro, "--json", code=0).stdout)
            assert s["labelled_images"] == 3 and s["boxes"] == 3, keep_shm  # the WAL's label is seen
            cli("export", ro, "--format", "voc", "--out", tmp_path / f"e{keep_shm}", code=0)
            assert (tmp_path / f"e{keep_shm}" / "img3.xml").exists()
            res = cli("import", ro, "--annotations", tmp_path, code=1)
            assert "read-only" in res.text or "no open query batch" in res.text
