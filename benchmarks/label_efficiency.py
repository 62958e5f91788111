"""Benchmark: does the loop save labels? Seeded learning curves on BCCD (issue 13), via boxloop's loop.

    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --estimate            # the plan and its time
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --shard 0/2 --threads 1 &
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --shard 1/2 --threads 1 # two cores, ~75 min
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --report-only           # tables, JSON, plots
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --seeds 0 --threads 1   # or one seed at a time
    .venv/bin/python benchmarks/label_efficiency.py --dataset synthetic --threads 1      # smoke run, ~3 min

What it runs (preset cpu), on BCCD (292 trainval images, 3941 boxes; 72 fixed test images):
- the CPU-first default detector fcos_lite at 320 px, batch 8, its recipe (AdamW, lr 0.002, cosine);
- 3 seeds; per seed one random seed set of 20 images and one round-0 model, shared by every strategy
  and both units (the base); each seed has its own full-data reference (below);
- image level: random, least_confidence, entropy, localization_aware, coreset; 6 rounds of 21
  images: 20 -> 146 images = 50.0% of trainval;
- box level: random, least_confidence, coreset; 4 rounds of 340 boxes: ~265 seed-set boxes + 1360
  = ~1625 boxes drawn or verified, ~41% of trainval's 3941 (40% is read off the curve between rounds);
- the full-data reference per seed: all trainval labelled, the same recipe, trained from scratch for
  as many updates as the last image-level model received in total (steps + rounds x warm_steps).

The schedule is in steps, not epochs (20 images are 2 steps an epoch): the base trains STEPS = 200
steps from scratch; each later round starts from the previous round's model (warm start) and trains
WARM_STEPS = 80 more, whatever the labelled set's size (the same effort for every strategy at every
round; 19 epochs of the 33 training images of round 1, 5 of the 117 of round 6). 200 steps on the
16 training images of a seed set give a model that keeps boxes of every class (BCCD seed 0: test
mAP50 0.744 with today's fcos_lite); a round that keeps none would record its fallback
(boxloop.loop.fallback). Validation runs
once, at the end of each training (val_every larger than the steps): picking a checkpoint by 4
validation images is noise (shared/AL_NOTES.md).

Warm start or from scratch, measured (BCCD seed 0, random, fcos_lite 320 px, the real loop; round 0
= 20 images, 200 steps from scratch):
    fcos_lite with GFL boxes (main since 3976cb9): round 0 0.744
        46 images: warm start 100 steps 0.800 | from scratch 200 steps 0.632
    fcos_lite before it (ee8a6a8): round 0 0.577
        46 images: warm start 100 steps 0.670 | from scratch 200 steps 0.573
        72 images: warm start 100 steps 0.724 | from scratch 200 steps 0.534
From scratch, a fixed step count spread over a growing set leaves each round's model less trained
than the last and the curve falls (the issue's falling demo); warm-started, every round adds
training and the curve rises, at half the steps. So warm start is the default; `--no-warm-start`
trains every round from scratch for STEPS steps. The preset's 80 warm steps (not the measured 100)
make the whole plan fit 90 minutes.

Time, from per-step costs measured here (1 torch thread on an idle core, fcos_lite 320 px, batch 8;
the GFL-box fcos_lite measured the same as the one before under equal load, 0.88 against 0.89 s):
0.554 s a training step, 0.034 s an image predicted, ~0.06 s a checkpoint save (last.pt at every
epoch end), ~2 s a round for selection, oracle and database. Per seed:
    steps:  base 200 + images 5 x 6 x 80 + boxes 3 x 4 x 80 + full data (200 + 6 x 80) = 4240
            -> 4240 x 0.554 s = 39 min
    predictions: each round predicts the pool (~250 images), the test set (72) and validation,
            coreset also the labelled images: ~14,250 images x 0.034 s = 8 min
    saves and rounds: ~2 min
    => ~49 CPU-minutes a seed, 148 for 3 seeds; on 2 cores (`--shard 0/2` and `--shard 1/2`, one
       thread each, jobs balanced by estimated cost) 73 and 75 minutes: ~75 min wall on an idle
       machine, 15 min of margin for two processes sharing memory bandwidth.
`--estimate` prints this plan from the constants (`--measure`: times a few steps here first) and
trains nothing.

Cold start (issue 16): `--initial-strategy typical` chooses each seed set with `typical` (no trained
model) instead of at random; everything else is the same protocol. It has its own workdir
(..._typical) and JSON, and benchmarks/cold_start.py --protocol pairs its runs with the random-seed-set
runs of the plain command, seed by seed:
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --initial-strategy typical \
        --unit images --strategies random,budget_aware --no-full-data --shard 0/2 --threads 1 &  # + 1/2

AL + pseudo-labels (issue 13): `--semi certainty` (or autolabel) runs the same protocol with the
loop's pseudo-labels after each round's oracle; each round trains with and without them and keeps
the pseudo-labels only when the paired bootstrap over the validation images says they help. Its own
workdir (..._semi_certainty) and JSON; copy the plain workdir's images/seed*/base and full_data
there to pair it with the same seed sets and full-data models:
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --semi certainty --unit images \
        --strategies localization_aware --shard 0/2 --threads 1 &  # + 1/2

Resuming: every job (a seed's base, a strategy's run, a seed's full-data model) lives in its own
project folder under WORKDIR and resumes at its step (training at its last checkpoint): re-run the
same command and only the missing rounds train. Seeds and shards are separate invocations whose
results merge: the tables, results.json and the JSON are built from every project folder on disk,
so `--seeds 0`, `--seeds 1,2` (or `--shard 0/2` and `--shard 1/2`, run at the same time) and a final
`--report-only` give the same numbers as one process. Two shards that need the same base wait on a
file lock while the other trains it.

Written here: presets, the job plan, sharding, the estimate, the full-data reference and the target
checks. boxloop does the rest: loop.run_round (train, evaluate, predict, select, oracle), simulate's
withhold/copy_project/collect_results, report.curve_statistics (AUC per seed, paired differences,
shares of the full-data mAP50), report.forecast_summary (power law, backtest), the plots and HTML.

Outputs: benchmarks/results/label_efficiency.json (or --json): command, machine, settings, plan,
full-data models, per unit the strategy x round table (mean ± std over seeds, shares of trainval and
of the full-data mAP50), the AUC statistics, the forecasts and their backtest error, the target
checks and every run's rounds (each round: train steps, warm start, fallback if any). WORKDIR/<unit>/
holds results.json, plots/ and report.html.

BCCD: /work/shared/datasets/bccd (a VOC root); absent: the script says so and exits 0.
`--dataset synthetic` builds boxloop.synthetic's shapes dataset (every 5th image is the test set).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_BCCD = HERE.parents[1] / "shared" / "datasets" / "bccd"

# Every value is the default of the flag of the same name (underscores as dashes).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(model="fcos_lite", backbone="efficientnet_lite0", detector_options="{}", image_size=320, batch_size=8,
                lr=None, steps=200, warm_steps=80, warm_start=True, full_steps=None, initial=20, budget=21,
                rounds=6, box_budget=340, box_rounds=4, seeds="0,1,2",
                strategies="random,least_confidence,entropy,localization_aware,coreset",
                box_strategies="random,least_confidence,coreset", units="images,boxes"),
    "gpu": dict(model="fcos_lite", backbone="efficientnet_lite0", detector_options="{}", image_size=480, batch_size=8,
                lr=None, steps=600, warm_steps=300, warm_start=True, full_steps=None, initial=20, budget=21,
                rounds=6, box_budget=340, box_rounds=4, seeds="0,1,2",
                strategies="random,least_confidence,entropy,localization_aware,coreset",
                box_strategies="random,least_confidence,coreset", units="images,boxes"),
    # --dataset synthetic: the smallest settings that run every step of every strategy (not a result)
    "synthetic": dict(model="fcos_lite", backbone="efficientnet_lite0",
                      detector_options='{"channels": 32, "head_convs": 1}', image_size=96, batch_size=4, lr=None,
                      steps=40, warm_steps=20, warm_start=True, full_steps=None, initial=8, budget=6, rounds=3,
                      box_budget=20, box_rounds=2, seeds="0,1",
                      strategies="random,least_confidence,entropy,localization_aware,coreset",
                      box_strategies="random,least_confidence,coreset", units="images,boxes"),
}

# issue 13's targets (the goals in brackets are reported, not required)
TARGETS = {"images": {"auc_above_random_every_seed": True, "map50_share": 0.95, "goal_share": 0.98,
                      "labelled_share": 0.50},
           "boxes": {"map50_share": 0.90, "goal_share": 0.95, "labelled_share": 0.40}}

# Per-unit costs for --estimate: measured here with 1 torch thread on an idle core (2026-12, BCCD,
# fcos_lite batch 8): seconds a training step by image size, an image predicted, a checkpoint save.
STEP_SECONDS = {256: 0.441, 320: 0.554}
PREDICT_SECONDS = {256: 0.029, 320: 0.034}
SAVE_SECONDS = 0.06
ROUND_OVERHEAD_SECONDS = 2.0  # selection, oracle, database, loading the model


# -- shared with semi_supervised.py and cold_start.py ----------------------------------------------

def machine(device: str = "auto") -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "device": device}
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available() and device in ("auto", "cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where the images, labels and fixed test list are, and which classes count as rare."""

    name: str
    images: Path
    annotations: Path
    test_list: Path
    rare_classes: tuple[str, ...]


def prepare_dataset(dataset: str, workdir: Path, synthetic_images: int = 60, synthetic_size: int = 96
                    ) -> DatasetSpec | None:
    """BCCD (or any VOC root with ImageSets/Main/test.txt), or a freshly generated synthetic set.
    None when the VOC root is missing (the caller skips)."""
    if dataset == "synthetic":
        from boxloop.synthetic import make_dataset

        root = workdir / "synthetic_data"
        test_list = root / "test.txt"
        if not test_list.exists():
            anns = make_dataset(root, n_images=synthetic_images, image_size=synthetic_size, seed=0)
            stems = [Path(a.image).stem for i, a in enumerate(anns) if i % 5 == 0]
            test_list.write_text("\n".join(stems) + "\n")
        return DatasetSpec("synthetic", root / "images", root / "annotations", test_list, ("triangle",))
    root = Path(dataset)
    if not (root / "Annotations").is_dir() or not (root / "JPEGImages").is_dir():
        return None
    test_list = root / "ImageSets" / "Main" / "test.txt"
    if not test_list.is_file():
        raise SystemExit(f"{test_list} is missing: the fixed test list is needed for a comparable number")
    return DatasetSpec(root.name, root / "JPEGImages", root / "Annotations", test_list, ("WBC", "Platelets"))


def resolve(args: argparse.Namespace, preset: Mapping[str, Any]) -> argparse.Namespace:
    """Flags left at None take the preset's value."""
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def finite(obj: Any) -> Any:
    """NaN / inf -> None, recursively, so the JSON is strict (learning_curve_table uses NaN for 'none')."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def dataset_or_skip(args):
    """The dataset spec (torch threads set as asked), or None after saying why the run is skipped."""
    spec = prepare_dataset(args.dataset, args.workdir, args.synthetic_images, args.synthetic_size)
    if spec is None:
        print(f"BCCD not found at {args.dataset} (needs Annotations/ and JPEGImages/); skipping. "
              "Pass --dataset PATH to a VOC root, or --dataset synthetic.")
        return None
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return spec


# -- the plan ----------------------------------------------------------------------------------------

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
                n = args.initial + r * args.budget
            else:  # images holding a label: the seed set, then every image a queried box lies on (about)
                n = args.initial + min(sizes.trainval - args.initial, r * args.box_budget / sizes.boxes_per_image)
            if r > 0:
                s, sv, p = training(per_round, n)
                steps, saves, preds = steps + s, saves + sv, preds + p
            if r < n_rounds:
                # the pool (at box level partially labelled images stay in it), coreset's labelled images
                preds += sizes.trainval - (n if job.unit == "images" else args.initial)
                if job.strategy == "coreset":
                    preds += 0.8 * (n if job.unit == "images" else args.initial)
            rounds += 1
    seconds = steps * step_s + preds * pred_s + saves * save_s + rounds * ROUND_OVERHEAD_SECONDS
    return {"steps": steps, "predictions": preds, "saves": saves, "seconds": seconds,
            "trainings": 1 if job.kind != "run" else (args.rounds if job.unit == "images" else args.box_rounds)}


def assign(jobs: Sequence[Job], costs: Mapping[Job, float], shards: int) -> list[list[Job]]:
    """Jobs per shard: seed i's base to shard i mod n (first in its list), the rest by longest
    processing time first onto the least loaded shard; each shard then runs its bases, the jobs of
    the seeds whose base it trains, then the others (whose bases are done by then, or it waits)."""
    out: list[list[Job]] = [[] for _ in range(shards)]
    load = [0.0] * shards
    seeds = sorted({j.seed for j in jobs})
    owner = {s: i % shards for i, s in enumerate(seeds)}
    for j in jobs:
        if j.kind == "base":
            out[owner[j.seed]].append(j)
            load[owner[j.seed]] += costs[j]
    rest = sorted((j for j in jobs if j.kind != "base"), key=lambda j: (-costs[j], j.name))
    for j in rest:
        k = int(np.argmin(load))
        out[k].append(j)
        load[k] += costs[j]
    for k in range(shards):
        bases = [j for j in out[k] if j.kind == "base"]
        others = sorted((j for j in out[k] if j.kind != "base"),
                        key=lambda j: (owner[j.seed] != k, j.seed, j.kind != "run", j.unit != "images", j.name))
        out[k] = bases + others
    return out


def dataset_sizes(spec) -> Sizes:
    from boxloop.loop.simulate import load_truth

    truth = load_truth(spec.images, spec.annotations)
    test = {s for s in spec.test_list.read_text().split() if s}
    tv = [k for k in truth if Path(k).stem not in test]
    boxes = sum(len(truth[k]) for k in tv)
    return Sizes(trainval=len(tv), test=len(truth) - len(tv), boxes_per_image=boxes / max(1, len(tv)))


def measure(spec, args, n: int = 4) -> tuple[float, float]:
    """(seconds a training step, seconds an image predicted) here, now, with the configured threads."""
    import tempfile

    from boxloop.train.data import Sample
    from boxloop.predict.inference import predict_paths
    from boxloop.loop.simulate import load_truth
    from boxloop.train.fit import fit

    truth = load_truth(spec.images, spec.annotations)
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


# -- running the jobs --------------------------------------------------------------------------------

def loop_config(args, **over: Any):
    from boxloop.loop.config import LoopConfig

    options = json.loads(args.detector_options) if isinstance(args.detector_options, str) else args.detector_options
    kw = dict(model=args.model, backbone=args.backbone, pretrained_backbone=not args.no_pretrained,
              detector_options=options, epochs=None, steps=args.steps, warm_start=bool(args.warm_start),
              warm_steps=args.warm_steps, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
              device=args.device, val_every=10 ** 6, seed=args.seed_list[0] if args.seed_list else 0)
    kw.update(over)
    return LoopConfig.make(**kw)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl): two shards never build or copy the same base at once; the
    lock goes with the process, so a killed shard leaves none behind."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def base_dir(workdir: Path, seed: int) -> Path:
    return workdir / "images" / f"seed{seed}" / "base"


def run_dir(workdir: Path, job: Job) -> Path:
    return workdir / str(job.unit) / f"seed{job.seed}" / str(job.strategy)


def ensure_base(spec, args, seed: int, truth, say) -> None:
    """The seed set (withheld labels) and its round-0 model, trained once (resumes)."""
    from boxloop.loop.round import run_round
    from boxloop.project import init_project
    from boxloop.loop.simulate import withhold
    from boxloop.store import DB_NAME, Project

    bdir = base_dir(args.workdir, seed)
    cfg = loop_config(args, seed=seed, budget=args.budget)
    with locked(args.workdir / "locks" / f"seed{seed}.lock"):
        project = None
        if (bdir / DB_NAME).exists():
            project = Project.open(bdir)
            if project.get_meta("withheld_for_simulation") is None:
                project.close()
                project = None
        if project is None:
            project = init_project(bdir, spec.images, spec.annotations, test_list=spec.test_list, seed=seed,
                                   force=True, progress=args.progress)
            withhold(project, args.initial, seed, cfg, initial_strategy=args.initial_strategy)
        with project:
            r0 = project.round(0)
            if r0 is None or r0.step not in ("predict", "done"):
                say(f"seed {seed}: round-0 model on {args.initial} images ({args.steps} steps)")
            run_round(project, cfg, truth, 0, progress=args.progress, stop_at="predict")


def run_job(spec, args, job: Job, truth, say) -> None:
    from boxloop.loop.forecast import forecast_line
    from boxloop.loop.history import round_history
    from boxloop.loop.round import run_round
    from boxloop.loop.simulate import copy_project
    from boxloop.store import DB_NAME, Project

    if job.kind == "base":
        ensure_base(spec, args, job.seed, truth, say)
        return
    if job.kind == "full":
        full_data_reference(spec, args, job.seed, truth, say)
        return
    rdir = run_dir(args.workdir, job)
    if not (rdir / DB_NAME).exists():
        ensure_base(spec, args, job.seed, truth, say)
        with locked(args.workdir / "locks" / f"seed{job.seed}.lock"), Project.open(base_dir(args.workdir, job.seed)) as b:
            copy_project(b, rdir)
    unit = str(job.unit)
    rounds = args.rounds if unit == "images" else args.box_rounds
    budget = args.budget if unit == "images" else args.box_budget
    cfg = loop_config(args, seed=job.seed, unit=unit, strategy=job.strategy, budget=budget, semi=args.semi)
    with Project.open(rdir) as run:
        done = {r.id for r in run.rounds() if r.status == "done"}
        for r in range(rounds + 1):
            if r in done:
                continue
            t0 = time.perf_counter()
            run_round(run, cfg, truth, r, last=(r == rounds), progress=args.progress)
            row = round_history(run)[-1]
            fb = f"; fallback: {row['fallback']['strategy']}" if row.get("fallback") else ""
            m = "-" if row.get("map50") is None else f"{row['map50']:.3f}"
            say(f"{job.name} round {r}/{rounds}: {row['images_labelled']} images, {row['boxes_labelled']} boxes, "
                f"mAP50 {m}, {row.get('train_steps') or 0} steps ({time.perf_counter() - t0:.0f} s){fb}")
            line = forecast_line(round_history(run), unit, budget)
            if line:
                say(f"  {line}")


def full_data_reference(spec, args, seed: int, truth, say) -> dict[str, Any] | None:
    """Train on every trainval image (init_project's split of it into train and val) with the same
    recipe, from scratch for full_steps(args) steps; test-set metrics and trainval's counts. With
    `truth` None only reads what is there (None when not trained yet)."""
    from boxloop.loop.history import round_history
    from boxloop.loop.round import run_round
    from boxloop.loop.model import labelled_counts
    from boxloop.project import init_project
    from boxloop.store import DB_NAME, Project

    pdir = args.workdir / "full_data" / f"seed{seed}"
    cfg = loop_config(args, seed=seed, steps=full_steps(args), warm_start=False)
    if truth is None:
        if not (pdir / DB_NAME).exists():
            return None
        project = Project.open(pdir)
        if not [r for r in project.rounds() if r.status == "done"]:
            project.close()
            return None
    else:
        project = Project.open(pdir) if (pdir / DB_NAME).exists() else None
        if project is None or not project.rounds():
            if project is not None:
                project.close()
            project = init_project(pdir, spec.images, spec.annotations, test_list=spec.test_list, seed=seed,
                                   force=True, progress=args.progress)
        if not [r for r in project.rounds() if r.status == "done"]:
            say(f"seed {seed}: full-data reference, {full_steps(args)} steps on all trainval")
        run_round(project, cfg, truth, 0, last=True, progress=args.progress)
    with project:
        row = round_history(project)[0]
        counts = labelled_counts(project)
    return {"seed": seed, "map50": row["map50"], "coco_ap": row["coco_ap"], "ap75": row.get("ap75"),
            "per_class": row["per_class"], "steps": row.get("train_steps"), "trainval_images": counts["images_labelled"],
            "trainval_boxes": counts["human_boxes"], "trainval_boxes_per_class": counts["labelled_per_class"],
            "project": str(pdir)}


# -- tables and targets ------------------------------------------------------------------------------

def seeds_on_disk(workdir: Path) -> list[int]:
    found = set()
    for p in workdir.glob("*/seed*"):
        if p.is_dir() and p.name[4:].isdigit():
            found.add(int(p.name[4:]))
    return sorted(found)


def collect_unit(args, unit: str, seeds: Sequence[int], full: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Every run of the unit on disk, its rows gaining the shares of trainval and of its seed's
    full-data mAP50."""
    from boxloop.loop.simulate import collect_results

    cfg = loop_config(args, unit=unit, strategy=strategies_of(args, unit)[0])
    results = collect_results(args.workdir / unit, strategies_of(args, unit), seeds, cfg)
    ref = next(iter(full.values()), None)
    for run in results["runs"]:
        f = full.get(run["seed"])
        for row in run["rounds"]:
            if f is not None and f.get("map50"):
                row["full_data_map50"] = f["map50"]
                row["map50_share"] = None if row.get("map50") is None else row["map50"] / f["map50"]
            if ref is not None:
                row["images_share"] = row["images_labelled"] / ref["trainval_images"]
                row["boxes_share"] = row["boxes_labelled"] / max(1, ref["trainval_boxes"])
    return results


def table_rows(results: Mapping[str, Any], full: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    from boxloop.report import learning_curve_table

    rows = learning_curve_table(results)
    ref = next(iter(full.values()), None)
    shares: dict[tuple[str, int], list[float]] = {}
    for run in results["runs"]:
        for row in run["rounds"]:
            if row.get("map50_share") is not None:
                shares.setdefault((run["strategy"], int(row["round"])), []).append(row["map50_share"])
    for r in rows:
        r["images_share"] = r["images_labelled"] / ref["trainval_images"] if ref else float("nan")
        r["boxes_share"] = r["boxes_labelled"] / max(1, ref["trainval_boxes"]) if ref else float("nan")
        v = shares.get((str(r["strategy"]), int(r["round"])), [])
        r["map50_share"] = float(np.mean(v)) if v else float("nan")
        r["map50_share_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    return rows


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: strategy x round with shares of trainval and of the full-data mAP50 (mean ± std)."""
    head = ["strategy", "round", "images (share)", "boxes (share)", "cost h", "mAP50 mean ± std", "% of full", "seeds"]

    def pct(x: float) -> str:
        return "-" if not np.isfinite(x) else f"{100 * x:.1f}%"

    body = [[str(r["strategy"]), str(r["round"]), f"{r['images_labelled']:.1f} ({pct(r['images_share'])})",
             f"{r['boxes_labelled']:.0f} ({pct(r['boxes_share'])})", f"{r['cost_hours']:.2f}",
             "-" if not np.isfinite(r["map50_mean"]) else f"{r['map50_mean']:.3f} ± {r['map50_std']:.3f}",
             pct(r["map50_share"]) + ("" if not np.isfinite(r["map50_share_std"])
                                      else f" ± {100 * r['map50_share_std']:.1f}"),
             str(r["evaluated"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def share_at(rows: Sequence[Mapping[str, Any]], share_key: str, at: float) -> float | None:
    """One strategy's mean share of the full-data mAP50 at exactly `at` of trainval, read off its mean
    curve (linear between the rounds around it); None when the curve does not reach `at`."""
    pts = sorted((r[share_key], r["map50_share"]) for r in rows
                 if np.isfinite(r.get(share_key, np.nan)) and np.isfinite(r.get("map50_share", np.nan)))
    if not pts or pts[-1][0] < at - 1e-9 or pts[0][0] > at:
        return None
    x, y = map(np.array, zip(*pts))
    return float(np.interp(at, x, y))


def check_targets(rows: Sequence[Mapping[str, Any]], stats: Mapping[str, Any], unit: str, seeds: int
                  ) -> dict[str, Any]:
    """Issue 13's targets on the mean-over-seeds curves and the per-seed AUCs."""
    target = TARGETS[unit]
    share_key = "images_share" if unit == "images" else "boxes_share"
    by: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault(str(r["strategy"]), []).append(r)
    out: dict[str, Any] = {"unit": unit, "seeds": seeds, "enough_seeds": seeds >= 3, **target, "strategies": {}}
    for s, rs in by.items():
        within = [r for r in rs if r[share_key] <= target["labelled_share"] + 1e-9 and np.isfinite(r["map50_share"])]
        best = max((r["map50_share"] for r in within), default=None)
        e = stats["strategies"].get(s, {})
        d = (e.get("minus_baseline") or {}).get("auc_labelled")
        out["strategies"][s] = {
            "best_share_within_budget": best,
            "share_at_budget": share_at(rs, share_key, target["labelled_share"]),
            "auc_above_random_on": None if not d else d["above_on"], "auc_seeds": None if not d else d["seeds"],
            "auc_minus_random_mean": None if not d else d["mean"], "auc_minus_random_std": None if not d else d["std"]}
    for s, c in out["strategies"].items():
        reach = max((v for v in (c["best_share_within_budget"], c["share_at_budget"]) if v is not None), default=None)
        c["share_met"] = reach is not None and reach >= target["map50_share"]
        c["goal_met"] = reach is not None and reach >= target["goal_share"]
        if unit == "images":
            c["auc_above_random_every_seed"] = (s != "random" and c["auc_seeds"] is not None
                                                and c["auc_seeds"] == seeds and c["auc_above_random_on"] == seeds)
            c["met"] = bool(c["share_met"] and c["auc_above_random_every_seed"] and seeds >= 3)
        else:
            c["met"] = bool(c["share_met"] and seeds >= 3)
    out["met"] = any(c["met"] for c in out["strategies"].values())
    out["met_by"] = [s for s, c in out["strategies"].items() if c["met"]]
    return out


def describe(check: Mapping[str, Any]) -> str:
    unit = check["unit"]
    what = "images" if unit == "images" else "boxes"
    lines = [f"targets ({unit}): {'MET by ' + ', '.join(check['met_by']) if check['met'] else 'NOT met'}"
             + ("" if check["enough_seeds"] else f" [only {check['seeds']} seed(s): the issue asks for >= 3]")]
    for s, c in check["strategies"].items():
        f = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        part = (f"  {s}: share of full-data mAP50 with <= {100 * check['labelled_share']:.0f}% of trainval {what}: "
                f"best round {f(c['best_share_within_budget'])}, at exactly {100 * check['labelled_share']:.0f}% "
                f"{f(c['share_at_budget'])} (target {100 * check['map50_share']:.0f}%, goal {100 * check['goal_share']:.0f}%)")
        if unit == "images" and s != "random" and c["auc_seeds"]:
            part += (f"; AUC - random {c['auc_minus_random_mean']:+.3f}"
                     + ("" if c["auc_minus_random_std"] is None else f" ± {c['auc_minus_random_std']:.3f}")
                     + f", above on {c['auc_above_random_on']}/{c['auc_seeds']} seeds")
        lines.append(part)
    return "\n".join(lines)


def timings(workdir: Path) -> dict[str, Any]:
    """Seconds spent per job (summed over the calls that worked on it) and per shard, from
    WORKDIR/timings.jsonl: the wall time of a run that was split over processes and sessions."""
    path = workdir / "timings.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    per_job: dict[str, float] = {}
    per_shard: dict[str, float] = {}
    for r in rows:
        per_job[r["job"]] = per_job.get(r["job"], 0.0) + r["seconds"]
        per_shard[r["shard"]] = per_shard.get(r["shard"], 0.0) + r["seconds"]
    return {"per_job_seconds": per_job, "per_shard_minutes": {k: round(v / 60, 1) for k, v in per_shard.items()},
            "total_minutes": round(sum(per_job.values()) / 60, 1),
            "first_finished": rows[0]["finished"], "last_finished": rows[-1]["finished"]}


def report(args, spec, say) -> dict[str, Any]:
    """Everything on disk, every seed: tables, statistics, forecasts, target checks, plots, the JSON."""
    from boxloop.report import (curve_statistics, forecast_summary, format_auc_table, format_forecast_table,
                                write_report)
    from boxloop.loop.simulate import write_results

    seeds = seeds_on_disk(args.workdir)
    full = {s: f for s in seeds if (f := full_data_reference(spec, args, s, None, say)) is not None}
    out: dict[str, Any] = {"seeds_on_disk": seeds, "full_data": full, "units": {}, "timings": timings(args.workdir)}
    if full:
        m = [f["map50"] for f in full.values()]
        say(f"\nfull-data reference ({len(m)} seed(s), {full_steps(args)} steps): test mAP50 "
            + ", ".join(f"seed {s}: {f['map50']:.4f}" for s, f in full.items())
            + (f"; mean {np.mean(m):.4f} ± {np.std(m, ddof=1):.4f}" if len(m) > 1 else ""))
    if out["timings"]:
        t = out["timings"]
        say(f"time spent (all calls): {t['total_minutes']} min in jobs; per shard {t['per_shard_minutes']}")
    for unit in args.unit_list:
        results = collect_unit(args, unit, seeds, full)
        if not results["runs"]:
            continue
        udir = args.workdir / unit
        write_results(udir, results)  # results.json + plots (the full-data line from the rows)
        stats = curve_statistics(results)
        fc = forecast_summary(results)
        rows = table_rows(results, full)
        complete = sorted({r["seed"] for r in results["runs"]})
        check = check_targets(rows, stats, unit, len(complete))
        entry = {"strategies": strategies_of(args, unit), "table": rows, "table_markdown": format_rows(rows),
                 "statistics": stats, "auc_markdown": format_auc_table(stats), "forecast": fc,
                 "forecast_markdown": format_forecast_table(fc), "target_check": check,
                 "results_json": str(udir / "results.json"), "plots": str(udir / "plots"),
                 "report_html": str(write_report(udir, udir / "report.html", title=f"label efficiency: {unit}")),
                 "runs": results["runs"]}
        errs = [e["backtest"]["mae"] for e in fc.values() if e.get("backtest")]
        entry["forecast_error_mae"] = float(np.mean(errs)) if errs else None
        say(f"\n== {unit} level ({len(complete)} seed(s) on disk)\n{entry['table_markdown']}\n")
        say("area under the learning curve (per seed; Δ = paired difference to random):\n" + entry["auc_markdown"])
        say("\nforecast (power law on the mean curve; backtest per seed):\n" + entry["forecast_markdown"])
        say(describe(check))
        out["units"][unit] = entry
    return out


# -- main ---------------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(DEFAULT_BCCD), help="VOC root with ImageSets/Main/test.txt, or 'synthetic'")
    ap.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                    help="defaults for every setting below (--dataset synthetic: its own tiny preset)")
    ap.add_argument("--unit", dest="units", default=None, help="images, boxes, or both (images,boxes)")
    ap.add_argument("--strategies", default=None, help="image-level strategies, comma-separated (random included)")
    ap.add_argument("--box-strategies", default=None, help="box-level strategies, comma-separated")
    ap.add_argument("--initial", type=int, default=None, help="seed set (images)")
    ap.add_argument("--initial-strategy", choices=("random", "typical"), default="random",
                    help="how the seed set is chosen (issue 16's cold start; typical: its own workdir and JSON)")
    ap.add_argument("--semi", choices=("autolabel", "certainty"), default=None,
                    help="pseudo-labels inside the loop (issue 13's AL + pseudo-labels arm: its own workdir and "
                         "JSON; each round trains with and without them and the never-worse guard keeps one)")
    ap.add_argument("--budget", type=int, default=None, help="images per round")
    ap.add_argument("--rounds", type=int, default=None, help="image-level query rounds")
    ap.add_argument("--box-budget", type=int, default=None, help="boxes per round")
    ap.add_argument("--box-rounds", type=int, default=None, help="box-level query rounds")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (each seed may run on its own)")
    ap.add_argument("--shard", default=None, help="K/N: run this process's share of the jobs (N processes at once)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--no-pretrained", action="store_true", help="random backbone weights")
    ap.add_argument("--detector-options", default=None, help='JSON, e.g. \'{"channels": 32}\'')
    ap.add_argument("--steps", type=int, default=None, help="steps of a model trained from scratch (round 0)")
    ap.add_argument("--warm-steps", type=int, default=None, help="steps of a warm-started round")
    ap.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None,
                    help="start each round from the previous round's model (default: on)")
    ap.add_argument("--full-steps", type=int, default=None,
                    help="steps of the full-data model (default: steps + rounds x warm steps)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="default: the detector's recipe")
    ap.add_argument("--no-full-data", action="store_true", help="skip the full-data reference models")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (shared CPU: 1 per process)")
    ap.add_argument("--estimate", action="store_true", help="print the plan and its expected time; train nothing")
    ap.add_argument("--measure", action="store_true", help="with --estimate: time a few steps here first")
    ap.add_argument("--report-only", action="store_true", help="train nothing: tables and JSON from what is on disk")
    ap.add_argument("--synthetic-images", type=int, default=60)
    ap.add_argument("--synthetic-size", type=int, default=96)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="projects, models, plots (default /tmp/boxloop_label_efficiency_<dataset>_<preset>)")
    ap.add_argument("--json", type=Path, default=None,
                    help="default benchmarks/results/label_efficiency.json (synthetic: ..._synthetic.json)")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    args = ap.parse_args(argv)
    preset = "synthetic" if args.dataset == "synthetic" else args.preset
    args.preset_used = preset
    args = resolve(args, PRESETS[preset])
    if args.units == "both":
        args.units = "images,boxes"
    args.unit_list = csv(args.units)
    for u in args.unit_list:
        if u not in ("images", "boxes"):
            ap.error(f"--unit: unknown unit {u!r}; use images, boxes or both")
    args.seed_list = [int(s) for s in csv(args.seeds)]
    args.shard_index, args.shard_count = 0, 1
    if args.shard:
        try:
            k, n = (int(v) for v in args.shard.split("/"))
        except ValueError:
            ap.error(f"--shard must be K/N, e.g. 0/2, got {args.shard!r}")
        if not 0 <= k < n:
            ap.error(f"--shard {args.shard}: K must lie in 0..N-1")
        args.shard_index, args.shard_count = k, n
    arm = ("" if args.initial_strategy == "random" else f"_{args.initial_strategy}") + \
        ("" if args.semi is None else f"_semi_{args.semi}")
    if args.workdir is None:
        args.workdir = Path(f"/tmp/boxloop_label_efficiency_{Path(args.dataset).name}_{preset}{arm}")
    if args.json is None:
        args.json = HERE / "results" / (f"label_efficiency{arm}_synthetic.json" if preset == "synthetic"
                                        else f"label_efficiency{arm}.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    spec = dataset_or_skip(args)
    if spec is None:
        return 0
    say = lambda m: print(m, flush=True)  # noqa: E731
    sizes = dataset_sizes(spec)
    if args.estimate:
        if args.shard_count == 1 and not args.shard:
            args.shard_count = 2  # the plan for these two cores
        step_s = pred_s = None
        if args.measure:
            step_s, pred_s = measure(spec, args)
        est = estimate(args, sizes, step_s, pred_s)
        say(describe_estimate(est, args))
        say(json.dumps({k: v for k, v in est.items() if k != "per_job"}, indent=1))
        return 0
    from boxloop.loop.simulate import load_truth

    t_start = time.perf_counter()
    est = estimate(args, sizes)
    if not args.report_only:
        truth = load_truth(spec.images, spec.annotations)
        jobs = plan(args)
        costs = {j: c["seconds"] for j, c in est["per_job"].items()}
        mine = assign(jobs, {j: costs[j.name] for j in jobs}, args.shard_count)[args.shard_index]
        say(describe_estimate(est, args))
        say(f"this process: {len(mine)} jobs, ~{sum(costs[j.name] for j in mine) / 60:.0f} min at the idle estimate")
        for j in mine:
            t0 = time.perf_counter()
            run_job(spec, args, j, truth, say)
            seconds = time.perf_counter() - t0
            say(f"[{j.name}] done ({seconds:.0f} s)")
            with open(args.workdir / "timings.jsonl", "a") as f:  # one line per job and call: the wall time
                f.write(json.dumps({"job": j.name, "seconds": round(seconds, 1), "shard": args.shard or "0/1",
                                    "threads": args.threads, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    with locked(args.workdir / "locks" / "report.lock"):  # shards finishing together write the same files
        rep = report(args, spec, say)
    doc = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "machine": machine(args.device),
           "dataset": {"name": spec.name, "images": str(spec.images), "test_list": str(spec.test_list),
                       "trainval_images": sizes.trainval, "test_images": sizes.test},
           "preset": args.preset_used, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "loop_config": loop_config(args).to_dict(), "targets": TARGETS,
           "estimate": {k: v for k, v in est.items() if k != "per_job"},
           "seconds_this_call": round(time.perf_counter() - t_start, 1), **rep}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(finite(doc), indent=1, allow_nan=False, default=str))
    os.replace(tmp, args.json)
    say(f"\nwrote {args.json}; per unit: {args.workdir}/<unit>/results.json, plots/, report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
