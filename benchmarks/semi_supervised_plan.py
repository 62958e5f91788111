"""semi_supervised.py's settings and plan: the configs every method shares, the (fraction, seed)
cells and their planned steps, the shards, and the time estimate from steps timed here."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocol import balance, csv

# -- settings ------------------------------------------------------------------------------------------

def train_config(args, seed: int):
    from boxloop.defaults import training_recipe
    from boxloop.train.fit import TrainConfig

    optimizer, lr = training_recipe(args.model)
    return TrainConfig(steps=args.teacher_steps, batch_size=args.batch_size, image_size=args.image_size,
                       lr=args.lr or lr, optimizer=optimizer, device=args.device, seed=seed, val_every=args.val_every,
                       warmup_steps=min(100, 5 * max(1, args.teacher_steps // 20)))


def detector_kwargs(args) -> dict[str, Any]:
    return {"backbone": "efficientnet_lite0", "pretrained_backbone": not args.no_pretrained,
            "min_size": args.image_size, "max_size": args.image_size, **json.loads(args.detector_options)}


def semi_config(args, **off: Any):
    from boxloop.semi.certainty import SemiConfig

    return SemiConfig(tau=args.tau, gamma1=args.gamma1, gamma2=args.gamma2, clip=(args.clip_low, 0.9),
                      student_steps=args.student_steps, **off)


def cells_of(args) -> list[tuple[float, int]]:
    return [(float(f), int(s)) for f in csv(args.fractions) for s in csv(args.seeds)]


def has_ablations(args, fraction: float) -> bool:
    return bool(csv(args.ablations)) and any(abs(fraction - float(f)) < 1e-9 for f in csv(args.ablation_fractions))


def has_oracle(args, fraction: float) -> bool:
    return any(abs(fraction - float(f)) < 1e-9 for f in csv(args.oracle_fractions))


def planned_steps(args, fraction: float) -> int:
    """Training steps of one cell: teacher, teacher continued, student, tsoda's iteration 2, ablations,
    the oracle."""
    methods = 2 + (args.tsoda_threshold != "off") + has_oracle(args, fraction)
    return args.teacher_steps + methods * args.student_steps + (
        len(csv(args.ablations)) * args.student_steps if has_ablations(args, fraction) else 0)


def my_cells(args) -> list[tuple[float, int]]:
    """This shard's cells: longest first onto the least loaded shard, by planned steps."""
    return balance(cells_of(args), lambda c: planned_steps(args, c[0]), args.shard_count)[args.shard_index]


# -- the time estimate ---------------------------------------------------------------------------------

def estimate(spec, args) -> dict[str, Any]:
    """Time training steps and predictions here, then the whole plan from those per-step costs.
    CPU seconds (process time) are what an otherwise idle core would take; wall seconds show the
    load on this machine now."""
    import tempfile

    from boxloop.train.data import Sample
    from boxloop.detectors import create_detector
    from boxloop.predict.inference import predict_paths
    from boxloop.semi.weak_view import weak_predict
    from boxloop.loop.simulate import load_truth
    from boxloop.train.fit import fit

    truth = load_truth(spec.images, spec.annotations, spec.fmt)
    keys = sorted(k for k, a in truth.items() if a is not None and len(a))[:48]
    samples = [Sample(spec.images / k, truth[k], key=k) for k in keys]
    classes = sorted({c for k in keys for c in truth[k].labels})
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        det = create_detector(args.model, len(classes), seed=0, **detector_kwargs(args))
        for strong in (False, True):
            n = args.estimate_steps
            cfg = dataclasses.replace(train_config(args, 0), steps=2 + n, strong=strong, val_every=10 ** 6)
            fit(det, samples, [], classes, cfg, Path(tmp) / f"w{strong}", progress=False, stop_after=2)  # warm-up
            c0, t0 = time.process_time(), time.perf_counter()
            fit(det, samples, [], classes, cfg, Path(tmp) / f"w{strong}", progress=False)  # resumes at step 2
            out["strong" if strong else "train"] = ((time.process_time() - c0) / n, (time.perf_counter() - t0) / n)
        from boxloop.train.fit import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(Path(tmp) / "wTrue" / "last.pt")
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(3):
            save_checkpoint(ckpt, Path(tmp) / "save_test.pt")
        out["checkpoint_save"] = ((time.process_time() - c0) / 3, (time.perf_counter() - t0) / 3)
        paths = [s.path for s in samples[:24]]
        c0, t0 = time.process_time(), time.perf_counter()
        weak_predict(det, paths, args.image_size, batch_size=args.batch_size)
        out["weak_predict"] = ((time.process_time() - c0) / len(paths), (time.perf_counter() - t0) / len(paths))
        c0, t0 = time.process_time(), time.perf_counter()
        list(predict_paths(det, paths, args.image_size, batch_size=args.batch_size, progress=False))
        out["predict"] = ((time.process_time() - c0) / len(paths), (time.perf_counter() - t0) / len(paths))
    n_test, trainval = spec.test_images, spec.pool_images
    total = {"cpu": 0.0, "wall": 0.0}
    per_cell = []
    for frac, seed in cells_of(args):
        lab = max(2, round(frac * trainval))
        n_val, n_unl = max(1, round(0.2 * lab)), trainval - lab
        runs = 4 + (len(csv(args.ablations)) if has_ablations(args, frac) else 0) + has_oracle(args, frac)  # trainings
        cost = {}
        for j, which in enumerate(("cpu", "wall")):
            steps = (args.teacher_steps * out["train"][j]
                     + args.student_steps * (2 + (runs - 4)) * out["strong"][j]  # continued, student, ablations, oracle
                     + (args.tsoda_threshold != "off") * args.student_steps * out["train"][j])  # tsoda's 2nd
            n_eval = runs * (max(args.teacher_steps, args.student_steps) // args.val_every + 1)
            evals = n_eval * n_val * out["predict"][j]
            # last.pt at every epoch end (an epoch of the labelled images only, at worst) and evaluation,
            # best.pt at every better evaluation (at worst every one)
            saves = (runs * max(args.teacher_steps, args.student_steps) / max(1, -(-(lab - n_val) // args.batch_size))
                     + 2 * n_eval) * out["checkpoint_save"][j]
            preds = (n_unl * out["weak_predict"][j] + 4 * n_unl * out["predict"][j]  # pool: semi; tsoda 2 x 2
                     + (runs + 3) * n_test * out["predict"][j])  # test sets
            cost[which] = steps + evals + preds + saves
            total[which] += cost[which]
        per_cell.append({"fraction": frac, "seed": seed, "seconds_cpu": round(cost["cpu"]),
                         "seconds_wall_now": round(cost["wall"])})
    shards = [0.0, 0.0]  # --shard 0/2 and 1/2, as my_cells assigns them
    for cell in sorted(per_cell, key=lambda c: -planned_steps(args, c["fraction"])):
        shards[int(np.argmin(shards))] += cell["seconds_cpu"]
    return {"per_step_and_image_seconds": {k: {"cpu": round(v[0], 4), "wall": round(v[1], 4)} for k, v in out.items()},
            "per_cell": per_cell, "total_cpu_minutes": round(total["cpu"] / 60, 1),
            "two_shards_minutes": round(max(shards) / 60, 1),
            "total_wall_minutes_at_this_load": round(total["wall"] / 60, 1), "threads": args.threads}
