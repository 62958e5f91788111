"""report/: plots decode as PNGs, the table matches numpy, the HTML is self-contained, and (where
Debian chromium is installed) a real browser renders the page with every image loaded."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxloop.report import (
    PROVENANCE_COLOURS,
    format_table,
    learning_curve_table,
    load_results,
    plot_learning_curves,
    render_gallery,
    summarize,
    write_report,
)

CLASSES = ("RBC", "WBC", "Platelets")
# Made-up mAP50 per (strategy, seed) over rounds 0, 1, 2.
MAP50 = {
    ("random", 0): [0.30, 0.42, 0.50],
    ("random", 1): [0.34, 0.40, 0.55],
    ("localization_aware", 0): [0.30, 0.52, 0.61],
    ("localization_aware", 1): [0.34, 0.49, 0.612],
}


def make_results() -> dict:
    runs = []
    for (strategy, seed), maps in MAP50.items():
        rounds = []
        for r, m in enumerate(maps):
            row = {
                "round": r, "images_labelled": 10 + 10 * r + seed, "boxes_labelled": 80 + 75 * r + 3 * seed,
                "cost_seconds": (80 + 75 * r) * 50.8, "map50": m, "coco_ap": m / 2,
                "per_class": {c: {"ap50": m - 0.1 * k, "coco_ap": (m - 0.1 * k) / 2, "num_gt": 40 + k}
                              for k, c in enumerate(CLASSES)},
                "labelled_per_class": {c: (60 - 25 * k) * (r + 1) + seed for k, c in enumerate(CLASSES)},
                "full_data_map50": 0.7,
            }
            if strategy == "localization_aware":
                row["thresholds"] = {c: 0.3 + 0.05 * r + 0.01 * k for k, c in enumerate(CLASSES)}
            if r > 0:
                row["pseudo_images"] = 5 * r
                row["pseudo_boxes"] = 30 * r + seed
            rounds.append(row)
        runs.append({"strategy": strategy, "seed": seed, "unit": "images", "semi": None, "rounds": rounds})
    return {"runs": runs}


@pytest.fixture
def gallery(tmp_path: Path) -> list[dict]:
    items = []
    for i, (mode, size) in enumerate([("RGB", (128, 96)), ("L", (64, 64)), ("RGBA", (100, 120))]):
        path = tmp_path / f"img{i}.png"
        Image.new(mode, size, 90 + 40 * i if mode == "L" else (90, 120 + 30 * i, 160, 255)[: len(mode)]).save(path)
        items.append({"image": str(path), "boxes": [[5, 6, 40, 50], [30, 20, 60, 60], [10, 40, 50, 62], [2, 2, 20, 20]],
                      "labels": ["RBC", "WBC", "Platelets", "RBC"], "scores": [0.91, 0.4, None, 0.1],
                      "sources": ["human", "pseudo", "predicted", "background"]})
    return items


def decode_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.format == "PNG"
    return im


def test_plots_written_and_decode(tmp_path: Path) -> None:
    paths = plot_learning_curves(make_results(), tmp_path / "plots")
    assert set(paths) == {"map50_vs_images", "map50_vs_boxes", "cost_hours", "forecast", "per_class_ap50",
                          "labelled_per_class", "thresholds", "pseudo_labels"}
    for name, p in paths.items():
        assert p.exists() and p.suffix == ".png", name
        im = decode_png(p.read_bytes())
        assert 300 <= im.width <= 3000 and 200 <= im.height <= 3000, (name, im.size)
        # not a blank canvas: a plot has many distinct colours
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20, name


def test_plots_skip_absent_data(tmp_path: Path) -> None:
    results = make_results()
    for run in results["runs"]:
        for row in run["rounds"]:
            for k in ("thresholds", "pseudo_images", "pseudo_boxes", "per_class", "labelled_per_class"):
                row.pop(k, None)
        run["rounds"][0]["map50"] = None  # a round not evaluated (yet)
    paths = plot_learning_curves(results, tmp_path)
    assert set(paths) == {"map50_vs_images", "map50_vs_boxes", "cost_hours"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{k}.png" for k in paths)
    assert plot_learning_curves({"runs": []}, tmp_path / "empty") == {}


def test_table_matches_numpy() -> None:
    rows = learning_curve_table(make_results())
    assert [(r["strategy"], r["round"]) for r in rows] == [(s, r) for s in ("random", "localization_aware")
                                                            for r in range(3)]
    for row in rows:
        vals = np.array([MAP50[(row["strategy"], seed)][row["round"]] for seed in (0, 1)])
        assert row["map50_mean"] == pytest.approx(vals.mean(), abs=1e-12)
        assert row["map50_std"] == pytest.approx(vals.std(ddof=1), abs=1e-12)
        assert row["map50_min"] == vals.min() and row["map50_max"] == vals.max()
        assert row["images_labelled"] == pytest.approx(10 + 10 * row["round"] + 0.5)
        assert row["cost_hours"] == pytest.approx((80 + 75 * row["round"]) * 50.8 / 3600)
        assert row["seeds"] == row["evaluated"] == 2
    text = format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    # random round 2: seeds 0.50 and 0.55 -> 0.525 ± 0.035 (sample std, by hand: 0.05/sqrt(2))
    assert "0.525 ± 0.035" in lines[2 + 2]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_summary_best_and_plateau() -> None:
    s = summarize(make_results(), flat_rounds=1, flat_gain=0.01)
    assert s["best"]["strategy"] == "localization_aware"
    assert s["best"]["last_map50"] == pytest.approx(0.611)
    # localization_aware gains 0.611 - 0.505 over the last round: rising; random gains 0.525 - 0.41
    assert s["strategies"]["localization_aware"]["flattened"] is False
    flat = make_results()
    for run in flat["runs"]:
        run["rounds"][2]["map50"] = run["rounds"][1]["map50"] + 0.004
    s2 = summarize(flat, flat_rounds=1, flat_gain=0.01)
    assert all(v["flattened"] for v in s2["strategies"].values())
    assert summarize(make_results(), flat_rounds=5)["best"]["flattened"] is None


def test_gallery_colours_and_bytes(tmp_path: Path, gallery: list[dict]) -> None:
    pngs = render_gallery(gallery, out_png=tmp_path / "sheet.png", max_images=2)
    assert len(pngs) == 2
    im = decode_png(pngs[0]).convert("RGB")
    assert im.size == (128, 96)
    # the human box's left edge (x=5) is green, the pseudo box's right edge (x=60) blue
    assert im.getpixel((5, 30)) == PROVENANCE_COLOURS["human"]
    assert im.getpixel((60, 45)) == PROVENANCE_COLOURS["pseudo"]
    colours = {c for _, c in im.getcolors(maxcolors=1 << 16)}
    assert {PROVENANCE_COLOURS[k] for k in ("human", "pseudo", "predicted", "background")} <= colours
    sheet = decode_png((tmp_path / "sheet.png").read_bytes())
    assert sheet.width >= 128 + 64 and sheet.height >= 96
    # grayscale input is converted, not rejected
    assert decode_png(pngs[1]).mode == "RGB"


def test_gallery_bad_input(tmp_path: Path, gallery: list[dict]) -> None:
    bad = dict(gallery[0], labels=["RBC"])
    with pytest.raises(ValueError, match="gallery item 0 .*1 labels for 4 boxes"):
        render_gallery([bad])
    with pytest.raises(ValueError, match="sources\\[0\\] = 'robot'"):
        render_gallery([dict(gallery[0], sources=["robot"] * 4)])
    # a missing image is drawn on a blank canvas and reported, not fatal
    missing = dict(gallery[0], image=str(tmp_path / "nope.png"))
    (png,) = render_gallery([missing])
    assert decode_png(png).size[0] >= 60


def test_load_results_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(tmp_path)
    with pytest.raises(ValueError, match="'runs' list"):
        load_results({"rounds": []})


def _check_self_contained(page: str) -> list[bytes]:
    assert "http://" not in page and "https://" not in page
    attrs = re.findall(r"""\b(?:src|href)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", page)
    values = ["".join(a) for a in attrs]
    assert values and all(v.startswith("data:") for v in values), [v[:60] for v in values]
    srcs = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    assert len(srcs) == len(re.findall(r"<img\b", page))
    pngs = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        pngs.append(base64.b64decode(src.split(",", 1)[1], validate=True))
        decode_png(pngs[-1])
    return pngs


def test_write_report_from_dir(tmp_path: Path, gallery: list[dict]) -> None:
    out = tmp_path / "sim"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(make_results()))
    (out / "gallery.json").write_text(json.dumps(gallery))
    html_path = write_report(out, tmp_path / "r" / "report.html", title="BCCD <test>")
    page = html_path.read_text(encoding="utf-8")
    pngs = _check_self_contained(page)
    assert len(pngs) == 8 + len(gallery)
    assert "BCCD &lt;test&gt;" in page
    for section in ("summary", "map50_vs_images", "per_class_ap50", "labelled_per_class", "thresholds",
                    "pseudo_labels", "table", "gallery"):
        assert f"id={section}" in page
    assert "localization_aware" in page and "0.525 ± 0.035" in page
    assert "still rising" in page or "flattened" in page


def test_write_report_from_dict_with_absent_parts(tmp_path: Path) -> None:
    results = make_results()
    for run in results["runs"]:
        for row in run["rounds"]:
            row.pop("thresholds", None), row.pop("pseudo_images", None), row.pop("pseudo_boxes", None)
    page = write_report(results, tmp_path / "report.html").read_text()
    pngs = _check_self_contained(page)
    assert len(pngs) == 6
    assert "No pseudo-labels" in page and "No gallery recorded" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = document.images, w = [];
  for (var i = 0; i < imgs.length; i++) { w.push(imgs[i].complete ? imgs[i].naturalWidth : -1); }
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = 'WIDTHS=' + JSON.stringify(w);
  document.body.appendChild(pre);
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None or sys.platform != "linux", reason="Debian chromium not installed")
def test_chromium_renders_every_image(tmp_path: Path, gallery: list[dict]) -> None:
    out = tmp_path / "sim"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(make_results()))
    (out / "gallery.json").write_text(json.dumps(gallery))
    html_path = write_report(out, tmp_path / "report.html")
    n_img = len(re.findall(r"<img\b", html_path.read_text()))
    profile = tmp_path / "profile"
    shot = tmp_path / "report.png"
    base = [CHROMIUM, *_CHROME_FLAGS, f"--user-data-dir={profile}"]
    try:
        subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,3000", html_path.as_uri()],
                       check=True, capture_output=True, timeout=120)
        # a copy with a probe that writes every image's naturalWidth into the DOM once all have loaded
        probe = tmp_path / "probe.html"
        probe.write_text(html_path.read_text().replace("</body>", _PROBE))
        dom = subprocess.run([*base, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                             check=True, capture_output=True, timeout=120, text=True).stdout
    except subprocess.TimeoutExpired:
        pytest.skip("chromium did not finish within 120 s on this machine")
    im = decode_png(shot.read_bytes())
    assert im.size == (1200, 3000)
    assert len(im.convert("RGB").getcolors(maxcolors=1 << 22)) > 50  # rendered plots, not a blank page
    m = re.search(r"WIDTHS=(\[[^\]]*\])", dom)
    assert m, dom[-2000:]
    widths = json.loads(m.group(1))
    assert len(widths) == n_img == 8 + len(gallery)
    assert all(w > 0 for w in widths), widths
    keep = os.environ.get("BOXLOOP_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
