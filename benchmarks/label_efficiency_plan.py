"""label_efficiency.py's plan: the jobs (a seed's base, a strategy's rounds, a full-data model), the
labelled-set schedule, their estimated cost from per-step costs measured here, and the shards.
The arithmetic is label_efficiency.py's docstring, round by round; `--estimate` prints it."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from protocol import balance, csv


# Per-unit costs for --estimate: measured here with 1 torch thread on an idle core (2026-12, BCCD,
# fcos_lite batch 8): seconds a training step by image size, an image predicted, a checkpoint save.
STEP_SECONDS = {256: 0.441, 320: 0.554}
PREDICT_SECONDS = {256: 0.029, 320: 0.034}
SAVE_SECONDS = 0.06
ROUND_OVERHEAD_SECONDS = 2.0  # selection, oracle, database, loading the model


def set_schedule(args, pool_images: int) -> None:
    """--fractions (labelled shares of the pool at each round) -> the seed set, the rounds and each
    round's budget; without it the schedule is --initial + r x --budget."""
    if not getattr(args, "fractions", None):
        args.schedule = None
        return
    sizes = [max(1, round(float(f) * pool_images)) for f in csv(args.fractions)]
    if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[-1] > pool_images:
        raise SystemExit(f"--fractions {args.fractions}: the shares must grow and stay within the pool "
                         f"({pool_images} images): {sizes}")
    args.schedule, args.initial, args.rounds = sizes, sizes[0], len(sizes) - 1
    args.budget = sizes[1] - sizes[0] if len(sizes) > 1 else 0


def image_schedule(args) -> list[int]:
    """Images labelled at each round, the seed set first."""
    if getattr(args, "schedule", None):
        return list(args.schedule)
    return [args.initial + r * args.budget for r in range(args.rounds + 1)]


def round_budget(args, unit: str, r: int) -> int:
    """What the query of round r asks for (images, or boxes at box level)."""
    if unit != "images":
        return args.box_budget
    sizes = image_schedule(args)
    return sizes[r + 1] - sizes[r] if r + 1 < len(sizes) else args.budget


def loop_config(args, **over: Any):
    """The loop's config of one job: the benchmark's settings, then the job's own (seed, unit, ...)."""
    from boxloop.loop.config import LoopConfig

    options = json.loads(args.detector_options) if isinstance(args.detector_options, str) else args.detector_options
    kw = dict(model=args.model, backbone=args.backbone, pretrained_backbone=not args.no_pretrained,
              detector_options=options, epochs=None, steps=args.steps, warm_start=bool(args.warm_start),
              warm_steps=args.warm_steps, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
              device=args.device, val_every=10 ** 6, seed=args.seed_list[0] if args.seed_list else 0)
    kw.update(over)
    return LoopConfig.make(**kw)


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work with its own project folder: a seed's base (seed set + round-0 model), one
    strategy's rounds at one unit, or a seed's full-data reference."""

    kind: str  # base | run | full
    seed: int
    unit: str | None = None
    strategy: str | None = None

    @property
    def name(self) -> str:
        return {"base": f"seed{self.seed}/base", "full": f"seed{self.seed}/full_data"}.get(
            self.kind, f"seed{self.seed}/{self.unit}/{self.strategy}")


def full_steps(args) -> int:
    """The full-data model's steps: as many updates as the last image-level model received in all."""
    if args.full_steps:
        return int(args.full_steps)
    return int(args.steps + (args.rounds * args.warm_steps if args.warm_start else 0))


def plan(args) -> list[Job]:
    jobs: list[Job] = []
    for seed in args.seed_list:
        jobs.append(Job("base", seed))
        for unit in args.unit_list:
            for s in strategies_of(args, unit):
                jobs.append(Job("run", seed, unit, s))
        if not args.no_full_data:
            jobs.append(Job("full", seed))
    return jobs


def strategies_of(args, unit: str) -> list[str]:
    return csv(args.strategies if unit == "images" else args.box_strategies)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the cost of a job depends on: the dataset's sizes."""

    trainval: int
    test: int
    boxes_per_image: float


def job_cost(job: Job, args, sizes: Sizes, step_s: float, pred_s: float, save_s: float = SAVE_SECONDS
             ) -> dict[str, float]:
    """Estimated steps, images predicted, checkpoint saves and seconds of one job (the arithmetic of
    the module docstring, round by round)."""
    from boxloop.strategies import NEEDS_CLASS_SKILL

    b = args.batch_size

    def training(steps: int, n_labelled: float) -> tuple[float, float, float]:
        n_train = max(1.0, 0.8 * n_labelled)
        saves = steps / max(1.0, math.ceil(n_train / b))  # last.pt at every epoch end
        return steps, saves, 0.2 * n_labelled + sizes.test  # + validation and test predictions

    steps = saves = preds = 0.0
    rounds = 1  # a base or a full-data model: one round
    if job.kind == "base":
        s, sv, p = training(args.steps, args.initial)
        steps, saves, preds = s, sv, p
    elif job.kind == "full":
        s, sv, p = training(full_steps(args), sizes.trainval)
        steps, saves, preds = s, sv + 1, p
    else:
        n_rounds = args.rounds if job.unit == "images" else args.box_rounds
        rounds = 0
        per_round = args.warm_steps if args.warm_start else args.steps
        for r in range(n_rounds + 1):
            if job.unit == "images":
                n = image_schedule(args)[r]
            else:  # images holding a label: the seed set, then every image a queried box lies on (about)
                n = args.initial + min(sizes.trainval - args.initial, r * args.box_budget / sizes.boxes_per_image)
            if r > 0:
                s, sv, p = training(per_round, n)
                steps, saves, preds = steps + s, saves + sv, preds + p
            if r < n_rounds:
                # the pool (at box level partially labelled images stay in it), coreset's labelled images
                preds += sizes.trainval - (n if job.unit == "images" else args.initial)
                labelled = n if job.unit == "images" else args.initial
                if job.strategy == "coreset":
                    preds += 0.8 * labelled
                if job.unit == "images" and job.strategy in NEEDS_CLASS_SKILL:  # skill on train + val images
                    preds += labelled
            rounds += 1
    seconds = steps * step_s + preds * pred_s + saves * save_s + rounds * ROUND_OVERHEAD_SECONDS
    return {"steps": steps, "predictions": preds, "saves": saves, "seconds": seconds,
            "trainings": 1 if job.kind != "run" else (args.rounds if job.unit == "images" else args.box_rounds)}


def assign(jobs: Sequence[Job], costs: Mapping[Job, float], shards: int) -> list[list[Job]]:
    """Jobs per shard: seed i's base to shard i mod n (first in its list), the rest by longest
    processing time first onto the least loaded shard; each shard then runs its bases, the jobs of
    the seeds whose base it trains, then the others (whose bases are done by then, or it waits)."""
    seeds = sorted({j.seed for j in jobs})
    owner = {s: i % shards for i, s in enumerate(seeds)}
    out = balance(sorted(jobs, key=lambda j: j.name), costs.__getitem__, shards,
                  fixed={j: owner[j.seed] for j in jobs if j.kind == "base"})
    for k in range(shards):
        bases = [j for j in out[k] if j.kind == "base"]
        others = sorted((j for j in out[k] if j.kind != "base"),
                        key=lambda j: (owner[j.seed] != k, j.seed, j.kind != "run", j.unit != "images", j.name))
        out[k] = bases + others
    return out


def dataset_sizes(spec) -> Sizes:
    from boxloop.images import list_images
    from boxloop.project import resolve_test_list
    from boxloop.loop.simulate import load_truth

    truth = load_truth(spec.images, spec.annotations, spec.fmt)
    test = set(resolve_test_list(spec.test_list, list_images(spec.images)))
    tv = [k for k in truth if k not in test]
    boxes = sum(len(truth[k]) for k in tv)
    return Sizes(trainval=len(tv), test=len(truth) - len(tv), boxes_per_image=boxes / max(1, len(tv)))


def measure(spec, args, n: int = 4) -> tuple[float, float]:
    """(seconds a training step, seconds an image predicted) here, now, with the configured threads."""
    import tempfile

    from boxloop.train.data import Sample
    from boxloop.predict.inference import predict_paths
    from boxloop.loop.simulate import load_truth
    from boxloop.train.fit import fit

    truth = load_truth(spec.images, spec.annotations, spec.fmt)
    keys = sorted(k for k, a in truth.items() if a is not None and len(a))[:32]
    samples = [Sample(spec.images / k, truth[k], key=k) for k in keys]
    classes = sorted({c for k in keys for c in truth[k].labels})
    cfg = loop_config(args)
    det = cfg.detector_spec().build(len(classes), seed=0)
    tc = dataclasses.replace(cfg.train_config(0), steps=2 + n, val_every=10 ** 6, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        fit(det, samples, [], classes, tc, Path(tmp), progress=False, stop_after=2)  # warm-up
        t0 = time.perf_counter()
        fit(det, samples, [], classes, tc, Path(tmp), progress=False)
        step = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    list(predict_paths(det, [s.path for s in samples], args.image_size, batch_size=8, device="cpu", progress=False))
    return step, (time.perf_counter() - t0) / len(samples)


def estimate(args, sizes: Sizes, step_s: float | None = None, pred_s: float | None = None) -> dict[str, Any]:
    """The plan's trainings, steps, predictions and time: per job, per shard and in all."""
    size = args.image_size
    step_s = step_s or STEP_SECONDS.get(size, STEP_SECONDS[320] * (size / 320) ** 2)
    pred_s = pred_s or PREDICT_SECONDS.get(size, PREDICT_SECONDS[320] * (size / 320) ** 2)
    jobs = plan(args)
    costs = {j: job_cost(j, args, sizes, step_s, pred_s) for j in jobs}
    shards = assign(jobs, {j: c["seconds"] for j, c in costs.items()}, args.shard_count)
    total = {k: sum(c[k] for c in costs.values()) for k in ("steps", "predictions", "saves", "seconds", "trainings")}
    per_shard = [sum(costs[j]["seconds"] for j in s) for s in shards]
    return {"step_seconds": step_s, "predict_seconds_per_image": pred_s, "save_seconds": SAVE_SECONDS,
            "jobs": len(jobs), "trainings": int(total["trainings"]), "steps": int(total["steps"]),
            "predictions": int(total["predictions"]), "cpu_minutes": round(total["seconds"] / 60, 1),
            "shards": args.shard_count, "minutes_per_shard": [round(s / 60, 1) for s in per_shard],
            "wall_minutes": round(max(per_shard) / 60, 1),
            "full_data_steps": full_steps(args),
            "per_job": {j.name: {k: round(v, 1) for k, v in costs[j].items()} for j in jobs}}


def describe_estimate(est: Mapping[str, Any], args) -> str:
    lines = [f"plan: {len(args.seed_list)} seed(s) x (1 base + "
             + " + ".join(f"{len(strategies_of(args, u))} {u}-level runs x "
                          f"{args.rounds if u == 'images' else args.box_rounds} rounds" for u in args.unit_list)
             + ("" if args.no_full_data else " + 1 full-data model") + ")",
             f"  images labelled per round: {image_schedule(args)}"
             + (f" ({args.fractions} of the pool)" if getattr(args, "schedule", None) else ""),
             f"  {est['jobs']} jobs, {est['trainings']} trainings, {est['steps']} training steps "
             f"(base {args.steps}, then {args.warm_steps if args.warm_start else args.steps} a round"
             f"{' warm-started' if args.warm_start else ' from scratch'}; full data {est['full_data_steps']}), "
             f"~{est['predictions']} images predicted",
             f"  at {est['step_seconds']:.3f} s/step, {est['predict_seconds_per_image']:.4f} s/image, "
             f"{est['save_seconds']} s/checkpoint save: {est['cpu_minutes']} CPU-minutes; "
             f"{est['shards']} shard(s) of {args.threads or 'default'} thread(s): {est['minutes_per_shard']} min "
             f"-> ~{est['wall_minutes']} min wall "
             + ("at the speed measured now" if getattr(args, "measure", False) else "on an idle machine")]
    return "\n".join(lines)
