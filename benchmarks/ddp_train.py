"""Benchmark (issue 15): `train --nproc 2` (torchrun, 2 gloo processes) against one process on the same
effective batch: test mAP50 and time, beside the seed-to-seed spread of one process.

    .venv/bin/python benchmarks/ddp_train.py                      # seeds 0,1; 150 steps
    .venv/bin/python benchmarks/ddp_train.py --steps 20 --seeds 0 # a smoke run

Data: a generated shapes dataset (--images of --size px; every 5th image is the test set, every 5th
of the rest validation). Model: fcos on the offline Lite0 backbone (the demo's settings: 64 FPN
channels, 2 head convolutions), batch --batch-size in total, --steps steps, one torch thread per
process. For every seed: one process (`train.fit`), then 2 processes (`ddp.fit_distributed`), each
from the same seeded initial weights; test mAP50 of each final model (boxloop.metrics.evaluate).

"Within tolerance" means: the 1-vs-2-process difference in test mAP50 is of the size of the
difference between two seeds of one process. Prints a table and writes
benchmarks/results/ddp_train.json. Written here: the set-up and the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from boxloop.train.data import Sample
    from boxloop.train.ddp import fit_distributed
    from boxloop.detectors import create_detector
    from boxloop.metrics.evaluate import evaluate
    from boxloop.predict.inference import predict_paths
    from boxloop.synthetic import CLASSES, make_dataset
    from boxloop.train.config import TrainConfig
    from boxloop.train.fit import fit

    work = Path(args.workdir or tempfile.mkdtemp(prefix="boxloop_ddp_"))
    anns = make_dataset(work / "data", n_images=args.images, image_size=args.size, seed=0)
    samples = [Sample(work / "data" / "images" / a.image, a) for a in anns]
    test = samples[::5]
    rest = [s for i, s in enumerate(samples) if i % 5]
    val, train = rest[::5], [s for i, s in enumerate(rest) if i % 5]

    def test_map(det) -> float:
        preds = {s.annotation.image: d.to_annotation(s.annotation.image, list(CLASSES))
                 for s, d in predict_paths(det, [s.path for s in test], args.size, progress=False, keys=test)}
        return float(evaluate({s.annotation.image: s.annotation for s in test}, preds, list(CLASSES))["map50"] or 0.0)

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, image_size=args.size, lr=0.01, warmup_steps=20,
                          device="cpu", seed=seed, val_every=args.steps // 3)
        for nproc in (1, 2):
            det = create_detector("fcos", len(CLASSES), seed=seed, min_size=args.size, max_size=args.size,
                                  fpn_channels=64, head_convs=2)
            t0 = time.perf_counter()
            if nproc == 1:
                res = fit(det, train, val, list(CLASSES), cfg, work / f"s{seed}_n1", progress=False)
            else:
                res = fit_distributed(det, train, val, list(CLASSES), cfg, work / f"s{seed}_n2", 2, progress=False)
            dt = time.perf_counter() - t0
            m = test_map(det)
            last = [h["loss"] for h in res.history[-20:]]
            rows.append({"seed": seed, "processes": nproc, "seconds": round(dt, 1), "best_val_map50": res.best_map50,
                         "test_map50": round(m, 4), "mean_loss_last_20": round(sum(last) / len(last), 4)})
            print(rows[-1], flush=True)

    out = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                       "load_at_end": os.getloadavg()},
           "settings": vars(args) | {"workdir": str(work), "train": len(train), "val": len(val), "test": len(test)},
           "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ddp_train.json").write_text(json.dumps(out, indent=1, default=str))
    print("| seed | processes | test mAP50 | best val mAP50 | mean loss, last 20 steps | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['processes']} | {r['test_map50']:.3f} | {r['best_val_map50']:.3f} | "
              f"{r['mean_loss_last_20']:.3f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
