"""Benchmark: does semi-supervision gain anything on BCCD, against a fair supervised baseline? (issue 14)

    .venv/bin/python benchmarks/semi_supervised.py --preset cpu --threads 2
    .venv/bin/python benchmarks/semi_supervised.py --preset cpu --threads 1 --shard 0/2 &   # two processes,
    .venv/bin/python benchmarks/semi_supervised.py --preset cpu --threads 1 --shard 1/2     # one core each
    .venv/bin/python benchmarks/semi_supervised.py --preset cpu --estimate    # time a few steps, predict the run
    .venv/bin/python benchmarks/semi_supervised.py --dataset synthetic        # smoke run, about 2 minutes

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
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import DEFAULT_BCCD, HERE, csv, dataset_or_skip, finite, machine, resolve  # noqa: E402

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
for _p in PRESETS.values():
    _p.setdefault("tau", 0.7)
    _p.setdefault("clip_low", 0.4)

ABLATIONS: dict[str, dict[str, Any]] = {
    "CA": {"certainty": False}, "RE": {"reweight": False}, "DT": {"dynamic_threshold": False},
    "IG": {"ignore_threshold": None},  # no ignore regions: every unaccepted object trains as background
    "LS": {"labelled_share": 0.0},  # the plain union: labelled images ~10% of the student's batches at 10%
    "none": {"certainty": False, "reweight": False, "dynamic_threshold": False}}
TARGET_GAIN_AT_10, GOAL_GAIN_AT_10, TARGET_PSEUDO_PRECISION = 0.03, 0.05, 0.85


# -- settings ------------------------------------------------------------------------------------------

def train_config(args, seed: int):
    from boxloop.defaults import training_recipe
    from boxloop.train.config import TrainConfig

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
    """This shard's cells: longest-first greedy over the planned steps (balanced shards)."""
    cells = cells_of(args)
    if args.shard is None:
        return cells
    i, n = args.shard
    load = [0] * n
    mine = []
    for cell in sorted(cells, key=lambda c: -planned_steps(args, c[0])):
        k = int(np.argmin(load))
        load[k] += planned_steps(args, cell[0])
        if k == i:
            mine.append(cell)
    return [c for c in cells if c in mine]


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
    project = init_project(pdir, spec.images, spec.annotations, test_list=spec.test_list, seed=seed, force=True,
                           progress=progress)
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


def quality(accepted: Mapping[str, Any], withheld: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    from boxloop.semi.certainty import pseudo_label_quality

    q = pseudo_label_quality(accepted, withheld, classes)
    return {"precision": q["precision"], "recall": q["recall"], "tp": q["tp"], "fp": q["fp"], "fn": q["fn"],
            "mean_iou": q["mean_iou"], "images": len(accepted),
            "boxes": int(sum(len(a[0] if isinstance(a, tuple) else a) for a in accepted.values())),
            "per_class": {c: {k: v[k] for k in ("precision", "recall", "tp", "fp", "fn")}
                          for c, v in q["per_class"].items()}}


def cached(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A finished step's JSON: re-running the benchmark skips it."""
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    value = finite(make())
    value.setdefault("seconds", round(time.perf_counter() - t0, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    tmp.replace(path)
    return value


def fixed_vs_dynamic(pool: Mapping[str, Any], withheld: Mapping[str, Any], classes: Sequence[str], args,
                     certainty: bool, grid_step: float = 0.005) -> dict[str, Any]:
    """Per class: (precision, recall) of the dynamic thresholds (DT, on p*v with CA) and of one fixed
    threshold on the same score at the same overall recall (see the module notes); also the fixed tau
    point [0.7], i.e. CertaintySSOD without DT."""
    from boxloop.semi.pseudo import accept_certainty, certainty_scores

    semi = semi_config(args)
    th = semi.thresholds(len(classes), certainty)
    th.update(pool.values())
    dynamic = quality(accept_certainty(pool, th), withheld, classes)
    score = {k: certainty_scores(d, certainty) for k, d in pool.items()}

    def above(t: float) -> dict:
        return {k: d[score[k] > np.float32(t)] for k, d in pool.items() if (score[k] > np.float32(t)).any()}

    fixed_tau = quality(above(semi.tau), withheld, classes)
    sweep = []
    for t in np.round(np.arange(grid_step, 1.0, grid_step), 4):
        q = quality(above(float(t)), withheld, classes)
        sweep.append((float(t), q))
        if q["boxes"] == 0:
            break
    rd = dynamic["recall"] if dynamic["boxes"] else None  # nothing accepted: nothing to compare
    reach = [(t, q) for t, q in sweep if rd is not None and q["recall"] is not None and q["recall"] >= rd - 1e-9]
    t_eq, fixed = max(reach, key=lambda x: x[0]) if reach else (None, None)
    per_class = {}
    for c in classes:
        d = dynamic["per_class"][c]
        if d["recall"] is None:  # no withheld object of this class
            continue
        f = fixed["per_class"][c] if fixed else {"precision": None, "recall": None}
        better = None if d["precision"] is None or f["precision"] is None else bool(d["precision"] > f["precision"])
        per_class[c] = {"tau_m": float(th.thresholds[list(classes).index(c)]), "dynamic_precision": d["precision"],
                        "dynamic_recall": d["recall"], "fixed_precision": f["precision"], "fixed_recall": f["recall"],
                        "fixed_tau_precision": fixed_tau["per_class"][c]["precision"],
                        "fixed_tau_recall": fixed_tau["per_class"][c]["recall"], "dynamic_more_precise": better}
    return {"certainty_used": certainty, "tau": semi.tau, "fixed_threshold_at_equal_recall": t_eq,
            "dynamic": dynamic, "fixed_at_equal_recall": fixed, "fixed_tau": fixed_tau, "per_class": per_class,
            "sweep": [(t, q["precision"], q["recall"], q["boxes"]) for t, q in sweep]}


def run_cell(spec, args, seed: int, fraction: float, truth: Mapping[str, Any]) -> dict[str, Any]:
    """Every method on one (seed, fraction)."""
    from boxloop.semi.autolabel_config import AutolabelConfig
    from boxloop.semi.autolabel import autolabel
    from boxloop.semi.autolabel import model_dir as tsoda_dir
    from boxloop.detectors import create_detector
    from boxloop.loop.model import training_samples
    from boxloop.semi.certainty import fit_semi
    from boxloop.semi.weak_view import weak_predict
    from boxloop.loop.simulate import copy_project
    from boxloop.store import DB_NAME, Project
    from boxloop.train.fit import fit
    from boxloop.train.checkpoints import load_detector

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


# -- tables and targets ---------------------------------------------------------------------------

METHODS: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = [
    ("teacher", lambda c: (c["teacher"]["test"], None)),
    ("teacher continued", lambda c: (c["continued"], None)),
    ("tsoda", lambda c: (c["tsoda"]["test"], c["tsoda"]["pseudo"]) if "tsoda" in c else (None, None)),
    ("certainty CA+RE+DT (student)", lambda c: (c["certainty"]["student"], c["certainty"]["pseudo"])),
    ("certainty CA+RE+DT (kept by the guard)", lambda c: (c["certainty"]["kept"], c["certainty"]["pseudo"])),
    ("oracle: the student's recipe with the withheld labels (ceiling)",
     lambda c: (c["oracle"]["test"], None) if "oracle" in c else (None, None)),
]
METRICS = [("mAP50", "map50"), ("AP", "coco_ap"), ("AP75", "ap75"), ("rare AP50", "rare_ap50")]


def _ms(vals: Sequence[Any], pct: bool = True) -> str:
    v = [float(x) for x in vals if x is not None and np.isfinite(float(x))]
    if not v:
        return "-"
    k = 100 if pct else 1
    return f"{k * np.mean(v):.1f} ± {k * np.std(v, ddof=1) if len(v) > 1 else 0.0:.1f}"


def _markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def method_rows(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """(fraction, method) -> lists over seeds of the metrics (ablation rows: their student)."""
    rows = []
    for frac in sorted({c["fraction"] for c in cells}):
        group = [c for c in cells if c["fraction"] == frac]
        methods = list(METHODS)
        for n in dict.fromkeys(n for c in group for n in c.get("ablations", {})):
            methods.append((f"certainty without {n} (student)",
                            lambda c, n=n: (c["ablations"][n]["student"], c["ablations"][n]["pseudo"])
                            if n in c.get("ablations", {}) else (None, None)))
        for name, get in methods:
            vals = [v for v in (get(c) for c in group) if v[0] is not None]
            if not vals:
                continue
            row: dict[str, Any] = {"fraction": frac, "method": name, "seeds": len(vals)}
            for _, key in METRICS:
                row[key] = [v[0][key] for v in vals]
            for k in ("precision", "recall", "boxes"):
                row[f"pseudo_{k}"] = [v[1][k] for v in vals if v[1] is not None]
            rows.append(row)
    return rows


def format_method_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ["labelled", "method", *(m for m, _ in METRICS), "pseudo P", "pseudo R", "pseudo boxes", "seeds"]
    return _markdown(head, [[f"{100 * r['fraction']:g}%", r["method"], *(_ms(r[k]) for _, k in METRICS),
                             _ms(r["pseudo_precision"]), _ms(r["pseudo_recall"]), _ms(r["pseudo_boxes"], pct=False),
                             str(r["seeds"])] for r in rows])


def paired(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per fraction, per seed (test mAP50): student, kept, oracle and TSODA minus teacher continued."""
    out = []
    for frac in sorted({c["fraction"] for c in cells}):
        group = sorted((c for c in cells if c["fraction"] == frac), key=lambda c: c["seed"])
        cont = [c["continued"]["map50"] for c in group]
        stud = [(c["certainty"]["student"] or c["continued"])["map50"] for c in group]  # no student = continued
        kept = [c["certainty"]["kept"]["map50"] for c in group]
        out.append({"fraction": frac, "seeds": [c["seed"] for c in group],
                    "student_minus_continued": [s - b for s, b in zip(stud, cont)],
                    "kept_minus_continued": [k - b for k, b in zip(kept, cont)],
                    "continued_minus_teacher": [b - c["teacher"]["test"]["map50"] for b, c in zip(cont, group)],
                    "oracle_minus_continued": [c["oracle"]["test"]["map50"] - b for b, c in zip(cont, group)
                                               if "oracle" in c],
                    "tsoda_minus_continued": [c["tsoda"]["test"]["map50"] - b for b, c in zip(cont, group)
                                              if "tsoda" in c],
                    # the same at the last step (best.pt is chosen on a few validation images: noisy)
                    "last_student_minus_continued": [
                        c["last_step"]["student"]["map50"] - c["last_step"]["continued"]["map50"] for c in group
                        if "student" in c.get("last_step", {}) and "continued" in c.get("last_step", {})],
                    "last_oracle_minus_continued": [
                        c["last_step"]["oracle"]["map50"] - c["last_step"]["continued"]["map50"] for c in group
                        if "oracle" in c.get("last_step", {}) and "continued" in c.get("last_step", {})],
                    "chosen": ["student" if c["certainty"]["result"]["chosen"] == "semi" else "continued"
                               for c in group]})
    return out


def format_paired(rows: Sequence[Mapping[str, Any]]) -> str:
    pts = lambda v: ", ".join(f"{100 * x:+.1f}" for x in v)  # noqa: E731
    return _markdown(["labelled", "student - continued (per seed)", "mean ± std", "kept - continued", "guard kept",
                      "continued - teacher", "oracle - continued (the ceiling)", "at the last step: student - continued",
                      "oracle - continued"],
                     [[f"{100 * r['fraction']:g}%", pts(r["student_minus_continued"]),
                       _ms(r["student_minus_continued"]), pts(r["kept_minus_continued"]), ", ".join(r["chosen"]),
                       _ms(r["continued_minus_teacher"]),
                       *(f"{pts(r[k])} ({_ms(r[k])})" if r[k] else "-" for k in (
                           "oracle_minus_continued", "last_student_minus_continued", "last_oracle_minus_continued"))]
                      for r in rows])


def paired_figure(pairs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One panel per labelled fraction: every method minus teacher continued, one dot per seed and a
    bar at the mean, with the 0 line and the issue's +3 target: the spread a mean +-std hides."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(pairs), 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(pairs), sharey=True, squeeze=False)[0]
    for ax, r in zip(axes, pairs):
        series = {"student": r["student_minus_continued"], "kept": r["kept_minus_continued"],
                  "TSODA": r["tsoda_minus_continued"],
                  "oracle": r["oracle_minus_continued"], "student\n(last)": r["last_student_minus_continued"],
                  "oracle\n(last)": r["last_oracle_minus_continued"]}
        series = {k: v for k, v in series.items() if v}
        for i, (name, vals) in enumerate(series.items()):
            pts = 100 * np.asarray(vals, float)
            ax.bar(i, pts.mean(), width=0.6, color="tab:gray" if "oracle" in name else "tab:blue", alpha=0.35)
            ax.plot(np.full(len(pts), i) + np.linspace(-0.12, 0.12, len(pts)), pts, "o", color="black", ms=3.5)
        ax.axhline(0, color="black", linewidth=0.8)
        if abs(r["fraction"] - 0.1) < 1e-9:
            ax.axhline(100 * TARGET_GAIN_AT_10, color="tab:red", linestyle="--", linewidth=0.8, label="+3 target")
            ax.legend(fontsize=8, loc="lower left")
        ax.set_xticks(range(len(series)), list(series), fontsize=8)
        ax.set_title(f"{100 * r['fraction']:g}% labelled")
    axes[0].set_ylabel("test mAP50 minus teacher continued (points)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def compare_rare(v: Mapping[str, Any]) -> tuple[str, str]:
    """(precision verdict, trade) of one class's dynamic against fixed row: "yes" / "tie" / "NO" for
    more precise; "dominates" when the dynamic threshold has no less precision and more recall (or no
    less recall and more precision), "trades" when one is higher and the other lower."""
    dp, dr, fp, fr = v["dynamic_precision"], v["dynamic_recall"], v["fixed_precision"], v["fixed_recall"]
    if dp is None or fp is None:
        return "-", "-"
    precise = "tie" if abs(dp - fp) < 1e-9 else ("yes" if dp > fp else "NO")
    p, r = np.sign(round(dp - fp, 9)), np.sign(round((dr or 0) - (fr or 0), 9))
    trade = ("equal" if p == r == 0 else "dominates" if min(p, r) >= 0 else "dominated" if max(p, r) <= 0
             else "trades")
    return precise, trade


def format_fixed_vs_dynamic(cells: Sequence[Mapping[str, Any]], rare: Sequence[str]) -> str:
    head = ["labelled", "seed", "class", "tau_m", "dynamic P", "dynamic R", "fixed t", "fixed P", "fixed R",
            "dynamic more precise", "dynamic vs fixed"]
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    body = []
    for c in cells:
        fvd = c["fixed_vs_dynamic"]
        for name, v in fvd["per_class"].items():
            body.append([f"{100 * c['fraction']:g}%", str(c["seed"]), name + (" (rare)" if name in rare else ""),
                         f(v["tau_m"]), f(v["dynamic_precision"]), f(v["dynamic_recall"]),
                         f(fvd["fixed_threshold_at_equal_recall"]), f(v["fixed_precision"]), f(v["fixed_recall"]),
                         *compare_rare(v)])
    return _markdown(head, body)


def check_targets(cells: Sequence[Mapping[str, Any]], seeds: int, rare: Sequence[str]) -> dict[str, Any]:
    """Issue 14's targets on means over seeds."""
    out: dict[str, Any] = {"seeds": seeds, "enough_seeds": seeds >= 3, "per_fraction": {}}
    for frac in sorted({c["fraction"] for c in cells}):
        group = [c for c in cells if c["fraction"] == frac]
        mean = lambda xs: float(np.mean(xs))  # noqa: E731
        cont = mean([c["continued"]["map50"] for c in group])
        stud = mean([(c["certainty"]["student"] or c["continued"])["map50"] for c in group])
        kept_each = [c["certainty"]["kept"]["map50"] - c["continued"]["map50"] for c in group]
        prec = [p for p in (c["certainty"]["pseudo"]["precision"] for c in group) if p is not None]
        out["per_fraction"][f"{frac:g}"] = {
            "teacher_continued": cont, "student": stud, "gain_student": stud - cont,
            "kept": mean([c["certainty"]["kept"]["map50"] for c in group]),
            "kept_not_below_any_seed": all(d >= -1e-12 for d in kept_each),
            "pseudo_boxes": int(sum(c["certainty"]["pseudo"]["boxes"] for c in group)),
            "pseudo_precision": mean(prec) if prec else None}
    pf = out["per_fraction"]
    ten = next((v for k, v in pf.items() if abs(float(k) - 0.1) < 1e-9), None)
    out["at_10"] = None if ten is None else {
        "gain_met": ten["gain_student"] >= TARGET_GAIN_AT_10 - 1e-12,
        "goal_met": ten["gain_student"] >= GOAL_GAIN_AT_10 - 1e-12,
        "accepted": ten["pseudo_boxes"] > 0,
        "precision_met": ten["pseudo_precision"] is not None and ten["pseudo_precision"] >= TARGET_PSEUDO_PRECISION}
    others = {k: v for k, v in pf.items() if abs(float(k) - 0.1) > 1e-9}
    out["never_below_met"] = all(v["kept_not_below_any_seed"] for v in others.values()) if others else None
    verdicts = [v["dynamic_more_precise"] for c in cells for n, v in c["fixed_vs_dynamic"]["per_class"].items()
                if n in rare and v["dynamic_more_precise"] is not None]
    out["dynamic_rare_precision_met"] = bool(verdicts) and all(verdicts)
    out["dynamic_rare_precision_cases"] = f"{sum(verdicts)}/{len(verdicts)} (seed, fraction, rare class) cases"
    trades = [compare_rare(v) for c in cells for n, v in c["fixed_vs_dynamic"]["per_class"].items() if n in rare]
    out["dynamic_rare_verdicts"] = {f"{k} {t}": sum(1 for x in trades if x == (k, t)) for k, t in sorted(set(trades))}
    return out


def describe(check: Mapping[str, Any]) -> str:
    yes = lambda b: "MET" if b else "NOT met"  # noqa: E731
    lines = ["targets (test mAP50, means over seeds):" + (
        "" if check["enough_seeds"] else f" [only {check['seeds']} seed(s): the issue asks >= 3]")]
    pf, ten = check["per_fraction"], check["at_10"]
    if ten is not None:
        v = next(v for k, v in pf.items() if abs(float(k) - 0.1) < 1e-9)
        p = v["pseudo_precision"]
        lines.append(f"  10%: certainty student {100 * v['student']:.1f} >= teacher continued "
                     f"{100 * v['teacher_continued']:.1f} + 3 ({100 * v['gain_student']:+.1f}): {yes(ten['gain_met'])}"
                     f" (goal +5: {yes(ten['goal_met'])}); accepted pseudo boxes {v['pseudo_boxes']}: "
                     f"{yes(ten['accepted'])}; their precision {'-' if p is None else f'{p:.3f}'} >= 0.85: "
                     f"{yes(ten['precision_met'])}")
    else:
        lines.append("  10%: not run (add 0.1 to --fractions)")
    if check["never_below_met"] is not None:
        lines.append("  25%/50%: kept model never below teacher continued, every seed: " + yes(check["never_below_met"])
                     + " (" + ", ".join(f"{100 * float(k):g}%: kept {100 * (v['kept'] - v['teacher_continued']):+.1f}"
                                        for k, v in pf.items() if abs(float(k) - 0.1) > 1e-9) + ")")
    lines.append(f"  dynamic vs fixed threshold at equal recall, rare classes more precise: "
                 f"{yes(check['dynamic_rare_precision_met'])} ({check['dynamic_rare_precision_cases']}; more "
                 "precise / trade-off: " + ", ".join(f"{k}: {n}" for k, n in check["dynamic_rare_verdicts"].items()) + ")")
    return "\n".join(lines)


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

    truth = load_truth(spec.images, spec.annotations)
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
        from boxloop.train.checkpoints import load_checkpoint, save_checkpoint

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
    n_all = len(truth)
    n_test = len([s for s in spec.test_list.read_text().split() if s])
    trainval = n_all - n_test
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


# -- main ---------------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(DEFAULT_BCCD), help="VOC root with ImageSets/Main/test.txt, or 'synthetic'")
    ap.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
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
    ap.add_argument("--synthetic-images", type=int, default=60)
    ap.add_argument("--synthetic-size", type=int, default=96)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "semi_supervised.json")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    preset = "synthetic" if args.dataset == "synthetic" else args.preset
    args.preset_used = preset
    args = resolve(args, PRESETS[preset])
    if args.workdir is None:
        args.workdir = Path(f"/tmp/boxloop_semi_{Path(args.dataset).name}_{preset}")
    if args.shard is not None:
        try:
            i, n = (int(x) for x in args.shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise SystemExit(f"--shard must be i/n with 0 <= i < n, got {args.shard!r}") from None
        args.shard = (i, n)
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

    truth = load_truth(spec.images, spec.annotations)
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
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "machine": machine(args.device),
        "dataset": {"name": spec.name, "images": str(spec.images), "test_list": str(spec.test_list),
                    "rare_classes": list(spec.rare_classes)},
        "preset": args.preset_used, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "table": rows, "table_markdown": table, "paired": pairs, "paired_markdown": ptable,
        "fixed_vs_dynamic_markdown": fvd, "target_check": check,
        "cells": [{**c, "fixed_vs_dynamic": {k: v for k, v in c["fixed_vs_dynamic"].items() if k != "sweep"}}
                  for c in cells],  # type: ignore[union-attr]
        "seconds_all_steps": round(secs, 1), "seconds_this_call": round(time.perf_counter() - t_start, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(finite(report), indent=1, allow_nan=False, default=str))
    png = paired_figure(pairs, args.json.with_suffix(".png"))
    print(f"\nsum of the steps' times {secs / 60:.1f} min; wrote {args.json} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
