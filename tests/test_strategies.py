"""Strategies on hand-made predictions whose right answer was worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from boxloop.strategies import (
    BOX_STRATEGIES,
    IMAGE_STRATEGIES,
    DetectionTable,
    class_thresholds,
    entropy_scores,
    k_center_greedy,
    select,
)
from boxloop.structures import Boxes, Detections


def det(probs, lq=None, feats=None, scores=None, labels=None, boxes=None, size=(100, 100)) -> Detections:
    probs = np.asarray(probs, np.float32).reshape(len(probs), -1) if len(probs) else np.zeros((0, 2), np.float32)
    n = probs.shape[0]
    if boxes is None:
        boxes = np.array([[i, i, i + 10, i + 10] for i in range(n)], np.float64).reshape(-1, 4)
    return Detections(
        boxes=Boxes(boxes, size),
        labels=probs.argmax(1) if labels is None else labels,
        scores=probs.max(1) if scores is None else scores,
        class_probs=probs,
        loc_quality=None if lq is None else np.asarray(lq, np.float32),
        features=None if feats is None else np.asarray(feats, np.float32).reshape(n, -1),
    )


def empty(c=2, lq=False, d=None) -> Detections:
    return Detections.empty(c, (100, 100), loc_quality=lq, feature_dim=d)


# -- table --------------------------------------------------------------------------------------


def test_table_layout_and_per_image_reductions():
    pool = {"a": det([[0.9, 0.1], [0.3, 0.7]]), "e": empty(), "b": det([[0.5, 0.5]])}
    t = DetectionTable.from_detections(pool)
    assert t.keys == ("a", "e", "b")
    assert t.image_index.tolist() == [0, 0, 2]
    assert t.box_index.tolist() == [0, 1, 0]
    assert t.counts().tolist() == [2, 0, 1]
    v = np.array([1.0, 3.0, 5.0])
    mean = t.per_image(v, "mean")
    assert mean[0] == 2.0 and math.isnan(mean[1]) and mean[2] == 5.0
    assert t.per_image(v, "max")[[0, 2]].tolist() == [3.0, 5.0]
    f = t.filter(np.array([False, True, True]))
    assert f.box_index.tolist() == [1, 0] and f.per_image(np.array([7.0, 8.0]), "min")[0] == 7.0


def test_table_optional_fields_and_class_mismatch():
    t = DetectionTable.from_detections({"a": det([[0.9, 0.1]], lq=[0.5]), "b": det([[0.2, 0.8]])})
    assert t.loc_quality is None
    t = DetectionTable.from_detections({"a": det([[0.9, 0.1]], lq=[0.5]), "e": empty()})
    assert t.loc_quality is not None  # empty images do not veto a field
    with pytest.raises(ValueError, match="number of classes"):
        DetectionTable.from_detections({"a": det([[0.9, 0.1]]), "b": det([[0.2, 0.3, 0.5]])})


# -- least confidence / entropy ----------------------------------------------------------------


def _lc_pool():
    # per box 1 - max P: A [0.1, 0.7] (mean 0.4, max 0.7); B [0.5, 0.5]; C [0.05]
    return {"A": det([[0.9, 0.1], [0.3, 0.2]]), "B": det([[0.5, 0.5], [0.5, 0.4]]), "C": det([[0.95, 0.05]])}


def test_least_confidence_mean_and_max():
    sel = select("least_confidence", _lc_pool(), budget=3)
    assert sel.items == ("B", "A", "C")
    assert sel.scores == pytest.approx((0.5, 0.4, 0.05), abs=1e-6)
    sel = select("least_confidence", _lc_pool(), budget=1, aggregate="max")
    assert sel.items == ("A",) and sel.scores[0] == pytest.approx(0.7, abs=1e-6)


def test_entropy_scores_by_hand():
    t = DetectionTable.from_detections({"x": det([[0.5, 0.5], [0.25, 0.25], [1.0, 0.0], [0.9, 0.9]])})
    cat = entropy_scores(t, "categorical")
    assert cat[0] == pytest.approx(math.log(2))
    assert cat[1] == pytest.approx(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)))  # 0.5 left for background
    assert cat[2] == pytest.approx(0.0, abs=1e-9)
    assert cat[3] == pytest.approx(math.log(2))  # sigmoid row summing to 1.8, normalised
    binary = entropy_scores(t, "binary")
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert binary[0] == pytest.approx(2 * h(0.5))
    assert binary[3] == pytest.approx(2 * h(0.9))
    sel = select("entropy", {"certain": det([[1.0, 0.0]]), "torn": det([[0.5, 0.5]])}, budget=1)
    assert sel.items == ("torn",)


# -- localization aware (LocAwareAL Algorithm 2) --------------------------------------------------


def _la_pool():
    """Hand-made pool; S = max P x loc_quality.

    class 0 kept S: img3 0.25, img1 0.30, img0 0.45, img2 0.80  -> 2nd lowest = 0.30
    class 1 kept S: img2 0.32, img4 0.81 (img5 0.15 is under 0.2)  -> 2nd lowest = 0.81
    class 2: none -> threshold None.  img5 and img6 are "empty".
    """
    return {
        "img0": det([[0.9, 0.0, 0.0]], lq=[0.5]),
        "img1": det([[0.6, 0.0, 0.0]], lq=[0.5]),
        "img2": det([[0.8, 0.0, 0.0], [0.0, 0.8, 0.0]], lq=[1.0, 0.4]),
        "img3": det([[0.5, 0.0, 0.0]], lq=[0.5]),
        "img4": det([[0.0, 0.9, 0.0]], lq=[0.9]),
        "img5": det([[0.0, 0.3, 0.0]], lq=[0.5]),
        "img6": empty(3, lq=True),
    }


def test_localization_aware_thresholds_and_images_by_hand():
    sel = select("localization_aware", _la_pool(), budget=None, per_class=2)
    th = sel.info["thresholds"]
    assert th[0] == pytest.approx(0.30, abs=1e-6) and th[1] == pytest.approx(0.81, abs=1e-6) and th[2] is None
    assert sel.info["kept_per_class"] == [4, 2, 0]
    # round-robin over classes: rank 0 (img3 0.25, img2 0.32), rank 1 (img1 0.30, img4 0.81)
    assert sel.items == ("img3", "img2", "img1", "img4")
    assert sel.scores == pytest.approx((0.75, 0.68, 0.70, 0.19), abs=1e-6)
    assert sel.info["qualifying_images"] == 4 and not sel.info["extended"]


def test_localization_aware_budget_keeps_classes_balanced_and_extends():
    # lowest-score-first would take img3 and img1 (both class 0); round-robin takes one per class
    assert select("localization_aware", _la_pool(), budget=2, per_class=2).items == ("img3", "img2")
    sel = select("localization_aware", _la_pool(), budget=5, per_class=2)
    assert sel.items == ("img3", "img2", "img1", "img4", "img0") and sel.info["extended"]
    sel = select("localization_aware", _la_pool(), budget=7, per_class=2, rng=0)
    assert set(sel.items[5:]) == {"img5", "img6"} and math.isnan(sel.scores[6])
    with pytest.warns(UserWarning, match="only 7 left"):
        sel = select("localization_aware", _la_pool(), budget=8, per_class=2)
    assert len(sel) == 7 and sel.info["short_by"] == 1


def test_localization_aware_default_100_takes_all_and_empty_share():
    sel = select("localization_aware", _la_pool(), budget=None)
    assert sel.info["thresholds"][:2] == [1.0, 1.0]  # fewer than 100 kept: the whole class qualifies
    assert set(sel.items) == {"img0", "img1", "img2", "img3", "img4"}
    sel = select("localization_aware", _la_pool(), budget=4, per_class=2, empty_share=0.5, rng=1)
    assert sel.items[:2] == ("img3", "img2") and set(sel.items[2:]) == {"img5", "img6"}
    assert sel.info["empty_images_taken"] == 2


def test_class_thresholds_vectorised_matches_loop():
    rng = np.random.default_rng(0)
    s, lab = rng.random(5000), rng.integers(0, 7, 5000)
    thr, counts = class_thresholds(s, lab, 8, per_class=100)
    for c in range(7):
        assert thr[c] == np.sort(s[lab == c])[99]
    assert np.isnan(thr[7]) and counts[7] == 0


# -- coreset --------------------------------------------------------------------------------------


def test_coreset_picks_far_point_first_2d():
    pts = {"near": [1, 0], "mid": [0, 2], "far": [10, 10], "far2": [9, 10]}
    pool = {k: det([[0.9, 0.1]], feats=[v]) for k, v in pts.items()}
    sel = select("coreset", pool, budget=2, labelled_features=np.zeros((1, 2)), device=None)
    assert sel.items == ("far", "mid")
    assert sel.scores == pytest.approx((math.sqrt(200), 2.0))


def test_coreset_mean_of_box_features_and_empty_images():
    pool = {"two": det([[0.9, 0.1], [0.8, 0.2]], feats=[[0, 0], [20, 20]]),  # mean (10, 10)
            "one": det([[0.9, 0.1]], feats=[[3, 0]]), "none": empty(d=2)}
    sel = select("coreset", pool, budget=1, labelled_features=np.zeros((1, 2)))
    assert sel.items == ("two",) and sel.scores[0] == pytest.approx(math.sqrt(200))
    sel = select("coreset", pool, budget=3, labelled_features=np.zeros((1, 2)))
    assert sel.items[:2] == ("two", "one") and sel.items[2] == "none"


def _naive_k_center(x, k, centres):
    chosen = []
    for _ in range(k):
        c = np.concatenate([centres, x[chosen]]) if chosen else centres
        d = np.sqrt(((x[:, None, :] - c[None]) ** 2).sum(-1)).min(1)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    return chosen


def test_k_center_matches_naive_reference_and_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    c = rng.standard_normal((5, 8)).astype(np.float32)
    picks, _ = k_center_greedy(x, 20, c, chunk=2)
    assert picks.tolist() == _naive_k_center(x.astype(np.float64), 20, c.astype(np.float64))
    picks_t, _ = k_center_greedy(x, 20, c, device="cpu")
    assert picks_t.tolist() == picks.tolist()


@pytest.mark.parametrize("n_centres", [0, 1, 150])
def test_lazy_k_center_equals_textbook_loop_on_clustered_data(n_centres):
    rng = np.random.default_rng(n_centres)
    means = rng.standard_normal((12, 16)) * 6
    x = (means[rng.integers(0, 12, 2000)] + rng.standard_normal((2000, 16))).astype(np.float32)
    c = (means[rng.integers(0, 12, n_centres)] + rng.standard_normal((n_centres, 16))).astype(np.float32)
    lazy, d_lazy = k_center_greedy(x, 120, c, np.random.default_rng(0), chunk=64)
    full, d_full = k_center_greedy(x, 120, c, np.random.default_rng(0), lazy=False)
    assert lazy.tolist() == full.tolist()
    np.testing.assert_allclose(d_lazy, d_full, rtol=1e-4)
    assert np.all(np.diff(d_lazy[1:]) <= 1e-4)  # greedy k-center: pick distances never grow
    # tiny blocks force the candidate pool to be rebuilt many times: still the same picks
    from boxloop.strategies.coreset import _k_center_lazy

    tiny, _ = _k_center_lazy(x, 120, c, np.random.default_rng(0), chunk=16, block=2, seed_centres=3)
    assert tiny.tolist() == full.tolist()


def test_missing_fields_name_the_strategy_and_models():
    pool = {"a": det([[0.9, 0.1]])}
    with pytest.raises(ValueError, match="localization_aware.*loc_quality.*fcos"):
        select("localization_aware", pool, budget=1)
    with pytest.raises(ValueError, match="coreset.*features.*faster_rcnn"):
        select("coreset", pool, budget=1, labelled_features=np.zeros((0, 2)))
    with pytest.raises(ValueError, match="labelled_features"):
        select("coreset", {"a": det([[0.9, 0.1]], feats=[[1, 2]])}, budget=1)


# -- random, budget, bad input ------------------------------------------------------------------


def test_random_is_seeded_and_covers_empty_images():
    pool = {f"i{k}": (det([[0.9, 0.1]]) if k % 2 else empty()) for k in range(50)}
    a = select("random", pool, budget=10, rng=7)
    assert a.items == select("random", pool, budget=10, rng=np.random.default_rng(7)).items
    assert a.items != select("random", pool, budget=10, rng=8).items
    assert len(set(a.items)) == 10
    assert len(select("random", pool, budget=50, rng=0).items) == 50


def test_budget_larger_than_pool_takes_what_is_left():
    with pytest.warns(UserWarning, match="budget 10 images but only 3"):
        sel = select("least_confidence", _lc_pool(), budget=10)
    assert set(sel.items) == {"A", "B", "C"} and sel.info["short_by"] == 7


def test_bad_input_errors():
    with pytest.raises(ValueError, match="pool is empty"):
        select("random", {}, budget=1)
    with pytest.raises(ValueError, match="unknown image-level strategy 'nope'"):
        select("nope", _lc_pool(), budget=1)
    with pytest.raises(ValueError, match="budget is required"):
        select("entropy", _lc_pool(), budget=None)
    with pytest.raises(ValueError, match="unknown box-level strategy 'entropy'"):
        select("entropy", _lc_pool(), budget=1, unit="boxes")
    with pytest.raises(ValueError, match="empty_share"):
        select("least_confidence", _lc_pool(), budget=1, empty_share=1.5)


def test_empty_share_in_uncertainty_strategies():
    pool = {"a": det([[0.6, 0.4]]), "b": det([[0.7, 0.3]]), "c": det([[0.95, 0.05]]),
            "n1": empty(), "n2": empty(), "low": det([[0.9, 0.1]], scores=[0.01])}
    sel = select("least_confidence", pool, budget=4, empty_share=0.5, min_score=0.05, rng=0)
    assert sel.items[:2] == ("a", "b")
    assert set(sel.items[2:]) <= {"n1", "n2", "low"} and sel.info["empty_images"] == 3
    assert sel.info["empty_images_taken"] == 2


# -- box level (FineGrainedAL) ---------------------------------------------------------------------------


def _box_pool():
    return {
        "p": det([[0.9, 0.1], [0.55, 0.45], [0.05, 0.04]]),  # third box under t_d=0.1
        "q": det([[0.3, 0.7], [0.6, 0.4]]),
        "r": empty(),
    }


def test_box_least_confidence_items_and_exclude():
    sel = select("least_confidence", _box_pool(), budget=2, unit="boxes")
    assert sel.unit == "boxes" and sel.items == (("p", 1), ("q", 1))
    assert sel.scores == pytest.approx((0.45, 0.4), abs=1e-6)
    sel = select("least_confidence", _box_pool(), budget=2, unit="boxes", exclude=[("p", 1)])
    assert sel.items == (("q", 1), ("q", 0))
    with pytest.warns(UserWarning, match="only 4 left"):
        sel = select("least_confidence", _box_pool(), budget=9, unit="boxes")
    assert ("p", 2) not in sel.items


def test_box_random_seeded_and_coreset():
    a = select("random", _box_pool(), budget=3, unit="boxes", rng=5)
    assert a.items == select("random", _box_pool(), budget=3, unit="boxes", rng=5).items
    pool = {"p": det([[0.9, 0.1], [0.8, 0.2]], feats=[[0, 1], [7, 7]]), "q": det([[0.6, 0.4]], feats=[[2, 0]])}
    sel = select("coreset", pool, budget=2, unit="boxes", labelled_features=np.zeros((1, 2)))
    assert sel.items == (("p", 1), ("q", 0))


def test_box_pool_empty_error():
    with pytest.raises(ValueError, match="box pool is empty.*t_d=0.5"):
        select("random", {"p": det([[0.3, 0.2]]), "r": empty()}, budget=1, unit="boxes", t_d=0.5)


def test_registries_have_the_issue_names():
    assert list(IMAGE_STRATEGIES) == ["random", "least_confidence", "entropy", "localization_aware", "coreset",
                                      "typical", "budget_aware", "class_difficulty", "ppal", "class_diverse"]
    assert list(BOX_STRATEGIES) == ["random", "least_confidence", "coreset"]


def test_pool_without_any_detection_keeps_the_model_fields() -> None:
    """An early model may find nothing anywhere: localization_aware must still run (all images empty)."""
    from boxloop.strategies import DetectionTable, select
    from boxloop.structures import Detections

    pool = {f"img{i}": Detections.empty(3, (64, 64), loc_quality=True, feature_dim=8) for i in range(5)}
    table = DetectionTable.from_detections(pool)
    assert table.loc_quality is not None and table.features is not None and table.features.shape == (0, 8)
    sel = select("localization_aware", pool, budget=2, rng=0, empty_share=1.0)
    assert len(sel) == 2 and set(sel.items) <= set(pool)
