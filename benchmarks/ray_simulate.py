"""Benchmark (issue 15): `simulate --workers 2` against `--workers 1` on the same runs, on a local Ray.

    .venv/bin/python benchmarks/ray_simulate.py                    # 3 repetitions of each, interleaved
    .venv/bin/python benchmarks/ray_simulate.py --repeats 1 --steps 10   # a smoke run

The runs: a generated shapes dataset (--images of --size px, 20% fixed test set), --seeds seeds x
the strategies random and least_confidence, --rounds query rounds, fcos on the offline Lite0 backbone
(the demo's settings, --steps steps per round). Each Ray task uses one torch thread, so --workers 1
is the same work as the sequential command. Repetitions alternate (1, 2, 2, 1, 1, 2, ...) so that a
change in the machine's load hits both; each starts its own Ray (its start-up is part of the time)
into a fresh OUT, and records the CPU-seconds other people's processes used meanwhile
(cpu_others.py): a speed-up only counts from repetitions on idle cores. Every repetition's results must equal those of one sequential run (no Ray) made
first, else the script exits 1.

Prints a table (median, min-max over repetitions; the speed-up of the medians and the spread of
per-pair ratios) and writes benchmarks/results/ray_simulate.json. Written here: the set-up, the
interleaving and the statistics; boxloop.loop.simulate and Ray do the work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CLEAN = 0.02  # other people's processes took at most this share of the cores during a clean repetition
sys.path.insert(0, str(HERE))
from cpu_others import OthersCPU, wait_idle  # noqa: E402


def runs_of(res: dict) -> dict:
    return {f"{r['strategy']}/{r['seed']}": {k: v for k, v in r.items() if k != "project"} for r in res["runs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="before each repetition wait up to this many seconds for idle cores (shared machines)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from boxloop.loop.config import LoopConfig
    from boxloop.loop.simulate import simulate
    from boxloop.synthetic import make_dataset

    work = Path(args.workdir or tempfile.mkdtemp(prefix="boxloop_raysim_"))
    data = work / "data"
    if not (data / "images").exists():
        make_dataset(data, n_images=args.images, image_size=args.size, seed=0)
    cfg = LoopConfig.make(model="fcos", backbone="efficientnet_lite0", epochs=None, steps=args.steps,
                          image_size=args.size, batch_size=8, device="cpu", val_every=10 ** 6,
                          detector_options={"fpn_channels": 64, "head_convs": 2})
    kw = dict(dataset=data / "images", annotations=data / "annotations", strategies=["random", "least_confidence"],
              initial=10, budget=6, rounds=args.rounds, seeds=list(range(args.seeds)), config=cfg,
              test_fraction=0.2, progress=False, echo=lambda m: None)

    if args.wait_idle:
        wait_idle(args.wait_idle)
    t0 = time.perf_counter()
    reference = runs_of(simulate(out=work / "sequential", **kw))
    sequential_s = time.perf_counter() - t0
    print(f"sequential (no Ray, 1 thread): {sequential_s:.1f} s", flush=True)

    times: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}  # CPU-seconds other people's processes took
    equal = True
    for rep in range(args.repeats):
        for w in ((1, 2) if rep % 2 == 0 else (2, 1)):
            if args.wait_idle:
                wait_idle(args.wait_idle)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            with OthersCPU() as others:
                res = simulate(out=work / f"w{w}_rep{rep}", workers=w, **kw)
            dt = time.perf_counter() - t0
            busy[w].append(others.seconds)
            same = runs_of(res) == reference
            equal &= same
            times[w].append(dt)
            print(f"rep {rep} workers {w}: {dt:.1f} s (load before {load:.2f}; other processes used "
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
                    "ray": __import__("ray").__version__},
        "settings": vars(args) | {"workdir": str(work), "runs": 2 * args.seeds, "config": cfg.to_dict()},
        "sequential_seconds": round(sequential_s, 2),
        "seconds": {str(w): [round(t, 2) for t in ts] for w, ts in times.items()},
        "median_seconds": {str(w): round(m, 2) for w, m in med.items()},
        "other_processes_cpu_seconds": {str(w): [round(b, 1) for b in bs] for w, bs in busy.items()},
        "speedup_of_medians": round(med[1] / med[2], 3),
        "speedup_per_pair": [round(r, 3) for r in ratios],
        "speedup_clean_pairs": [round(r, 3) for r in clean], "clean_means_others_share_at_most": CLEAN,
        "results_equal_sequential": equal,
        "target": ">= 1.6x with the same results",
        "met": equal and med[1] / med[2] >= 1.6,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ray_simulate.json").write_text(json.dumps(res, indent=1))
    print("| workers | median s | min-max s | speed-up (medians) | per-pair speed-ups | results = sequential | "
          "others' CPU-s per rep |")
    print("|---|---|---|---|---|---|---|")
    for w in (1, 2):
        sp = f"{med[1] / med[2]:.2f}x" if w == 2 else "1"
        pr = ", ".join(f"{r:.2f}" for r in ratios) if w == 2 else ""
        oc = ", ".join(f"{b:.0f}" for b in busy[w])
        print(f"| {w} | {med[w]:.1f} | {min(times[w]):.1f}-{max(times[w]):.1f} | {sp} | {pr} | {equal} | {oc} |")
    print(f"pairs on idle cores (others took <= {CLEAN:.0%} of the cores in both): "
          + (", ".join(f"{r:.2f}x" for r in clean) if clean else "none"))
    if not equal:
        sys.exit(1)


if __name__ == "__main__":
    main()
