"""Predicted against true IoU: Spearman's rho and the pairing, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from boxloop.metrics.calibration import average_ranks, quality_calibration, spearman
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
