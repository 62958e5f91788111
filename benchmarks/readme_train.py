"""Benchmark: the README's `boxloop train` line, as a new user runs it, on a subset of BCCD.

    .venv/bin/python benchmarks/readme_train.py                          # defaults: 200 images, `train proj`
    .venv/bin/python benchmarks/readme_train.py --label former -- --model fcos --image-size 480 --epochs 20

Copies the first --images BCCD images (sorted names) and their VOC XML into a fresh folder, runs
`boxloop init --test-fraction 0.15` and then `boxloop train PROJECT [EXTRA ARGS]` through the real
CLI (a subprocess, default options unless given after `--`), times the train command's wall clock,
and reads the fixed-test-set metrics with `boxloop evaluate --json`. Appends a row to
benchmarks/results/readme_train.json. Skips cleanly when BCCD is absent.

Written here: the subset, the timing and the report; the CLI does everything else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "datasets" / "bccd"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BCCD VOC root")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--label", default="default", help="name of this row in the results")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "readme_train.json")
    args = ap.parse_args(argv)
    if not (args.data / "JPEGImages").is_dir():
        print(f"BCCD not found at {args.data}; skipping")
        return 0
    boxloop = [sys.executable, "-m", "boxloop.cli"]
    with tempfile.TemporaryDirectory(prefix="boxloop_readme_") as tmp:
        work = Path(tmp)
        (work / "images").mkdir()
        (work / "labels").mkdir()
        names = sorted(p.name for p in (args.data / "JPEGImages").glob("*.jpg"))[: args.images]
        for n in names:
            shutil.copy2(args.data / "JPEGImages" / n, work / "images" / n)
            xml = args.data / "Annotations" / (Path(n).stem + ".xml")
            if xml.exists():
                shutil.copy2(xml, work / "labels" / xml.name)
        proj = work / "proj"
        subprocess.run([*boxloop, "init", str(proj), "--images", str(work / "images"), "--annotations",
                        str(work / "labels"), "--test-fraction", "0.15"], check=True, capture_output=True)
        cmd = [*boxloop, "train", str(proj), *extra]
        print("running:", "boxloop train PROJECT", *extra, flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        ev = subprocess.run([*boxloop, "evaluate", str(proj), "--json"], check=True, capture_output=True, text=True)
        metrics = json.loads(ev.stdout)
    row = {"label": args.label, "train_args": extra, "images": len(names), "train_wall_s": round(wall, 1),
           "test_map50": metrics.get("map50"), "test_coco_ap": metrics.get("coco_ap"),
           "per_class_ap50": {k: v.get("ap50") for k, v in metrics.get("per_class", {}).items()},
           "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    print(f"{args.label}: train {wall / 60:.1f} min, test mAP50 {row['test_map50']}")
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
