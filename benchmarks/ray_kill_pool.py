"""Benchmark (issue 15): pool scoring on Ray Data with a scoring actor SIGKILLed midway: none lost,
none duplicated, and the stored detections equal the single-process path's.

    .venv/bin/python benchmarks/ray_kill_pool.py                  # 10,000 generated images, 2 actors
    .venv/bin/python benchmarks/ray_kill_pool.py --images 500     # a smoke run

A project over --images generated pool images (64 px), a tiny untrained fcos as the round's model
(score threshold 0.005: tens of boxes per image, so the store has real work), then the loop's Ray
path (`ray_scoring.predict_pool`, what `step_predict` calls with --workers) on a local Ray with
--workers actors. When --kill-at of the images are stored, one scoring actor's process is SIGKILLed;
Ray restarts it and re-runs its task. Afterwards: stored rows, distinct images, images missing, rows
beyond one per image, deliveries of an already stored image (dropped by the writer), and a sample of
--check images predicted again in this process (no Ray) compared array for array.

Prints a table and writes benchmarks/results/ray_kill_pool.json. Written here: the set-up, the kill
and the counting; boxloop and Ray do the work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CLASSES = ["circle", "square", "triangle"]


def scorer_pids() -> list[int]:
    """Processes of Ray Data scoring actors (their process title names the actor class)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"MapWorker(MapBatches(_Scorer))" in cmd:
            pids.append(int(proc.name))
    return sorted(pids)


def stored_count(db: Path, round_id: int) -> tuple[int, int]:
    """(rows, images) stored so far, on a connection of its own (the watcher runs beside the scoring)."""
    from boxloop.store import Project

    with Project.open(db.parent) as p:
        return p.prediction_counts(round_id)


def tiny_project(root: Path, n: int, size: int):
    """A project over n generated pool images and an untrained tiny fcos as round 1's best.pt."""
    from boxloop.detectors import create_detector
    from boxloop.loop.model import model_dir
    from boxloop.project import init_project
    from boxloop.synthetic import make_dataset
    from boxloop.train.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint

    make_dataset(root / "data", n_images=n, image_size=size, seed=3)
    project = init_project(root / "project", root / "data" / "images", None, classes=CLASSES, progress=False)
    det = create_detector("fcos", len(CLASSES), seed=0, backbone="mobilenet_v3_large", pretrained_backbone=False,
                          min_size=size, max_size=size, fpn_channels=32, head_convs=1)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "detector_config": det.config,
                     "class_names": CLASSES, "model": det.state_dict()}, model_dir(project, 1) / "best.pt")
    return project


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill-at", type=float, default=0.5, help="share of the pool stored when an actor is killed")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=0.005)
    ap.add_argument("--check", type=int, default=300, help="images compared with the single-process path")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from boxloop.predict.inference import predict_paths
    from boxloop.loop.round import pool_paths
    from boxloop.loop.model import model_dir
    from boxloop.scale.ray_scoring import RayScoring, predict_pool
    from boxloop.train.checkpoints import load_detector

    work = Path(args.workdir or tempfile.mkdtemp(prefix="boxloop_raykill_"))
    t0 = time.time()
    project = tiny_project(work, args.images, args.size)
    setup_s = time.time() - t0
    keys = pool_paths(project)
    ckpt = model_dir(project, 1) / "best.pt"
    db = project.dir / "boxloop.db"
    killed: dict = {}

    def killer() -> None:
        while "done" not in killed:
            rows, _ = stored_count(db, 1)
            pids = scorer_pids()
            if rows >= args.kill_at * len(keys) and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.update(pid=pids[0], at_stored=rows, actors_alive=len(pids))
                return
            time.sleep(0.05)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    t0 = time.time()
    stats = predict_pool(project, 1, keys, ckpt, args.size, args.batch_size, args.threshold,
                         RayScoring(workers=args.workers), device="cpu")
    score_s = time.time() - t0
    killed["done"] = True
    rows, distinct = stored_count(db, 1)
    stored = project.predicted_paths(1)
    missing = len([k for k in keys if k not in stored])
    boxes = sum(len(d) for d in project.load_predictions(1).values())

    # a sample predicted again in this process, the single-process way (chunks of 64, batches of 8)
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(keys), size=min(args.check, len(keys)), replace=False).tolist())
    chunk_starts = sorted({(i // 64) * 64 for i in sample})
    det, _, _ = load_detector(ckpt)
    ours = project.load_predictions(1)
    unequal = compared = 0
    for c in chunk_starts:
        part = keys[c:c + 64]
        for key, d in predict_paths(det, [project.image_root / k for k in part], args.size,
                                    batch_size=args.batch_size, score_threshold=args.threshold, progress=False,
                                    keys=part):
            e = ours[key]
            compared += 1
            same = (np.array_equal(d.boxes.xyxy, e.boxes.xyxy) and np.array_equal(d.scores, e.scores)
                    and np.array_equal(d.labels, e.labels) and np.array_equal(d.class_probs, e.class_probs))
            unequal += not same

    res = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "ray": __import__("ray").__version__, "load_before": os.getloadavg()},
        "settings": vars(args) | {"workdir": str(work)},
        "pool_images": len(keys), "setup_seconds": round(setup_s, 1), "scoring_seconds": round(score_s, 1),
        "killed": {k: v for k, v in killed.items() if k != "done"},
        "stored_rows": rows, "distinct_images": distinct, "missing": missing, "duplicate_rows": rows - distinct,
        "stream_duplicates_dropped": stats.duplicates, "passes": stats.passes, "boxes_stored": boxes,
        "compared_with_single_process": compared, "unequal": unequal,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ray_kill_pool.json").write_text(json.dumps(res, indent=1))
    print(f"| pool | actor killed at | lost | duplicated rows | re-delivered (dropped) | passes | "
          f"equal to 1-process | scoring s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {len(keys)} | {killed.get('at_stored', 'not killed')} stored | {missing} | {rows - distinct} | "
          f"{stats.duplicates} | {stats.passes} | {compared - unequal}/{compared} | {score_s:.1f} |")
    if not killed.get("pid") or missing or rows != len(keys) or unequal:
        sys.exit(1)


if __name__ == "__main__":
    main()
