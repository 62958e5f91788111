"""class_difficulty and ppal (issue 25) on hand-made pools whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from boxloop.strategies import DetectionTable, select
from boxloop.strategies.classaware import class_quality, class_shares, labelled_class_quality, ppal_class_weights
from boxloop.strategies.ppal import category_distances, dcus_scores, kmeans_pp_medoids

from test_strategies import det, empty  # noqa: E402  (the hand-made Detections helpers)


def _copies_and_rare() -> dict:
    """9 near-copies of one frame (class 0, one box, scores 0.5..0.9, features within 1e-3 of each
    other) and 1 image of a rare class (class 1, score 0.35, another feature)."""
    rng = np.random.default_rng(0)
    pool = {}
    for i, s in enumerate(np.linspace(0.5, 0.9, 9)):
        f = np.array([1.0, 0.0, 0.0, 0.0]) + 1e-3 * rng.standard_normal(4)
        pool[f"copy{i}"] = det([[s, 0.0]], feats=[f])
    pool["rare"] = det([[0.0, 0.35]], feats=[[0.0, 1.0, 0.0, 0.0]])
    return pool


@pytest.mark.parametrize("strategy", ["class_difficulty", "ppal", "class_diverse"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nine_copies_and_a_rare_image_budget_two_takes_the_rare_one_and_one_copy(strategy, seed):
    sel = select(strategy, _copies_and_rare(), budget=2, rng=seed)
    assert "rare" in sel.items and sum(k.startswith("copy") for k in sel.items) == 1


def test_without_diversity_the_same_pool_takes_two_copies():
    # the uncertainty stage alone (a candidate pool of exactly the budget) ranks two copies first:
    # the diversity step is what brings the rare image in
    sel = select("ppal", _copies_and_rare(), budget=2, rng=0, pool_factor=1)
    assert all(k.startswith("copy") for k in sel.items)
    assert select("entropy", _copies_and_rare(), budget=2, mode="binary").items[0].startswith("copy")


def _three_classes(n: int = 12) -> dict:
    """n images per class, one box each: class 0 sure (0.9), class 1 (0.8), class 2 unsure (0.3)."""
    pool = {}
    for c, s in enumerate((0.9, 0.8, 0.3)):
        for i in range(n):
            p = np.zeros(3)
            p[c] = s - 0.01 * i
            pool[f"c{c}_{i}"] = det([p])
    return pool


def test_class_quality_and_shares_by_hand():
    t = DetectionTable.from_detections(_three_classes(2))
    q = class_quality(t)
    assert q == pytest.approx([0.895, 0.795, 0.295])  # mean score (no loc_quality)
    assert class_shares(q) == pytest.approx(np.array([0.105, 0.205, 0.705]) / 1.015)
    # with a predicted IoU: PPAL's score^0.6 x IoU^0.4
    t = DetectionTable.from_detections({"a": det([[0.5, 0.0]], lq=[0.8]), "b": det([[0.0, 0.9]], lq=[0.2])})
    assert class_quality(t) == pytest.approx([0.5 ** 0.6 * 0.8 ** 0.4, 0.9 ** 0.6 * 0.2 ** 0.4])
    # per-class AP given where known (NaN: calibrated on the predictions)
    assert class_quality(t, class_skill=np.array([np.nan, 0.1])) == pytest.approx([0.5 ** 0.6 * 0.8 ** 0.4, 0.1])
    with pytest.raises(ValueError, match="one value per class"):
        class_quality(t, class_skill=np.array([0.5]))


def test_labelled_class_quality_by_hand():
    """Image 1: a class-0 object found exactly with P(0) = 0.8, a class-1 object missed. Image 2: a
    class-0 object whose best box overlaps it with IoU 0.5 at P(0) = 0.6. Class 2: no object."""
    pred1 = det([[0.8, 0.1, 0.0]], boxes=np.array([[0, 0, 10, 10]], float))
    pred2 = det([[0.6, 0.0, 0.0], [0.9, 0.0, 0.0]], boxes=np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float))
    truths = [(np.array([[0, 0, 10, 10], [30, 30, 40, 40]], float), np.array([0, 1])),
              (np.array([[0, 0, 10, 20]], float), np.array([0]))]
    q = labelled_class_quality([pred1, pred2], truths, 3)
    assert q == pytest.approx([(0.8 ** 0.6 + 0.6 ** 0.6 * 0.5 ** 0.4) / 2, 0.0, 0.0])
    # an image without predictions: its objects count as missed; no labelled box at all: zeros
    assert labelled_class_quality([empty(3)], [(np.array([[0, 0, 5, 5]], float), np.array([2]))], 3).tolist() == \
        [0.0, 0.0, 0.0]
    assert labelled_class_quality([], [], 2).tolist() == [0.0, 0.0]


def test_ppal_class_weights_span_one_to_one_plus_upper_bound():
    w = ppal_class_weights(np.array([1.0, 0.5, 0.0]))
    assert w[0] == pytest.approx(1.0) and w[2] == pytest.approx(1.2) and 1.0 < w[1] < 1.2


def test_the_worst_class_gets_the_biggest_share():
    sel = select("class_difficulty", _three_classes(), budget=6)
    # quality = mean score (0.845, 0.745, 0.245), shares (0.155, 0.255, 0.755) / 1.165; Sainte-Lague keys
    # (2 x placed + 1) / share: c2 1.54, c1 4.57, c2 4.63, c0 7.52, c2 7.72, c2 10.8
    assert sel.info["per_class_images"] == [1, 1, 4]
    assert [k[:2] for k in sel.items] == ["c2", "c1", "c2", "c0", "c2", "c2"]
    # each class takes its most uncertain images first (nearest 0.5: class 2 from 0.30 down, class 1 from 0.69 up)
    assert [k for k in sel.items if k.startswith("c2")] == ["c2_0", "c2_1", "c2_2", "c2_3"]
    assert sel.items[1] == "c1_11"
    # judged on a given per-class AP instead: class 0 is now the worst
    sel = select("class_difficulty", _three_classes(), budget=6, class_skill=np.array([0.1, 0.9, 0.9]))
    counts = sel.info["per_class_images"]
    assert counts[0] == max(counts) and counts[0] >= 4 and sel.info["quality_from"] == "class_skill"


def test_a_rare_class_the_model_misses_is_found_in_the_probability_vector():
    """No box is labelled class 2, but one box labelled 0 holds 0.3 of class 2: that image comes first,
    where least confidence would ask about the unsure class-1 images."""
    pool = {f"sure{i}": det([[0.9, 0.0, 0.0]]) for i in range(5)}
    pool.update({f"unsure{i}": det([[0.0, 0.5, 0.0]]) for i in range(5)})
    pool["hidden"] = det([[0.6, 0.0, 0.3]])
    sel = select("class_difficulty", pool, budget=1)
    assert sel.items == ("hidden",) and sel.info["class_quality"][2] == 0.0
    assert select("least_confidence", pool, budget=1).items[0].startswith("unsure")


def test_class_difficulty_empty_images_and_budget_past_the_candidates():
    pool = {"a": det([[0.9, 0.0]]), "b": det([[0.0, 0.4]]), "e1": empty(), "e2": empty()}
    sel = select("class_difficulty", pool, budget=3, rng=0)
    assert sel.items[:2] == ("b", "a") and sel.items[2] in ("e1", "e2") and np.isnan(sel.scores[2])
    sel = select("class_difficulty", pool, budget=2, rng=0, empty_share=0.5)
    assert sel.items[0] == "b" and sel.items[1] in ("e1", "e2") and sel.info["empty_images_taken"] == 1
    sel = select("class_difficulty", {"e1": empty(), "e2": empty()}, budget=1, rng=0)
    assert len(sel) == 1 and sel.info["empty_images"] == 2  # the loop records this as drawn at random


def test_dcus_sums_entropy_times_class_weight():
    t = DetectionTable.from_detections({"a": det([[0.5, 0.0], [0.0, 0.9]]), "b": det([[0.02, 0.0]]), "e": empty()})
    unc, w = dcus_scores(t)
    h = lambda p: -(p * np.log(p) + (1 - p) * np.log(1 - p))  # noqa: E731
    assert unc[0] == pytest.approx(h(0.5) * w[0] + h(0.9) * w[1])
    assert np.isnan(unc[1]) and np.isnan(unc[2])  # b's only box is under 0.05


def test_category_distance_by_hand():
    # a: class 0 at f=(1,0); b: class 0 at (0,1) -> cos distance 1; c: class 1 only -> 2 from a and b
    pool = {"a": det([[0.8, 0.0]], feats=[[1.0, 0.0]]), "b": det([[0.8, 0.0]], feats=[[0.0, 1.0]]),
            "c": det([[0.0, 0.8]], feats=[[1.0, 0.0]]),
            "d": det([[0.8, 0.0], [0.0, 0.2]], feats=[[1.0, 0.0], [1.0, 0.0]])}
    t = DetectionTable.from_detections(pool)
    d = category_distances(t, np.arange(4))
    assert d[0, 1] == pytest.approx(1.0) and d[0, 2] == pytest.approx(2.0) and d[1, 2] == pytest.approx(2.0)
    # d->a: (0.8 x 0 + 0.2 x 2) / 1.0 = 0.4; a->d: 0 -> symmetric 0.2
    assert d[0, 3] == pytest.approx(0.2) and d[3, 0] == pytest.approx(0.2)
    assert np.allclose(np.diag(d), 0.0)
    # any order of the images: the same distances, permuted
    perm = np.array([2, 0, 3, 1])
    assert np.allclose(category_distances(t, perm), d[np.ix_(perm, perm)])
    # tiny chunks give the same matrix
    assert np.allclose(category_distances(t, np.arange(4), chunk_cells=1), d)


def test_category_distance_matches_a_naive_loop():
    rng = np.random.default_rng(1)
    pool = {}
    for i in range(7):
        n = int(rng.integers(1, 5))
        probs = np.zeros((n, 3))
        probs[np.arange(n), rng.integers(0, 3, n)] = rng.uniform(0.1, 1.0, n)
        pool[i] = det(probs, feats=rng.standard_normal((n, 5)))
    t = DetectionTable.from_detections(pool)
    dets = list(pool.values())

    def one_way(a, b):
        fa = a.features / np.linalg.norm(a.features, axis=1, keepdims=True)
        fb = b.features / np.linalg.norm(b.features, axis=1, keepdims=True)
        near = [min([1 - fa[i] @ fb[j] for j in range(len(b)) if b.labels[j] == a.labels[i]], default=2.0)
                for i in range(len(a))]
        return float(np.dot(near, a.scores) / a.scores.sum())

    naive = np.array([[0.0 if i == j else (one_way(dets[i], dets[j]) + one_way(dets[j], dets[i])) / 2
                       for j in range(7)] for i in range(7)])
    images = np.array([3, 0, 6, 1, 5, 2, 4])
    assert np.allclose(category_distances(t, images, chunk_cells=3), naive[np.ix_(images, images)])


def _duplicates(n_distinct: int = 4, copies: int = 3) -> dict:
    """n_distinct feature vectors, each on `copies` images (identical box, label and feature)."""
    pool = {}
    for v in range(n_distinct):
        f = np.eye(n_distinct)[v]
        for j in range(copies):
            pool[f"v{v}_{j}"] = det([[0.5 + 0.04 * j + 0.01 * v, 0.0]], feats=[f])
    return pool


@pytest.mark.parametrize("strategy", ["ppal", "class_diverse"])
@pytest.mark.parametrize("seed", range(10))
def test_kmeans_pp_never_takes_two_identical_vectors_while_distinct_ones_remain(strategy, seed):
    pool = _duplicates()
    for budget in (2, 3, 4):
        sel = select(strategy, pool, budget=budget, rng=seed, pool_factor=3)
        vectors = {k.split("_")[0] for k in sel.items}
        assert len(sel) == budget and len(vectors) == budget
    # past the number of distinct vectors, copies fill the batch
    sel = select(strategy, pool, budget=6, rng=seed, pool_factor=2)
    assert len(sel) == 6 and len({k.split("_")[0] for k in sel.items}) == 4


def _scenes_and_hidden_rare(seed: int = 0) -> dict:
    """6 scenes x 8 near-copies (3 unsure boxes of classes 0-2 each) and 4 images whose rare class 3
    hides in a box labelled 0 (P = 0.4 for class 0, 0.15 for class 3) beside a sure class-1 box."""
    rng = np.random.default_rng(seed)
    scenes = rng.standard_normal((6, 8))
    pool = {}
    for s in range(6):
        lab = rng.integers(0, 3, 3)
        for j in range(8):
            probs = np.zeros((3, 4))
            probs[np.arange(3), lab] = rng.uniform(0.3, 0.95, 3)
            pool[f"s{s}_{j}"] = det(probs, feats=scenes[s] + 0.02 * rng.standard_normal((3, 8)))
    for r in range(4):
        pool[f"rare{r}"] = det([[0.4, 0.0, 0.0, 0.15], [0.0, 0.9, 0.0, 0.0]], feats=rng.standard_normal((2, 8)))
    return pool


def test_class_diverse_finds_the_hidden_rare_class_and_spreads_over_scenes():
    """Budget 8 with class 3 never learned (skill 0): ppal's summed entropy ranks the rare images below
    the crowded scenes; class_diverse takes them and still spreads the rest over the scenes."""
    skill = np.array([0.6, 0.6, 0.6, 0.0])
    for seed in range(3):
        pool = _scenes_and_hidden_rare(seed)
        diverse = select("class_diverse", pool, budget=8, rng=seed, class_skill=skill)
        assert sum(k.startswith("rare") for k in diverse.items) >= 3
        scenes = [k.split("_")[0] for k in diverse.items if k.startswith("s")]
        assert len(set(scenes)) == len(scenes)  # no scene twice
        assert not any(k.startswith("rare") for k in select("ppal", pool, budget=8, rng=seed, class_skill=skill).items)


def test_kmeans_pp_medoids_on_a_matrix_with_ties():
    d = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], float)
    rng = np.random.default_rng(0)
    med = kmeans_pp_medoids(d, 2, rng)
    assert {int(m) // 2 for m in med} == {0, 1}
    assert kmeans_pp_medoids(np.zeros((3, 3)), 2, rng).tolist() == [0, 1]  # all identical: in order
    assert kmeans_pp_medoids(d, 0, rng).shape == (0,)


def test_ppal_without_features_falls_back_and_says_so():
    pool = {k: det(d.class_probs) for k, d in _copies_and_rare().items()}  # the same pool, no features
    sel = select("ppal", pool, budget=2, rng=0)
    fb = sel.info["fallback"]
    assert fb["strategy"] == "ppal_uncertainty" and "no box features" in fb["reason"]
    assert all(k.startswith("copy") for k in sel.items)  # uncertainty alone
    # an image embedding (the loop's stand-in for missing detector features) brings the diversity back
    keys = list(pool)
    emb = np.array([[1.0, 0.0] if k.startswith("copy") else [0.0, 1.0] for k in keys])
    sel = select("ppal", pool, budget=2, rng=0, image_features=emb)
    assert "fallback" not in sel.info and sel.info["distance"] == "image_embedding" and "rare" in sel.items
    with pytest.raises(ValueError, match="image_features must be"):
        select("ppal", pool, budget=2, image_features=emb[:3])


def test_ppal_empty_pool_and_empty_share():
    sel = select("ppal", {"e1": empty(d=4), "e2": empty(d=4)}, budget=1, rng=0)
    assert len(sel) == 1 and sel.info["empty_images"] == 2 and "fallback" not in sel.info
    # no box anywhere, an embedding given: k-means++ on the embedding alone (never two copies of a frame)
    pool = {f"e{i}": empty(d=4) for i in range(6)}
    emb = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]])
    for seed in range(5):
        sel = select("ppal", pool, budget=2, rng=seed, image_features=emb)
        assert "e5" in sel.items and sel.info["distance"] == "image_embedding" and np.isnan(sel.scores).all()
    pool = {**_copies_and_rare(), "e1": empty(d=4)}
    sel = select("ppal", pool, budget=2, rng=0, empty_share=0.5)
    assert sel.items[1] == "e1" and sel.info["empty_images_taken"] == 1
    with pytest.raises(ValueError, match="pool_factor"):
        select("ppal", pool, budget=2, pool_factor=0.5)
