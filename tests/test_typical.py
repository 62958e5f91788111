"""typical (TypiClust) and budget_aware on hand-made point clouds whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from boxloop.strategies import DetectionTable, coverage, kmeans, select, typicality
from boxloop.structures import Boxes, Detections

CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])


def blob(centre: np.ndarray) -> np.ndarray:
    """A core point, 8 points at 0.1 around it and 8 at 0.3: the core is the densest point (its 8 nearest
    neighbours are all at 0.1; an inner-ring point's average 0.138, an outer-ring point's more)."""
    ang = np.arange(8) * np.pi / 4
    ring = np.stack([np.cos(ang), np.sin(ang)], 1)
    return np.concatenate([centre[None], centre + 0.1 * ring, centre + 0.3 * ring])


def cloud(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Three blobs, rows shuffled. Returns (points, cluster of each row, row of each blob's core)."""
    pts = np.concatenate([blob(c) for c in CENTRES])
    truth = np.repeat(np.arange(3), 17)
    perm = np.random.default_rng(seed).permutation(len(pts))
    inv = np.argsort(perm)
    return pts[perm], truth[perm], [int(inv[17 * i]) for i in range(3)]


def pool_of(n: int) -> DetectionTable:
    return DetectionTable.empty(keys=[f"img{i:02d}" for i in range(n)], num_classes=2)


def test_typicality_is_highest_at_the_core():
    pts = blob(np.zeros(2))
    t = typicality(pts, k=8)
    assert int(np.argmax(t)) == 0
    assert t[0] == pytest.approx(1 / (0.1 + 1e-5))


def test_densest_point_of_each_cluster_is_chosen():
    pts, _, cores = cloud()
    table = pool_of(len(pts))
    sel = select("typical", table, budget=3, rng=0, image_features=pts)
    assert sorted(sel.items) == sorted(table.keys[i] for i in cores)
    assert sel.info["clusters"] == 3 and sel.info["uncovered_clusters_taken"] == 3
    # the same with the rows in another order
    pts2, _, cores2 = cloud(seed=5)
    sel2 = select("typical", table, budget=3, rng=1, image_features=pts2)
    assert sorted(sel2.items) == sorted(table.keys[i] for i in cores2)


def test_uncovered_clusters_first_and_repeat_visits():
    pts, truth, cores = cloud()
    table = pool_of(len(pts))
    # a labelled image at the first blob's core: K = 1 + 2 clusters, the two uncovered ones are taken
    sel = select("typical", table, budget=2, rng=0, image_features=pts, labelled_features=CENTRES[:1])
    assert sorted(sel.items) == sorted(table.keys[i] for i in cores[1:])
    assert sel.info["covered_clusters"] == 1 and sel.info["uncovered_clusters_taken"] == 2
    # a budget beyond the clusters visits them again: next most typical, never twice the same image
    sel = select("typical", table, budget=6, rng=0, image_features=pts, n_clusters=3)
    idx = [table.keys.index(k) for k in sel.items]
    assert len(set(idx)) == 6 and set(idx[:3]) == set(cores)
    assert sorted(truth[idx[3:]].tolist()) == [0, 1, 2]  # a second image from each blob
    assert all(np.isclose(np.linalg.norm(pts[i] - CENTRES[truth[i]]), 0.1) for i in idx[3:])


def test_kmeans_is_seeded_and_reproducible():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8))  # no structure: where the centres land depends on the seed
    a_lab, a_cen = kmeans(x, 7, rng=11)
    b_lab, b_cen = kmeans(x, 7, rng=11)
    assert np.array_equal(a_lab, b_lab) and np.array_equal(a_cen, b_cen)
    c_lab, _ = kmeans(x, 7, rng=12)
    assert not np.array_equal(a_lab, c_lab)
    assert np.bincount(a_lab, minlength=7).min() >= 1
    # well separated blobs are recovered exactly (up to naming)
    pts, truth, _ = cloud()
    lab, _ = kmeans(pts, 3, rng=0)
    assert len({(int(t), int(l)) for t, l in zip(truth, lab)}) == 3
    # the strategy as a whole: same seed, same batch
    x16 = rng.normal(size=(60, 4))
    s1 = select("typical", pool_of(60), budget=5, rng=4, image_features=x16)
    s2 = select("typical", pool_of(60), budget=5, rng=4, image_features=x16)
    assert s1.items == s2.items and s1.scores == s2.scores


def test_kmeans_with_duplicates_and_k_equal_n():
    x = np.array([[0.0, 0.0]] * 4 + [[1.0, 1.0]])
    lab, _ = kmeans(x, 3, rng=0)
    assert np.bincount(lab, minlength=3).min() >= 1
    lab, _ = kmeans(np.eye(4), 4, rng=0)
    assert sorted(lab.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="k must lie"):
        kmeans(np.eye(3), 4)


def test_typical_needs_features_and_takes_what_is_left():
    with pytest.raises(ValueError, match="image_features"):
        select("typical", pool_of(3), budget=1)
    with pytest.raises(ValueError, match=r"\(3, D\)"):
        select("typical", pool_of(3), budget=1, image_features=np.zeros((2, 4)))
    with pytest.warns(UserWarning, match="only 3 left"):
        sel = select("typical", pool_of(3), budget=5, image_features=np.eye(3))
    assert len(sel) == 3 and sel.info["short_by"] == 2


def test_coverage():
    pts, _, cores = cloud()
    assert coverage(pts, np.zeros((0, 2)), k=8)[0] == 0.0
    assert coverage(pts, pts, k=8)[0] == 1.0
    # k is capped at a tenth of the pool (5 of 51 points); the radius is the median distance to the 5th
    # nearest neighbour, an inner-ring point's (2 x 0.1 x sin 45deg); a labelled core covers itself and
    # its inner ring: 9 of 51 points
    cov, radius = coverage(pts, pts[cores[:1]], k=8)
    assert radius == pytest.approx(0.2 * np.sin(np.pi / 4)) and cov == pytest.approx(9 / 51)
    assert coverage(pts, CENTRES, k=8)[0] == pytest.approx(27 / 51)
    # 102 points lift the cap to 10: k = 8 holds, and the median 8th-neighbour distance is 0.2
    big = np.concatenate([pts, pts + 100.0])
    assert coverage(big, pts[cores[:1]], k=8)[1] == pytest.approx(0.2)


def _with_predictions(n: int) -> dict[str, Detections]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(n):
        p = rng.uniform(0.3, 1.0, size=(2, 1))
        probs = np.concatenate([p, 1 - p], 1).astype(np.float32)
        out[f"img{i:02d}"] = Detections(boxes=Boxes(np.array([[0, 0, 10, 10], [5, 5, 20, 20]], float), (32, 32)),
                                        labels=np.zeros(2, np.int64), scores=probs.max(1), class_probs=probs,
                                        loc_quality=rng.uniform(0.3, 1.0, 2).astype(np.float32))
    return out


def test_budget_aware_switches_on_coverage_and_says_so():
    pts, _, cores = cloud()
    pool = _with_predictions(len(pts))
    kw = dict(rng=0, image_features=pts, knn=8)  # 8 look-alikes: the blobs hold 17 points each
    sel = select("budget_aware", pool, budget=3, labelled_features=np.zeros((0, 2)), **kw)
    assert sel.strategy == "budget_aware" and sel.info["phase"] == "typical" and sel.info["coverage"] == 0.0
    assert sorted(sel.items) == sorted(f"img{i:02d}" for i in cores)
    # every image has a labelled twin: coverage 1 >= 0.8, so localization_aware answers
    sel = select("budget_aware", pool, budget=3, labelled_features=pts, **kw)
    assert sel.info["phase"] == "localization_aware" and sel.info["coverage"] == 1.0
    assert sel.info["switch_coverage"] == 0.8 and "thresholds" in sel.info
    ref = select("localization_aware", pool, budget=3, rng=0)
    assert sel.items == ref.items
    # the threshold is an option
    sel = select("budget_aware", pool, budget=3, labelled_features=CENTRES, switch_coverage=0.5, **kw)
    assert sel.info["phase"] == "localization_aware" and sel.info["coverage"] == pytest.approx(27 / 51, abs=1e-4)
