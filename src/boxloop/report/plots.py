"""The report's plots: learning curves against images, boxes and annotation cost, the power-law
forecast, per-class AP50, labelled objects per class, selection thresholds and pseudo-label counts,
per round.

Written by hand: which plots exist (one only where its data is present), the layout of each, and one
thin line per seed beside the mean. matplotlib draws them with its object-oriented API on the Agg canvas, so no
pyplot state and no display is touched; the numbers come from statistics.py.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from boxloop.report.curves import evaluated_points, labelled_key
from boxloop.report.keys import (
    AP50, BOXES_LABELLED, COST_SECONDS, FULL_DATA_MAP50, IMAGES_LABELLED, LABELLED_PER_CLASS, PER_CLASS,
    MAP50, PSEUDO_BOXES, PSEUDO_IMAGES, ROUNDS, THRESHOLDS,
)
from boxloop.report.sources import load_results
from boxloop.report.statistics import (
    rows_by_round, mean_curve, group_runs, mean_of, as_float, per_round_means, rare_ap50, rare_classes,
)

__all__ = ["plot_learning_curves"]

_DPI = 100
Groups = Mapping[str, Sequence[Mapping[str, Any]]]  # run label -> that label's runs (one per seed)


def _colours(labels: Iterable[str], cmap: str = "tab10") -> dict[str, Any]:
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    return {lab: cm(i % cm.N) for i, lab in enumerate(labels)}


def _legend(label: str) -> str:
    """A legend label shown as written: matplotlib leaves out labels starting with '_' (a class named
    '_Platelets'), so those get a zero-width space in front."""
    return "\u200b" + label if label.startswith("_") else label


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _integer_x(ax: Any) -> None:
    """Rounds are whole numbers; keep matplotlib from ticking 0.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _full_data_line(ax: Any, groups: Groups) -> None:
    vals = [as_float(row.get(FULL_DATA_MAP50)) for runs in groups.values() for run in runs for row in run[ROUNDS]]
    vals = [v for v in vals if np.isfinite(v)]
    if vals:
        v = float(np.mean(vals))
        ax.axhline(v, color="black", linestyle="--", linewidth=1, label=f"full data ({v:.3f})")


def _seed_lines(ax: Any, runs: Sequence[Mapping[str, Any]], x_key: str, colour: Any, x_scale: float = 1.0) -> None:
    """One thin line per seed: the spread the mean hides (issue 13: not only the mean)."""
    for run in runs:
        x, y = evaluated_points(run[ROUNDS], x_key)
        if len(x):
            ax.plot(x / x_scale, y, color=colour, linewidth=0.8, alpha=0.35)


def _learning_curve_figure(groups: Groups, x_key: str, xlabel: str, what: str = "mAP50") -> Figure | None:
    colours = _colours(groups)
    curves = {lab: mean_curve(runs, x_key) for lab, runs in groups.items()}
    if not any(len(c[0]) for c in curves.values()):
        return None
    fig = _new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    for lab, (x, y, lo, hi) in curves.items():
        if not len(x):
            continue
        n = len(groups[lab])
        ax.plot(x, y, marker="o", markersize=3, linewidth=2, color=colours[lab], label=_legend(f"{lab} (n={n})"))
        if n > 1:
            _seed_lines(ax, groups[lab], x_key, colours[lab])
    _full_data_line(ax, groups)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{what} (test set)")
    ax.set_title(f"{what} against {xlabel}: mean over seeds (thick), one thin line per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _rare_groups(groups: Groups, rare: Sequence[str]) -> Groups:
    """The runs with mAP50 replaced by the rare classes' mean AP50: the learning-curve figure, drawn
    again for the classes selection is meant to find (no full-data line: its rare AP is not in the rows)."""
    return {lab: [{**run, ROUNDS: [{**{k: v for k, v in row.items() if k != FULL_DATA_MAP50},
                                    MAP50: rare_ap50(row, rare)} for row in run[ROUNDS]]} for run in runs]
            for lab, runs in groups.items()}


def _cost_figure(groups: Groups) -> Figure | None:
    colours = _colours(groups)
    data = {}
    for lab, runs in groups.items():
        rounds, hours = [], []
        for r, rows in rows_by_round(runs).items():
            h = mean_of(rows, COST_SECONDS, 3600.0)
            if np.isfinite(h):
                rounds.append(r), hours.append(h)
        data[lab] = (rounds, hours, mean_curve(runs, COST_SECONDS))
    if not any(d[0] for d in data.values()):
        return None
    fig = _new_figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    for lab, (rounds, hours, (x, y, lo, hi)) in data.items():
        if rounds:
            ax1.plot(rounds, hours, marker="o", markersize=3, color=colours[lab], label=_legend(lab))
        if len(x):
            ax2.plot(x / 3600.0, y, marker="o", markersize=3, linewidth=2, color=colours[lab], label=_legend(lab))
            if len(groups[lab]) > 1:
                _seed_lines(ax2, groups[lab], COST_SECONDS, colours[lab], 3600.0)
    ax1.set_xlabel("round")
    _integer_x(ax1)
    ax1.set_ylabel("annotation cost so far (hours)")
    ax1.set_title("Cumulative annotation cost (mean over seeds)")
    ax2.set_xlabel("annotation cost (hours)")
    ax2.set_ylabel("mAP50 (test set)")
    ax2.set_title("mAP50 against annotation cost")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _small_multiples(groups: Groups, key: str, inner: str | None, ylabel: str, title: str,
                     bars: bool = False) -> Figure | None:
    """One panel per strategy, one line (or stacked bar) per class, mean over seeds per round."""
    panels = {}
    for lab, runs in groups.items():
        rounds, per_name = per_round_means(runs, key, inner)
        if rounds and per_name:
            panels[lab] = (rounds, per_name)
    if not panels:
        return None
    names = sorted({n for _, per in panels.values() for n in per})
    colours = _colours(names, "tab20" if len(names) > 10 else "tab10")
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig = _new_figure(4.6 * ncol + 1.6, 3.4 * nrow + 0.5)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, (lab, (rounds, per)) in zip(axes, panels.items()):
        if bars:
            bottom = np.zeros(len(rounds))
            for name in names:
                if name in per:
                    v = np.nan_to_num(per[name])
                    ax.bar(rounds, v, bottom=bottom, color=colours[name], label=_legend(name), width=0.8)
                    bottom += v
        else:
            for name in names:
                if name in per:
                    ax.plot(rounds, per[name], marker="o", markersize=3, color=colours[name], label=_legend(name))
        ax.set_title(lab, fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _integer_x(ax)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[1:len(panels)]:
        for h, lbl in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lbl, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    return fig


def _pseudo_figure(groups: Groups) -> Figure | None:
    colours = _colours(groups)
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for key in (PSEUDO_IMAGES, PSEUDO_BOXES):
        for lab, runs in groups.items():
            rounds, vals = [], []
            for r, rows in rows_by_round(runs).items():
                v = mean_of(rows, key)
                if np.isfinite(v):
                    rounds.append(r), vals.append(v)
            if rounds:
                series.setdefault(key, {})[lab] = (rounds, vals)
    if not series:
        return None
    fig = _new_figure(11, 4.0)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, (PSEUDO_IMAGES, PSEUDO_BOXES)):
        for lab, (rounds, vals) in series.get(key, {}).items():
            ax.plot(rounds, vals, marker="o", markersize=3, color=colours[lab], label=_legend(lab))
        ax.set_xlabel("round")
        _integer_x(ax)
        ax.set_ylabel(key.replace("_", " ") + " accepted")
        ax.set_title(f"Auto-labels per round: {key.split('_')[1]} (mean over seeds)")
        ax.grid(alpha=0.3)
        if series.get(key):
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    return fig


def _forecast_figure(groups: Groups) -> Figure | None:
    """Mean curve per strategy, the power law fitted to it, extended half as far again with its 90%
    band (boxloop.loop.forecast): where the curve is heading and how sure that is."""
    from boxloop.loop.forecast import MIN_POINTS, forecast

    colours = _colours(groups)
    drawn = []
    fig = _new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    units = set()
    for lab, runs in groups.items():
        unit = str(runs[0].get("unit", "images"))
        x, y, _, _ = mean_curve(runs, labelled_key(unit))
        if len(np.unique(x)) < MIN_POINTS:
            continue
        grid = np.linspace(x.min(), 1.5 * x.max(), 40)
        try:
            fc = forecast(x, y, grid, boots=100)
        except ValueError:
            continue
        pred = np.array([p["map50"] for p in fc["next"]])
        lo = np.array([p["interval"][0] for p in fc["next"]])
        hi = np.array([p["interval"][1] for p in fc["next"]])
        ax.plot(x, y, "o", markersize=4, color=colours[lab])
        ax.plot(grid, pred, "--", color=colours[lab], label=_legend(f"{lab}: plateau {fc['plateau']:.3f}"))
        ax.fill_between(grid, lo, hi, color=colours[lab], alpha=0.12, linewidth=0)
        drawn.append(lab)
        units.add(unit)
    if not drawn:
        return None
    _full_data_line(ax, groups)
    ax.set_xlabel("boxes labelled" if units == {"boxes"} else "images labelled" if units == {"images"} else "labels")
    ax.set_ylabel("mAP50 (test set)")
    ax.set_title("Forecast: a - b n^-c fitted to the mean curve (90% band)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def report_figures(results: Mapping[str, Any]) -> Iterable[tuple[str, str, Figure]]:
    """(file stem, caption, figure) for every plot whose data is present, in report order."""
    groups = group_runs(results)
    rare = rare_classes(results)
    specs: list[tuple[str, str, Callable[[], Figure | None]]] = [
        ("map50_vs_images", "mAP50 against images labelled",
         lambda: _learning_curve_figure(groups, IMAGES_LABELLED, "images labelled")),
        ("map50_vs_boxes", "mAP50 against boxes labelled (drawn or verified)",
         lambda: _learning_curve_figure(groups, BOXES_LABELLED, "boxes labelled")),
        ("cost_hours", "Annotation cost in hours (drawing 50.8 s, verifying 21.9 s per box: LocAwareAL §5.3)",
         lambda: _cost_figure(groups)),
        ("forecast", "Learning-curve forecast: where more labels are heading (boxloop.loop.forecast)",
         lambda: _forecast_figure(groups)),
        ("rare_classes_ap50", f"Rare classes ({', '.join(rare)}): their mean AP50 against images labelled",
         lambda: _learning_curve_figure(_rare_groups(groups, rare), IMAGES_LABELLED, "images labelled",
                                        "rare-class AP50") if rare else None),
        ("per_class_ap50", "Per-class AP50 per round (LocAwareAL Fig. 6.6)",
         lambda: _small_multiples(groups, PER_CLASS, AP50, "AP50", "Per-class AP50 per round")),
        ("labelled_per_class", "Labelled objects per class per round (LocAwareAL Fig. 6.7)",
         lambda: _small_multiples(groups, LABELLED_PER_CLASS, None, "labelled objects",
                                  "Labelled objects per class per round", bars=True)),
        ("thresholds", "Per-class selection thresholds per round (LocAwareAL Fig. 6.5)",
         lambda: _small_multiples(groups, THRESHOLDS, None, "threshold",
                                  "Per-class selection thresholds per round")),
        ("pseudo_labels", "Pseudo-labels accepted per round", lambda: _pseudo_figure(groups)),
    ]
    import matplotlib

    for stem, caption, make in specs:
        with matplotlib.rc_context({"text.parse_math": False}):  # a class named '$\\foo$' is text, not TeX
            fig = make()
        if fig is not None:
            yield stem, caption, fig


def plot_learning_curves(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write every plot whose data is present as OUT_DIR/<name>.png; returns name -> path."""
    results = load_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, _, fig in report_figures(results):
        path = out_dir / f"{stem}.png"
        fig.savefig(path, format="png", dpi=_DPI)
        paths[stem] = path
    return paths
