"""Faults (issue 7, item 2): a full disk, a read-only project, an image deleted after init and a
truncated checkpoint. Each gives one clear error line (exit 1, no traceback) that names the problem and
what to do; nothing in PROJECT/boxloop.db is corrupt or lost (`PRAGMA integrity_check`, the images and
boxes tables compared row by row); and once the fault is removed the same command succeeds.

Real file systems: a size-limited tmpfs for the full disk, a read-only bind mount for the read-only
project (both need root and `mount`; the tests skip with the reason otherwise). Real commands through
typer's CliRunner (and one real subprocess), real tiny FCOS training (mobilenet_v3_large, 64 px, 2 steps).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from boxloop.cli import app
from boxloop.loop.config import LoopConfig
from boxloop.store import Project
from boxloop.train.checkpoints import load_checkpoint

runner = CliRunner()
TRAIN = ("--model", "fcos", "--backbone", "mobilenet_v3_large", "--no-pretrained", "--steps", "2",
         "--image-size", "64", "--batch-size", "4", "--device", "cpu")
LABELLED = 8  # of 12 images: the other 4 are the pool a query asks about


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def ok(res) -> str:
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res.output


def clear_error(res, *words: str) -> str:
    """Exit 1 with one 'error:' line holding every word; an unhandled exception (a traceback) fails."""
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), f"crashed with {res.exception!r}:\n{res.output}"
    text = " ".join(res.output.split())
    assert "Traceback" not in text and "error:" in text, text
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"
    return text


def snapshot(project: Path) -> dict:
    """integrity_check and every row of the label tables, straight from the SQLite file."""
    con = sqlite3.connect(project / "boxloop.db")
    try:
        return {
            "integrity": con.execute("PRAGMA integrity_check").fetchone()[0],
            "foreign_keys": con.execute("PRAGMA foreign_key_check").fetchall(),
            **{t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()
               for t in ("images", "boxes", "queries", "rounds", "classes")},
        }
    finally:
        con.close()


def assert_intact(project: Path, before: dict, tables=("images", "boxes", "queries", "rounds", "classes")) -> None:
    now = snapshot(project)
    assert now["integrity"] == "ok" and now["foreign_keys"] == []
    for t in tables:
        assert now[t] == before[t], f"{t} changed"


# -- mounts -------------------------------------------------------------------------------------------

def _mount(*args: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and `mount` (a tmpfs / read-only bind mount stands in for the fault)")
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {r.stderr.strip()}")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-limited file system at `path` (a small disk that fills up)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def read_only_view(source: Path, path: Path) -> Iterator[Path]:
    """`source` again at `path`, read-only (chmod would not stop root)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(path))
    try:
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount a bind mount read-only here: {r.stderr.strip()}")
        yield path
    finally:
        _umount(path)


def fill(folder: Path, leave: int) -> Path:
    """Take all free space on folder's file system but `leave` bytes."""
    st = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


# -- data -----------------------------------------------------------------------------------------------

class Data:
    def __init__(self, root: Path, images: Path, annotations: Path, all_annotations: Path, checkpoint: Path,
                 trained: Path) -> None:
        self.root, self.images, self.annotations, self.all_annotations = root, images, annotations, all_annotations
        self.checkpoint, self.trained = checkpoint, trained


@pytest.fixture(scope="module")
def data(make_synthetic, tmp_path_factory) -> Data:
    """12 images of 64 px (a private copy: tests move files away), labels for 8 of them, and one
    project trained once (2 steps) whose best.pt the other tests use as --checkpoint."""
    syn = make_synthetic(n_images=12, image_size=64, seed=0)
    root = tmp_path_factory.mktemp("faults")
    images = root / "images"
    shutil.copytree(syn.images, images)
    ann = root / "annotations"
    ann.mkdir()
    for xml in sorted(syn.annotations_dir.glob("*.xml"))[:LABELLED]:
        shutil.copy(xml, ann / xml.name)
    trained = root / "trained"
    cwd = Path.cwd()
    os.chdir(root)  # trained through a relative path: the project's model must not depend on the cwd
    try:
        ok(cli("init", "trained", "--images", images, "--annotations", ann, "--test-fraction", "0.25"))
        ok(cli("train", "trained", *TRAIN))
    finally:
        os.chdir(cwd)
    with Project.open(trained) as p:
        best = p.get_path_meta("current_checkpoint")
    assert best.is_absolute() and best.is_file() and best.is_relative_to(trained.resolve())
    return Data(root, images, ann, syn.annotations_dir, best, trained)


def new_project(data: Data, path: Path) -> Path:
    ok(cli("init", path, "--images", data.images, "--annotations", data.annotations, "--test-fraction", "0.25"))
    return path


def open_batch(project: Path, data: Data, out: Path, n: int = 2) -> tuple[list[str], Path]:
    """An open query batch as `boxloop query` leaves it (round at the oracle step, open queries), made
    without training, and the annotator's answers for it (the true labels) as VOC files in `out`."""
    with Project.open(project) as p:
        keys = [r.path for r in p.images(split=None)][:n]
        cfg = LoopConfig.make(model="fcos", backbone="mobilenet_v3_large", pretrained_backbone=False,
                              strategy="random", budget=n)
        rid = p.start_round(cfg.to_dict(), step="oracle")
        p.add_queries(rid, [(k, None, 0.5) for k in keys], strategy="random", batch=rid)
    out.mkdir(parents=True, exist_ok=True)
    for k in keys:
        shutil.copy(data.all_annotations / (Path(k).stem + ".xml"), out)
    return keys, out


def labelled(project: Path) -> set[str]:
    with Project.open(project) as p:
        return {r.path for r in p.images(status="labelled")}


# -- a. disk full -------------------------------------------------------------------------------------------

def test_disk_full_database_writes(data: Data, tmp_path: Path) -> None:
    """import and init --force on a full disk: a clear error, the old database intact, then both work."""
    with tmpfs(tmp_path / "disk", "800k") as disk:  # today's database no longer fits beside the filler in 400k
        proj = new_project(data, disk / "proj")  # images live elsewhere; only the database is on the small disk
        keys, answers = open_batch(proj, data, tmp_path / "answers")
        before = snapshot(proj)
        filler = fill(disk, leave=40 * 1024)  # room to open the database, not to commit an import

        clear_error(cli("import", proj, "--annotations", answers, "--format", "voc"),
                    "no space left on the device", "free some disk space", str(proj))
        assert_intact(proj, before)
        clear_error(cli("init", proj, "--force", "--images", data.images, "--annotations", data.annotations),
                    "no space left on the device", "free some disk space")
        assert_intact(proj, before)
        assert sorted(p.name for p in proj.iterdir() if p.name.startswith(".boxloop.db.building")) == []

        filler.unlink()  # free the space: the same commands now succeed
        out = ok(cli("import", proj, "--annotations", answers, "--format", "voc"))
        assert "imported 2 images" in out
        assert labelled(proj) == {r[1] for r in before["images"] if r[6] == "labelled"} | set(keys)
        assert snapshot(proj)["integrity"] == "ok"
        ok(cli("init", proj, "--force", "--images", data.images, "--annotations", data.annotations,
               "--test-fraction", "0.25"))
        assert snapshot(proj)["images"] == before["images"]


def test_disk_full_checkpoint_writes(data: Data, tmp_path: Path) -> None:
    """PROJECT/models on a full disk: train's checkpoint and query's copy of --checkpoint fail clearly,
    leave no half-written checkpoint behind, and succeed once there is space."""
    proj = new_project(data, tmp_path / "proj")
    before = snapshot(proj)
    with tmpfs(proj / "models", "300k") as models:  # a checkpoint is ~40 MB
        clear_error(cli("train", proj, *TRAIN), "no space left on the device", "free some disk space",
                    str(models), "best.pt")
        assert_intact(proj, before)
        assert list(models.rglob("*.pt")) == [] and list(models.rglob("*.tmp")) == []

        query = ("query", proj, "--checkpoint", data.checkpoint, "--budget", "2", "--strategy", "random",
                 "--out", tmp_path / "batch", "--image-size", "64", "--device", "cpu")
        clear_error(cli(*query), "no space left on the device", str(models / "round_001" / "best.pt"))
        assert_intact(proj, before)
        assert not (models / "round_001" / "best.pt").exists()  # a truncated copy would pass for the model

        r = subprocess.run(["mount", "-o", "remount,size=200m", str(models)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr  # more space on the same disk
        assert "asked about 2 images" in " ".join(ok(cli(*query)).split())
        assert load_checkpoint(models / "round_001" / "best.pt")["class_names"] == before_classes(before)
        assert_intact(proj, before, tables=("images", "boxes", "classes"))
        assert len(list((tmp_path / "batch").glob("*.xml"))) == 2
        assert "trained fcos" in ok(cli("train", proj, *TRAIN))
        assert load_checkpoint(next(models.glob("train_*/last.pt")))["complete"]


def before_classes(snap: dict) -> list[str]:
    return [name for _, name in snap["classes"]]


# -- b. read-only project -----------------------------------------------------------------------------------

def test_read_only_project(data: Data, tmp_path: Path) -> None:
    """On a read-only mount status and export still work; import, train and init --force say the
    project is read-only; nothing changes; writable again, the import succeeds."""
    real = new_project(data, tmp_path / "real")
    keys, answers = open_batch(real, data, tmp_path / "answers")
    before = snapshot(real)
    with read_only_view(real, tmp_path / "ro") as ro:
        s = ok(cli("status", ro, "--json"))
        assert '"images": 12' in s and f'"labelled_images": {LABELLED}' in s and '"open_queries": 2' in s
        ok(cli("export", ro, "--format", "voc", "--out", tmp_path / "exported"))
        assert len(list((tmp_path / "exported").glob("*.xml"))) == LABELLED

        clear_error(cli("import", ro, "--annotations", answers, "--format", "voc"), "read-only", "make it writable")
        clear_error(cli("train", ro, *TRAIN), "read-only", str(ro / ".lock"))
        clear_error(cli("init", ro, "--force", "--images", data.images), "read-only")
        # the real thing, as a user sees it: one line on stderr, no traceback
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("BOXLOOP_DEBUG", None)
        r = subprocess.run([sys.executable, "-m", "boxloop.cli", "import", str(ro), "--annotations", str(answers)],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "read-only" in r.stderr and "make it writable" in r.stderr
        assert_intact(real, before)

        subprocess.run(["mount", "-o", "remount,bind,rw", str(ro)], check=True)
        assert "imported 2 images" in ok(cli("import", ro, "--annotations", answers, "--format", "voc"))
    assert labelled(real) >= set(keys) and snapshot(real)["integrity"] == "ok"


# -- c. an image deleted after init -----------------------------------------------------------------------

@contextmanager
def moved_away(path: Path) -> Iterator[Path]:
    held = path.with_name(path.name + ".held")
    path.rename(held)
    try:
        yield path
    finally:
        held.rename(path)


def test_image_deleted_after_init(data: Data, tmp_path: Path) -> None:
    """evaluate names the missing test image (the fixed test set must not shrink); query and train
    leave a missing pool or training image out with a warning naming it and record it (issue 12),
    or with --strict stop naming it; labels unchanged; the file back, the record is gone."""
    proj = new_project(data, tmp_path / "proj")
    with Project.open(proj) as p:
        test_image = p.images(split="test")[0].path
        pool_image = p.images(split=None)[0].path
        train_image = p.images(split="train")[0].path
    before = snapshot(proj)
    evaluate = ("evaluate", proj, "--checkpoint", data.checkpoint, "--device", "cpu")
    query = ("query", proj, "--checkpoint", data.checkpoint, "--budget", "2", "--strategy", "random",
             "--out", tmp_path / "batch", "--image-size", "64", "--device", "cpu")

    with moved_away(data.images / test_image) as gone:
        clear_error(cli(*evaluate), test_image, "image file not found", "check the image folder")
    assert_intact(proj, before)
    ok(cli(*evaluate))

    with moved_away(data.images / pool_image) as gone:
        clear_error(cli(*query, "--strict"), str(gone), "image file not found")
        assert_intact(proj, before, tables=("images", "boxes", "queries", "classes"))  # the round keeps its progress
        out = " ".join(ok(cli(*query)).split())
        assert "asked about 2 images" in out and pool_image in out and "image file not found" in out
        with Project.open(proj) as p:
            assert pool_image not in {q.path for q in p.queries(state="open")}
            assert [(s["path"], s["stage"]) for s in p.status()["skipped_images"]] == [(pool_image, "predict")]

    # train (another seed: a new model) leaves the missing training image out
    with moved_away(data.images / train_image) as gone:
        clear_error(cli("train", proj, *TRAIN, "--seed", "5", "--strict"), train_image, "image file not found")
        out = " ".join(ok(cli("train", proj, *TRAIN, "--seed", "5")).split())
        assert "trained fcos" in out and train_image in out
    assert_intact(proj, before, tables=("images", "boxes", "classes"))
    assert "trained fcos" in ok(cli("train", proj, *TRAIN, "--seed", "6"))
    with Project.open(proj) as p:  # every file back: checked again, nothing left out any more
        assert [s["path"] for s in p.status()["skipped_images"]] == [pool_image]  # the pool is checked at predict
    assert snapshot(proj)["integrity"] == "ok"


def test_predict_over_a_folder_missing_an_image(data: Data, tmp_path: Path) -> None:
    """predict takes its images from a folder: a deleted one is simply not predicted, the rest are."""
    folder = tmp_path / "imgs"
    shutil.copytree(data.images, folder)
    (folder / "img_0003.png").unlink()
    out = ok(cli("predict", "--checkpoint", data.checkpoint, "--images", folder, "--out", tmp_path / "pred",
                 "--device", "cpu"))
    assert "predicted 11 images" in out
    assert len(list((tmp_path / "pred").glob("*.xml"))) == 11


# -- d. a truncated checkpoint ----------------------------------------------------------------------------------

def truncate_half(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_truncated_checkpoint(data: Data, tmp_path: Path) -> None:
    """evaluate/predict/query with a truncated checkpoint and train resuming from a truncated last.pt:
    a clear error naming the file and what to do; then restored (or deleted, as the message says) it works."""
    proj = data.trained
    best = data.checkpoint
    last = best.with_name("last.pt")
    backup = tmp_path / "best.pt.bak"
    shutil.copy2(best, backup)
    before = snapshot(proj)

    half = tmp_path / "half.pt"
    shutil.copy2(best, half)
    truncate_half(half)
    for args in (("evaluate", proj, "--checkpoint", half, "--device", "cpu"),
                 ("predict", "--checkpoint", half, "--images", data.images, "--out", tmp_path / "pred"),
                 ("query", proj, "--checkpoint", half, "--out", tmp_path / "batch", "--device", "cpu")):
        clear_error(cli(*args), f"cannot read checkpoint {half}", "truncated", "use another checkpoint")
    assert_intact(proj, before)
    assert not (tmp_path / "pred").exists() and not (tmp_path / "batch").exists()

    # the project's own model truncated: evaluate names it; restored, it evaluates
    truncate_half(best)
    try:
        clear_error(cli("evaluate", proj, "--device", "cpu"), f"cannot read checkpoint {best}", "truncated")
    finally:
        shutil.copy2(backup, best)
    assert "mean" in ok(cli("evaluate", proj, "--device", "cpu"))

    # resuming from a truncated last.pt: the error names it and says to delete it to start over
    truncate_half(last)
    clear_error(cli("train", proj, *TRAIN), "cannot resume training", f"cannot read checkpoint {last}",
                f"delete {last}")
    assert_intact(proj, before)
    last.unlink()  # as the message says
    assert "trained fcos" in ok(cli("train", proj, *TRAIN))
    # a new run: last.pt at its end, best.pt from one of its validations (at steps 1 and 2)
    assert load_checkpoint(last)["complete"] and load_checkpoint(last)["step"] == 2
    assert load_checkpoint(best)["step"] in (1, 2)
    assert_intact(proj, before)
