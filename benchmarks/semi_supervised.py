"""Benchmark: supervised vs TSODA vs certainty-aware semi-supervised training on BCCD (issue 5 targets).

    .venv/bin/python benchmarks/semi_supervised.py --preset cpu --threads 2
    .venv/bin/python benchmarks/semi_supervised.py --preset gpu
    .venv/bin/python benchmarks/semi_supervised.py --dataset synthetic        # minutes, smoke run

For each seed and labelled fraction (10%, 25%, 50% of trainval): one project whose labelled subset
is `simulate.withhold`'s random choice for that seed (20% of it validates), the rest of trainval
unlabelled with its labels withheld; every method of that (seed, fraction) uses the same subset:

    supervised         the teacher fit_semi trains on the labelled images (train.fit)
    tsoda              autolabel (seed 000) on a copy of the project: iteration 1 trains on the
                       labelled images, each later one also on what the earlier ones auto-labelled;
                       "last" = the last iteration's model, "kept" = the best on validation among
                       the supervised model and every iteration's (never worse, issue 5 item 4)
    certainty          fit_semi (seed 001: CA + RE + DT) from that teacher; "student" = the student,
                       "kept" = what fit_semi hands back (student only if better on validation)
    ablations          fit_semi with one of CA / RE / DT switched off (seed 001 Table 5), and with
                       all three off ("none": a fixed tau on p), from the same teacher

Measured: test mAP50 (VOC), COCO AP, AP75, rare-class AP50 (WBC, Platelets), and precision / recall
of the accepted pseudo-labels against the withheld labels (seed 001 Fig. 3). For the dynamic
thresholds the script also sweeps a fixed threshold on p over the teacher's same predictions and
reads, per class, the best precision a fixed threshold gets at the recall the dynamic thresholds
reach (interpolated precision), next to the fixed 0.7 point. Then one `simulate` of the best
active-learning strategy (from results/label_efficiency.json when present) with and without
`--semi`. Target checks: at 10% certainty (kept) >= supervised + 5 points; at no fraction below
supervised; dynamic thresholds at least as precise as a fixed threshold at equal recall, per class.

Writes benchmarks/results/semi_supervised.json (or --json). Each finished (seed, fraction, method)
is cached in WORKDIR, so re-running the same command resumes. BCCD absent: says so, exits 0.

Written here: the experiment layout, the fixed-threshold sweep, the tables and target checks.
boxloop does the rest (simulate.withhold / simulate, semi.fit_semi / weak_predict /
pseudo_label_quality, autolabel.autolabel, pseudo, loop.test_metrics, evaluate.precision_recall).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import DEFAULT_BCCD, HERE, csv, finite, machine, dataset_or_skip, resolve  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(image_size=256, epochs=12, batch_size=8, lr=0.01, val_every=2, fractions="0.1,0.25,0.5",
                seeds="0,1,2", model="fcos", backbone="efficientnet_lite0", detector_options="{}",
                ablations="CA,RE,DT,none", ablation_fractions="0.1", tsoda_iterations=3, tsoda_threshold=0.8,
                al_initial=20, al_budget=20, al_rounds=3, al_semi="autolabel,certainty"),
    "gpu": dict(image_size=480, epochs=24, batch_size=8, lr=0.01, val_every=2, fractions="0.1,0.25,0.5",
                seeds="0,1,2", model="faster_rcnn", backbone="efficientnet_lite0",
                detector_options='{"box_head": "interval"}', ablations="CA,RE,DT,none",
                ablation_fractions="0.1,0.25,0.5", tsoda_iterations=4, tsoda_threshold=0.8,
                al_initial=20, al_budget=30, al_rounds=6, al_semi="autolabel,certainty"),
    "synthetic": dict(image_size=128, epochs=6, batch_size=4, lr=0.02, val_every=1, fractions="0.25,0.5",
                      seeds="0", model="fcos", backbone="efficientnet_lite0",
                      detector_options='{"fpn_channels": 32, "head_convs": 1}', ablations="DT",
                      ablation_fractions="0.25", tsoda_iterations=2, tsoda_threshold=0.5,
                      al_initial=8, al_budget=6, al_rounds=1, al_semi="certainty"),
}

ABLATIONS = {"CA": {"certainty": False}, "RE": {"reweight": False}, "DT": {"dynamic_threshold": False},
             "none": {"certainty": False, "reweight": False, "dynamic_threshold": False}}
TARGET_GAIN_AT_10 = 0.05


# -- one (seed, fraction) ---------------------------------------------------------------------------

def base_project(spec, pdir: Path, fraction: float, seed: int, config, progress: bool):
    """The project of one (seed, fraction): all trainval imported, `fraction` of it kept labelled."""
    from boxloop.loop import labelled_counts
    from boxloop.project import init_project
    from boxloop.simulate import withhold
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
    withhold(project, n, seed, config)
    return project, n_trainval


def test_summary(project, checkpoint: Path, args, rare: Sequence[str]) -> dict[str, Any]:
    """Test-set metrics of one checkpoint: mAP50, COCO AP, AP75, per class, rare-class AP."""
    from boxloop.loop import test_metrics
    from boxloop.train import load_detector

    det, _, _ = load_detector(checkpoint, expect_classes=project.classes, device="cpu")
    ev = test_metrics(project, det, args.image_size, args.device, args.batch_size, progress=False)
    per = {n: {"ap50": v["ap50"], "coco_ap": v["coco_ap"], "num_gt": v["num_gt"]} for n, v in ev["per_class"].items()}
    rare = [n for n in rare if n in per and per[n]["num_gt"] > 0]

    def mean(vals: list) -> float | None:
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    return {"map50": ev["map50"], "coco_ap": ev["coco_ap"], "ap50": ev["ap50"], "ap75": ev["ap75"], "per_class": per,
            "rare_classes": rare, "rare_ap50": mean([per[n]["ap50"] for n in rare]),
            "rare_coco_ap": mean([per[n]["coco_ap"] for n in rare]), "checkpoint": str(checkpoint)}


def quality(accepted: Mapping[str, Any], withheld: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    from boxloop.semi import pseudo_label_quality

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
    value = finite(make())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    tmp.replace(path)
    return value


def train_config(args, seed: int):
    from boxloop.train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, lr=args.lr,
                       device=args.device, seed=seed, val_every=args.val_every, warmup_steps=min(100, 5 * args.epochs))


def detector_kwargs(args) -> dict[str, Any]:
    return {"backbone": args.backbone, "pretrained_backbone": not args.no_pretrained, "min_size": args.image_size,
            "max_size": args.image_size, **json.loads(args.detector_options)}


def semi_config(args, **off: bool):
    from boxloop.semi import SemiConfig

    return SemiConfig(tau=args.tau, gamma1=args.gamma1, gamma2=args.gamma2, ema=args.ema, **off)


def fixed_vs_dynamic(teacher_path: Path, project, unlabelled: Sequence[str], withheld: Mapping[str, Any], args,
                     grid_step: float = 0.01) -> dict[str, Any]:
    """Per class: the dynamic thresholds' (precision, recall) on the teacher's weak-view predictions,
    the fixed tau [0.7] point (p > tau), and the best precision any fixed threshold on p reaches at a
    recall >= the dynamic recall (interpolated, from a sweep with step `grid_step`)."""
    from boxloop.evaluate import precision_recall
    from boxloop.pseudo import accept_certainty, certainty_scores
    from boxloop.semi import weak_predict
    from boxloop.structures import Source
    from boxloop.train import load_detector

    semi = semi_config(args)
    classes = project.classes
    teacher, _, _ = load_detector(teacher_path, expect_classes=classes, device=args.device)
    root = project.image_root
    dets = weak_predict(teacher, [root / k for k in unlabelled], args.image_size, flip=semi.flip,
                        score_threshold=semi.candidate_threshold, batch_size=args.batch_size, flip_iou=semi.flip_iou)
    pool = dict(zip(unlabelled, dets))
    certainty = bool(getattr(teacher, "has_loc_quality", False))
    th = semi.thresholds(len(classes), certainty)
    th.update(pool.values())
    dynamic = quality(accept_certainty(pool, th), withheld, classes)
    p_of = {k: certainty_scores(d, certainty=False) for k, d in pool.items()}  # p: the class probability

    def above(t: float) -> dict:
        return {k: d[p_of[k] > np.float32(t)] for k, d in pool.items() if (p_of[k] > np.float32(t)).any()}

    fixed = quality(above(semi.tau), withheld, classes)
    sweep: dict[str, list[tuple[float, float | None, float | None]]] = {c: [] for c in classes}
    for t in np.arange(grid_step, 1.0, grid_step):
        acc = above(float(t))
        pr = precision_recall({k: d.to_annotation(k, classes, source=Source.PSEUDO) for k, d in acc.items()},
                              withheld, classes)
        for c in classes:
            sweep[c].append((round(float(t), 4), pr["per_class"][c]["precision"], pr["per_class"][c]["recall"]))
    per_class = {}
    for c in classes:
        pd, rd = dynamic["per_class"][c]["precision"], dynamic["per_class"][c]["recall"]
        if rd is None:  # no withheld object of this class
            continue
        reach = [p for _, p, r in sweep[c] if r is not None and p is not None and r >= rd - 1e-9]
        pf = max(reach) if reach else None
        better = None if pd is None else (True if pf is None else bool(pd >= pf - 1e-9))
        per_class[c] = {"dynamic_precision": pd, "dynamic_recall": rd, "tau_m": float(th.thresholds[classes.index(c)]),
                        "fixed_precision_at_equal_recall": pf, "fixed_reaches_recall": pf is not None,
                        "fixed_tau_precision": fixed["per_class"][c]["precision"],
                        "fixed_tau_recall": fixed["per_class"][c]["recall"], "dynamic_at_least_as_precise": better}
    return {"certainty_used": certainty, "tau": semi.tau, "dynamic": dynamic, "fixed_tau": fixed,
            "per_class": per_class, "sweep": sweep}


def run_cell(spec, args, seed: int, fraction: float, truth: Mapping[str, Any]) -> dict[str, Any]:
    """Every method on one (seed, fraction)."""
    from boxloop.autolabel import autolabel
    from boxloop.autolabel import model_dir as tsoda_dir
    from boxloop.loop import training_samples
    from boxloop.semi import fit_semi
    from boxloop.simulate import copy_project
    from boxloop.store import DB_NAME, Project

    from label_efficiency import loop_config

    cell = args.workdir / f"seed{seed}" / f"frac{fraction:g}"
    config = loop_config(args, seed=seed)
    project, n_trainval = base_project(spec, cell / "base", fraction, seed, config, args.progress)
    classes = project.classes
    train, val = training_samples(project)
    unlabelled = sorted(r.path for r in project.images(status="unlabelled") if r.split not in ("test", "val"))
    withheld = {k: truth[k] for k in unlabelled}
    out: dict[str, Any] = {"seed": seed, "fraction": fraction, "trainval_images": n_trainval,
                           "labelled_train": len(train), "labelled_val": len(val), "unlabelled": len(unlabelled)}
    print(f"seed {seed}, {100 * fraction:g}%: {len(train)} train + {len(val)} val labelled, {len(unlabelled)} unlabelled")
    tc = train_config(args, seed)
    dk = detector_kwargs(args)

    def semi_run(name: str, off: dict[str, bool], teacher: Path | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = fit_semi(project, None, tc, semi_config(args, **off), cell / name, teacher_checkpoint=teacher,
                       model=args.model, detector_kwargs=dk, progress=args.progress)
        row = {"result": res.to_dict(), "pseudo": quality(res.pseudo_labels, withheld, classes),
               "kept": test_summary(project, res.best_checkpoint, args, spec.rare_classes),
               "student": None if res.student_checkpoint is None else
               test_summary(project, res.student_checkpoint, args, spec.rare_classes),
               "seconds": round(time.perf_counter() - t0, 1)}
        if teacher is None:
            row["supervised"] = test_summary(project, res.teacher_checkpoint, args, spec.rare_classes)
        return row

    ca = cached(cell / "certainty.json", lambda: semi_run("certainty", {}, None))
    teacher = Path(ca["result"]["teacher_checkpoint"])
    out["supervised"] = ca.pop("supervised")
    out["certainty"] = ca
    print(f"  supervised {out['supervised']['map50']:.4f}, certainty kept {ca['kept']['map50']:.4f} "
          f"(student {ca['student']['map50'] if ca['student'] else float('nan'):.4f}; {ca['result']['message']})")
    out["fixed_vs_dynamic"] = cached(cell / "fixed_vs_dynamic.json",
                                     lambda: fixed_vs_dynamic(teacher, project, unlabelled, withheld, args))
    if any(abs(fraction - float(f)) < 1e-9 for f in csv(args.ablation_fractions)):
        out["ablations"] = {}
        for name in csv(args.ablations):
            row = cached(cell / f"ablation_{name}.json", lambda n=name: semi_run(f"no_{n}", ABLATIONS[n], teacher))
            row.pop("supervised", None)
            out["ablations"][name] = row
            print(f"  without {name}: student {row['student']['map50'] if row['student'] else float('nan'):.4f}, "
                  f"pseudo P {row['pseudo']['precision']} R {row['pseudo']['recall']}")

    def tsoda_run() -> dict[str, Any]:
        t0 = time.perf_counter()
        tdir = cell / "tsoda"
        if not (tdir / DB_NAME).exists():
            copy_project(project, tdir)
        tp = Project.open(tdir)
        steps = args.epochs * math.ceil(max(1, len(train)) / args.batch_size)  # the supervised model's steps
        first = args.tsoda_steps_first or steps
        inc = args.tsoda_steps_increment if args.tsoda_steps_increment is not None else int(round(0.6 * first))
        mx = args.tsoda_steps_max or int(round(3.4 * first))  # seed 000: 2,500 / +1,500 / 8,500
        rows = autolabel(tp, threshold=args.tsoda_threshold, iterations=args.tsoda_iterations, steps_first=first,
                         steps_increment=inc, steps_max=mx, model=args.model, backbone=args.backbone,
                         pretrained_backbone=not args.no_pretrained, image_size=args.image_size,
                         batch_size=args.batch_size, device=args.device, seed=seed, lr=args.lr,
                         progress=args.progress, detector_options=json.loads(args.detector_options))
        pseudo = tp.annotations("pseudo")
        last = rows[-1]["iteration"]
        # never worse: the supervised teacher and every iteration compete on validation
        cands = [("supervised", ca["result"]["supervised_val_map50"], teacher)] + [
            (f"iteration {r['iteration']}", r.get("best_val_map50"), tsoda_dir(tp, r["iteration"]) / "best.pt")
            for r in rows]
        kept = max((c for c in cands if c[1] is not None), key=lambda c: c[1], default=cands[-1])
        row = {"iterations": rows, "steps": [first, inc, mx],
               "pseudo": quality({k: a for k, a in pseudo.items() if k in withheld}, withheld, classes),
               "last": test_summary(tp, tsoda_dir(tp, last) / "best.pt", args, spec.rare_classes),
               "kept_model": kept[0], "kept": test_summary(tp, kept[2], args, spec.rare_classes),
               "seconds": round(time.perf_counter() - t0, 1)}
        tp.close()
        return row

    out["tsoda"] = cached(cell / "tsoda.json", tsoda_run)
    print(f"  tsoda last {out['tsoda']['last']['map50']:.4f}, kept {out['tsoda']['kept']['map50']:.4f} "
          f"({out['tsoda']['kept_model']})")
    project.close()
    return out


# -- tables and targets ---------------------------------------------------------------------------

METHODS: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = [
    ("supervised", lambda c: (c["supervised"], None)),
    ("tsoda (last iteration)", lambda c: (c["tsoda"]["last"], c["tsoda"]["pseudo"])),
    ("tsoda (kept)", lambda c: (c["tsoda"]["kept"], c["tsoda"]["pseudo"])),
    ("certainty (student)", lambda c: (c["certainty"]["student"], c["certainty"]["pseudo"])),
    ("certainty (kept)", lambda c: (c["certainty"]["kept"], c["certainty"]["pseudo"])),
]
METRICS = [("mAP50", "map50"), ("AP", "coco_ap"), ("AP75", "ap75"), ("rare AP50", "rare_ap50")]


def _ms(vals: Sequence[Any], pct: bool = True) -> str:
    v = [float(x) for x in vals if x is not None and np.isfinite(float(x))]
    if not v:
        return "-"
    k = 100 if pct else 1
    return f"{k * np.mean(v):.1f} ± {k * np.std(v, ddof=1) if len(v) > 1 else 0.0:.1f}"


def method_rows(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """(fraction, method) -> lists over seeds of the metrics (ablation rows: their student)."""
    rows = []
    for frac in sorted({c["fraction"] for c in cells}):
        group = [c for c in cells if c["fraction"] == frac]
        methods = list(METHODS)
        names = [n for c in group for n in c.get("ablations", {})]
        for n in dict.fromkeys(names):
            methods.append((f"certainty without {n} (student)",
                            lambda c, n=n: (c["ablations"][n]["student"], c["ablations"][n]["pseudo"])
                            if n in c.get("ablations", {}) else (None, None)))
        for name, get in methods:
            vals = [get(c) for c in group]
            vals = [v for v in vals if v[0] is not None]
            if not vals:
                continue
            row = {"fraction": frac, "method": name, "seeds": len(vals)}
            for _, key in METRICS:
                row[key] = [v[0][key] for v in vals]
            row["pseudo_precision"] = [v[1]["precision"] for v in vals if v[1] is not None]
            row["pseudo_recall"] = [v[1]["recall"] for v in vals if v[1] is not None]
            row["pseudo_boxes"] = [v[1]["boxes"] for v in vals if v[1] is not None]
            rows.append(row)
    return rows


def format_method_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ["labelled", "method", *(m for m, _ in METRICS), "pseudo P", "pseudo R", "pseudo boxes", "seeds"]
    body = [[f"{100 * r['fraction']:g}%", r["method"], *(_ms(r[k]) for _, k in METRICS), _ms(r["pseudo_precision"]),
             _ms(r["pseudo_recall"]), _ms(r["pseudo_boxes"], pct=False), str(r["seeds"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def format_fixed_vs_dynamic(cells: Sequence[Mapping[str, Any]]) -> str:
    head = ["labelled", "seed", "class", "tau_m", "dynamic P", "dynamic R", "fixed P @ same R", "fixed 0.7 P",
            "fixed 0.7 R", "dynamic >= fixed"]
    body = []
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for c in cells:
        for name, v in c["fixed_vs_dynamic"]["per_class"].items():
            body.append([f"{100 * c['fraction']:g}%", str(c["seed"]), name, f(v["tau_m"]), f(v["dynamic_precision"]),
                         f(v["dynamic_recall"]), f(v["fixed_precision_at_equal_recall"]) if v["fixed_reaches_recall"]
                         else "unreachable", f(v["fixed_tau_precision"]), f(v["fixed_tau_recall"]),
                         {True: "yes", False: "NO", None: "-"}[v["dynamic_at_least_as_precise"]]])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells_: Sequence[str]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(cells_, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def check_targets(cells: Sequence[Mapping[str, Any]], seeds: int) -> dict[str, Any]:
    """Issue 5 targets on means over seeds (certainty = the kept model, what boxloop hands back)."""
    out: dict[str, Any] = {"seeds": seeds, "enough_seeds": seeds >= 3, "per_fraction": {}}
    for frac in sorted({c["fraction"] for c in cells}):
        group = [c for c in cells if c["fraction"] == frac]
        sup = float(np.mean([c["supervised"]["map50"] for c in group]))
        kept = float(np.mean([c["certainty"]["kept"]["map50"] for c in group]))
        stud = [c["certainty"]["student"]["map50"] for c in group if c["certainty"]["student"]]
        out["per_fraction"][f"{frac:g}"] = {"supervised": sup, "certainty_kept": kept,
                                            "certainty_student": float(np.mean(stud)) if stud else None,
                                            "gain_kept": kept - sup, "not_below": kept >= sup - 1e-12,
                                            # a student that accepted no pseudo-label only trained longer
                                            "pseudo_boxes": int(sum(c["certainty"]["pseudo"]["boxes"]
                                                                    for c in group))}
    tens = [v for k, v in out["per_fraction"].items() if abs(float(k) - 0.1) < 1e-9]
    out["gain_at_10_met"] = bool(tens) and tens[0]["gain_kept"] >= TARGET_GAIN_AT_10 - 1e-12
    out["gain_at_10_measured"] = bool(tens)
    out["never_below_met"] = all(v["not_below"] for v in out["per_fraction"].values())
    verdicts = [v["dynamic_at_least_as_precise"] for c in cells for v in c["fixed_vs_dynamic"]["per_class"].values()
                if v["dynamic_at_least_as_precise"] is not None]
    out["dynamic_precision_met"] = bool(verdicts) and all(verdicts)
    out["dynamic_precision_cases"] = f"{sum(verdicts)}/{len(verdicts)} (seed, fraction, class) cases"
    return out


def describe(check: Mapping[str, Any]) -> str:
    yes = lambda b: "MET" if b else "NOT met"  # noqa: E731
    lines = ["targets:" + ("" if check["enough_seeds"] else f" [only {check['seeds']} seed(s): the issue asks >= 3]")]
    pf = check["per_fraction"]
    if check["gain_at_10_measured"]:
        v = pf[[k for k in pf if abs(float(k) - 0.1) < 1e-9][0]]
        lines.append(f"  10%: certainty (kept) {100 * v['certainty_kept']:.1f} >= supervised "
                     f"{100 * v['supervised']:.1f} + 5: {yes(check['gain_at_10_met'])}"
                     + (" -- but no pseudo-label was accepted: the gain is the student's extra training, "
                        "not semi-supervision" if not v.get("pseudo_boxes") else ""))
    else:
        lines.append("  10%: not run (add 0.1 to --fractions)")
    lines.append("  no fraction below supervised: " + yes(check["never_below_met"]) + " ("
                 + ", ".join(f"{100 * float(k):g}%: {100 * v['gain_kept']:+.1f}" for k, v in pf.items()) + ")")
    lines.append(f"  dynamic thresholds at least as precise as a fixed one at equal recall: "
                 f"{yes(check['dynamic_precision_met'])} ({check['dynamic_precision_cases']})")
    return "\n".join(lines)


# -- active learning with and without --semi -----------------------------------------------------------

def best_al_strategy(path: Path) -> str:
    """The best image-level strategy of label_efficiency.json, else localization_aware (seed 003)."""
    try:
        data = json.loads(path.read_text())
        return data["units"]["images"]["target_check"]["best_strategy"] or "localization_aware"
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return "localization_aware"


def al_with_semi(spec, args, seeds: Sequence[int]) -> dict[str, Any]:
    from boxloop.report import format_table, learning_curve_table
    from boxloop.simulate import simulate

    from label_efficiency import loop_config

    strategy = args.al_strategy or best_al_strategy(HERE / "results" / "label_efficiency.json")
    out = args.workdir / "al"
    results: dict[str, Any] = {"runs": []}
    for semi in [None, *csv(args.al_semi)]:
        cfg = loop_config(args, strategy=strategy, budget=args.al_budget, semi=semi, tau=args.tau, gamma1=args.gamma1,
                          gamma2=args.gamma2, pseudo_threshold=args.tsoda_threshold)
        print(f"\n== simulate {strategy}" + (f" --semi {semi}" if semi else "") + f": initial {args.al_initial}, "
              f"budget {args.al_budget}, {args.al_rounds} rounds, seeds {list(seeds)}")
        results = simulate(Path(spec.images), out, [strategy], args.al_initial, args.al_budget, args.al_rounds, seeds,
                           cfg, annotations=spec.annotations, test_list=spec.test_list, progress=args.progress)
    # simulate merges runs of earlier calls on the same OUT: keep this strategy's
    runs = [r for r in json.loads((out / "results.json").read_text())["runs"] if r["strategy"] == strategy
            and r["seed"] in seeds and r.get("semi") in [None, *csv(args.al_semi)]]
    rows = learning_curve_table({"runs": runs})
    text = format_table(rows)
    print(text)
    return {"strategy": strategy, "semi": csv(args.al_semi), "table": rows, "table_markdown": text, "runs": runs,
            "results_json": str(out / "results.json"), "plots": str(out / "plots")}


# -- main ---------------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(DEFAULT_BCCD), help="VOC root with ImageSets/Main/test.txt, or 'synthetic'")
    ap.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--fractions", default=None, help="labelled shares of trainval, e.g. 0.1,0.25,0.5")
    ap.add_argument("--seeds", default=None)
    ap.add_argument("--model", default=None, help="fcos (v = predicted IoU) or faster_rcnn (+ box_head interval)")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--no-pretrained", action="store_true")
    ap.add_argument("--detector-options", default=None, help="JSON for the detector builder")
    ap.add_argument("--epochs", type=int, default=None, help="teacher (and student) epochs")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--val-every", type=int, default=None)
    ap.add_argument("--tau", type=float, default=0.7)
    ap.add_argument("--gamma1", type=float, default=0.05)
    ap.add_argument("--gamma2", type=float, default=0.6)
    ap.add_argument("--ema", type=float, default=None, help="Mean Teacher momentum (off by default)")
    ap.add_argument("--ablations", default=None, help="subset of CA,RE,DT,none ('' for none)")
    ap.add_argument("--ablation-fractions", default=None)
    ap.add_argument("--tsoda-threshold", type=float, default=None)
    ap.add_argument("--tsoda-iterations", type=int, default=None)
    ap.add_argument("--tsoda-steps-first", type=int, default=None, help="default: the supervised model's steps")
    ap.add_argument("--tsoda-steps-increment", type=int, default=None, help="default 0.6 x first (seed 000)")
    ap.add_argument("--tsoda-steps-max", type=int, default=None, help="default 3.4 x first (seed 000)")
    ap.add_argument("--al-strategy", default=None, help="default: best of results/label_efficiency.json")
    ap.add_argument("--al-semi", default=None, help="autolabel,certainty")
    ap.add_argument("--al-initial", type=int, default=None)
    ap.add_argument("--al-budget", type=int, default=None)
    ap.add_argument("--al-rounds", type=int, default=None)
    ap.add_argument("--no-al", action="store_true", help="skip the simulate part")
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    spec = dataset_or_skip(args)
    if spec is None:
        return 0
    from boxloop.simulate import load_truth

    for name in csv(args.ablations):
        if name not in ABLATIONS:
            raise SystemExit(f"--ablations: unknown {name!r}; choose from {', '.join(ABLATIONS)}")
    seeds = [int(s) for s in csv(args.seeds)]
    fractions = [float(f) for f in csv(args.fractions)]
    for f in fractions:
        if not 0 < f < 1:
            raise SystemExit(f"--fractions: {f} is not a share in (0, 1)")
    truth = load_truth(spec.images, spec.annotations)
    t_start = time.perf_counter()
    cells = [run_cell(spec, args, seed, frac, truth) for frac in fractions for seed in seeds]
    rows = method_rows(cells)
    table = format_method_rows(rows)
    fvd = format_fixed_vs_dynamic(cells)
    check = check_targets(cells, len(seeds))
    print(f"\n{spec.name}: test metrics in %, mean ± std over {len(seeds)} seed(s); pseudo P/R against the withheld "
          f"labels (rare classes: {', '.join(spec.rare_classes)})\n{table}\n")
    print(f"dynamic thresholds vs a fixed threshold on p, teacher's weak-view predictions on the unlabelled images:\n"
          f"{fvd}\n")
    print(describe(check))
    report: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "machine": machine(args.device),
        "dataset": {"name": spec.name, "images": str(spec.images), "test_list": str(spec.test_list),
                    "rare_classes": list(spec.rare_classes)},
        "preset": args.preset_used, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "table": rows, "table_markdown": table, "fixed_vs_dynamic_markdown": fvd, "target_check": check,
        "cells": [{**c, "fixed_vs_dynamic": {k: v for k, v in c["fixed_vs_dynamic"].items() if k != "sweep"}}
                  for c in cells],
        "sweeps": {f"seed{c['seed']}_frac{c['fraction']:g}": c["fixed_vs_dynamic"]["sweep"] for c in cells},
    }
    if not args.no_al:
        report["active_learning"] = al_with_semi(spec, args, seeds)
    report["seconds_this_call"] = round(time.perf_counter() - t_start, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(finite(report), indent=1, allow_nan=False, default=str))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
