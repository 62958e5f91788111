"""Predicted against true IoU: Spearman's rho and the pairing, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from boxloop.metrics.calibration import QualityMap, average_ranks, isotonic_fit, quality_calibration, spearman
from boxloop.structures import Annotation, Boxes, Detections


def test_spearman_without_ties_is_the_textbook_formula():
    # ranks (1,2,3,4) and (2,1,4,3): sum d^2 = 4, rho = 1 - 6*4 / (4*15) = 0.6
    assert spearman([0.1, 0.2, 0.3, 0.4], [0.2, 0.1, 0.4, 0.3]) == pytest.approx(0.6)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_spearman_with_ties_uses_average_ranks():
    np.testing.assert_allclose(average_ranks(np.array([1, 2, 2, 3])), [1, 2.5, 2.5, 4])
    # rank deviations (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None


def test_pairing_uses_the_same_class_and_the_score_floor():
    truth = {"a.jpg": Annotation("a.jpg", Boxes(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), (40, 40)),
                                 labels=("cat", "dog"))}
    det = Detections(boxes=Boxes(np.array([[0, 0, 10, 5], [20, 20, 30, 30], [20, 20, 30, 30]], float), (40, 40)),
                     labels=np.array([0, 0, 1]), scores=np.array([0.9, 0.8, 0.2], np.float32),
                     class_probs=np.array([[0.9, 0.1], [0.8, 0.1], [0.1, 0.2]], np.float32),
                     loc_quality=np.array([0.5, 0.7, 1.0], np.float32))
    got = quality_calibration(truth, {"a.jpg": det}, ["cat", "dog"], min_score=0.3)
    # box 1: IoU 0.5 with the cat, predicted 0.5; box 2 is labelled cat on the dog: true IoU 0, predicted
    # 0.7; box 3 scores under the floor
    assert got["n"] == 2
    assert got["mae"] == pytest.approx((0.0 + 0.7) / 2)
    assert got["mean_true"] == pytest.approx(0.25) and got["spearman"] == pytest.approx(-1.0)


def test_the_split_separates_detections_on_unlabelled_objects():
    # two cats labelled; three detections: a good box (IoU 0.5), a perfect one, and one on nothing
    truth = {"a.jpg": Annotation("a.jpg", Boxes(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), (40, 40)),
                                 labels=("cat", "cat"))}
    det = Detections(boxes=Boxes(np.array([[0, 0, 10, 5], [20, 20, 30, 30], [32, 32, 40, 40]], float), (40, 40)),
                     labels=np.array([0, 0, 0]), scores=np.array([0.9, 0.8, 0.7], np.float32),
                     class_probs=np.array([[0.9], [0.8], [0.7]], np.float32),
                     loc_quality=np.array([0.4, 0.9, 0.8], np.float32))
    got = quality_calibration(truth, {"a.jpg": det}, ["cat"], min_score=0.3)
    # errors 0.1, 0.1 (matched) and 0.8 (true IoU 0): MAE 1.0 / 3, of which 0.8 / 1.0 on the unmatched one
    assert got["mae"] == pytest.approx(1.0 / 3)
    assert got["matched"]["n"] == 2 and got["matched"]["mae"] == pytest.approx(0.1)
    assert got["matched"]["spearman"] == pytest.approx(1.0)
    assert got["unmatched_share"] == pytest.approx(1 / 3) and got["unmatched_mae_share"] == pytest.approx(0.8)


# -- the quality map ------------------------------------------------------------------------------

def _isotonic_by_max_min(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The isotonic fit by its closed form (Robertson, Wright and Dykstra): at the i-th distinct x,
    max over j <= i of min over k >= i of the mean of y over the distinct x values j..k. Independent of
    pool-adjacent-violators, and slow (cubic): a reference for small cases."""
    ux, inv = np.unique(x, return_inverse=True)
    s, w = np.bincount(inv, weights=y), np.bincount(inv).astype(float)
    n = len(ux)
    return np.array([max(min(s[j:k + 1].sum() / w[j:k + 1].sum() for k in range(i, n)) for j in range(i + 1))
                     for i in range(n)])


@pytest.mark.parametrize("seed", range(6))
def test_isotonic_fit_matches_the_max_min_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    x = np.round(rng.random(n), 1 if seed % 2 else 3)  # odd seeds: many ties
    y = rng.random(n) + (0.5 * x if seed > 2 else 0)
    kx, ky = isotonic_fit(x, y)
    assert np.all(np.diff(kx) >= 0) and np.all(np.diff(ky) >= -1e-12)
    np.testing.assert_allclose(np.interp(np.unique(x), kx, ky), _isotonic_by_max_min(x, y), atol=1e-12)


def test_quality_map_is_monotone_and_lowers_the_error_of_a_biased_quality() -> None:
    # the raw quality is right in order but too low and compressed (as measured: 0.54 against 0.77)
    rng = np.random.default_rng(0)
    true = rng.uniform(0.5, 0.95, 400)
    raw = 0.2 + 0.5 * (true - 0.5) + rng.normal(0, 0.03, 400)
    qmap = QualityMap.fit(raw[:200], true[:200])
    grid = np.linspace(-0.5, 1.5, 500)
    assert np.all(np.diff(qmap(grid)) >= 0)
    before, after = np.abs(raw[200:] - true[200:]).mean(), np.abs(qmap(raw[200:]) - true[200:]).mean()
    assert before > 0.3 and after < 0.06
    assert spearman(qmap(raw[200:]), true[200:]) > 0.9
    assert QualityMap.from_dict(qmap.to_dict()) == qmap and qmap.pairs == 200
