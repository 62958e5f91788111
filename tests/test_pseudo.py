"""Pseudo-label acceptance: TSODA's fixed rule, CertaintySSOD eq. 6, the 80/20 split and the schedule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from boxloop.semi.pseudo import (
    ClasswiseThresholds,
    accept_certainty,
    accept_fixed,
    certainty_scores,
    precision_above,
    score_percentiles,
    split_autolabelled,
    threshold_for_precision,
    tsoda_accept,
    tsoda_scale,
    tsoda_schedule,
)
from boxloop.structures import Boxes, Detections


def dets(labels, scores, loc_quality=None, num_classes=3) -> Detections:
    n = len(labels)
    xy = np.arange(n, dtype=float)[:, None] * 10 + np.array([0, 0, 5, 5])
    probs = np.zeros((n, num_classes))
    probs[np.arange(n), labels] = scores
    return Detections(Boxes(xy.reshape(-1, 4), (100, 100)), np.array(labels, dtype=np.int64),
                      np.array(scores, dtype=float), probs,
                      None if loc_quality is None else np.array(loc_quality, dtype=float))


# -- fixed threshold ------------------------------------------------------------------------------
def test_accept_fixed_is_strict_and_can_use_loc_quality():
    d = dets([0, 1, 2, 0], [0.9, 0.8, 0.79, 0.95], loc_quality=[0.5, 1.0, 1.0, 0.9])
    np.testing.assert_array_equal(accept_fixed(d, 0.8), [True, False, False, True])
    # p*v = 0.45, 0.8, 0.79, 0.855
    np.testing.assert_array_equal(accept_fixed(d, 0.8, use_loc_quality=True), [False, False, False, True])
    with pytest.raises(ValueError, match="loc_quality"):
        accept_fixed(dets([0], [0.9]), 0.5, use_loc_quality=True)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.2, -0.1, float("nan")])
def test_thresholds_outside_open_unit_interval_are_rejected(bad):
    d = dets([0], [0.9])
    with pytest.raises(ValueError, match="between 0 and 1"):
        accept_fixed(d, bad)
    with pytest.raises(ValueError, match="between 0 and 1"):
        tsoda_accept({"a": d}, bad)
    with pytest.raises(ValueError, match="tau"):
        ClasswiseThresholds(3, tau=bad)
    with pytest.raises(ValueError, match="clip"):
        ClasswiseThresholds(3, clip=(bad, 0.9) if bad != 1.2 else (0.4, bad))


def test_tsoda_accept_on_a_hand_made_pool():
    pool = {
        "a.jpg": dets([0, 1, 2], [0.95, 0.5, 0.85]),  # two boxes above 0.8
        "b.jpg": dets([1, 0], [0.79, 0.3]),  # nothing above: stays unlabelled
        "c.jpg": Detections.empty(3, (100, 100)),  # no detection at all
        "d.jpg": dets([2], [0.81]),
    }
    out = tsoda_accept(pool, threshold=0.8)
    assert sorted(out) == ["a.jpg", "d.jpg"]
    np.testing.assert_allclose(out["a.jpg"].scores, [0.95, 0.85], rtol=1e-6)  # scores kept
    np.testing.assert_array_equal(out["a.jpg"].labels, [0, 2])
    np.testing.assert_array_equal(out["a.jpg"].boxes.xyxy, pool["a.jpg"].boxes.xyxy[[0, 2]])
    np.testing.assert_allclose(out["d.jpg"].scores, [0.81], rtol=1e-6)
    # 0.9 (the seed's better setting) keeps only a.jpg's first box
    out9 = tsoda_accept(pool, threshold=0.9)
    assert list(out9) == ["a.jpg"] and len(out9["a.jpg"]) == 1


# -- eq. 6 ------------------------------------------------------------------------------------------
def eq6_pool():
    """Class 0: 4 boxes p=0.9, v=0.8 (p*v = 0.72 each); class 1: 1 box p=0.85, v=0.8 (0.68);
    class 2: 1 box p=0.5, v=0.8 (0.40)."""
    return {
        "a": dets([0, 0, 1], [0.9, 0.9, 0.85], [0.8, 0.8, 0.8]),
        "b": dets([0, 0, 2], [0.9, 0.9, 0.5], [0.8, 0.8, 0.8]),
        "c": Detections.empty(3, (100, 100), loc_quality=True),
    }


def test_eq6_on_hand_computed_numbers():
    th = ClasswiseThresholds(3).update(eq6_pool().values())
    # c_m = sum_j p v: c0 = 4 * 0.72 = 2.88, c1 = 0.68, c2 = 0.40; counts n = (4, 1, 1), mean 6/3 = 2.
    np.testing.assert_allclose(th.sum_pv, [2.88, 0.68, 0.40], rtol=1e-6)
    np.testing.assert_allclose(th.count, [4, 1, 1])
    # ratios c_m / 2 = 1.44, 0.34, 0.20
    # tau_m = ratio^0.05 * 0.7:
    #   1.44^0.05 = exp(0.05 * ln 1.44) = exp(0.05 * 0.364643) = exp(0.0182322) = 1.018399 -> 0.712880
    #   0.34^0.05 = exp(0.05 * -1.078810) = exp(-0.0539405) = 0.947488 -> 0.663242
    #   0.20^0.05 = exp(0.05 * -1.609438) = exp(-0.0804719) = 0.922681 -> 0.645877
    np.testing.assert_allclose(th.thresholds, [0.712880, 0.663242, 0.645877], atol=2e-6)
    # alpha_m = (1 / ratio)^0.6:
    #   (1/1.44)^0.6 = exp(-0.6 * 0.364643) = exp(-0.218786) = 0.803494
    #   (1/0.34)^0.6 = exp( 0.6 * 1.078810) = exp( 0.647286) = 1.910349
    #   (1/0.20)^0.6 = exp( 0.6 * 1.609438) = exp( 0.965663) = 2.626528
    np.testing.assert_allclose(th.weights, [0.803494, 1.910349, 2.626528], atol=2e-6)


def test_accept_certainty_keeps_the_rare_class_a_fixed_threshold_drops():
    pool = eq6_pool()
    th = ClasswiseThresholds(3).update(pool.values())
    out = accept_certainty(pool, th)
    assert sorted(out) == ["a", "b"]
    dets_a, w_a = out["a"]
    # class 0: 0.72 > 0.712880 kept; class 1: 0.68 > 0.663242 kept (a fixed 0.7 would drop it)
    np.testing.assert_array_equal(dets_a.labels, [0, 0, 1])
    np.testing.assert_allclose(w_a, [0.803494, 0.803494, 1.910349], atol=2e-6)
    dets_b, w_b = out["b"]
    np.testing.assert_array_equal(dets_b.labels, [0, 0])  # class 2: 0.40 < 0.645877 dropped
    np.testing.assert_allclose(w_b, [0.803494] * 2, atol=2e-6)

    fixed = ClasswiseThresholds(3, dynamic_threshold=False).update(pool.values())
    np.testing.assert_allclose(fixed.thresholds, [0.7] * 3)
    np.testing.assert_array_equal(accept_certainty(pool, fixed)["a"][0].labels, [0, 0])


def test_switches_re_and_ca():
    pool = eq6_pool()
    no_re = ClasswiseThresholds(3, reweight=False).update(pool.values())
    np.testing.assert_allclose(no_re.weights, [1, 1, 1])
    np.testing.assert_allclose(no_re.thresholds, [0.712880, 0.663242, 0.645877], atol=2e-6)

    # without CA v = 1: c = (3.6, 0.85, 0.5), ratios (1.8, 0.425, 0.25)
    #   tau0 = 1.8^0.05 * 0.7 = exp(0.05 * 0.587787) * 0.7 = 1.029826 * 0.7 = 0.720878
    #   alpha1 = (1/0.425)^0.6 = exp(0.6 * 0.855666) = exp(0.513400) = 1.670962
    no_ca = ClasswiseThresholds(3, certainty=False).update(pool.values())
    np.testing.assert_allclose(no_ca.sum_pv, [3.6, 0.85, 0.5], rtol=1e-6)
    assert no_ca.thresholds[0] == pytest.approx(0.720878, abs=2e-6)
    assert no_ca.weights[1] == pytest.approx(1.670962, abs=2e-6)
    # works on a detector without loc_quality; with CA on, that is an error that says what to do
    plain = {"x": dets([0, 1], [0.95, 0.3])}
    ClasswiseThresholds(3, certainty=False).update(plain.values())
    with pytest.raises(ValueError, match="certainty=False"):
        ClasswiseThresholds(3).update(plain.values())


def test_clip_cap_and_empty_state():
    pool = eq6_pool()
    # gamma1 = 1: tau_m = ratio * 0.7 = (1.008, 0.238, 0.14) -> clipped to (0.9, 0.4, 0.4)
    th = ClasswiseThresholds(3, gamma1=1.0).update(pool.values())
    np.testing.assert_allclose(th.thresholds, [0.9, 0.4, 0.4])
    # a class never predicted: tau clipped to 0.4, alpha = inf by eq. 6, capped at alpha_max
    th2 = ClasswiseThresholds(4, alpha_max=10.0).update(dets([0, 1], [0.9, 0.9], [1, 1], num_classes=4))
    assert th2.thresholds[3] == pytest.approx(0.4)
    assert th2.weights[3] == 10.0 and np.isfinite(th2.weights).all()
    # nothing seen yet: the fixed tau and unit weights
    fresh = ClasswiseThresholds(3)
    np.testing.assert_allclose(fresh.thresholds, [0.7] * 3)
    np.testing.assert_allclose(fresh.weights, [1] * 3)
    # state survives a JSON round trip
    back = ClasswiseThresholds.from_dict(json.loads(json.dumps(th.to_dict())))
    np.testing.assert_allclose(back.thresholds, th.thresholds)
    with pytest.raises(ValueError, match="5 classes, the thresholds 3"):
        ClasswiseThresholds(3).update(dets([0], [0.9], [0.9], num_classes=5))


# -- split and schedule -----------------------------------------------------------------------------
def test_split_80_20_deterministic_by_seed():
    keys = [f"img{i:02d}.jpg" for i in range(10)]
    train, test = split_autolabelled(keys, 0.8, rng=3)
    assert len(train) == 8 and len(test) == 2
    assert sorted(train + test) == keys
    assert split_autolabelled(list(reversed(keys)), 0.8, rng=3) == (train, test)  # order-independent
    assert split_autolabelled(keys, 0.8, rng=np.random.default_rng(3)) == (train, test)
    others = {tuple(split_autolabelled(keys, 0.8, rng=s)[1]) for s in range(10)}
    assert len(others) > 1  # the seed matters
    assert [len(p) for p in split_autolabelled(keys[:5], 0.8, rng=0)] == [4, 1]
    assert split_autolabelled([], 0.8) == ([], [])
    with pytest.raises(ValueError, match="train_ratio"):
        split_autolabelled(keys, 1.5)


def test_tsoda_schedule_values_and_scale():
    assert [tsoda_schedule(i) for i in range(6)] == [2500, 4000, 5500, 7000, 8500, 8500]
    assert [tsoda_schedule(i, scale=0.1) for i in range(6)] == [250, 400, 550, 700, 850, 850]
    assert tsoda_schedule(0, scale=1e-9) == 1
    # 330 images at batch 8 vs the seed's 1,100 at (assumed) 24: 0.3 * 3 = 0.9
    assert tsoda_scale(330, batch_size=8) == pytest.approx(0.9)
    assert tsoda_scale(1100) == pytest.approx(1.0)
    assert math.isclose(tsoda_schedule(1, scale=tsoda_scale(550)), 2000)
    with pytest.raises(ValueError, match="iteration"):
        tsoda_schedule(-1)
    with pytest.raises(ValueError, match="scale"):
        tsoda_schedule(0, scale=0)


def test_certainty_uses_the_class_probability_not_the_detection_score() -> None:
    """fcos scores a box p x predicted IoU; CertaintySSOD's p*v must use p (its label's class probability),
    or v counts twice. Hand case: p = 0.9 / 0.6, v = 0.5 / 0.8, scores = p*v."""
    probs = np.array([[0.9, 0.1], [0.2, 0.6]], np.float32)
    v = np.array([0.5, 0.8], np.float32)
    d = Detections(Boxes(np.array([[0, 0, 10, 10], [5, 5, 20, 20]], float), (32, 32)), np.array([0, 1]),
                   np.array([0.45, 0.48], np.float32), probs, v)
    np.testing.assert_allclose(certainty_scores(d, certainty=True), [0.45, 0.48], rtol=1e-6)
    np.testing.assert_allclose(certainty_scores(d, certainty=False), [0.9, 0.6], rtol=1e-6)
    # TSODA (TSODA) thresholds the detector's own score: 0.46 keeps the second box only
    assert accept_fixed(d, 0.46).tolist() == [False, True]


# -- autolabel --threshold auto: the threshold from a validation score table ------------------------
# (score, is true positive) on the validation images; precision of the rows above t:
#   t in [0.85, 0.90): 2/2   [0.80, 0.85): 3/3   [0.70, 0.80): 3/4   [0.60, 0.70): 4/5
#   [0.50, 0.60): 5/6 = 0.833   [0.40, 0.50): 5/7   [0.30, 0.40): 5/8   [0.20, 0.30): 6/9   below: 6/10
TABLE = [(0.95, True), (0.90, True), (0.85, True), (0.80, False), (0.70, True), (0.60, True), (0.50, False),
         (0.40, False), (0.30, True), (0.20, False)]


def test_threshold_auto_on_a_hand_made_score_table() -> None:
    assert threshold_for_precision(TABLE, 0.9) == pytest.approx(0.80)  # 0.79 would let the false 0.80 in
    assert precision_above(TABLE, 0.80) == (1.0, 3) and precision_above(TABLE, 0.79) == (0.75, 4)
    # precision is not monotone in t: the lowest t reaching 0.8 lies below a band that misses it
    assert threshold_for_precision(TABLE, 0.8) == pytest.approx(0.50)
    assert precision_above(TABLE, 0.70)[0] == 0.75
    assert threshold_for_precision(np.array(TABLE, dtype=float), 0.8) == pytest.approx(0.50)  # an array works too
    assert threshold_for_precision([(0.9, False), (0.5, True)], 0.9) is None  # the top box is wrong: never
    assert threshold_for_precision([], 0.9) is None and precision_above([], 0.5) == (None, 0)
    assert threshold_for_precision(TABLE, 0.9, step=0.1) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        threshold_for_precision(TABLE, 1.0)


def test_score_percentiles_say_what_the_scores_look_like() -> None:
    s = score_percentiles(np.linspace(0, 0.5, 101))
    assert s["boxes"] == 101 and s["max"] == 0.5 and s["p90"] == pytest.approx(0.45) and s["p99"] == pytest.approx(0.495)
    assert score_percentiles([]) == {"boxes": 0, "p50": None, "p90": None, "p99": None, "max": None}
