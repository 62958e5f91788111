"""Benchmark: does the loop save labels? Seeded learning curves on BCCD (issue 13), via boxloop's loop.

    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --estimate            # the plan and its time
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --shard 0/2 --threads 1 &
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --shard 1/2 --threads 1 # two cores, ~75 min
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --report-only           # tables, JSON, plots
    .venv/bin/python benchmarks/label_efficiency.py --preset cpu --seeds 0 --threads 1   # or one seed at a time
    .venv/bin/python benchmarks/label_efficiency.py --dataset synthetic --threads 1      # smoke run, ~3 min
    .venv/bin/python benchmarks/label_efficiency.py --dataset aquarium --estimate       # issue 25's headroom

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
checks, every run's rounds (each round: train steps, warm start, fallback if any, per-class AP50),
the per-class statistics (AUC of each class's AP50 curve per seed, paired to random, and the same
for the rare classes' mean) and, per full-data model, how far one test image moves its mAP50.
WORKDIR/<unit>/ holds results.json, plots/ (rare_classes_ap50.png among them) and report.html.

Datasets (benchmarks/protocol.py): `--dataset bccd` (the default: shared/datasets/bccd, a VOC root,
the numbers above), `aquarium` (shared/datasets/aquarium: pool train/, 448 images; fixed test set
valid/ + test/, 190 images; CC BY 4.0, Roboflow, see its SOURCE.md), `synthetic` (boxloop.synthetic's
shapes; every 5th image is the test set) or a PATH in VOC, COCO or YOLO with its own test split
(`--dataset-format` names the format where boxloop cannot detect it). `--dataset aquarium` takes the
aquarium preset: random only, the labelled set at `--fractions 0.05,0.1,0.2,0.3,0.5` of the pool
(22/45/90/134/224 images) and a full-data model per seed: the headroom issue 25 asks for first.
Absent shared/: the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency_plan import (  # noqa: E402,F401  (the plan's names are this benchmark's API)
    ROUND_OVERHEAD_SECONDS, Job, Sizes, assign, dataset_sizes, describe_estimate, estimate, full_steps, job_cost,
    loop_config, measure, plan, round_budget, set_schedule, strategies_of,
)
from label_efficiency_targets import (  # noqa: E402,F401
    TARGETS, check_targets, describe, format_rows, share_at, table_rows,
)
from protocol import (  # noqa: E402
    HERE, add_dataset_args, choose_preset, command, csv, dataset_or_skip, locked, log_timing, machine, parse_shard,
    resolve, settings, test_sensitivity, timings, write_json,
)

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
    # --dataset aquarium (issue 25's headroom): the cpu recipe, random only, the pool's 5/10/20/30/50%
    "aquarium": dict(model="fcos_lite", backbone="efficientnet_lite0", detector_options="{}", image_size=320,
                     batch_size=8, lr=None, steps=200, warm_steps=80, warm_start=True, full_steps=None, initial=None,
                     budget=None, rounds=None, fractions="0.05,0.1,0.2,0.3,0.5", box_budget=340, box_rounds=4,
                     seeds="0,1,2", strategies="random", box_strategies="random", units="images"),
    # --dataset synthetic: the smallest settings that run every step of every strategy (not a result)
    "synthetic": dict(model="fcos_lite", backbone="efficientnet_lite0",
                      detector_options='{"channels": 32, "head_convs": 1}', image_size=96, batch_size=4, lr=None,
                      steps=40, warm_steps=20, warm_start=True, full_steps=None, initial=8, budget=6, rounds=3,
                      box_budget=20, box_rounds=2, seeds="0,1",
                      strategies="random,least_confidence,entropy,localization_aware,coreset",
                      box_strategies="random,least_confidence,coreset", units="images,boxes"),
}


# -- running the jobs --------------------------------------------------------------------------------

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
    cfg = loop_config(args, seed=seed, budget=round_budget(args, "images", 0))
    with locked(args.workdir / "locks" / f"seed{seed}.lock"):
        project = None
        if (bdir / DB_NAME).exists():
            project = Project.open(bdir)
            if project.get_meta("withheld_for_simulation") is None:
                project.close()
                project = None
        if project is None:
            project = init_project(bdir, spec.images, spec.annotations, spec.fmt, test_list=spec.test_list,
                                   seed=seed, force=True, progress=args.progress)
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
    with Project.open(rdir) as run:
        done = {r.id for r in run.rounds() if r.status == "done"}
        for r in range(rounds + 1):
            if r in done:
                continue
            budget = round_budget(args, unit, r)
            cfg = loop_config(args, seed=job.seed, unit=unit, strategy=job.strategy, budget=budget, semi=args.semi)
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
            project = init_project(pdir, spec.images, spec.annotations, spec.fmt, test_list=spec.test_list,
                                   seed=seed, force=True, progress=args.progress)
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


def collect_unit(args, spec, unit: str, seeds: Sequence[int], full: Mapping[int, Mapping[str, Any]]
                 ) -> dict[str, Any]:
    """Every run of the unit on disk, naming the dataset's rare classes, its rows gaining the shares of
    trainval and of its seed's full-data mAP50."""
    from boxloop.loop.simulate import collect_results

    cfg = loop_config(args, unit=unit, strategy=strategies_of(args, unit)[0])
    results = collect_results(args.workdir / unit, strategies_of(args, unit), seeds, cfg)
    ref = next(iter(full.values()), None)
    for run in results["runs"]:
        run["rare_classes"] = list(spec.rare_classes)
        f = full.get(run["seed"])
        for row in run["rounds"]:
            if f is not None and f.get("map50"):
                row["full_data_map50"] = f["map50"]
                row["map50_share"] = None if row.get("map50") is None else row["map50"] / f["map50"]
            if ref is not None:
                row["images_share"] = row["images_labelled"] / ref["trainval_images"]
                row["boxes_share"] = row["boxes_labelled"] / max(1, ref["trainval_boxes"])
    return results


def report(args, spec, say) -> dict[str, Any]:
    """Everything on disk, every seed: tables, statistics, forecasts, target checks, plots, the JSON."""
    from boxloop.report import (curve_statistics, forecast_summary, format_auc_table, format_forecast_table,
                                format_per_class_table, per_class_statistics, write_report)
    from boxloop.loop.simulate import write_results

    seeds = seeds_on_disk(args.workdir)
    full = {s: f for s in seeds if (f := full_data_reference(spec, args, s, None, say)) is not None}
    out: dict[str, Any] = {"seeds_on_disk": seeds, "full_data": full, "units": {}, "timings": timings(args.workdir)}
    if full:
        m = [f["map50"] for f in full.values()]
        say(f"\nfull-data reference ({len(m)} seed(s), {full_steps(args)} steps): test mAP50 "
            + ", ".join(f"seed {s}: {f['map50']:.4f}" for s, f in full.items())
            + (f"; mean {np.mean(m):.4f} ± {np.std(m, ddof=1):.4f}" if len(m) > 1 else ""))
        names = sorted({c for f in full.values() for c in f["per_class"]})
        ap = {c: [f["per_class"][c]["ap50"] for f in full.values() if f["per_class"].get(c, {}).get("ap50") is not None]
              for c in names}
        say("  per class, AP50 mean over seeds: " + ", ".join(
            f"{c}{' (rare)' if c in spec.rare_classes else ''} {np.mean(v):.3f}" for c, v in ap.items() if v))
        for s, f in full.items():
            f["test_sensitivity"] = test_sensitivity(Path(f["project"]), args.image_size, args.device)
        moves = [f["test_sensitivity"]["max_change"] for f in full.values() if f["test_sensitivity"]["max_change"]]
        if moves:
            say(f"  one test image moves the full-data mAP50 by at most {100 * max(moves):.1f} points "
                f"({spec.test_images} test images; leave-one-out, as the demo reports it)")
    if out["timings"]:
        t = out["timings"]
        say(f"time spent (all calls): {t['total_minutes']} min in jobs; per shard {t['per_shard_minutes']}")
    for unit in args.unit_list:
        results = collect_unit(args, spec, unit, seeds, full)
        if not results["runs"]:
            continue
        udir = args.workdir / unit
        write_results(udir, results)  # results.json + plots (the full-data line from the rows)
        stats = curve_statistics(results)
        fc = forecast_summary(results)
        rows = table_rows(results, full)
        complete = sorted({r["seed"] for r in results["runs"]})
        check = check_targets(rows, stats, unit, len(complete))
        per_class = per_class_statistics(results)
        entry = {"strategies": strategies_of(args, unit), "table": rows, "table_markdown": format_rows(rows),
                 "statistics": stats, "auc_markdown": format_auc_table(stats), "forecast": fc,
                 "forecast_markdown": format_forecast_table(fc), "target_check": check,
                 "per_class": per_class, "per_class_markdown": format_per_class_table(per_class),
                 "results_json": str(udir / "results.json"), "plots": str(udir / "plots"),
                 "report_html": str(write_report(udir, udir / "report.html", title=f"label efficiency: {unit}",
                                                  overwrite=True)),
                 "runs": results["runs"]}
        errs = [e["backtest"]["mae"] for e in fc.values() if e.get("backtest")]
        entry["forecast_error_mae"] = float(np.mean(errs)) if errs else None
        say(f"\n== {unit} level ({len(complete)} seed(s) on disk)\n{entry['table_markdown']}\n")
        say("area under the learning curve (per seed; Δ = paired difference to random):\n" + entry["auc_markdown"])
        say(f"\nper class (rare: {', '.join(spec.rare_classes)}, in the fewest pool images), AUC of AP50 "
            "against labels:\n" + entry["per_class_markdown"])
        say("\nforecast (power law on the mean curve; backtest per seed):\n" + entry["forecast_markdown"])
        say(describe(check))
        out["units"][unit] = entry
    return out


# -- main ---------------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--preset", choices=("cpu", "gpu", "bccd", "aquarium"), default=None,
                    help="defaults for every setting below: cpu (= bccd, the default), gpu, aquarium (its dataset, "
                         "random at 5/10/20/30/50%% of the pool; = --dataset aquarium); --dataset synthetic: its own "
                         "tiny preset")
    ap.add_argument("--unit", dest="units", default=None, help="images, boxes, or both (images,boxes)")
    ap.add_argument("--strategies", default=None, help="image-level strategies, comma-separated (random included)")
    ap.add_argument("--box-strategies", default=None, help="box-level strategies, comma-separated")
    ap.add_argument("--initial", type=int, default=None, help="seed set (images)")
    ap.add_argument("--fractions", default=None, help="labelled shares of the pool at each round, e.g. "
                    "0.05,0.1,0.2,0.3,0.5 (instead of --initial, --budget and --rounds)")
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
    ap.add_argument("--workdir", type=Path, default=None,
                    help="projects, models, plots (default /tmp/boxloop_label_efficiency_<dataset>_<preset>)")
    ap.add_argument("--json", type=Path, default=None,
                    help="default benchmarks/results/label_efficiency.json (another dataset: ..._<dataset>.json)")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    args = ap.parse_args(argv)
    preset = choose_preset(args, PRESETS)
    args.preset_used = preset
    args = resolve(args, PRESETS[preset])
    if args.units == "both":
        args.units = "images,boxes"
    args.unit_list = csv(args.units)
    for u in args.unit_list:
        if u not in ("images", "boxes"):
            ap.error(f"--unit: unknown unit {u!r}; use images, boxes or both")
    args.seed_list = [int(s) for s in csv(args.seeds)]
    args.shard_index, args.shard_count = parse_shard(args.shard)
    arm = ("" if args.initial_strategy == "random" else f"_{args.initial_strategy}") + \
        ("" if args.semi is None else f"_semi_{args.semi}")
    if args.workdir is None:
        args.workdir = Path(f"/tmp/boxloop_label_efficiency_{Path(args.dataset).name}_{preset}{arm}")
    if args.json is None:
        tag = "" if args.dataset == "bccd" else f"_{Path(args.dataset).name}"
        args.json = HERE / "results" / f"label_efficiency{arm}{tag}.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    spec = dataset_or_skip(args)
    if spec is None:
        return 0
    say = lambda m: print(m, flush=True)  # noqa: E731
    set_schedule(args, spec.pool_images)
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
        truth = load_truth(spec.images, spec.annotations, spec.fmt)
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
            log_timing(args.workdir, j.name, seconds, args.shard or "0/1", args.threads)
    with locked(args.workdir / "locks" / "report.lock"):  # shards finishing together write the same files
        rep = report(args, spec, say)
    doc = {"command": command(), "machine": machine(args.device),
           "dataset": {**spec.summary(), "trainval_images": sizes.trainval, "test_images": sizes.test},
           "preset": args.preset_used, "settings": settings(args), "loop_config": loop_config(args).to_dict(),
           "targets": TARGETS, "estimate": {k: v for k, v in est.items() if k != "per_job"},
           "seconds_this_call": round(time.perf_counter() - t_start, 1), **rep}
    write_json(args.json, doc)
    say(f"\nwrote {args.json}; per unit: {args.workdir}/<unit>/results.json, plots/, report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
