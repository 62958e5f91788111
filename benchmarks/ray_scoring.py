"""Benchmark (issue 15): pool scoring on Ray Data with 2 actors against 1, and the per-image costs that
docs/scale_out.md sizes a 1M-image pool from.

    .venv/bin/python benchmarks/ray_scoring.py                         # 960 images, 3 repetitions each
    .venv/bin/python benchmarks/ray_scoring.py --images 64 --repeats 1 # a smoke run

Pool: --images generated 640x480 JPEGs (noise and shapes, like throughput.py) in a project; model:
the default detector (fcos_lite on the offline Lite0) at --image-size, untrained heads (the cost
of a forward pass does not depend on the weights), score threshold --threshold (default 0: 100 boxes
an image, the most the store and the wire carry). Each repetition
scores the whole pool into a fresh round of the project through `ray_scoring.predict_pool` (what the
loop's predict step runs with --workers): actors decode, predict, encode; the driver stores. The
runs with 1 and 2 actors alternate (1, 2, 2, 1, ...), each starting its own local Ray (start-up is
part of the time). Each repetition also records how many CPU-seconds other people's processes
used meanwhile (cpu_others.py): a speed-up only counts from repetitions on idle cores.
Every Ray round must equal the single-process round byte for byte.

Also measured, in this process with one thread: the single-process path (predict_paths +
save_predictions, chunks of 64) split into decode, model and store time per image, which are the
inputs of the sizing in docs/scale_out.md.

Prints a table and writes benchmarks/results/ray_scoring.json. Written here: the set-up, the
interleaving, the timing split and the statistics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
CLEAN = 0.02  # other people's processes took at most this share of the cores during a clean repetition
sys.path.insert(0, str(HERE))
from cpu_others import OthersCPU, wait_idle  # noqa: E402
CLASSES = ["a", "b", "c"]


def make_jpegs(folder: Path, n: int, width: int = 640, height: int = 480, seed: int = 0) -> None:
    """n generated JPEGs in `folder`, written to a side folder first: an interrupted run leaves no
    half-made pool that a rerun would take for the whole one."""
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.normal(128, 30, size=(height, width, 3)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 12))):
            x, y = rng.integers(0, width - 60), rng.integers(0, height - 60)
            w, h = rng.integers(20, 60, 2)
            d.ellipse([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        img.save(partial / f"img{i:06d}.jpg", quality=90)
    partial.rename(folder)


def blobs(project, round_id: int) -> dict[str, bytes]:
    return project.prediction_blobs(round_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=960)
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=0.0,
                    help="0 (default): every image keeps detections_per_img boxes, the worst case for the store")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="before each repetition wait up to this many seconds for idle cores (shared machines)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from boxloop.defaults import DETECTOR
    from boxloop.detectors import create_detector
    from boxloop.images import load_rgb
    from boxloop.predict.inference import predict_paths
    from boxloop.loop.round import pool_paths
    from boxloop.loop.model import model_dir
    from boxloop.project import init_project
    from boxloop.scale.ray_scoring import RayScoring, predict_pool
    from boxloop.train.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
    from boxloop.train.checkpoints import load_detector

    work = Path(args.workdir or tempfile.mkdtemp(prefix="boxloop_rayscore_"))
    make_jpegs(work / "images", args.images)
    project = init_project(work / "project", work / "images", None, classes=CLASSES, progress=False, force=True)
    det = create_detector(DETECTOR, len(CLASSES), seed=0, min_size=args.image_size, max_size=args.image_size)
    ckpt = model_dir(project, 1) / "best.pt"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "detector_config": det.config,
                     "class_names": CLASSES, "model": det.state_dict()}, ckpt)
    keys = pool_paths(project)
    root = project.image_root

    # single process, one thread: the loop's path (chunks of 64), timed in parts
    det, _, _ = load_detector(ckpt)
    if args.wait_idle:
        wait_idle(args.wait_idle)
    others_single = OthersCPU().__enter__()
    t_decode = t_store = 0.0
    t0 = time.perf_counter()
    for k in keys[:64]:
        s = time.perf_counter()
        load_rgb(root / k)
        t_decode += time.perf_counter() - s
    decode_per_image = t_decode / min(64, len(keys))
    t0 = time.perf_counter()
    for c in range(0, len(keys), 64):
        part = keys[c:c + 64]
        out = dict(predict_paths(det, [root / k for k in part], args.image_size, batch_size=args.batch_size,
                                 score_threshold=args.threshold, progress=False, keys=part))
        s = time.perf_counter()
        project.save_predictions(1, out)
        t_store += time.perf_counter() - s
    single_s = time.perf_counter() - t0
    others_single.__exit__()
    boxes = sum(len(d) for d in project.load_predictions(1).values()) / len(keys)
    reference = blobs(project, 1)
    blob_bytes = sum(len(b) for b in reference.values()) / len(reference)
    print(f"single process: {single_s:.1f} s ({1000 * single_s / len(keys):.1f} ms/image: decode+resize "
          f"~{1000 * decode_per_image:.1f}, store {1000 * t_store / len(keys):.2f}); {boxes:.1f} boxes/image, "
          f"{blob_bytes / 1024:.1f} KiB stored/image; other processes used {others_single.seconds:.1f} CPU-s",
          flush=True)

    times: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}  # CPU-seconds other people's processes took
    equal = True
    round_id = 1
    for rep in range(args.repeats):
        for w in ((1, 2) if rep % 2 == 0 else (2, 1)):
            round_id += 1
            if args.wait_idle:
                wait_idle(args.wait_idle)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            with OthersCPU() as others:
                predict_pool(project, round_id, keys, ckpt, args.image_size, args.batch_size, args.threshold,
                             RayScoring(workers=w), device="cpu")
            dt = time.perf_counter() - t0
            busy[w].append(others.seconds)
            same = blobs(project, round_id) == reference
            equal &= same
            times[w].append(dt)
            print(f"rep {rep} actors {w}: {dt:.1f} s (load before {load:.2f}; other processes used "
                  f"{others.seconds:.1f} CPU-s meanwhile){'' if same else '  RESULTS DIFFER'}", flush=True)

    med = {w: statistics.median(t) for w, t in times.items()}
    ratios = [a / b for a, b in zip(times[1], times[2])]
    # pairs where other people's processes took at most CLEAN of the cores in either repetition
    cores = os.cpu_count() or 1
    clean = [a / b for a, b, x, y in zip(times[1], times[2], busy[1], busy[2])
             if x <= CLEAN * a * cores and y <= CLEAN * b * cores]
    res = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "ray": __import__("ray").__version__, "processor": platform.processor()},
        "settings": vars(args) | {"workdir": str(work), "detector": det.config},
        "pool_images": len(keys), "boxes_per_image": round(boxes, 1), "blob_bytes_per_image": round(blob_bytes),
        "single_process": {"seconds": round(single_s, 2), "ms_per_image": round(1000 * single_s / len(keys), 2),
                           "decode_ms_per_image": round(1000 * decode_per_image, 2),
                           "store_ms_per_image": round(1000 * t_store / len(keys), 3),
                           "other_processes_cpu_seconds": round(others_single.seconds, 1)},
        "seconds": {str(w): [round(t, 2) for t in ts] for w, ts in times.items()},
        "median_seconds": {str(w): round(m, 2) for w, m in med.items()},
        "other_processes_cpu_seconds": {str(w): [round(b, 1) for b in bs] for w, bs in busy.items()},
        "ms_per_image_median": {str(w): round(1000 * m / len(keys), 2) for w, m in med.items()},
        "speedup_of_medians": round(med[1] / med[2], 3),
        "speedup_per_pair": [round(r, 3) for r in ratios],
        "speedup_clean_pairs": [round(r, 3) for r in clean], "clean_means_others_share_at_most": CLEAN,
        "results_equal_single_process": equal,
        "target": ">= 1.6x", "met": equal and med[1] / med[2] >= 1.6,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ray_scoring.json").write_text(json.dumps(res, indent=1))
    print("| actors | median s | min-max s | ms/image | speed-up (medians) | per-pair speed-ups | = 1-process | "
          "others' CPU-s per rep |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| in-process | {single_s:.1f} | | {1000 * single_s / len(keys):.1f} | | | | |")
    for w in (1, 2):
        sp = f"{med[1] / med[2]:.2f}x" if w == 2 else "1"
        pr = ", ".join(f"{r:.2f}" for r in ratios) if w == 2 else ""
        oc = ", ".join(f"{b:.0f}" for b in busy[w])
        print(f"| {w} | {med[w]:.1f} | {min(times[w]):.1f}-{max(times[w]):.1f} | {1000 * med[w] / len(keys):.1f} | "
              f"{sp} | {pr} | {equal} | {oc} |")
    print(f"pairs on idle cores (others took <= {CLEAN:.0%} of the cores in both): "
          + (", ".join(f"{r:.2f}x" for r in clean) if clean else "none"))
    if not equal:
        sys.exit(1)


if __name__ == "__main__":
    main()
