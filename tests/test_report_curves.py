"""report.curves on hand-made curves: the area under the curve by hand and by trapezoid, the common
range of a seed's runs, paired differences to random, shares of the full-data mAP50, the forecast
summary and the report's sections (issue 13, deliverable 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from boxloop.report import curve_statistics, forecast_summary, format_auc_table, normalised_auc, paired, write_report
from boxloop.report.plots import plot_learning_curves


def test_auc_by_hand():
    # (0, 0.2) -> (10, 0.4) -> (30, 0.5): areas 10*0.3 + 20*0.45 = 12 over a range of 30 -> 0.4
    assert normalised_auc([0, 10, 30], [0.2, 0.4, 0.5]) == pytest.approx(0.4)
    # unsorted input is sorted first
    assert normalised_auc([30, 0, 10], [0.5, 0.2, 0.4]) == pytest.approx(0.4)
    # a flat curve has its height as AUC, whatever the x scale (images or their share)
    assert normalised_auc([20, 50, 146], [0.7] * 3) == pytest.approx(0.7)
    assert normalised_auc(np.array([20, 50, 146]) / 292, [0.3, 0.6, 0.7]) == \
        pytest.approx(normalised_auc([20, 50, 146], [0.3, 0.6, 0.7]))
    # matches numpy's trapezoid over the full range
    x, y = np.array([20, 41, 62, 83.0]), np.array([0.31, 0.52, 0.6, 0.66])
    assert normalised_auc(x, y) == pytest.approx(np.trapezoid(y, x) / (x[-1] - x[0]))


def test_auc_over_a_sub_range_interpolates_the_ends():
    # from 5 to 20 on (0, 0.2) (10, 0.4) (30, 0.5): y(5) = 0.3, y(20) = 0.45
    # area 5 * (0.3 + 0.4) / 2 + 10 * (0.4 + 0.45) / 2 = 1.75 + 4.25 = 6.0 over 15 -> 0.4
    assert normalised_auc([0, 10, 30], [0.2, 0.4, 0.5], 5, 20) == pytest.approx(0.4)
    assert normalised_auc([0, 10, 30], [0.2, 0.4, 0.5], 0, 40) is None  # no extrapolation
    assert normalised_auc([0], [0.2]) is None
    assert normalised_auc([0, 10, None], [0.2, 0.4, 0.9]) == pytest.approx(0.3)  # NaN/None dropped


def test_paired_difference():
    d = paired({0: 0.50, 1: 0.40, 2: 0.61, 3: None}, {0: 0.45, 1: 0.42, 2: 0.55, 3: 0.5, 4: 0.3})
    assert d["seeds"] == 3 and d["above_on"] == 2
    assert d["per_seed"] == pytest.approx({0: 0.05, 1: -0.02, 2: 0.06})
    assert d["mean"] == pytest.approx(0.03)
    assert d["std"] == pytest.approx(np.std([0.05, -0.02, 0.06], ddof=1))
    one = paired({0: 0.5}, {0: 0.4})
    assert one["mean"] == pytest.approx(0.1) and one["std"] is None


def _run(strategy, seed, images, maps, seconds, unit="images", full=None):
    rows = []
    for r, (n, m, s) in enumerate(zip(images, maps, seconds)):
        row = {"round": r, "images_labelled": n, "boxes_labelled": 10 * n, "cost_seconds": s, "map50": m}
        if full is not None:
            row["full_data_map50"] = full
        rows.append(row)
    return {"strategy": strategy, "seed": seed, "unit": unit, "semi": None, "rounds": rows}


def hand_results():
    """Two seeds; random and least_confidence on the same images; lc costs more seconds per round."""
    n = [20, 40, 60]
    return {"runs": [
        _run("random", 0, n, [0.3, 0.5, 0.6], [1000, 2000, 3000], full=0.8),
        _run("random", 1, n, [0.4, 0.5, 0.5], [1000, 2000, 3000], full=0.75),
        _run("least_confidence", 0, n, [0.3, 0.6, 0.7], [1000, 2500, 4000], full=0.8),
        _run("least_confidence", 1, n, [0.4, 0.45, 0.6], [1000, 2500, 4000], full=0.75),
    ]}


def test_curve_statistics_by_hand():
    st = curve_statistics(hand_results())
    rnd, lc = st["strategies"]["random"], st["strategies"]["least_confidence"]
    # images: trapezoids over [20, 60], 40 wide
    assert rnd["auc_labelled"]["per_seed"][0] == pytest.approx((20 * 0.4 + 20 * 0.55) / 40)  # 0.475
    assert lc["auc_labelled"]["per_seed"][0] == pytest.approx((20 * 0.45 + 20 * 0.65) / 40)  # 0.55
    assert lc["auc_labelled"]["per_seed"][1] == pytest.approx((20 * 0.425 + 20 * 0.525) / 40)  # 0.475
    assert rnd["auc_labelled"]["per_seed"][1] == pytest.approx((20 * 0.45 + 20 * 0.5) / 40)  # 0.475
    d = lc["minus_baseline"]["auc_labelled"]
    assert d["per_seed"] == pytest.approx({0: 0.075, 1: 0.0}) and d["above_on"] == 1 and d["seeds"] == 2
    assert d["mean"] == pytest.approx(0.0375) and d["std"] == pytest.approx(np.std([0.075, 0.0], ddof=1))
    assert lc["auc_labelled"]["mean"] == pytest.approx(0.5125)
    assert "minus_baseline" not in rnd
    # seconds: common range [1000, 3000] (random stops at 3000); lc at 3000 s: 0.6 + (0.7-0.6)*500/1500
    lc_at = 0.6 + 0.1 * 500 / 1500
    want = (1500 * (0.3 + 0.6) / 2 + 500 * (0.6 + lc_at) / 2) / 2000
    assert lc["auc_seconds"]["per_seed"][0] == pytest.approx(want)
    assert rnd["auc_seconds"]["per_seed"][0] == pytest.approx((1000 * 0.4 + 1000 * 0.55) / 2000)
    assert st["ranges"]["images/seed0/cost_seconds"] == [1000, 3000]
    # shares of the full-data mAP50, per seed (each seed its own reference)
    sh = {r["round"]: r for r in lc["share_of_full"]}
    assert sh[2]["per_seed"] == pytest.approx({0: 0.7 / 0.8, 1: 0.6 / 0.75})
    assert sh[2]["mean"] == pytest.approx(np.mean([0.7 / 0.8, 0.6 / 0.75]))
    assert sh[2]["labelled"] == 60
    # an explicit full-data mAP50 overrides the rows'
    assert curve_statistics(hand_results(), full_map50=1.0)["strategies"]["random"]["share_of_full"][1]["per_seed"][0] \
        == pytest.approx(0.5)


def test_an_unfinished_run_narrows_its_seeds_range():
    res = hand_results()
    res["runs"][2]["rounds"] = res["runs"][2]["rounds"][:2]  # least_confidence seed 0 stopped after round 1
    st = curve_statistics(res)
    assert st["ranges"]["images/seed0/images_labelled"] == [20, 40]
    assert st["strategies"]["random"]["auc_labelled"]["per_seed"][0] == pytest.approx(0.4)
    assert st["strategies"]["random"]["auc_labelled"]["per_seed"][1] == pytest.approx(0.475)  # seed 1 untouched


def test_box_level_uses_boxes_and_units_pair_separately():
    res = hand_results()
    res["runs"] += [dict(r, unit="boxes") for r in hand_results()["runs"]]
    st = curve_statistics(res)
    assert set(st["strategies"]) == {"random (images)", "least_confidence (images)", "random (boxes)",
                                     "least_confidence (boxes)"}
    assert st["strategies"]["least_confidence (boxes)"]["baseline"] == "random (boxes)"
    assert st["strategies"]["least_confidence (boxes)"]["x_labelled"] == "boxes_labelled"
    assert st["strategies"]["least_confidence (boxes)"]["auc_labelled"]["per_seed"][0] == pytest.approx(0.55)
    assert "least_confidence (boxes)" in format_auc_table(st)


def test_fallback_rounds_are_listed():
    res = hand_results()
    res["runs"][2]["rounds"][0]["fallback"] = {"strategy": "random", "reason": "no box"}
    st = curve_statistics(res)
    assert st["strategies"]["least_confidence"]["fallback_rounds"] == {0: [{"round": 0, "strategy": "random"}]}
    assert st["strategies"]["random"]["fallback_rounds"] == {}
    assert "least_confidence seed 0: r0 random" in format_auc_table(st)


def _power_results():
    n = [20, 46, 72, 98, 124, 150]
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.01), (2, -0.01)):
        maps = [0.85 - 2.0 * x ** -0.6 + shift for x in n]
        runs.append(_run("random", seed, n, maps, [50.8 * 13 * x for x in n], full=0.85))
    return {"runs": runs}


def test_forecast_summary_and_report(tmp_path: Path):
    fc = forecast_summary(_power_results())["random"]
    assert fc["forecast"]["next"][0]["n"] == 176
    assert fc["forecast"]["next"][0]["map50"] == pytest.approx(0.85 - 2.0 * 176 ** -0.6, abs=0.005)
    assert fc["backtest"]["fit_on"] == [3] and fc["backtest"]["mae"] < 0.01
    assert set(fc["backtest"]["per_seed"]) == {0, 1, 2}
    json.dumps(fc)  # goes into results.json as it is
    paths = plot_learning_curves(_power_results(), tmp_path / "plots")
    assert "forecast" in paths and paths["forecast"].stat().st_size > 1000
    page = write_report(_power_results(), tmp_path / "r.html").read_text()
    assert "Area under the learning curve" in page and "backtest MAE" in page
