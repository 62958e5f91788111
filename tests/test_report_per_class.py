"""Per-class learning curves (issue 25, deliverable 4) on a hand-made case: the rare classes' mean AP50,
per-class AUC per seed and its paired difference to random, the table's rare column and the plot."""

from __future__ import annotations

import pytest

from boxloop.report import (
    format_per_class_table, learning_curve_table, per_class_statistics, plot_learning_curves, rare_ap50,
)

# AP50 per round for classes a (common), b and c (rare); c has no test box in round 1 of seed 0 (None)
CURVES = {
    ("random", 0): {"a": [0.5, 0.6, 0.7], "b": [0.0, 0.2, 0.4], "c": [0.1, None, 0.3]},
    ("random", 1): {"a": [0.4, 0.6, 0.8], "b": [0.1, 0.1, 0.3], "c": [0.1, 0.1, 0.1]},
    ("rare_first", 0): {"a": [0.5, 0.5, 0.6], "b": [0.0, 0.5, 0.6], "c": [0.1, 0.4, 0.5]},
    ("rare_first", 1): {"a": [0.4, 0.5, 0.7], "b": [0.1, 0.4, 0.5], "c": [0.1, 0.3, 0.4]},
}


def results() -> dict:
    runs = []
    for (strategy, seed), per in CURVES.items():
        rows = [{"round": r, "images_labelled": 10 * (r + 1), "boxes_labelled": 30 * (r + 1), "map50": 0.5,
                 "per_class": {c: {"ap50": v[r], "num_gt": 0 if v[r] is None else 5} for c, v in per.items()}}
                for r in range(3)]
        runs.append({"strategy": strategy, "seed": seed, "unit": "images", "rare_classes": ["b", "c"],
                     "rounds": rows})
    return {"runs": runs}


def test_rare_mean_leaves_a_class_without_ap_out():
    row = results()["runs"][0]["rounds"][1]
    assert rare_ap50(row, ["b", "c"]) == pytest.approx(0.2)  # c has no AP here: not counted as 0


def test_per_class_auc_and_paired_difference_by_hand():
    stats = per_class_statistics(results())
    assert stats["rare_classes"] == ["b", "c"]
    rnd, rare = stats["strategies"]["random"]["classes"], stats["strategies"]["rare_first"]["classes"]
    # a, random, seed 0: points (10, .5) (20, .6) (30, .7) over the common range 10..30 -> mean height 0.6
    assert rnd["a"]["auc_labelled"]["per_seed"][0] == pytest.approx(0.6)
    # c, random, seed 0: round 1 is left out -> the straight line (10, .1) -> (30, .3): 0.2
    assert rnd["c"]["auc_labelled"]["per_seed"][0] == pytest.approx(0.2)
    # the rare mean, random seed 0: rounds 0.05, 0.2, 0.35 -> trapezoids (0.125 + 0.275) / 2 = 0.2
    assert rnd["rare classes"]["auc_labelled"]["per_seed"][0] == pytest.approx(0.2)
    # rare_first seed 0: 0.05, 0.45, 0.55 -> (0.25 + 0.5) / 2 = 0.375; seed 1: 0.1, 0.35, 0.45 -> 0.3125;
    # random seed 1: 0.1, 0.1, 0.2 -> 0.125
    d = rare["rare classes"]["auc_minus_baseline"]
    assert d["per_seed"] == pytest.approx({0: 0.175, 1: 0.1875}) and d["above_on"] == 2 and d["seeds"] == 2
    assert d["mean"] == pytest.approx(0.18125)
    last = rare["b"]["rounds"][-1]
    assert last["round"] == 2 and last["mean"] == pytest.approx(0.55) and last["n"] == 2
    assert "auc_minus_baseline" not in rnd["a"]  # the baseline is not compared with itself
    table = format_per_class_table(stats)
    assert "rare classes (b, c)" in table and "+0.175, +0.188" in table


def test_table_has_the_rare_classes_mean_and_the_plot_its_curve(tmp_path):
    rows = {(r["strategy"], r["round"]): r for r in learning_curve_table(results())}
    r = rows[("rare_first", 2)]
    assert r["rare_ap50_mean"] == pytest.approx((0.55 + 0.45) / 2) and r["rare_ap50_std"] > 0
    paths = plot_learning_curves(results(), tmp_path)
    assert "rare_classes_ap50" in paths and paths["rare_classes_ap50"].stat().st_size > 0
    without = {"runs": [{k: v for k, v in run.items() if k != "rare_classes"} for run in results()["runs"]]}
    assert "rare_classes_ap50" not in plot_learning_curves(without, tmp_path / "plain")
