"""Honest learning-curve statistics: area under the curve per seed, paired differences to random on
the same seed, mean ± std over seeds, the share of the full-data mAP50 at each budget, and the
power-law forecast with its backtest.

Area under the curve (AUC): the piecewise-linear curve through (x, mAP50), integrated by trapezoids
from lo to hi and divided by hi - lo: a mean mAP50 over that stretch of labelling, in [0, 1], and
the same whether x counts images or their share of trainval (the division removes the scale). Two
x axes: the labels of the run's unit (images, or boxes drawn or verified at box level) and the
annotation seconds (`cost_seconds`: the simulated annotator's time, history.round_history, from
oracle.DRAW_SECONDS / VERIFY_SECONDS). Strategies spend seconds at different rates, so all runs of
one seed (and unit) are compared over their COMMON range [largest first x, smallest last x], the
curves interpolated linearly at the ends; a run cut short by an interrupted benchmark narrows that
range rather than being compared over a different one.

Paired difference: strategy AUC - baseline AUC on the same seed (same seed set and round-0 model),
over the seeds both have; its mean, sample std (ddof=1) and on how many seeds it is positive. A mean
gap smaller than its std is a tie. The baseline of "x+autolabel" is plain random of the same unit.

Written by hand: the AUC over a common range, the pairing and the grouping (statistics.group_runs);
numpy does the arithmetic, boxloop.loop.forecast the curve fits.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from boxloop.report.keys import (
    AP50, BOXES_LABELLED, COST_SECONDS, DEFAULT_UNIT, FULL_DATA_MAP50, IMAGES_LABELLED, MAP50, PER_CLASS, RARE_MEAN,
    ROUND, ROUNDS, SEED, SEMI, STRATEGY, UNIT,
)
from boxloop.report.sources import load_results
from boxloop.report.statistics import group_runs, as_float, rare_ap50, rare_classes

__all__ = ["normalised_auc", "paired", "mean_std", "curve_statistics", "per_class_statistics", "forecast_summary",
           "format_auc_table", "format_per_class_table", "format_forecast_table", "labelled_key"]


def labelled_key(unit: str) -> str:
    """The x of a run's learning curve: images at image level, boxes drawn or verified at box level."""
    return IMAGES_LABELLED if unit == "images" else BOXES_LABELLED


def evaluated_points(rows: Sequence[Mapping[str, Any]], x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, mAP50) of the evaluated rounds, sorted by x."""
    pts = [(as_float(r.get(x_key)), as_float(r.get(MAP50))) for r in rows]
    pts = [p for p in pts if np.isfinite(p[0]) and np.isfinite(p[1])]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = np.array(pts, np.float64).T
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def normalised_auc(x: Sequence[float], y: Sequence[float], lo: float | None = None, hi: float | None = None
                   ) -> float | None:
    """Trapezoid area under the piecewise-linear curve through (x, y) from lo to hi, / (hi - lo).

    lo, hi default to the first and last x; a range reaching beyond the points (no extrapolation),
    fewer than two points or an empty range give None."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.shape[0] < 2:
        return None
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    lo = float(x[0]) if lo is None else float(lo)
    hi = float(x[-1]) if hi is None else float(hi)
    eps = 1e-9 * max(1.0, abs(hi))
    if not (hi > lo and lo >= x[0] - eps and hi <= x[-1] + eps):
        return None
    inside = (x > lo) & (x < hi)
    xs = np.concatenate([[lo], x[inside], [hi]])
    ys = np.concatenate([[np.interp(lo, x, y)], y[inside], [np.interp(hi, x, y)]])
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0) / (hi - lo))


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """mean, sample std (ddof=1; None for one value) and count over the values that are numbers."""
    a = np.array([v for v in values if v is not None and np.isfinite(v)], np.float64)
    return {"mean": float(a.mean()) if a.size else None, "std": float(a.std(ddof=1)) if a.size > 1 else None,
            "n": int(a.size)}


def paired(a: Mapping[Any, float | None], b: Mapping[Any, float | None]) -> dict[str, Any]:
    """Per seed a - b over the seeds both have, with mean, sample std and on how many seeds a > b."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    diff = {s: float(a[s]) - float(b[s]) for s in seeds}  # type: ignore[arg-type]
    stats = mean_std(list(diff.values()))
    return {"per_seed": diff, "mean": stats["mean"], "std": stats["std"], "seeds": len(seeds),
            "above_on": int(sum(v > 0 for v in diff.values()))}


def _full_of(run: Mapping[str, Any], full_map50: float | Mapping[Any, float] | None) -> float | None:
    """The full-data mAP50 a run is measured against: given per seed, given once, or in its rows."""
    if isinstance(full_map50, Mapping):
        v = full_map50.get(run.get(SEED), full_map50.get(str(run.get(SEED))))
        return None if v is None else float(v)
    if full_map50 is not None:
        return float(full_map50)
    vals = [as_float(r.get(FULL_DATA_MAP50)) for r in run[ROUNDS]]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _unit(run: Mapping[str, Any]) -> str:
    return str(run.get(UNIT, DEFAULT_UNIT))


def _common_ranges(results: Mapping[str, Any]) -> dict[tuple[str, Any, str], tuple[float, float] | None]:
    """(unit, seed, x key) -> the range every run of that seed and unit covers."""
    spans: dict[tuple[str, Any, str], list[tuple[float, float]]] = {}
    for run in results["runs"]:
        for x_key in (labelled_key(_unit(run)), COST_SECONDS):
            x, _ = evaluated_points(run[ROUNDS], x_key)
            if x.shape[0] >= 2:
                spans.setdefault((_unit(run), run.get(SEED), x_key), []).append((float(x[0]), float(x[-1])))
    out = {}
    for k, v in spans.items():
        lo, hi = max(s[0] for s in v), min(s[1] for s in v)
        out[k] = (lo, hi) if hi > lo else None
    return out


def _baseline_of(groups: Mapping[str, Sequence[Mapping[str, Any]]], baseline: str, unit: str) -> str | None:
    """The group label of the baseline strategy at this unit (plain, without pseudo-labels)."""
    return next((lab for lab, runs in groups.items() if runs[0][STRATEGY] == baseline and not runs[0].get(SEMI)
                 and _unit(runs[0]) == unit), None)


def curve_statistics(results: Mapping[str, Any] | Any, full_map50: float | Mapping[Any, float] | None = None,
                     baseline: str = "random") -> dict[str, Any]:
    """Per strategy (group) and seed: AUC against labels and against annotation seconds over the
    seed's common range, mean ± std over seeds, the paired difference to `baseline` on the same seed,
    and the share of the full-data mAP50 at each round (when a full-data mAP50 is known)."""
    results = load_results(results)
    ranges = _common_ranges(results)
    groups = group_runs(results)
    out: dict[str, Any] = {"baseline": baseline, "strategies": {},
                           "ranges": {f"{u}/seed{s}/{k}": list(r) if r else None for (u, s, k), r in ranges.items()}}
    aucs: dict[str, dict[str, dict[Any, float | None]]] = {}
    for label, runs in groups.items():
        unit = _unit(runs[0])
        entry: dict[str, Any] = {"unit": unit, "strategy": runs[0][STRATEGY], "semi": runs[0].get(SEMI),
                                 "x_labelled": labelled_key(unit)}
        per = {"auc_labelled": {}, "auc_seconds": {}}
        shares: dict[int, dict[Any, float]] = {}
        xs: dict[int, list[float]] = {}
        fallbacks: dict[Any, list[dict[str, Any]]] = {}
        for run in runs:
            seed = run.get(SEED)
            fb = [{"round": int(r[ROUND]), "strategy": r["fallback"].get("strategy")} for r in run[ROUNDS]
                  if isinstance(r.get("fallback"), Mapping)]
            if fb:  # rounds whose model kept no box: their query was not the strategy's own (boxloop.loop.fallback)
                fallbacks[seed] = fb
            for name, x_key in (("auc_labelled", labelled_key(unit)), ("auc_seconds", COST_SECONDS)):
                rng = ranges.get((unit, seed, x_key))
                x, y = evaluated_points(run[ROUNDS], x_key)
                per[name][seed] = normalised_auc(x, y, *rng) if rng else None
            full = _full_of(run, full_map50)
            if full:
                for row in run[ROUNDS]:
                    m = as_float(row.get(MAP50))
                    if np.isfinite(m):
                        shares.setdefault(int(row[ROUND]), {})[seed] = m / full
                        xs.setdefault(int(row[ROUND]), []).append(as_float(row.get(labelled_key(unit))))
        for name in per:
            entry[name] = {"per_seed": per[name], **mean_std(list(per[name].values()))}
        entry["fallback_rounds"] = fallbacks
        if shares:
            entry["share_of_full"] = [{"round": r, "labelled": float(np.nanmean(xs[r])), "per_seed": shares[r],
                                       **mean_std(list(shares[r].values()))} for r in sorted(shares)]
        aucs[label] = per
        out["strategies"][label] = entry
    for label, entry in out["strategies"].items():
        base = _baseline_of(groups, baseline, entry["unit"])
        if base is None or base == label:
            continue
        entry["baseline"] = base
        entry["minus_baseline"] = {name: paired(aucs[label][name], aucs[base][name]) for name in aucs[label]}
    return out


def per_class_statistics(results: Mapping[str, Any] | Any, baseline: str = "random") -> dict[str, Any]:
    """Per strategy and class, and for the rare classes' mean (RARE_MEAN, when the runs name rare
    classes): AP50 per round (per seed, mean ± std), the AUC of each seed's per-class curve against
    labels over the seed's common range (as curve_statistics), and its paired difference to
    `baseline`. A round where a class has no AP (no test box) is left out of that class's curve."""
    results = load_results(results)
    rare = rare_classes(results)
    ranges = _common_ranges(results)
    groups = group_runs(results)
    out: dict[str, Any] = {"baseline": baseline, "rare_classes": rare, "strategies": {}}
    aucs: dict[str, dict[str, dict[Any, float | None]]] = {}
    for label, runs in groups.items():
        unit = _unit(runs[0])
        x_key = labelled_key(unit)
        names = sorted({c for run in runs for row in run[ROUNDS] for c in (row.get(PER_CLASS) or {})})
        getters = {c: (lambda row, c=c: as_float(((row.get(PER_CLASS) or {}).get(c) or {}).get(AP50))) for c in names}
        if rare:
            getters[RARE_MEAN] = lambda row: rare_ap50(row, rare)
        classes: dict[str, Any] = {}
        for name, get in getters.items():
            per_round: dict[int, dict[Any, float]] = {}
            auc: dict[Any, float | None] = {}
            for run in runs:
                seed = run.get(SEED)
                for row in run[ROUNDS]:
                    per_round.setdefault(int(row[ROUND]), {})[seed] = get(row)
                rng = ranges.get((unit, seed, x_key))
                x = [as_float(row.get(x_key)) for row in run[ROUNDS]]
                auc[seed] = normalised_auc(x, [get(row) for row in run[ROUNDS]], *rng) if rng else None
            classes[name] = {"rounds": [{"round": r, "per_seed": v, **mean_std(list(v.values()))}
                                        for r, v in sorted(per_round.items())],
                             "auc_labelled": {"per_seed": auc, **mean_std(list(auc.values()))}}
        aucs[label] = {n: c["auc_labelled"]["per_seed"] for n, c in classes.items()}
        out["strategies"][label] = {"unit": unit, "classes": classes}
    for label, entry in out["strategies"].items():
        base = _baseline_of(groups, baseline, entry["unit"])
        if base is None or base == label:
            continue
        entry["baseline"] = base
        for name, c in entry["classes"].items():
            if name in aucs[base]:
                c["auc_minus_baseline"] = paired(aucs[label][name], aucs[base][name])
    return out


def format_per_class_table(stats: Mapping[str, Any]) -> str:
    """Markdown: strategy x class (the rare classes' mean first), AUC of AP50 against labels mean ±
    std, its paired difference to the baseline, and AP50 at the last round."""
    head = ["strategy", "class", "AUC AP50 mean ± std", f"Δ {stats['baseline']} (per seed)", "mean Δ",
            "last round AP50"]
    body = []
    for label, entry in stats["strategies"].items():
        order = sorted(entry["classes"], key=lambda n: (n != RARE_MEAN, n))
        for name in order:
            c = entry["classes"][name]
            d = c.get("auc_minus_baseline")
            last = c["rounds"][-1] if c["rounds"] else {"mean": None, "std": None}
            body.append([label, name + (f" ({', '.join(stats['rare_classes'])})" if name == RARE_MEAN else ""),
                         _ms(c["auc_labelled"]), "-" if not d else
                         ", ".join(f"{v:+.3f}" for v in d["per_seed"].values()),
                         "-" if not d else _ms(d, signed=True), _ms(last)])
    return _markdown(head, body)


def forecast_summary(results: Mapping[str, Any] | Any, backtest_k: int | None = None, boots: int = 200
                     ) -> dict[str, Any]:
    """Per strategy: the power-law forecast of the next budget on the mean-over-seeds curve, and a
    backtest per seed (fit on the first `backtest_k` rounds, default max(3, ceil(rounds / 2)), predict
    the rest) with the mean absolute error, the mean error of the next round and the interval coverage."""
    from boxloop.loop.forecast import MIN_POINTS, backtest, forecast

    results = load_results(results)
    out: dict[str, Any] = {}
    for label, runs in group_runs(results).items():
        x_key = labelled_key(_unit(runs[0]))
        by_round: dict[int, list[tuple[float, float]]] = {}
        for run in runs:
            for row in run[ROUNDS]:
                x, m = as_float(row.get(x_key)), as_float(row.get(MAP50))
                if np.isfinite(x) and np.isfinite(m):
                    by_round.setdefault(int(row[ROUND]), []).append((x, m))
        pts = [tuple(np.mean(v, axis=0)) for _, v in sorted(by_round.items())]
        entry: dict[str, Any] = {"x": x_key, "rounds": len(pts)}
        if len({round(p[0], 6) for p in pts}) >= MIN_POINTS:
            n, y = map(np.array, zip(*pts))
            entry["forecast"] = forecast(n, y, boots=boots)
        tests = {}
        for run in runs:
            x, y = evaluated_points(run[ROUNDS], x_key)
            k = backtest_k or max(MIN_POINTS, math.ceil(x.shape[0] / 2))
            bt = backtest(x, y, k, boots=boots)
            if bt is not None:
                tests[run.get(SEED)] = bt
        if tests:
            errs = [p["error"] for bt in tests.values() for p in bt["points"]]
            entry["backtest"] = {"per_seed": tests, "fit_on": sorted({bt["fit_on"] for bt in tests.values()}),
                                 "mae": float(np.mean(np.abs(errs))), "bias": float(np.mean(errs)),
                                 "next_round_mae": float(np.mean([abs(bt["next_error"]) for bt in tests.values()])),
                                 "coverage": float(np.mean([p["inside"] for bt in tests.values()
                                                            for p in bt["points"]]))}
        out[label] = entry
    return out


def _ms(d: Mapping[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    if not d or d.get("mean") is None:
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f.format(d["mean"]) + ("" if d.get("std") is None else f" ± {d['std']:.{digits}f}")


def format_auc_table(stats: Mapping[str, Any]) -> str:
    """Markdown: AUC per strategy (mean ± std, per seed) and the paired difference to the baseline."""
    head = ["strategy", "AUC vs labels", "per seed", "Δ vs random (above on)", "AUC vs seconds", "Δ vs random (above on)"]
    body = []
    for label, e in stats["strategies"].items():
        per = ", ".join(f"{s}: {v:.3f}" for s, v in sorted(e["auc_labelled"]["per_seed"].items(), key=lambda t: str(t[0]))
                        if v is not None) or "-"
        mb = e.get("minus_baseline", {})

        def diff(name: str) -> str:
            d = mb.get(name)
            return "-" if not d or d["mean"] is None else f"{_ms(d, signed=True)} ({d['above_on']}/{d['seeds']})"

        body.append([label, _ms(e["auc_labelled"]), per, diff("auc_labelled"), _ms(e["auc_seconds"]),
                     diff("auc_seconds")])
    text = _markdown(head, body)
    fbs = [f"{label} seed {seed}: " + ", ".join(f"r{f['round']} {f['strategy']}" for f in fb)
           for label, e in stats["strategies"].items() for seed, fb in e.get("fallback_rounds", {}).items()]
    if fbs:
        text += "\nrounds that took a fallback (the model kept no box; not the strategy's own choice): " + "; ".join(fbs)
    return text


def format_forecast_table(fc: Mapping[str, Any]) -> str:
    """Markdown: per strategy the next budget's forecast, the plateau and the backtest error."""
    head = ["strategy", "next budget", "forecast mAP50 [90%]", "gain [90%]", "plateau [90%]", "backtest MAE",
            "next-round MAE", "coverage"]
    body = []
    for label, e in fc.items():
        f = e.get("forecast")
        bt = e.get("backtest")
        row = [label]
        if f:
            nx = f["next"][0]
            lo, hi = f["plateau_interval"]
            row += [f"{nx['n']:.0f}", f"{nx['map50']:.3f} [{nx['interval'][0]:.3f}, {nx['interval'][1]:.3f}]",
                    f"{nx['gain']:+.3f} [{nx['gain_interval'][0]:+.3f}, {nx['gain_interval'][1]:+.3f}]",
                    f"not in sight (>= {lo:.3f})" if f["plateau"] >= 0.999 else f"{f['plateau']:.3f} [{lo:.3f}, {hi:.3f}]"]
        else:
            row += ["-"] * 4
        row += ([f"{bt['mae']:.3f} (fit on {bt['fit_on']})", f"{bt['next_round_mae']:.3f}", f"{100 * bt['coverage']:.0f}%"]
                if bt else ["-"] * 3)
        body.append(row)
    return _markdown(head, body)


def _markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])
