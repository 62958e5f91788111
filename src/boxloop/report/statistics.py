"""The report's numbers: runs grouped by strategy, rounds aligned across seeds, the learning-curve
table, and the summary (best strategy, labels spent, cost, plateau test).

Written by hand: the grouping (strategy + semi variant, + unit when both units are present), aligning
rounds across seeds, treating a missing or None metric as NaN (a round not evaluated yet), the plateau
rule and the Markdown table. numpy does the statistics (mean, sample std with ddof=1, min, max).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from boxloop.report.keys import (
    AP50, BOXES_LABELLED, COCO_AP, COST_SECONDS, DEFAULT_UNIT, IMAGES_LABELLED, MAP50, PER_CLASS, RARE_CLASSES,
    ROUND, ROUNDS, RUNS, SEMI, STRATEGY, UNIT,
)
from boxloop.report.sources import load_results

__all__ = ["learning_curve_table", "format_table", "summarize", "rare_classes", "rare_ap50"]


def as_float(x: Any) -> float:
    """A metric as float, None and missing as NaN (a round that was not evaluated)."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _run_label(run: Mapping[str, Any], units: set[str]) -> str:
    label = str(run[STRATEGY])
    if run.get(SEMI):
        label += f"+{run[SEMI]}"
    if len(units) > 1:
        label += f" ({run.get(UNIT, DEFAULT_UNIT)})"
    return label


def group_runs(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by strategy (+ semi variant, + unit when both units are present), in first-seen order."""
    units = {str(r.get(UNIT, DEFAULT_UNIT)) for r in results[RUNS]}
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in results[RUNS]:
        groups.setdefault(_run_label(run, units), []).append(run)
    return groups


def rare_classes(results: Mapping[str, Any]) -> list[str]:
    """The rare classes the runs name (a benchmark sets them per run from its pool), first seen first."""
    return list(dict.fromkeys(c for run in results[RUNS] for c in run.get(RARE_CLASSES) or []))


def rare_ap50(row: Mapping[str, Any], rare: Sequence[str]) -> float:
    """One round's mean AP50 over the rare classes that have an AP (a class without test boxes has
    none and is left out, not counted as 0); NaN when none has."""
    per = row.get(PER_CLASS) or {}
    vals = [as_float((per.get(c) or {}).get(AP50)) for c in rare]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def rows_by_round(runs: Sequence[Mapping[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Round number -> that round's row from every seed that reached it."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        for row in run[ROUNDS]:
            out[int(row[ROUND])].append(row)
    return dict(sorted(out.items()))


def _stats(values: Sequence[float]) -> tuple[float, float, float, float, int]:
    """mean, sample std (ddof=1; 0 for one seed), min, max, count over the finite values."""
    a = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return float(a.mean()), std, float(a.min()), float(a.max()), int(a.size)


def mean_of(rows: Sequence[Mapping[str, Any]], key: str, divisor: float = 1.0) -> float:
    """Mean over seeds of row[key] / divisor; NaN when no seed has it."""
    return _stats([as_float(row.get(key)) / divisor for row in rows])[0]


def mean_curve(runs: Sequence[Mapping[str, Any]], x_key: str, y_key: str = MAP50
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x (mean over seeds), y mean, y min, y max per round; rounds with no finite y are dropped."""
    xs, ys, lo, hi = [], [], [], []
    for _, rows in rows_by_round(runs).items():
        mean, _, mn, mx, n = _stats([as_float(r.get(y_key)) for r in rows])
        x = mean_of(rows, x_key)
        if n == 0 or not np.isfinite(x):
            continue
        xs.append(x), ys.append(mean), lo.append(mn), hi.append(mx)
    return np.array(xs), np.array(ys), np.array(lo), np.array(hi)


def per_round_means(runs: Sequence[Mapping[str, Any]], key: str, inner: str | None = None
                    ) -> tuple[list[int], dict[str, np.ndarray]]:
    """Rounds and, per name, the mean over seeds of row[key][name] (or row[key][name][inner])."""
    rounds = []
    values: dict[str, list[float]] = {}
    for r, rows in rows_by_round(runs).items():
        dicts = [row.get(key) for row in rows if isinstance(row.get(key), Mapping) and row.get(key)]
        if not dicts:
            continue
        names = sorted({n for d in dicts for n in d})
        idx = len(rounds)
        rounds.append(r)
        for name in names:
            vals = []
            for d in dicts:
                v = d.get(name)
                if inner is not None:
                    v = v.get(inner) if isinstance(v, Mapping) else None
                vals.append(as_float(v))
            values.setdefault(name, [math.nan] * idx)
            values[name].append(_stats(vals)[0])
        for name, col in values.items():
            if len(col) < idx + 1:
                col.append(math.nan)
    return rounds, {n: np.asarray(v, dtype=np.float64) for n, v in values.items()}


def _spent(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Labels spent and cost at one round, mean over seeds: the columns the table and summary share."""
    return {"images_labelled": mean_of(rows, IMAGES_LABELLED), "boxes_labelled": mean_of(rows, BOXES_LABELLED),
            "cost_hours": mean_of(rows, COST_SECONDS, 3600.0)}


def learning_curve_table(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Strategy x round: mean ± sample std (ddof=1) over seeds of mAP50, with labels spent and cost, and
    the rare classes' mean AP50 (mean ± std; NaN when the runs name no rare classes)."""
    results = load_results(results)
    rare = rare_classes(results)
    rows = []
    for lab, runs in group_runs(results).items():
        for r, rs in rows_by_round(runs).items():
            mean, std, mn, mx, n = _stats([as_float(x.get(MAP50)) for x in rs])
            rare_mean, rare_std, _, _, _ = _stats([rare_ap50(x, rare) for x in rs])
            rows.append({
                "strategy": lab, "round": r, "seeds": len(rs), "evaluated": n, **_spent(rs),
                "map50_mean": mean, "map50_std": std, "map50_min": mn, "map50_max": mx,
                "coco_ap_mean": mean_of(rs, COCO_AP), "rare_ap50_mean": rare_mean, "rare_ap50_std": rare_std,
            })
    return rows


def fmt_number(x: float, digits: int = 0) -> str:
    return "-" if not np.isfinite(x) else f"{x:.{digits}f}"


def mean_std_text(row: Mapping[str, Any]) -> str:
    if not np.isfinite(row["map50_mean"]):
        return "-"
    return f"{row['map50_mean']:.3f} ± {row['map50_std']:.3f}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as Markdown (reads as plain text in a terminal, pastes into a closing note)."""
    head = ["strategy", "round", "images", "boxes", "cost h", "mAP50 mean ± std", "seeds"]
    body = [[str(r["strategy"]), str(r["round"]), fmt_number(r["images_labelled"], 1), fmt_number(r["boxes_labelled"], 1),
             fmt_number(r["cost_hours"], 2), mean_std_text(r),
             str(r["evaluated"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def summarize(results: Mapping[str, Any], flat_rounds: int = 2, flat_gain: float = 0.01) -> dict[str, Any]:
    """Best strategy by last-round mean mAP50, what it cost, and whether its curve has flattened.

    Flattened: the mean mAP50 gained less than `flat_gain` over the last `flat_rounds` rounds (the
    plateau stopping rule of LocAwareAL §5.2.3); None when there are not enough evaluated rounds.
    """
    results = load_results(results)
    per = {}
    for lab, runs in group_runs(results).items():
        pts = [(r, mean_of(rs, MAP50), rs) for r, rs in rows_by_round(runs).items()]
        pts = [p for p in pts if np.isfinite(p[1])]
        if not pts:
            continue
        r, last, rs = pts[-1]
        gain = last - pts[-1 - flat_rounds][1] if len(pts) > flat_rounds else None
        per[lab] = {
            "strategy": lab, "seeds": len(runs), "last_round": r, "last_map50": last, **_spent(rs),
            "gain_last_rounds": gain,
            "flattened": None if gain is None else bool(gain < flat_gain),
        }
    best = max(per.values(), key=lambda d: d["last_map50"]) if per else None
    return {"best": best, "strategies": per, "flat_rounds": flat_rounds, "flat_gain": flat_gain,
            "runs": len(results[RUNS])}
