"""The learning-curve forecast (issue 13, deliverable 6) on hand-made curves from a known power law."""

from __future__ import annotations

import numpy as np
import pytest

from boxloop.loop.forecast import NOISE_FLOOR, backtest, fit_power_law, forecast, forecast_line

A, B, C = 0.85, 2.0, 0.6
N = np.array([20, 46, 72, 98, 124, 150], float)


def law(n):
    return A - B * np.asarray(n, float) ** -C


def test_fit_recovers_a_known_power_law():
    f = fit_power_law(N, law(N))
    assert f.a == pytest.approx(A, abs=2e-3) and f.b == pytest.approx(B, rel=0.02) and f.c == pytest.approx(C, abs=0.01)
    np.testing.assert_allclose(f(N), law(N), atol=1e-4)
    # 95% of the plateau: a - b n^-c = 0.95 a  <=>  n = (b / 0.05a)^(1/c)
    assert f.labels_for(0.95) == pytest.approx((B / (0.05 * A)) ** (1 / C), rel=0.03)


def test_forecast_of_the_next_budget_and_its_interval():
    fc = forecast(N[:4], law(N[:4]), [N[4]])
    nxt = fc["next"][0]
    assert nxt["map50"] == pytest.approx(law(N[4]), abs=2e-3)
    assert nxt["gain"] == pytest.approx(law(N[4]) - law(N[3]), abs=2e-3)
    lo, hi = nxt["interval"]
    assert lo < law(N[4]) < hi and hi - lo > 0.01  # exact points: the noise floor still sets a width
    assert nxt["gain_interval"][0] <= nxt["gain"] <= nxt["gain_interval"][1]
    assert fc["sigma"] == NOISE_FLOOR  # residuals ~0 with 4 points: the floor
    assert 0 < fc["share_of_plateau_now"] < 1
    # default next budget: one more step of the last size
    assert forecast(N[:4], law(N[:4]))["next"][0]["n"] == N[3] + (N[3] - N[2])


def test_backtest_fits_the_first_rounds_and_scores_the_rest():
    bt = backtest(N, law(N), 3)
    assert bt["fit_on"] == 3 and [p["n"] for p in bt["points"]] == list(N[3:])
    assert bt["mae"] < 0.01 and bt["coverage"] == 1.0
    for p in bt["points"]:
        assert p["error"] == pytest.approx(p["predicted"] - p["actual"])
    # noisy measurements: errors of the noise's size, mostly inside the 90% intervals
    rng = np.random.default_rng(0)
    errs, inside = [], []
    for _ in range(20):
        y = law(N) + rng.normal(0, 0.01, N.shape[0])
        b = backtest(N, y, 4)
        errs.append(b["mae"])
        inside += [p["inside"] for p in b["points"]]
    assert np.mean(errs) < 0.04 and np.mean(inside) >= 0.7
    assert backtest(N, law(N), 2) is None and backtest(N, law(N), 6) is None


def test_constraints_flat_falling_and_bounded_curves():
    f = fit_power_law(N, np.full(N.shape, 0.6))
    assert f.b == pytest.approx(0.0, abs=1e-9) and f.a == pytest.approx(0.6)
    f = fit_power_law(N, 0.9 - 0.002 * N)  # falling: the best saturating curve is flat
    assert f.b == 0.0 and f.a == pytest.approx(np.mean(0.9 - 0.002 * N))
    f = fit_power_law(N, 1.4 - 3.0 * N ** -0.3)  # would plateau above 1: a is held at 1
    assert f.a <= 1.0


def test_needs_three_label_counts():
    with pytest.raises(ValueError, match="at least 3 rounds"):
        fit_power_law([20, 20, 46], [0.3, 0.31, 0.5])


def test_forecast_line_after_each_round():
    rows = [{"round": i, "images_labelled": int(n), "map50": float(law(n))} for i, n in enumerate(N)]
    assert forecast_line(rows[:2]) is None
    line = forecast_line(rows[:4])
    assert line.startswith("forecast: +26 images (to 124) -> mAP50 ") and "plateau" in line
    boxes = [{"boxes_labelled": 100 * (i + 1), "map50": float(law(20 * (i + 1)))} for i in range(4)]
    assert "+100 boxes (to 500)" in forecast_line(boxes, unit="boxes")
    assert "(to 200)" in forecast_line(rows[:4], next_budget=102)
