"""semi_supervised.py's analysis: pseudo-label quality against the withheld labels, dynamic against
one fixed threshold at equal recall, the method and paired tables, the figure and issue 14's target
checks. Reads the cells' cached JSON; trains nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from protocol import markdown
from semi_supervised_plan import semi_config

TARGET_GAIN_AT_10, GOAL_GAIN_AT_10, TARGET_PSEUDO_PRECISION = 0.03, 0.05, 0.85


def quality(accepted: Mapping[str, Any], withheld: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    from boxloop.semi.certainty import pseudo_label_quality

    q = pseudo_label_quality(accepted, withheld, classes)
    return {"precision": q["precision"], "recall": q["recall"], "tp": q["tp"], "fp": q["fp"], "fn": q["fn"],
            "mean_iou": q["mean_iou"], "images": len(accepted),
            "boxes": int(sum(len(a[0] if isinstance(a, tuple) else a) for a in accepted.values())),
            "per_class": {c: {k: v[k] for k in ("precision", "recall", "tp", "fp", "fn")}
                          for c, v in q["per_class"].items()}}


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
    return markdown(head, [[f"{100 * r['fraction']:g}%", r["method"], *(_ms(r[k]) for _, k in METRICS),
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
    return markdown(["labelled", "student - continued (per seed)", "mean ± std", "kept - continued", "guard kept",
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
    return markdown(head, body)


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
