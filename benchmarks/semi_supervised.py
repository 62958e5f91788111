"""Benchmark: does semi-supervision gain anything on BCCD, against a fair supervised baseline? (issue 14)

    .venv/bin/python benchmarks/semi_supervised.py --preset cpu --threads 2
    .venv/bin/python benchmarks/semi_supervised.py --preset cpu --threads 1 --shard 0/2 &   # two processes,
    .venv/bin/python benchmarks/semi_supervised.py --preset cpu --threads 1 --shard 1/2     # one core each
    .venv/bin/python benchmarks/semi_supervised.py --preset cpu --estimate    # time a few steps, predict the run
    .venv/bin/python benchmarks/semi_supervised.py --dataset synthetic        # smoke run, about 2 minutes
    .venv/bin/python benchmarks/semi_supervised.py --dataset aquarium --estimate   # issue 26: 10% and 25%

For each seed and labelled fraction (10%, 25%, 50% of trainval): one project whose labelled subset
is `simulate.withhold`'s random choice for that seed (20% of it validates), the rest of trainval
unlabelled with its labels withheld. Every method of a (seed, fraction) uses that subset and one
step-based schedule (T teacher steps, S further steps for every method that continues from it):

    teacher            train.fit on the labelled images, T steps (the default detector, fcos_lite)
    teacher continued  S more steps from the teacher's weights on the labelled images, with the
                       student's strong augmentation (semi.fit_semi trains it: the fair baseline)
    tsoda              autolabel (TSODA) with iteration 1 = the teacher and --threshold auto (the
                       lowest threshold with validation precision >= 0.9); iteration 2 trains S steps
                       from the teacher on labelled + auto-labelled images; its model is reported
    certainty          fit_semi (CertaintySSOD: CA + RE + DT) from the teacher, student S steps;
                       "student" = the student, "kept" = what the never-worse guard hands back
                       (the student only if a paired bootstrap interval over the validation images
                       puts it above teacher continued, else teacher continued)
                       (with ignore regions IG: the teacher's unaccepted boxes weigh 0; and a labelled
                       share LS of 0.5 in its batches; see semi.py)
    oracle             at 10%: the student's recipe (same steps, labelled share, augmentation) with the
                       withheld labels of every unlabelled image instead of pseudo-labels: what perfect
                       pseudo-labels could give on this schedule, the ceiling of any gain over teacher
                       continued (not a method: it reads the labels a user does not have)
    ablations          at 10%: the student without CA, without RE, without DT (CertaintySSOD Table 5);
                       --ablations also takes IG (no ignore regions: the unaccepted objects train as
                       background) and LS (the plain union of labelled and pseudo-labelled images)

Measured: test mAP50 (VOC), COCO AP, AP75, rare-class AP50 (WBC, Platelets); precision / recall of
the accepted pseudo-labels against the withheld labels (CertaintySSOD Fig. 3); per seed, student minus
teacher continued (AL_NOTES: report paired differences), also between the models of the last step
(best.pt is chosen on the validation images, 6 at 10%: that choice alone moves test mAP50 by points).
Dynamic against fixed threshold at equal recall, on the teacher's weak-view predictions: the
class-wise thresholds tau_m (DT) against ONE threshold on the same certainty p*v, chosen so that the
overall recall is the same (the highest fixed threshold whose recall reaches the dynamic recall): per
class, which is more precise (and whether one dominates the other), the target being the rare classes. (At equal recall per class, two thresholds on the same score accept
the same boxes; the comparison is only meaningful at equal overall recall.)

Resumes: each finished step (teacher, certainty, oracle, last step, ablation, tsoda, thresholds) of each
(seed, fraction) is cached as JSON in WORKDIR, and training inside a step resumes from its last
checkpoint, so re-running the same command continues. `--shard i/n` runs every n-th cell (planned
cost balanced); any run finding every cell cached prints the tables and writes the JSON.
Writes benchmarks/results/semi_supervised.json (or --json) and beside it a .png of the per-seed
differences to teacher continued. BCCD absent: says so, exits 0.

Written here: the experiment layout, the threshold comparison, the tables, the target checks and
the time estimate. boxloop does the rest (simulate.withhold, train.fit, semi.fit_semi /
pseudo_label_quality, weak_view.weak_predict, autolabel.autolabel, pseudo, round_model.test_metrics).
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
from protocol import (  # noqa: E402
    HERE, add_dataset_args, cached, choose_preset, command, csv, dataset_or_skip, machine, parse_shard, resolve,
    settings, write_json,
)
from semi_supervised_analysis import (  # noqa: E402,F401  (the tables are this benchmark's API)
    check_targets, describe, fixed_vs_dynamic, format_fixed_vs_dynamic, format_method_rows, format_paired,
    method_rows, paired, paired_figure, quality,
)
from semi_supervised_plan import (  # noqa: E402,F401
    cells_of, detector_kwargs, estimate, has_ablations, has_oracle, my_cells, semi_config, train_config,
)

PRESETS: dict[str, dict[str, Any]] = {
    # 9 cells x (T + 3 S) + 3 x (3 ablations + the oracle) S = 48 x 350 steps: 76 min of wall time from
    # an empty workdir on 2 cores at 1 thread a shard (2026-12-02, Intel Xeon; 152 job-minutes). T = S =
    # 450 cost 218 job-minutes, ~109 min, over the 90.
    # 350: the validation mAP50 of teacher continued (mean of 3 seeds at 10/25/50%) was 0.855/0.828/0.876
    # at step 350 of 450 and 0.841/0.837/0.876 at 450, and the teachers' peaked by step 300-350.
    # Not 150: at 150 steps teacher continued (the fair baseline) was itself undertrained, 3.0-4.1
    # points below its 450-step self at every fraction. Not T = 200: that teacher was still learning, and
    # its pseudo-labels had a third of the recall at equal precision (BCCD 10%: 11.9% against 27-37%)
    "cpu": dict(image_size=320, batch_size=8, teacher_steps=350, student_steps=350, val_every=25,
                fractions="0.1,0.25,0.5", seeds="0,1,2", model="fcos_lite", detector_options="{}",
                ablations="CA,RE,DT", ablation_fractions="0.1", tsoda_threshold="auto", oracle_fractions="0.1"),
    "gpu": dict(image_size=480, batch_size=8, teacher_steps=1000, student_steps=1000, val_every=100,
                fractions="0.1,0.25,0.5", seeds="0,1,2", model="fcos_lite", detector_options="{}",
                ablations="CA,RE,DT,IG,LS", ablation_fractions="0.1,0.25,0.5", tsoda_threshold="auto",
                oracle_fractions="0.1,0.25,0.5"),
    # a smoke run of every path: a weak teacher, so tau and the lower clip are low enough for some
    # pseudo-labels to pass (the numbers mean nothing)
    "synthetic": dict(image_size=96, batch_size=8, teacher_steps=80, student_steps=40, val_every=20, lr=0.005,
                      fractions="0.25,0.5", seeds="0", model="fcos_lite", threads=1,
                      detector_options='{"channels": 32, "head_convs": 1}', ablations="CA,RE,DT",
                      ablation_fractions="0.25", tsoda_threshold="auto", tau=0.15, clip_low=0.05,
                      oracle_fractions="0.25"),
}
# --dataset aquarium (issue 26): the cpu schedule at 10% and 25% labelled
PRESETS["aquarium"] = dict(PRESETS["cpu"], fractions="0.1,0.25")
for _p in PRESETS.values():
    _p.setdefault("tau", 0.7)
    _p.setdefault("clip_low", 0.4)

ABLATIONS: dict[str, dict[str, Any]] = {
    "CA": {"certainty": False}, "RE": {"reweight": False}, "DT": {"dynamic_threshold": False},
    "IG": {"ignore_threshold": None},  # no ignore regions: every unaccepted object trains as background
    "LS": {"labelled_share": 0.0},  # the plain union: labelled images ~10% of the student's batches at 10%
    "none": {"certainty": False, "reweight": False, "dynamic_threshold": False}}


# -- one (seed, fraction) ---------------------------------------------------------------------------

def base_project(spec, pdir: Path, fraction: float, seed: int, progress: bool):
    """The project of one (seed, fraction): all trainval imported, `fraction` of it kept labelled."""
    from boxloop.loop.config import LoopConfig
    from boxloop.loop.model import labelled_counts
    from boxloop.project import init_project
    from boxloop.loop.simulate import withhold
    from boxloop.store import DB_NAME, Project

    if (pdir / DB_NAME).exists():
        project = Project.open(pdir)
        if project.get_meta("withheld_for_simulation") is not None:
            return project, project.get_meta("trainval_images")
        project.close()
    project = init_project(pdir, spec.images, spec.annotations, spec.fmt, test_list=spec.test_list, seed=seed,
                           force=True, progress=progress)
    n_trainval = labelled_counts(project)["images_labelled"]
    n = max(2, int(round(fraction * n_trainval)))
    project.set_meta("trainval_images", n_trainval)
    withhold(project, n, seed, LoopConfig.make(seed=seed))
    return project, n_trainval


_TESTED: dict[tuple[str, str], dict[str, Any]] = {}


def test_summary(project, checkpoint: Path | str, args, rare: Sequence[str]) -> dict[str, Any]:
    """Test-set metrics of one checkpoint: mAP50, COCO AP, AP75, per class, rare-class AP. Evaluated
    once per checkpoint content (the guard's kept model is a copy of the student or of teacher
    continued, and every ablation hands back the shared teacher continued)."""
    import hashlib

    from boxloop.loop.model import test_metrics
    from boxloop.train.checkpoints import load_detector

    key = (str(project.dir), hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest())
    if key in _TESTED:
        return {**_TESTED[key], "checkpoint": str(checkpoint)}
    det, _, _ = load_detector(checkpoint, expect_classes=project.classes, device="cpu")
    ev = test_metrics(project, det, args.image_size, args.device, args.batch_size, progress=False)
    per = {n: {"ap50": v["ap50"], "coco_ap": v["coco_ap"], "num_gt": v["num_gt"]} for n, v in ev["per_class"].items()}
    rare = [n for n in rare if n in per and per[n]["num_gt"] > 0]
    vals = [per[n]["ap50"] for n in rare if per[n]["ap50"] is not None]
    _TESTED[key] = {"map50": ev["map50"], "coco_ap": ev["coco_ap"], "ap75": ev["ap75"], "per_class": per,
                    "rare_ap50": float(np.mean(vals)) if vals else None}
    return {**_TESTED[key], "checkpoint": str(checkpoint)}


def run_cell(spec, args, seed: int, fraction: float, truth: Mapping[str, Any]) -> dict[str, Any]:
    """Every method on one (seed, fraction)."""
    from boxloop.semi.autolabel import AutolabelConfig, autolabel
    from boxloop.semi.autolabel import model_dir as tsoda_dir
    from boxloop.detectors import create_detector
    from boxloop.loop.model import training_samples
    from boxloop.semi.certainty import fit_semi
    from boxloop.semi.weak_view import weak_predict
    from boxloop.loop.simulate import copy_project
    from boxloop.store import DB_NAME, Project
    from boxloop.train.checkpoints import load_detector
    from boxloop.train.fit import fit

    t_cell = time.perf_counter()
    cell = args.workdir / f"seed{seed}" / f"frac{fraction:g}"
    project, n_trainval = base_project(spec, cell / "base", fraction, seed, args.progress)
    classes, rare = project.classes, spec.rare_classes
    train, val = training_samples(project)
    unlabelled = sorted(r.path for r in project.images(status="unlabelled") if r.split not in ("test", "val"))
    withheld = {k: truth[k] for k in unlabelled}
    out: dict[str, Any] = {"seed": seed, "fraction": fraction, "trainval_images": n_trainval,
                           "labelled_train": len(train), "labelled_val": len(val), "unlabelled": len(unlabelled)}
    print(f"seed {seed}, {100 * fraction:g}%: {len(train)} train + {len(val)} val labelled, {len(unlabelled)} "
          f"unlabelled", flush=True)
    tc = train_config(args, seed)

    def teacher_run() -> dict[str, Any]:
        det = create_detector(args.model, len(classes), seed=seed, **detector_kwargs(args))
        r = fit(det, train, val, classes, tc, cell / "teacher", progress=args.progress)
        return {"checkpoint": str(r.best_checkpoint), "steps": r.total_steps, "val_map50": r.best_map50,
                "test": test_summary(project, r.best_checkpoint, args, rare)}

    out["teacher"] = cached(cell / "teacher.json", teacher_run)
    teacher_path = Path(out["teacher"]["checkpoint"])
    memo: dict[str, Any] = {}

    def pool() -> dict[str, Any]:  # the teacher's weak-view predictions, once per process
        if "pool" not in memo:
            semi = semi_config(args)
            det, _, _ = load_detector(teacher_path, expect_classes=classes, device=args.device)
            memo["certainty"] = bool(getattr(det, "has_loc_quality", False))
            root = project.image_root
            memo["pool"] = dict(zip(unlabelled, weak_predict(
                det, [root / k for k in unlabelled], args.image_size, flip=semi.flip,
                score_threshold=semi.candidate_threshold, batch_size=args.batch_size, flip_iou=semi.flip_iou)))
        return memo["pool"]

    def semi_run(name: str, off: dict[str, bool]) -> dict[str, Any]:
        res = fit_semi(project, None, tc, semi_config(args, **off), cell / name, teacher_checkpoint=teacher_path,
                       progress=args.progress, continued_dir=cell / "continued", teacher_predictions=pool())
        return {"result": res.to_dict(), "pseudo": quality(res.pseudo_labels, withheld, classes),
                "student": None if res.student_checkpoint is None else
                test_summary(project, res.student_checkpoint, args, rare),
                "kept": test_summary(project, res.best_checkpoint, args, rare),
                "continued": test_summary(project, res.continued_checkpoint, args, rare)}

    ca = cached(cell / "certainty.json", lambda: semi_run("certainty", {}))
    out["continued"] = ca.pop("continued")
    out["certainty"] = ca
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"  teacher {f(out['teacher']['test']['map50'])}, continued {f(out['continued']['map50'])}, certainty "
          f"student {f((ca['student'] or {}).get('map50'))} kept {f(ca['kept']['map50'])}; pseudo "
          f"{ca['pseudo']['boxes']} boxes P {f(ca['pseudo']['precision'])} R {f(ca['pseudo']['recall'])}", flush=True)
    print(f"  {ca['result']['message']}", flush=True)

    def oracle_run() -> dict[str, Any]:
        from boxloop.train.data import Sample
        from boxloop.semi.certainty import student_samples, student_train_config

        root = project.image_root
        truthful = [Sample(root / k, withheld[k], key=k) for k in unlabelled if withheld[k] is not None]
        det, _, _ = load_detector(teacher_path, expect_classes=classes, device=args.device)
        r = fit(det, student_samples(train, truthful, semi_config(args).labelled_share), val, classes,
                student_train_config(tc, args.student_steps, len(train)), cell / "oracle", progress=args.progress)
        return {"steps": r.total_steps, "val_map50": r.best_map50, "images": len(truthful),
                "test": test_summary(project, r.best_checkpoint, args, rare)}

    if has_oracle(args, fraction):
        out["oracle"] = cached(cell / "oracle.json", oracle_run)
        print(f"  oracle (the student's recipe with the withheld labels): {f(out['oracle']['test']['map50'])}",
              flush=True)

    def last_run() -> dict[str, Any]:  # the models at their last step: no choice on the few validation images
        dirs = {"continued": cell / "continued", "student": cell / "certainty" / "student", "oracle": cell / "oracle"}
        return {k: test_summary(project, d / "last.pt", args, rare) for k, d in dirs.items() if (d / "last.pt").exists()}

    out["last_step"] = cached(cell / "last_step.json", last_run)
    out["fixed_vs_dynamic"] = cached(cell / "fixed_vs_dynamic.json", lambda: fixed_vs_dynamic(
        pool(), withheld, classes, args, memo["certainty"] and semi_config(args).certainty))
    if has_ablations(args, fraction):
        out["ablations"] = {}
        for name in csv(args.ablations):
            row = cached(cell / f"ablation_{name}.json", lambda n=name: semi_run(f"no_{n}", ABLATIONS[n]))
            row.pop("continued", None)
            out["ablations"][name] = row
            print(f"  without {name}: student {f((row['student'] or {}).get('map50'))}, pseudo "
                  f"{row['pseudo']['boxes']} boxes P {f(row['pseudo']['precision'])}", flush=True)

    def tsoda_run() -> dict[str, Any]:
        tdir = cell / "tsoda"
        if not (tdir / DB_NAME).exists():
            copy_project(project, tdir)
        tp = Project.open(tdir)
        thr = args.tsoda_threshold if args.tsoda_threshold == "auto" else float(args.tsoda_threshold)
        config = AutolabelConfig.make(
            threshold=thr, iterations=2, steps_first=args.student_steps, steps_increment=0,
            steps_max=args.student_steps, model=args.model, pretrained_backbone=not args.no_pretrained,
            image_size=args.image_size, batch_size=args.batch_size, device=args.device, seed=seed, lr=args.lr,
            val_every=args.val_every, detector_options=json.loads(args.detector_options),
            initial_checkpoint=teacher_path)
        rows = autolabel(tp, config, progress=args.progress)
        pseudo = tp.annotations("pseudo")
        last = rows[-1]["iteration"]
        row = {"iterations": rows, "last_iteration": last, "trained": last > 1,
               "pseudo": quality({k: a for k, a in pseudo.items() if k in withheld}, withheld, classes),
               "test": test_summary(tp, tsoda_dir(tp, last) / "best.pt", args, rare)}
        tp.close()
        return row

    if args.tsoda_threshold == "off":
        project.close()
        return out
    out["tsoda"] = cached(cell / "tsoda.json", tsoda_run)
    it = out["tsoda"]["iterations"][0]
    print(f"  tsoda: threshold {it.get('threshold')} ({it.get('threshold_rule')}), {it['images_auto_labelled']} "
          f"images / {it['boxes']} boxes auto-labelled, test mAP50 {f(out['tsoda']['test']['map50'])}"
          + (f"; {it['guidance']}" if it.get("guidance") else ""), flush=True)
    project.close()
    out["seconds_this_call"] = round(time.perf_counter() - t_cell, 1)
    return out


def cached_cell(args, seed: int, fraction: float) -> dict[str, Any] | None:
    """A cell from its cached JSON files only (None when a step is missing): for printing the tables
    after sharded runs without opening the projects."""
    cell = args.workdir / f"seed{seed}" / f"frac{fraction:g}"
    need = ["teacher", "certainty", "fixed_vs_dynamic"] + (["tsoda"] if args.tsoda_threshold != "off" else []) + (
        [f"ablation_{n}" for n in csv(args.ablations)] if has_ablations(args, fraction) else []) + (
        ["oracle"] if has_oracle(args, fraction) else [])
    if not all((cell / f"{n}.json").exists() for n in need):
        return None
    load = lambda n: json.loads((cell / f"{n}.json").read_text())  # noqa: E731
    ca = load("certainty")
    out = {"seed": seed, "fraction": fraction, "teacher": load("teacher"), "continued": ca.pop("continued"),
           "certainty": ca, "fixed_vs_dynamic": load("fixed_vs_dynamic")}
    if "tsoda" in need:
        out["tsoda"] = load("tsoda")
    if has_ablations(args, fraction):
        out["ablations"] = {n: load(f"ablation_{n}") for n in csv(args.ablations)}
    if has_oracle(args, fraction):
        out["oracle"] = load("oracle")
    if (cell / "last_step.json").exists():
        out["last_step"] = load("last_step")
    return out


# -- main ---------------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_args(ap)
    ap.add_argument("--preset", choices=("cpu", "gpu", "bccd", "aquarium"), default=None,
                    help="cpu (= bccd, the default), gpu, aquarium (its dataset at 10%% and 25%%; = --dataset aquarium)")
    ap.add_argument("--fractions", default=None, help="labelled shares of trainval, e.g. 0.1,0.25,0.5")
    ap.add_argument("--seeds", default=None)
    ap.add_argument("--model", default=None, help="default fcos_lite (the default detector)")
    ap.add_argument("--no-pretrained", action="store_true")
    ap.add_argument("--detector-options", default=None, help="JSON for the detector builder")
    ap.add_argument("--teacher-steps", type=int, default=None)
    ap.add_argument("--student-steps", type=int, default=None, help="student, teacher continued, tsoda iteration 2")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="default: the detector's recipe")
    ap.add_argument("--val-every", type=int, default=None, help="steps")
    ap.add_argument("--tau", type=float, default=None, help="CertaintySSOD's tau [0.7]")
    ap.add_argument("--clip-low", type=float, default=None, help="lower clip of tau_m [0.4]")
    ap.add_argument("--gamma1", type=float, default=0.05)
    ap.add_argument("--gamma2", type=float, default=0.6)
    ap.add_argument("--ablations", default=None, help="subset of CA,RE,DT,none ('' for none)")
    ap.add_argument("--ablation-fractions", default=None)
    ap.add_argument("--oracle-fractions", default=None, help="where to train the oracle ceiling ('' for nowhere)")
    ap.add_argument("--tsoda-threshold", default=None, help="a number in (0, 1), auto, or off (no TSODA)")
    ap.add_argument("--shard", default=None, help="i/n: run the i-th of n balanced shares of the cells")
    ap.add_argument("--estimate", action="store_true", help="time a few steps and predict the run's time; train nothing")
    ap.add_argument("--estimate-steps", type=int, default=4)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None,
                    help="default benchmarks/results/semi_supervised.json (another dataset: ..._<dataset>.json)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    preset = choose_preset(args, PRESETS)
    args.preset_used = preset
    args = resolve(args, PRESETS[preset])
    if args.workdir is None:
        args.workdir = Path(f"/tmp/boxloop_semi_{Path(args.dataset).name}_{preset}")
    if args.json is None:
        tag = "" if args.dataset == "bccd" else f"_{Path(args.dataset).name}"
        args.json = HERE / "results" / f"semi_supervised{tag}.json"
    args.shard_index, args.shard_count = parse_shard(args.shard)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    spec = dataset_or_skip(args)
    if spec is None:
        return 0
    for name in csv(args.ablations):
        if name not in ABLATIONS:
            raise SystemExit(f"--ablations: unknown {name!r}; choose from {', '.join(ABLATIONS)}")
    for f in csv(args.fractions):
        if not 0 < float(f) < 1:
            raise SystemExit(f"--fractions: {f} is not a share in (0, 1)")
    seeds = [int(s) for s in csv(args.seeds)]
    if args.estimate:
        est = estimate(spec, args)
        print(json.dumps(est, indent=1))
        print(f"estimated: {est['total_cpu_minutes']} CPU-minutes at {args.threads or 'default'} thread(s) per "
              f"process, i.e. one process on one idle core; two --shard i/2 processes on two idle cores: "
              f"{est['two_shards_minutes']} min; {est['total_wall_minutes_at_this_load']} CPU-minutes at this "
              "machine's load now")
        return 0
    from boxloop.loop.simulate import load_truth

    truth = load_truth(spec.images, spec.annotations, spec.fmt)
    t_start = time.perf_counter()
    for frac, seed in my_cells(args):
        run_cell(spec, args, seed, frac, truth)
    cells = [cached_cell(args, seed, frac) for frac, seed in cells_of(args)]
    if any(c is None for c in cells):
        print(f"\nthis shard is done ({time.perf_counter() - t_start:.0f} s); {sum(c is None for c in cells)} cell(s) "
              "are not finished yet: when every shard is done, run the command without --shard to print the tables")
        return 0
    rows, pairs = method_rows(cells), paired(cells)  # type: ignore[arg-type]
    table, ptable = format_method_rows(rows), format_paired(pairs)
    fvd = format_fixed_vs_dynamic(cells, spec.rare_classes)  # type: ignore[arg-type]
    check = check_targets(cells, len(seeds), spec.rare_classes)  # type: ignore[arg-type]
    print(f"\n{spec.name}: test metrics in %, mean ± std over {len(seeds)} seed(s); pseudo P/R against the withheld "
          f"labels (rare classes: {', '.join(spec.rare_classes)})\n{table}\n")
    print(f"paired differences in test mAP50 points (same seed, same labelled subset):\n{ptable}\n")
    print(f"dynamic thresholds vs one fixed threshold on the same score at equal overall recall (teacher's weak-view "
          f"predictions on the unlabelled images):\n{fvd}\n")
    print(describe(check))
    secs = sum(json.loads(p.read_text()).get("seconds", 0) for p in args.workdir.glob("seed*/frac*/*.json"))
    report: dict[str, Any] = {
        "command": command(), "machine": machine(args.device), "dataset": spec.summary(),
        "preset": args.preset_used, "settings": settings(args),
        "table": rows, "table_markdown": table, "paired": pairs, "paired_markdown": ptable,
        "fixed_vs_dynamic_markdown": fvd, "target_check": check,
        "cells": [{**c, "fixed_vs_dynamic": {k: v for k, v in c["fixed_vs_dynamic"].items() if k != "sweep"}}
                  for c in cells],  # type: ignore[union-attr]
        "seconds_all_steps": round(secs, 1), "seconds_this_call": round(time.perf_counter() - t_start, 1),
    }
    write_json(args.json, report)
    png = paired_figure(pairs, args.json.with_suffix(".png"))
    print(f"\nsum of the steps' times {secs / 60:.1f} min; wrote {args.json} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
