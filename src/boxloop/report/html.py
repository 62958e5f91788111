"""The self-contained HTML page and the gallery of the last query.

Written by hand: the page (summary with the plateau verdict, plot sections that say so when their data
is absent, the learning-curve table, the gallery), the gallery drawing (boxes coloured by provenance,
background boxes dashed, a blank canvas with a warning for an unreadable image) and the contact sheet.
Delegated: escaping to html.escape, base64 to the standard library, decoding, drawing and PNG encoding
to Pillow, the plots to plots.py and the numbers to statistics.py. No network and no file beside the
page: every image is inlined as a base64 PNG data URI, and the page is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from boxloop.report.curves import curve_statistics, forecast_summary, format_auc_table, format_forecast_table
from boxloop.report.keys import BOXES, IMAGE, LABELS, SCORES, SOURCES
from boxloop.report.plots import report_figures, png_bytes
from boxloop.report.sources import load_gallery, load_results
from boxloop.report.statistics import fmt_number, mean_std_text, learning_curve_table, summarize

__all__ = ["PROVENANCE_COLOURS", "render_gallery", "write_report"]

# Colour of a box by where it came from (Source values in structures.py).
PROVENANCE_COLOURS: dict[str, tuple[int, int, int]] = {
    "human": (30, 170, 60),  # green
    "pseudo": (40, 100, 230),  # blue
    "predicted": (245, 140, 20),  # orange
    "background": (140, 140, 140),  # grey, drawn dashed
}


# -- the gallery ------------------------------------------------------------------------------------

def _validate_item(i: int, item: Mapping[str, Any]) -> list[tuple[list[float], str, float | None, str]]:
    """(xyxy, label, score, source) per box, checked so a bad gallery.json names the item at fault."""
    boxes = item.get(BOXES, [])
    n = len(boxes)
    labels = item.get(LABELS) or [""] * n
    scores = item.get(SCORES) or [None] * n
    sources = item.get(SOURCES) or ["predicted"] * n
    for field_name, seq in ((LABELS, labels), (SCORES, scores), (SOURCES, sources)):
        if len(seq) != n:
            raise ValueError(f"gallery item {i} ({item.get(IMAGE)}): {len(seq)} {field_name} for {n} boxes; "
                             "give one entry per box")
    out = []
    for j, (b, lab, s, src) in enumerate(zip(boxes, labels, scores, sources)):
        if len(b) != 4:
            raise ValueError(f"gallery item {i} ({item.get(IMAGE)}): boxes[{j}] = {b!r} is not [x1, y1, x2, y2]")
        if src not in PROVENANCE_COLOURS:
            raise ValueError(f"gallery item {i} ({item.get(IMAGE)}): sources[{j}] = {src!r}; expected one of "
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
    path = Path(str(item.get(IMAGE, "")))
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


# -- the page ---------------------------------------------------------------------------------------

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
        f"Labels spent: {fmt_number(best['images_labelled'], 1)} images, {fmt_number(best['boxes_labelled'], 1)} boxes",
        f"Annotation cost so far: {fmt_number(best['cost_hours'], 2)} hours",
        f"Learning curve: {verdict}",
    ]
    rows = "".join(
        f"<tr><td>{e(s['strategy'])}</td><td class=num>{s['last_round']}</td>"
        f"<td class=num>{s['last_map50']:.3f}</td><td class=num>{fmt_number(s['images_labelled'], 1)}</td>"
        f"<td class=num>{fmt_number(s['boxes_labelled'], 1)}</td><td class=num>{fmt_number(s['cost_hours'], 2)}</td>"
        f"<td>{'-' if s['flattened'] is None else ('yes' if s['flattened'] else 'no')}</td></tr>"
        for s in summary["strategies"].values())
    return ("<div class=summary><ul>" + "".join(f"<li>{x}</li>" for x in lines) + "</ul></div>"
            "<table><tr><th>strategy</th><th>last round</th><th>mAP50</th><th>images</th><th>boxes</th>"
            f"<th>cost h</th><th>flattened</th></tr>{rows}</table>")


def _table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    e = html.escape
    body = "".join(
        f"<tr><td>{e(str(r['strategy']))}</td><td class=num>{r['round']}</td>"
        f"<td class=num>{fmt_number(r['images_labelled'], 1)}</td><td class=num>{fmt_number(r['boxes_labelled'], 1)}</td>"
        f"<td class=num>{fmt_number(r['cost_hours'], 2)}</td><td class=num>{mean_std_text(r)}</td>"
        f"<td class=num>{r['evaluated']}</td></tr>" for r in rows)
    return ("<table><tr><th>strategy</th><th>round</th><th>images</th><th>boxes</th><th>cost h</th>"
            f"<th>mAP50 mean ± std</th><th>seeds</th></tr>{body}</table>")


def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def _auc_html(stats: Mapping[str, Any]) -> str:
    if not stats["strategies"]:
        return "<p>No evaluated rounds yet.</p>"
    return ("<p>Normalised area under mAP50 against labels (images; boxes drawn or verified at box level) and "
            "against annotation seconds: a mean mAP50 over the seed's common range. Δ: paired difference to "
            "random on the same seed (mean ± std over seeds; on how many seeds it is above). A mean smaller "
            "than its std is a tie.</p>" + _pre(format_auc_table(stats)))


def _forecast_html(fc: Mapping[str, Any]) -> str:
    if not any(e.get("forecast") or e.get("backtest") for e in fc.values()):
        return ""
    return ("<p>Power law a - b n^-c fitted to the mean curve (next budget: one more step of the last size); "
            "backtest: fitted on the first rounds of each seed, the rest predicted (mean absolute error, share "
            "of the later rounds inside the 90% interval).</p>" + _pre(format_forecast_table(fc)))


def write_report(source: Path | str | Mapping[str, Any], out_html: Path, title: str = "boxloop report",
                 gallery: Sequence[Mapping[str, Any]] | Path | None = None, flat_rounds: int = 2,
                 flat_gain: float = 0.01, max_gallery: int = 12, overwrite: bool = False) -> Path:
    """One self-contained HTML page (every plot and gallery image inlined as a PNG data URI).

    `source` is a simulate OUT directory (results.json, optional gallery.json), a results.json file,
    or the results dict itself. `gallery` overrides the gallery.json found beside the results. A file
    already at `out_html` is replaced only with `overwrite` (boxloop.outputs: checked before any work).
    """
    from boxloop.outputs import staged_output

    with staged_output(out_html, overwrite, file_target=True) as staged:
        staged.write_text(_page(source, title, gallery, flat_rounds, flat_gain, max_gallery), encoding="utf-8")
    return Path(out_html)


def _page(source: Path | str | Mapping[str, Any], title: str, gallery: Sequence[Mapping[str, Any]] | Path | None,
          flat_rounds: int, flat_gain: float, max_gallery: int) -> str:
    """The report's HTML text."""
    src_dir = None
    if not isinstance(source, Mapping):
        p = Path(source)
        src_dir = p if p.is_dir() else p.parent
    results = load_results(source)
    items = load_gallery(src_dir, gallery)
    e = html.escape
    summary = summarize(results, flat_rounds=flat_rounds, flat_gain=flat_gain)
    figures = {stem: (caption, png_bytes(fig)) for stem, caption, fig in report_figures(results)}

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
        plot_section("Per-class AP50", ["per_class_ap50", "rare_classes_ap50"], "No per-class AP recorded."),
        plot_section("Labelled objects per class", ["labelled_per_class"], "No per-class label counts recorded."),
        plot_section("Selection thresholds per class", ["thresholds"],
                     "No per-class thresholds recorded (only the localization_aware strategy sets them)."),
        plot_section("Pseudo-labels", ["pseudo_labels"], "No pseudo-labels in these runs."),
        "<h2 id=table>Learning-curve table</h2>" + _table_html(learning_curve_table(results)),
        "<h2 id=auc>Area under the learning curve</h2>" + _auc_html(curve_statistics(results)),
        plot_section("Forecast", ["forecast"], "Fewer than three evaluated rounds: no forecast yet."),
        _forecast_html(forecast_summary(results)),
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
            name = Path(str(item.get(IMAGE, ""))).name
            counts = defaultdict(int)
            for s in item.get(SOURCES) or []:
                counts[s] += 1
            cap = f"{name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) if counts else f"{name}: no boxes"
            gal.append(f"<figure><img alt=\"{e(name)}\" src=\"{_data_uri(png)}\"><figcaption>{e(cap)}</figcaption>"
                       "</figure>")
        gal.append("</div>")
    sections.append("\n".join(gal))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


