"""Benchmark: `init` of N generated images with VOC XML, in images per second; optionally the time
of `status` on a large store (rows inserted directly, no image files).

    .venv/bin/python benchmarks/init_speed.py --n 10000
    .venv/bin/python benchmarks/init_speed.py --n 1000 --status-images 200000 --status-boxes 2000000

Writes benchmarks/results/init_speed.json. Generation is timed apart from init, which includes
listing, decoding every image, hashing, parsing the XML, the splits and the database transaction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from boxloop.project import init_project
from boxloop.store import ImageRecord, Project
from boxloop.synthetic import make_dataset


def bench_init(n: int, image_size: int, workdir: Path) -> dict:
    t0 = time.perf_counter()
    make_dataset(workdir / "data", n_images=n, image_size=image_size, seed=0)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    proj = init_project(workdir / "project", workdir / "data" / "images", workdir / "data" / "annotations",
                        test_fraction=0.2, seed=0, progress=False)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = proj.status()
    status_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    anns = proj.annotations("labelled")
    read_s = time.perf_counter() - t0
    proj.close()
    return {"n_images": n, "image_size": image_size, "boxes": s["boxes"], "generate_s": gen_s,
            "init_s": init_s, "images_per_s": n / init_s, "status_s": status_s,
            "annotations_read_s": read_s, "annotations_read": len(anns)}


def bench_status(n_images: int, n_boxes: int, workdir: Path) -> dict:
    """status() on a store of n_images / n_boxes (rows only), the size the design must serve < 1 s."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    p = Project.create(workdir / "big", workdir, [f"class{i}" for i in range(20)])
    splits = rng.choice(["train", "val", "test", None], size=n_images, p=[0.05, 0.02, 0.03, 0.9])
    with p.transaction():
        p.add_images(ImageRecord(f"img_{i:07d}.jpg", 640, 480, None, split=s,
                                 status="labelled" if s else "unlabelled") for i, s in enumerate(splits))
        image_ids = rng.integers(1, n_images + 1, size=n_boxes)
        cls = rng.integers(0, 20, size=n_boxes)
        src = rng.choice(["human", "pseudo", "predicted", "background"], size=n_boxes, p=[0.3, 0.2, 0.45, 0.05])
        p.add_box_arrays(image_ids, np.where(src == "background", -1, cls),
                         np.tile([1.0, 2.0, 30.0, 40.0], (n_boxes, 1)), src)
    fill_s = time.perf_counter() - t0
    p.close()
    p = Project.open(workdir / "big")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        p.status()
        times.append(time.perf_counter() - t0)
    p.close()
    return {"images": n_images, "boxes": n_boxes, "fill_s": fill_s, "status_s_best": min(times),
            "status_s_all": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="images to generate and init")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--status-images", type=int, default=0, help="also time status() on this many image rows")
    ap.add_argument("--status-boxes", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "init_speed.json")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated data here")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="boxloop-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version()}}
    try:
        r = bench_init(args.n, args.image_size, workdir)
        result["init"] = r
        print(f"{'images':>8} {'boxes':>8} {'generate s':>11} {'init s':>8} {'images/s':>9} {'status s':>9} {'read s':>7}")
        print(f"{r['n_images']:>8} {r['boxes']:>8} {r['generate_s']:>11.1f} {r['init_s']:>8.2f} "
              f"{r['images_per_s']:>9.0f} {r['status_s']:>9.4f} {r['annotations_read_s']:>7.2f}")
        if args.status_images:
            s = bench_status(args.status_images, args.status_boxes or 10 * args.status_images, workdir)
            result["status_at_scale"] = s
            print(f"status() on {s['images']} images / {s['boxes']} boxes: best {s['status_s_best']:.3f} s "
                  f"(filled in {s['fill_s']:.0f} s)")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
