"""Plots and a self-contained HTML report of an active-learning / auto-labelling run.

Input is the results schema that `simulate` writes (OUT/results.json: runs of strategy x seed, each a
list of rounds with images/boxes labelled, cost, mAP50, per-class AP, labelled objects per class,
selection thresholds and pseudo-label counts) and optionally OUT/gallery.json (the last query, boxes
with their provenance). It answers the question of seed 003 Figs 6.5-6.8 and seed 002 Figs 3-4: what
did each label buy, and does labelling still pay?

Written by hand: grouping runs by strategy, aligning rounds across seeds (mean and min-max spread),
the summary (best strategy, labels spent, cost, plateau test), the table, the gallery drawing and the
HTML page. matplotlib draws the plots (object-oriented API on the Agg canvas, so no pyplot state and no
display is touched), Pillow decodes images and draws the gallery, numpy does the statistics. No torch
import and no network: every image is inlined as a base64 PNG data URI.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "PROVENANCE_COLOURS",
    "plot_learning_curves",
    "learning_curve_table",
    "format_table",
    "summarize",
    "render_gallery",
    "write_report",
    "load_results",
]

# Colour of a box by where it came from (Source values in structures.py).
PROVENANCE_COLOURS: dict[str, tuple[int, int, int]] = {
    "human": (30, 170, 60),  # green
    "pseudo": (40, 100, 230),  # blue
    "predicted": (245, 140, 20),  # orange
    "background": (140, 140, 140),  # grey, drawn dashed
}
_DPI = 100


# --------------------------------------------------------------------------------------------------
# Reading and grouping the results
# --------------------------------------------------------------------------------------------------

def load_results(source: Path | str | Mapping[str, Any]) -> dict[str, Any]:
    """The results dict from a dict, a results.json file, or a directory holding results.json."""
    if isinstance(source, Mapping):
        results = dict(source)
        where = "results dict"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no results.json here; give a `boxloop simulate --out` directory "
                                    "or a results.json file")
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); re-run the command that wrote it") from e
        where = str(path)
    runs = results.get("runs") if isinstance(results, dict) else None
    if not isinstance(runs, list):
        raise ValueError(f"{where}: expected an object with a 'runs' list (the schema `boxloop simulate` writes)")
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or "strategy" not in run or not isinstance(run.get("rounds"), list):
            raise ValueError(f"{where}: runs[{i}] needs a 'strategy' and a 'rounds' list")
    return results


def _num(x: Any) -> float:
    """A metric as float, None and missing as NaN (a round that was not evaluated)."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _run_label(run: Mapping[str, Any], units: set[str]) -> str:
    label = str(run["strategy"])
    if run.get("semi"):
        label += f"+{run['semi']}"
    if len(units) > 1:
        label += f" ({run.get('unit', 'images')})"
    return label


def _group(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by strategy (+ semi variant, + unit when both units are present), in first-seen order."""
    units = {str(r.get("unit", "images")) for r in results["runs"]}
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        groups.setdefault(_run_label(run, units), []).append(run)
    return groups


def _by_round(runs: Sequence[Mapping[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Round number -> that round's row from every seed that reached it."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        for row in run["rounds"]:
            out[int(row["round"])].append(row)
    return dict(sorted(out.items()))


def _stats(values: Sequence[float]) -> tuple[float, float, float, float, int]:
    """mean, sample std (ddof=1; 0 for one seed), min, max, count over the finite values."""
    a = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return float(a.mean()), std, float(a.min()), float(a.max()), int(a.size)


def _curve(runs: Sequence[Mapping[str, Any]], x_key: str, y_key: str = "map50"
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x (mean over seeds), y mean, y min, y max per round; rounds with no finite y are dropped."""
    xs, ys, lo, hi = [], [], [], []
    for _, rows in _by_round(runs).items():
        mean, _, mn, mx, n = _stats([_num(r.get(y_key)) for r in rows])
        x = _stats([_num(r.get(x_key)) for r in rows])[0]
        if n == 0 or not np.isfinite(x):
            continue
        xs.append(x), ys.append(mean), lo.append(mn), hi.append(mx)
    return np.array(xs), np.array(ys), np.array(lo), np.array(hi)


def _per_round_dict(runs: Sequence[Mapping[str, Any]], key: str, inner: str | None = None
                    ) -> tuple[list[int], dict[str, np.ndarray]]:
    """Rounds and, per name, the mean over seeds of row[key][name] (or row[key][name][inner])."""
    rounds = []
    values: dict[str, list[float]] = {}
    for r, rows in _by_round(runs).items():
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
                vals.append(_num(v))
            values.setdefault(name, [math.nan] * idx)
            values[name].append(_stats(vals)[0])
        for name, col in values.items():
            if len(col) < idx + 1:
                col.append(math.nan)
    return rounds, {n: np.asarray(v, dtype=np.float64) for n, v in values.items()}


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------

def _colours(labels: Iterable[str], cmap: str = "tab10") -> dict[str, Any]:
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    return {lab: cm(i % cm.N) for i, lab in enumerate(labels)}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _integer_x(ax: Any) -> None:
    """Rounds are whole numbers; keep matplotlib from ticking 0.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _full_data_line(ax: Any, groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    vals = [_num(row.get("full_data_map50")) for runs in groups.values() for run in runs for row in run["rounds"]]
    vals = [v for v in vals if np.isfinite(v)]
    if vals:
        v = float(np.mean(vals))
        ax.axhline(v, color="black", linestyle="--", linewidth=1, label=f"full data ({v:.3f})")


def _learning_curve_figure(groups: Mapping[str, Sequence[Mapping[str, Any]]], x_key: str, xlabel: str
                           ) -> Figure | None:
    colours = _colours(groups)
    curves = {lab: _curve(runs, x_key) for lab, runs in groups.items()}
    if not any(len(c[0]) for c in curves.values()):
        return None
    fig = _new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    for lab, (x, y, lo, hi) in curves.items():
        if not len(x):
            continue
        n = len(groups[lab])
        ax.plot(x, y, marker="o", markersize=3, color=colours[lab], label=f"{lab} (n={n})")
        if n > 1:
            ax.fill_between(x, lo, hi, color=colours[lab], alpha=0.2, linewidth=0)
    _full_data_line(ax, groups)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mAP50 (test set)")
    ax.set_title(f"mAP50 against {xlabel}: mean over seeds, band = min-max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _cost_figure(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure | None:
    colours = _colours(groups)
    data = {}
    for lab, runs in groups.items():
        rounds, hours = [], []
        for r, rows in _by_round(runs).items():
            h = _stats([_num(row.get("cost_seconds")) / 3600.0 for row in rows])[0]
            if np.isfinite(h):
                rounds.append(r), hours.append(h)
        data[lab] = (rounds, hours, _curve(runs, "cost_seconds"))
    if not any(d[0] for d in data.values()):
        return None
    fig = _new_figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    for lab, (rounds, hours, (x, y, lo, hi)) in data.items():
        if rounds:
            ax1.plot(rounds, hours, marker="o", markersize=3, color=colours[lab], label=lab)
        if len(x):
            ax2.plot(x / 3600.0, y, marker="o", markersize=3, color=colours[lab], label=lab)
            if len(groups[lab]) > 1:
                ax2.fill_between(x / 3600.0, lo, hi, color=colours[lab], alpha=0.2, linewidth=0)
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


def _small_multiples(groups: Mapping[str, Sequence[Mapping[str, Any]]], key: str, inner: str | None,
                     ylabel: str, title: str, bars: bool = False) -> Figure | None:
    """One panel per strategy, one line (or stacked bar) per class, mean over seeds per round."""
    panels = {}
    for lab, runs in groups.items():
        rounds, per_name = _per_round_dict(runs, key, inner)
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
                    ax.bar(rounds, v, bottom=bottom, color=colours[name], label=name, width=0.8)
                    bottom += v
        else:
            for name in names:
                if name in per:
                    ax.plot(rounds, per[name], marker="o", markersize=3, color=colours[name], label=name)
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


def _pseudo_figure(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure | None:
    colours = _colours(groups)
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for key in ("pseudo_images", "pseudo_boxes"):
        for lab, runs in groups.items():
            rounds, vals = [], []
            for r, rows in _by_round(runs).items():
                v = _stats([_num(row.get(key)) for row in rows])[0]
                if np.isfinite(v):
                    rounds.append(r), vals.append(v)
            if rounds:
                series.setdefault(key, {})[lab] = (rounds, vals)
    if not series:
        return None
    fig = _new_figure(11, 4.0)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("pseudo_images", "pseudo_boxes")):
        for lab, (rounds, vals) in series.get(key, {}).items():
            ax.plot(rounds, vals, marker="o", markersize=3, color=colours[lab], label=lab)
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


def _figures(results: Mapping[str, Any]) -> Iterable[tuple[str, str, Figure]]:
    """(file stem, caption, figure) for every plot whose data is present, in report order."""
    groups = _group(results)
    specs = [
        ("map50_vs_images", "mAP50 against images labelled",
         lambda: _learning_curve_figure(groups, "images_labelled", "images labelled")),
        ("map50_vs_boxes", "mAP50 against boxes labelled (drawn or verified)",
         lambda: _learning_curve_figure(groups, "boxes_labelled", "boxes labelled")),
        ("cost_hours", "Annotation cost in hours (drawing 50.8 s, verifying 21.9 s per box: seed 003 §5.3)",
         lambda: _cost_figure(groups)),
        ("per_class_ap50", "Per-class AP50 per round (seed 003 Fig. 6.6)",
         lambda: _small_multiples(groups, "per_class", "ap50", "AP50", "Per-class AP50 per round")),
        ("labelled_per_class", "Labelled objects per class per round (seed 003 Fig. 6.7)",
         lambda: _small_multiples(groups, "labelled_per_class", None, "labelled objects",
                                  "Labelled objects per class per round", bars=True)),
        ("thresholds", "Per-class selection thresholds per round (seed 003 Fig. 6.5)",
         lambda: _small_multiples(groups, "thresholds", None, "threshold",
                                  "Per-class selection thresholds per round")),
        ("pseudo_labels", "Pseudo-labels accepted per round", lambda: _pseudo_figure(groups)),
    ]
    for stem, caption, make in specs:
        fig = make()
        if fig is not None:
            yield stem, caption, fig


def plot_learning_curves(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write every plot whose data is present as OUT_DIR/<name>.png; returns name -> path."""
    results = load_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stem, _, fig in _figures(results):
        path = out_dir / f"{stem}.png"
        fig.savefig(path, format="png", dpi=_DPI)
        paths[stem] = path
    return paths


# --------------------------------------------------------------------------------------------------
# Table and summary
# --------------------------------------------------------------------------------------------------

def learning_curve_table(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Strategy x round: mean ± sample std (ddof=1) over seeds of mAP50, with labels spent and cost."""
    results = load_results(results)
    rows = []
    for lab, runs in _group(results).items():
        for r, rs in _by_round(runs).items():
            mean, std, mn, mx, n = _stats([_num(x.get("map50")) for x in rs])
            rows.append({
                "strategy": lab, "round": r, "seeds": len(rs), "evaluated": n,
                "images_labelled": _stats([_num(x.get("images_labelled")) for x in rs])[0],
                "boxes_labelled": _stats([_num(x.get("boxes_labelled")) for x in rs])[0],
                "cost_hours": _stats([_num(x.get("cost_seconds")) / 3600.0 for x in rs])[0],
                "map50_mean": mean, "map50_std": std, "map50_min": mn, "map50_max": mx,
                "coco_ap_mean": _stats([_num(x.get("coco_ap")) for x in rs])[0],
            })
    return rows


def _fmt(x: float, digits: int = 0) -> str:
    return "-" if not np.isfinite(x) else f"{x:.{digits}f}"


def _mean_std(row: Mapping[str, Any]) -> str:
    if not np.isfinite(row["map50_mean"]):
        return "-"
    return f"{row['map50_mean']:.3f} ± {row['map50_std']:.3f}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as Markdown (reads as plain text in a terminal, pastes into a closing note)."""
    head = ["strategy", "round", "images", "boxes", "cost h", "mAP50 mean ± std", "seeds"]
    body = [[str(r["strategy"]), str(r["round"]), _fmt(r["images_labelled"], 1), _fmt(r["boxes_labelled"], 1),
             _fmt(r["cost_hours"], 2), _mean_std(r),
             str(r["evaluated"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def summarize(results: Mapping[str, Any], flat_rounds: int = 2, flat_gain: float = 0.01) -> dict[str, Any]:
    """Best strategy by last-round mean mAP50, what it cost, and whether its curve has flattened.

    Flattened: the mean mAP50 gained less than `flat_gain` over the last `flat_rounds` rounds (the
    plateau stopping rule of seed 003 §5.2.3); None when there are not enough evaluated rounds.
    """
    results = load_results(results)
    per = {}
    for lab, runs in _group(results).items():
        pts = [(r, _stats([_num(x.get("map50")) for x in rs])[0], rs) for r, rs in _by_round(runs).items()]
        pts = [p for p in pts if np.isfinite(p[1])]
        if not pts:
            continue
        r, last, rs = pts[-1]
        gain = last - pts[-1 - flat_rounds][1] if len(pts) > flat_rounds else None
        per[lab] = {
            "strategy": lab, "seeds": len(runs), "last_round": r, "last_map50": last,
            "images_labelled": _stats([_num(x.get("images_labelled")) for x in rs])[0],
            "boxes_labelled": _stats([_num(x.get("boxes_labelled")) for x in rs])[0],
            "cost_hours": _stats([_num(x.get("cost_seconds")) / 3600.0 for x in rs])[0],
            "gain_last_rounds": gain,
            "flattened": None if gain is None else bool(gain < flat_gain),
        }
    best = max(per.values(), key=lambda d: d["last_map50"]) if per else None
    return {"best": best, "strategies": per, "flat_rounds": flat_rounds, "flat_gain": flat_gain,
            "runs": len(results["runs"])}


# --------------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------------

def _validate_item(i: int, item: Mapping[str, Any]) -> list[tuple[list[float], str, float | None, str]]:
    boxes = item.get("boxes", [])
    n = len(boxes)
    labels = item.get("labels") or [""] * n
    scores = item.get("scores") or [None] * n
    sources = item.get("sources") or ["predicted"] * n
    for field_name, seq in (("labels", labels), ("scores", scores), ("sources", sources)):
        if len(seq) != n:
            raise ValueError(f"gallery item {i} ({item.get('image')}): {len(seq)} {field_name} for {n} boxes; "
                             "give one entry per box")
    out = []
    for j, (b, lab, s, src) in enumerate(zip(boxes, labels, scores, sources)):
        if len(b) != 4:
            raise ValueError(f"gallery item {i} ({item.get('image')}): boxes[{j}] = {b!r} is not [x1, y1, x2, y2]")
        if src not in PROVENANCE_COLOURS:
            raise ValueError(f"gallery item {i} ({item.get('image')}): sources[{j}] = {src!r}; expected one of "
                             f"{sorted(PROVENANCE_COLOURS)}")
        out.append(([float(v) for v in b], str(lab), None if s is None else float(s), str(src)))
    return out


def _dashed_rectangle(draw: ImageDraw.ImageDraw, xy: Sequence[float], fill: tuple[int, int, int], width: int,
                      dash: int = 6) -> None:
    """Pillow draws no dashed lines; background boxes get one from short segments."""
    x1, y1, x2, y2 = xy
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // dash))
        for k in range(0, steps, 2):
            t0, t1 = k / steps, min(1.0, (k + 1) / steps)
            draw.line([(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                      fill=fill, width=width)


def _draw_item(i: int, item: Mapping[str, Any], max_side: int) -> tuple[Image.Image, str | None]:
    """The image (or a grey canvas when it cannot be read) with its boxes; second value is a warning."""
    boxes = _validate_item(i, item)
    warning = None
    path = Path(str(item.get("image", "")))
    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB")
    except (OSError, ValueError) as e:
        warning = f"{path}: image not readable ({e.__class__.__name__}); boxes drawn on a blank canvas"
        w = int(max([b[0][2] for b in boxes] + [max_side // 2]))
        h = int(max([b[0][3] for b in boxes] + [max_side // 2]))
        img = Image.new("RGB", (max(w, 16), max(h, 16)), (225, 225, 225))
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    font_size = max(11, round(max(img.size) / 40))
    try:
        font = ImageFont.load_default(size=font_size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):
        font = ImageFont.load_default()
    width = max(2, round(max(img.size) / 250))
    # human boxes drawn last, so their labels stay readable where boxes overlap
    order = {"background": 0, "predicted": 1, "pseudo": 2, "human": 3}
    for xyxy, label, score, src in sorted(boxes, key=lambda b: order[b[3]]):
        xy = [v * scale for v in xyxy]
        colour = PROVENANCE_COLOURS[src]
        if src == "background":
            _dashed_rectangle(draw, xy, colour, width)
        else:
            draw.rectangle(xy, outline=colour, width=width)
        text = label if score is None else f"{label} {score:.2f}"
        if src == "background":
            text = f"bg {text}".strip()
        if text:
            tx, ty = xy[0], max(0.0, xy[1] - font_size - 2)
            l, t, r, b = draw.textbbox((tx, ty), text, font=font)
            draw.rectangle((l - 1, t - 1, r + 1, b + 1), fill=colour)
            draw.text((tx, ty), text, fill=(255, 255, 255), font=font)
    return img, warning


def _encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def render_gallery(items: Sequence[Mapping[str, Any]], out_png: Path | None = None, max_images: int = 12,
                   max_side: int = 480, columns: int = 4) -> list[bytes]:
    """Draw each item's boxes coloured by provenance (human green, pseudo blue, predicted orange,
    background grey dashed) with label and score; returns one PNG (bytes) per image, at most
    `max_images`. With `out_png`, also writes them as one contact sheet there.
    """
    pngs, _ = _render_gallery(items, max_images, max_side)
    if out_png is not None:
        imgs = [Image.open(io.BytesIO(p)) for p in pngs]
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        if not imgs:
            Image.new("RGB", (max_side, 40), (255, 255, 255)).save(out_png)
            return pngs
        cols = max(1, min(columns, len(imgs)))
        rows = math.ceil(len(imgs) / cols)
        cell_w, cell_h = max(im.width for im in imgs), max(im.height for im in imgs)
        sheet = Image.new("RGB", (cols * (cell_w + 4) + 4, rows * (cell_h + 4) + 4), (255, 255, 255))
        for k, im in enumerate(imgs):
            sheet.paste(im.convert("RGB"), (4 + (k % cols) * (cell_w + 4), 4 + (k // cols) * (cell_h + 4)))
        sheet.save(out_png, format="PNG")
    return pngs


def _render_gallery(items: Sequence[Mapping[str, Any]], max_images: int, max_side: int
                    ) -> tuple[list[bytes], list[str]]:
    pngs, warnings = [], []
    for i, item in enumerate(list(items)[:max_images]):
        img, warning = _draw_item(i, item, max_side)
        pngs.append(_encode_png(img))
        if warning:
            warnings.append(warning)
    return pngs, warnings


def _load_gallery(source: Path | None, gallery: Sequence[Mapping[str, Any]] | Path | None
                  ) -> list[Mapping[str, Any]] | None:
    if gallery is not None and not isinstance(gallery, (str, Path)):
        return list(gallery)
    path = Path(gallery) if gallery is not None else (source / "gallery.json" if source is not None else None)
    if path is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{image, boxes, labels, scores, sources}} objects")
    return data


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; display: block; margin: 0.5em 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px; } .gallery figure { margin: 0; max-width: 360px; }
.gallery img { max-width: 360px; border: 1px solid #ccc; } figcaption { font-size: 0.8em; color: #555; }
.summary { background: #f7f9fc; border: 1px solid #dde; padding: 0.6em 1em; }
.key span { display: inline-block; padding: 0 6px; margin-right: 6px; color: #fff; border-radius: 3px; }
.warn { color: #a40; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _summary_html(summary: Mapping[str, Any]) -> str:
    e = html.escape
    best = summary["best"]
    if best is None:
        return "<p>No evaluated round yet.</p>"
    flat = best["flattened"]
    if flat is None:
        verdict = (f"not enough evaluated rounds to judge the curve (needs more than {summary['flat_rounds']})")
    elif flat:
        verdict = (f"<b>flattened</b>: mAP50 gained {best['gain_last_rounds']:+.3f} over the last "
                   f"{summary['flat_rounds']} rounds (threshold {summary['flat_gain']}); more labels buy little")
    else:
        verdict = (f"<b>still rising</b>: mAP50 gained {best['gain_last_rounds']:+.3f} over the last "
                   f"{summary['flat_rounds']} rounds (threshold {summary['flat_gain']}); labelling still pays")
    lines = [
        f"Best strategy: <b>{e(best['strategy'])}</b> (mean of {best['seeds']} seed(s), by last-round mAP50)",
        f"Last mAP50: <b>{best['last_map50']:.3f}</b> at round {best['last_round']}",
        f"Labels spent: {_fmt(best['images_labelled'], 1)} images, {_fmt(best['boxes_labelled'], 1)} boxes",
        f"Annotation cost so far: {_fmt(best['cost_hours'], 2)} hours",
        f"Learning curve: {verdict}",
    ]
    rows = "".join(
        f"<tr><td>{e(s['strategy'])}</td><td class=num>{s['last_round']}</td>"
        f"<td class=num>{s['last_map50']:.3f}</td><td class=num>{_fmt(s['images_labelled'], 1)}</td>"
        f"<td class=num>{_fmt(s['boxes_labelled'], 1)}</td><td class=num>{_fmt(s['cost_hours'], 2)}</td>"
        f"<td>{'-' if s['flattened'] is None else ('yes' if s['flattened'] else 'no')}</td></tr>"
        for s in summary["strategies"].values())
    return ("<div class=summary><ul>" + "".join(f"<li>{x}</li>" for x in lines) + "</ul></div>"
            "<table><tr><th>strategy</th><th>last round</th><th>mAP50</th><th>images</th><th>boxes</th>"
            f"<th>cost h</th><th>flattened</th></tr>{rows}</table>")


def _table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    e = html.escape
    body = "".join(
        f"<tr><td>{e(str(r['strategy']))}</td><td class=num>{r['round']}</td>"
        f"<td class=num>{_fmt(r['images_labelled'], 1)}</td><td class=num>{_fmt(r['boxes_labelled'], 1)}</td>"
        f"<td class=num>{_fmt(r['cost_hours'], 2)}</td><td class=num>{_mean_std(r)}</td>"
        f"<td class=num>{r['evaluated']}</td></tr>" for r in rows)
    return ("<table><tr><th>strategy</th><th>round</th><th>images</th><th>boxes</th><th>cost h</th>"
            f"<th>mAP50 mean ± std</th><th>seeds</th></tr>{body}</table>")


def write_report(source: Path | str | Mapping[str, Any], out_html: Path, title: str = "boxloop report",
                 gallery: Sequence[Mapping[str, Any]] | Path | None = None, flat_rounds: int = 2,
                 flat_gain: float = 0.01, max_gallery: int = 12) -> Path:
    """One self-contained HTML page (every plot and gallery image inlined as a PNG data URI).

    `source` is a simulate OUT directory (results.json, optional gallery.json), a results.json file,
    or the results dict itself. `gallery` overrides the gallery.json found beside the results.
    """
    src_dir = None
    if not isinstance(source, Mapping):
        p = Path(source)
        src_dir = p if p.is_dir() else p.parent
    results = load_results(source)
    items = _load_gallery(src_dir, gallery)
    e = html.escape
    summary = summarize(results, flat_rounds=flat_rounds, flat_gain=flat_gain)
    figures = {stem: (caption, _png_bytes(fig)) for stem, caption, fig in _figures(results)}

    def plot_section(heading: str, stems: Sequence[str], absent: str) -> str:
        parts = [f"<h2 id={stems[0]}>{e(heading)}</h2>"]
        shown = [s for s in stems if s in figures]
        if not shown:
            parts.append(f"<p>{e(absent)}</p>")
        for s in shown:
            caption, png = figures[s]
            parts.append(f"<figure><img class=plot alt=\"{e(caption)}\" src=\"{_data_uri(png)}\">"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        return "\n".join(parts)

    runs_line = ", ".join(f"{k} x{v['seeds']}" for k, v in summary["strategies"].items())
    sections = [
        f"<h1>{e(title)}</h1><p>{summary['runs']} run(s): {e(runs_line)}</p>",
        "<h2 id=summary>Summary</h2>" + _summary_html(summary),
        plot_section("Learning curves", ["map50_vs_images", "map50_vs_boxes", "cost_hours"],
                     "No evaluated rounds yet."),
        plot_section("Per-class AP50", ["per_class_ap50"], "No per-class AP recorded."),
        plot_section("Labelled objects per class", ["labelled_per_class"], "No per-class label counts recorded."),
        plot_section("Selection thresholds per class", ["thresholds"],
                     "No per-class thresholds recorded (only the localization_aware strategy sets them)."),
        plot_section("Pseudo-labels", ["pseudo_labels"], "No pseudo-labels in these runs."),
        "<h2 id=table>Learning-curve table</h2>" + _table_html(learning_curve_table(results)),
    ]
    gal = ["<h2 id=gallery>Last query</h2>"]
    if not items:
        gal.append("<p>No gallery recorded.</p>")
    else:
        pngs, warnings = _render_gallery(items, max_gallery, 480)
        key = "".join(f"<span style=\"background: rgb{c}\">{e(s)}</span>" for s, c in PROVENANCE_COLOURS.items())
        gal.append(f"<p class=key>Box colour by provenance: {key} (background dashed). "
                   f"Showing {len(pngs)} of {len(items)} image(s).</p>")
        gal += [f"<p class=warn>{e(w)}</p>" for w in warnings]
        gal.append("<div class=gallery>")
        for item, png in zip(items, pngs):
            name = Path(str(item.get("image", ""))).name
            counts = defaultdict(int)
            for s in item.get("sources") or []:
                counts[s] += 1
            cap = f"{name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) if counts else f"{name}: no boxes"
            gal.append(f"<figure><img alt=\"{e(name)}\" src=\"{_data_uri(png)}\"><figcaption>{e(cap)}</figcaption>"
                       "</figure>")
        gal.append("</div>")
    sections.append("\n".join(gal))
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_html.with_name(out_html.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_html)
    return out_html


# -- where a report's data comes from: a simulate folder or a project --------------------------------

def project_gallery(project: Any, round_id: int | None = None, display_threshold: float = 0.3) -> list[dict[str, Any]]:
    """The last query's images with their boxes now: human answers, auto-labels, predictions shown."""
    queries = project.queries(round=round_id) if round_id is not None else project.queries()
    if not queries:
        return []
    last = max(q["round"] for q in queries)
    keys = list(dict.fromkeys(q["path"] for q in queries if q["round"] == last))
    anns = project.annotations("all", sources=("human", "pseudo", "predicted", "background"))
    preds = project.load_predictions(last)
    root = project.image_root
    items = []
    for key in keys:
        ann = anns.get(key)
        if ann is None or len(ann) == 0:  # still open: show what the annotator was given
            det = preds.get(key)
            if det is not None:
                det = det[det.scores >= display_threshold]
                ann = det.to_annotation(key, project.classes)
        if ann is None:
            continue
        items.append({"image": str(root / key), "boxes": ann.boxes.xyxy.tolist(),
                      "labels": [lab or "background" for lab in ann.labels],
                      "scores": [p.score for p in ann.provenance],
                      "sources": [str(p.source) for p in ann.provenance]})
    return items


def report_source(source: Path) -> tuple[Any, list[dict[str, Any]] | None, str]:
    """(results, gallery, title) for `boxloop report`: a simulate OUT folder (or its results.json),
    or a project folder (its rounds become one run; the gallery is its last query)."""
    source = Path(source)
    if source.is_file() or (source / "results.json").exists():
        return source, None, f"boxloop report: {source}"
    if (source / "boxloop.db").exists():
        from boxloop.loop import round_history
        from boxloop.store import Project

        with Project.open(source) as p:
            rounds = p.rounds()
            cfg = rounds[-1]["config"] if rounds else {}
            history = round_history(p)
            auto = (p.metrics().get(max(p.metrics() or [0]), {}) or {}).get("autolabel")
            if not history and auto:  # an auto-labelling project: its iterations are the rounds
                history = [{"round": r["iteration"], "images_labelled": p.status()["labelled_images"],
                            "boxes_labelled": p.status()["boxes"], "cost_seconds": 0.0,
                            "map50": r.get("map50"), "pseudo_images": r.get("total_auto_labelled"),
                            "pseudo_boxes": r.get("boxes")} for r in auto]
            if not history:
                raise ValueError(f"{source} has no evaluated round yet: run `boxloop query`, `boxloop simulate` "
                                 "or `boxloop autolabel` first")
            results = {"runs": [{"strategy": cfg.get("strategy", "project"), "seed": p.seed,
                                 "unit": cfg.get("unit", "images"), "semi": cfg.get("semi"), "rounds": history}]}
            return results, project_gallery(p), f"boxloop report: {source}"
    raise ValueError(f"{source} is neither a simulate output folder (results.json) nor a boxloop project")
