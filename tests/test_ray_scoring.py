"""Pool scoring on Ray Data (local, 2 CPUs): the loop's predict step and `boxloop predict --workers`
store exactly what the single-process path stores, a rerun scores only what is not stored, a
scoring actor SIGKILLed midway loses and duplicates nothing, an unreadable image is left out (or with
--strict is the same user error) and a truncated one named, as without Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from boxloop.loop.round import pool_paths, step_predict
from boxloop.loop.config import LoopConfig
from boxloop.loop.model import model_dir
from boxloop.scale.ray_scoring import RayScoring, batch_groups, predict_pool

SIZE = 48
CLASSES = ["circle", "square", "triangle"]
CFG = LoopConfig.make(model="fcos", backbone="mobilenet_v3_large", pretrained_backbone=False, image_size=SIZE,
                      device="cpu", score_threshold=0.005, t_d=0.005, predict_batch_size=8)


def _project(root: Path, images: Path):
    """A project over `images` (all pool) whose round 1 model is an untrained tiny fcos (tens of
    boxes an image at this threshold)."""
    from boxloop.detectors import create_detector
    from boxloop.project import init_project
    from boxloop.train.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint

    project = init_project(root, images, None, classes=CLASSES, progress=False)
    det = create_detector("fcos", len(CLASSES), seed=0, backbone="mobilenet_v3_large", pretrained_backbone=False,
                          min_size=SIZE, max_size=SIZE, fpn_channels=32, head_convs=1)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "detector_config": det.config,
                     "class_names": CLASSES, "model": det.state_dict()}, model_dir(project, 1) / "best.pt")
    return project


def _blobs(project) -> dict[str, bytes]:
    return {p: bytes(b) for p, b in project.connection.execute(
        "SELECT i.path, p.blob FROM predictions p JOIN images i ON i.id = p.image_id WHERE p.round = 1")}


@pytest.fixture(scope="module")
def pool(make_synthetic):
    return make_synthetic(n_images=150, image_size=SIZE, seed=11)


@pytest.fixture(scope="module")
def single(pool, tmp_path_factory) -> dict[str, bytes]:
    project = _project(tmp_path_factory.mktemp("single") / "p", pool.images)
    step_predict(project, 1, CFG, progress=False)
    out = _blobs(project)
    project.close()
    return out


def test_batch_groups_follow_the_single_process_chunks() -> None:
    assert batch_groups(20, 8, chunk=12) == [list(range(0, 8)), list(range(8, 12)), list(range(12, 20))]
    assert batch_groups(5, 2) == [[0, 1], [2, 3], [4]]
    assert batch_groups(0, 4) == []


def test_predict_step_on_ray_equals_single_process_and_resumes(pool, single, ray_local, tmp_path) -> None:
    project = _project(tmp_path / "p", pool.images)
    step_predict(project, 1, CFG, progress=False, scoring=RayScoring(workers=2, batches_per_task=2))
    got = _blobs(project)
    assert len(got) == len(pool_paths(project)) == 150
    assert got == single  # byte for byte: the same boxes, scores, class probabilities, features
    # a rerun scores only what is not stored: keep a marker in the stored rows, drop the others
    keys = sorted(got)
    kept, dropped = keys[::2], keys[1::2]
    with project.transaction() as c:
        c.executemany("UPDATE predictions SET blob = ? WHERE round = 1 AND image_id = ?",
                      [(b"marker", project.image_id(k)) for k in kept])
        c.executemany("DELETE FROM predictions WHERE round = 1 AND image_id = ?",
                      [(project.image_id(k),) for k in dropped])
    step_predict(project, 1, CFG, progress=False, scoring=RayScoring(workers=2, batches_per_task=2))
    again = _blobs(project)
    assert all(again[k] == b"marker" for k in kept)
    assert all(again[k] == single[k] for k in dropped)
    project.close()


def _scorer_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"MapWorker(MapBatches(_Scorer))" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_killed_actor_loses_and_duplicates_nothing(pool, single, ray_local, tmp_path) -> None:
    project = _project(tmp_path / "p", pool.images)
    keys = pool_paths(project)
    db = project.dir / "boxloop.db"
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
                n = c.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
            pids = _scorer_pids()
            if n >= 16 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.02)

    th = threading.Thread(target=killer)
    th.start()
    try:
        stats = predict_pool(project, 1, keys, model_dir(project, 1) / "best.pt", SIZE, 8, 0.005,
                             RayScoring(workers=2, batches_per_task=1), device="cpu", write_chunk=8)
    finally:
        stop.set()
        th.join()
    assert killed, "no scoring actor was killed"
    rows, distinct = project.connection.execute(
        "SELECT COUNT(*), COUNT(DISTINCT image_id) FROM predictions WHERE round = 1").fetchone()
    assert rows == distinct == len(keys) == stats.stored
    assert _blobs(project) == single
    project.close()


def test_cli_predict_with_workers_writes_the_same_files(pool, ray_local, tmp_path) -> None:
    from typer.testing import CliRunner

    from boxloop.cli import app

    project = _project(tmp_path / "p", pool.images)
    ckpt = model_dir(project, 1) / "best.pt"
    project.close()
    images = tmp_path / "imgs"
    shutil.copytree(pool.images, images)
    for name in sorted(os.listdir(images))[24:]:
        (images / name).unlink()
    runner = CliRunner()
    outs = []
    for extra in ([], ["--workers", "2"]):
        out = tmp_path / f"pred{len(extra)}"
        res = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
                                  "--format", "coco", "--threshold", "0.005", "--device", "cpu", *extra])
        assert res.exit_code == 0, res.output
        outs.append(json.loads((out / "results.json").read_text()))
    assert outs[0] == outs[1] and len(outs[0]) > 24
    # an unreadable image and a truncated one: left out / loaded in part and named, as without Ray;
    # with --strict the unreadable one is the same one-line user error
    import hostile as H

    bad = sorted(os.listdir(images))[3]
    (images / bad).write_bytes(b"not an image")
    H.write_short(images / "short.jpg")
    texts, files = [], []
    for extra in ([], ["--workers", "2"]):
        out = tmp_path / f"bad{len(extra)}"
        res = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
                                  "--format", "coco", "--threshold", "0.005", "--device", "cpu", *extra])
        text = " ".join(res.output.split())
        assert res.exit_code == 0 and "Traceback" not in text, text
        assert "predicted 24 images" in text and "1 image(s) could not be decoded" in text, text
        assert bad in text and "short.jpg" in text and "loaded the part that is there" in text, text
        files.append(json.loads((out / "results.json").read_text()))
    assert files[0] == files[1]
    res = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out",
                              str(tmp_path / "strict"), "--device", "cpu", "--workers", "2", "--strict"])
    assert res.exit_code == 1 and "error:" in res.output and bad in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "strict").exists(), res.output


def test_pool_image_that_no_longer_decodes_is_left_out_and_recorded(make_synthetic, ray_local, tmp_path) -> None:
    """The keep-going rule on Ray: a pool image that fails to decode while scoring (same size and
    mtime, so the stat check passes it) is left out and recorded, or with strict is the error."""
    from boxloop.images import ImageError
    from boxloop.integrity import skipped_images

    data = make_synthetic(n_images=12, image_size=SIZE, seed=3)
    images = tmp_path / "imgs"
    shutil.copytree(data.images, images)
    project = _project(tmp_path / "p", images)
    victim = sorted(pool_paths(project))[2]
    path = images / victim
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    scoring = RayScoring(workers=2, batches_per_task=2)
    with pytest.raises(ImageError, match="without --strict"):
        step_predict(project, 1, CFG, progress=False, strict=True, scoring=scoring)
    assert skipped_images(project) == []
    step_predict(project, 1, CFG, progress=False, scoring=scoring)
    assert sorted(_blobs(project)) == sorted(k for k in pool_paths(project) if k != victim)
    assert [(s.path, s.stage) for s in skipped_images(project)] == [(victim, "predict")]
    project.close()
