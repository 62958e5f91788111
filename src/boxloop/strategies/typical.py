"""Cold start: `typical` (TypiClust) and the `budget_aware` hybrid.

At small budgets, uncertainty-based selection often loses to random ("Active Learning on a Budget:
Opposite Strategies Suit High and Low Budgets", Hacohen, Dekel, Weinshall, ICML 2022): a model
trained on 10-20 images has uncertainties worth little, and the unusual images it is unsure about
teach less than dense, representative ones. TypiClust needs no detector at all, only an embedding
of every image (`boxloop.predict.embedding`: the pretrained backbone's pooled features):

1. Seeded k-means of labelled + pool embeddings into K = |labelled| + budget clusters (capped at
   MAX_CLUSTERS). At the cold start this is exactly the budget; with labelled images, K = L + B
   leaves at least B clusters holding no labelled image, so "uncovered clusters first" can always
   fill the batch (with K = B, up to min(L, B) clusters would already be covered).
2. Clusters are visited in the order: not tiny before tiny, then fewest labelled images + picks so
   far (uncovered first), then largest. "Tiny" is below min(MIN_CLUSTER_SIZE [5], half the mean cluster size): a cluster of
   one or two images is an outlier group, the opposite of typical (TypiClust drops clusters of
   size <= 5; we only defer them, so a small pool still fills its budget).
3. From each visited cluster, the pool image of highest typicality, 1 / mean distance to its k
   nearest neighbours inside the cluster, k = min(KNN [20], cluster size // 2) (TypiClust's
   choice: the density of its own mode, not of a neighbouring one). A budget larger than the
   number of clusters visits them again, taking the next most typical image.

`budget_aware`: typical while the labelled set is small, then localization_aware. The switch is
when the labelled training images cover the pool in the embedding (see `coverage`); the phase, the
coverage and the threshold go into Selection.info, and from there into the round's results.

Written by hand: k-means (k-means++ seeding, Lloyd, best of n_init), the kNN typicality, the cluster
order and the switch rule; numpy does the arithmetic.
"""

from __future__ import annotations

import numpy as np

from boxloop.strategies.common import as_rng, check_budget, shortfall
from boxloop.strategies.image import localization_aware
from boxloop.strategies.table import DetectionTable
from boxloop.structures import Selection

__all__ = ["kmeans", "typicality", "coverage", "typical", "budget_aware", "KNN", "MAX_CLUSTERS",
           "MIN_CLUSTER_SIZE", "SWITCH_COVERAGE"]

KNN = 20  # TypiClust's neighbours for typicality (and the radius of `coverage`)
MAX_CLUSTERS = 500  # TypiClust's cap; more clusters mean repeat visits, not more k-means work
MIN_CLUSTER_SIZE = 5  # TypiClust drops clusters of size <= 5; we defer them (see module docstring)
SWITCH_COVERAGE = 0.8  # budget_aware: localization_aware once 4 in 5 pool images are covered


# -- pairwise distances and k-means ------------------------------------------------------------------


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, clipped at 0 (float32 rounding)."""
    d = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    proportional to its squared distance from the nearest centre so far."""
    n = x.shape[0]
    idx = np.empty(k, np.int64)
    idx[0] = rng.integers(n)
    d = _sq_dists(x, x[idx[:1]])[:, 0]
    for j in range(1, k):
        total = float(d.sum())
        if total <= 0.0:  # fewer distinct points than clusters: take unused ones in order
            unused = np.setdiff1d(np.arange(n), idx[:j])
            idx[j] = unused[0]
        else:
            idx[j] = int(np.searchsorted(np.cumsum(d), rng.random() * total, side="right").clip(0, n - 1))
        d = np.minimum(d, _sq_dists(x, x[idx[j:j + 1]])[:, 0])
    return x[idx].copy()


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator | int | None = 0, n_init: int = 3,
           max_iter: int = 100, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means: (labels (N,), centres (k, D)), the best (lowest inertia) of `n_init` runs of
    k-means++ seeding + Lloyd iterations. Same input and seed, same answer. An emptied cluster is
    re-seeded with the point farthest from its centre, so every cluster keeps at least one point."""
    x = np.ascontiguousarray(x, np.float64)
    n = x.shape[0]
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be (N, D), got shape {x.shape}")
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k must lie in 1..{n} (the number of points), got {k}")
    rng = as_rng(rng)
    best = (np.inf, None, None)
    for _ in range(max(1, n_init)):
        centres = _kmeans_pp(x, k, rng)
        labels = np.full(n, -1, np.int64)
        for _ in range(max_iter):
            d = _sq_dists(x, centres)
            new = d.argmin(axis=1)
            counts = np.bincount(new, minlength=k)
            for c in np.flatnonzero(counts == 0):  # re-seed an empty cluster with the worst-fitting point
                far = int(d[np.arange(n), new].argmax())
                new[far] = c
                d[far] = 0.0
                counts = np.bincount(new, minlength=k)
            moved = np.zeros((k, x.shape[1]))
            np.add.at(moved, new, x)
            moved /= counts[:, None]
            shift = float(((moved - centres) ** 2).sum())
            centres = moved
            if np.array_equal(new, labels) or shift <= tol:
                labels = new
                break
            labels = new
        inertia = float(_sq_dists(x, centres)[np.arange(n), labels].sum())
        if inertia < best[0]:
            best = (inertia, labels.copy(), centres.copy())
    return best[1], best[2]


# -- typicality and coverage -------------------------------------------------------------------------


def _knn_mean_dist(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Mean Euclidean distance of every row to its k nearest other rows (exact, in row chunks)."""
    n = x.shape[0]
    out = np.empty(n)
    for s in range(0, n, chunk):
        d = _sq_dists(x[s:s + chunk], x)
        d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = np.inf  # not its own neighbour
        part = np.partition(d, k - 1, axis=1)[:, :k]
        out[s:s + chunk] = np.sqrt(part).mean(axis=1)
    return out


def typicality(x: np.ndarray, k: int = KNN) -> np.ndarray:
    """TypiClust's typicality: 1 / (mean distance to the k nearest neighbours + 1e-5); k is capped at
    N - 1. A lone point has typicality 0 (no neighbours: nothing typical about it)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    k = min(int(k), n - 1)
    if k < 1:
        return np.zeros(n)
    return 1.0 / (_knn_mean_dist(x, k) + 1e-5)


def coverage(pool: np.ndarray, labelled: np.ndarray, k: int = KNN, sample: int = 2000,
             rng: np.random.Generator | int | None = 0) -> tuple[float, float]:
    """(share of pool points within radius r of a labelled point, r).

    r is the median, over the pool, of the distance to the k-th nearest pool neighbour: the size of
    a typical image's neighbourhood of k look-alikes (estimated on `sample` pool points when the pool
    is larger). k is capped at a tenth of the pool, so that in a small pool the "look-alikes" are not
    most of it (BCCD's 292 images: k = 20 as asked). A covered point has a labelled image among its
    look-alikes. No labelled point: 0."""
    pool = np.asarray(pool, np.float64)
    labelled = np.asarray(labelled, np.float64)
    n = pool.shape[0]
    if n == 0:
        return 1.0, 0.0
    k = min(int(k), max(1, n // 10), n - 1)
    if k < 1:
        radius = 0.0
    else:
        rows = np.arange(n) if n <= sample else as_rng(rng).choice(n, sample, replace=False)
        kth = np.empty(rows.shape[0])
        for s in range(0, rows.shape[0], 1024):
            r = rows[s:s + 1024]
            d = _sq_dists(pool[r], pool)
            d[np.arange(r.shape[0]), r] = np.inf
            kth[s:s + 1024] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
        radius = float(np.median(kth))
    if labelled.shape[0] == 0:
        return 0.0, radius
    nearest = np.empty(n)
    for s in range(0, n, 4096):
        nearest[s:s + 4096] = np.sqrt(_sq_dists(pool[s:s + 4096], labelled).min(axis=1))
    return float((nearest <= radius).mean()), radius


# -- the strategies ---------------------------------------------------------------------------------


def _features(table: DetectionTable, image_features, labelled_features, name: str) -> tuple[np.ndarray, np.ndarray]:
    if image_features is None:
        raise ValueError(
            f"{name} needs image_features=(M, D): an embedding of every pool image (the loop and `boxloop query` "
            "compute them with boxloop.predict.embedding.selection_features from the pretrained backbone)")
    if isinstance(image_features, dict):
        missing = [k for k in table.keys if k not in image_features]
        if missing:
            raise ValueError(f"{name}: image_features has no vector for {len(missing)} images, e.g. {missing[0]!r}")
        feats = np.stack([np.asarray(image_features[k], np.float64) for k in table.keys])
    else:
        feats = np.asarray(image_features, np.float64)
    if feats.ndim != 2 or feats.shape[0] != table.num_images:
        raise ValueError(f"{name}: image_features must be ({table.num_images}, D), got shape {feats.shape}")
    lab = np.zeros((0, feats.shape[1])) if labelled_features is None else np.asarray(labelled_features, np.float64)
    if lab.ndim != 2 or (lab.shape[0] and lab.shape[1] != feats.shape[1]):
        raise ValueError(f"{name}: labelled_features must be (L, {feats.shape[1]}), got shape {lab.shape}")
    return feats, lab.reshape(-1, feats.shape[1])


def typical_picks(feats: np.ndarray, labelled: np.ndarray, budget: int, rng: np.random.Generator,
                  n_clusters: int | None = None, knn: int = KNN, min_cluster_size: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    """TypiClust over pool features `feats` (M, D) with `labelled` (L, D) covering their clusters.
    Returns (pool indices in pick order, their typicality, info)."""
    m, n_lab = feats.shape[0], labelled.shape[0]
    budget = min(budget, m)
    if budget == 0:
        return np.zeros(0, np.int64), np.zeros(0), {"clusters": 0}
    x = np.concatenate([feats, labelled]) if n_lab else feats
    k = n_clusters if n_clusters is not None else min(n_lab + budget, MAX_CLUSTERS)
    k = int(max(1, min(k, x.shape[0])))
    labels, _ = kmeans(x, k, rng)
    pool_lab, lab_lab = labels[:m], labels[m:]
    size = np.bincount(labels, minlength=k)
    covered = np.bincount(lab_lab, minlength=k)
    tiny_at = min(MIN_CLUSTER_SIZE, max(1, x.shape[0] // (2 * k))) if min_cluster_size is None else min_cluster_size
    tiny = size < tiny_at
    # typicality of every point inside its own cluster (labelled points count as neighbours)
    typ = np.zeros(x.shape[0])
    members = [np.flatnonzero(labels == c) for c in range(k)]
    for c, idx in enumerate(members):
        typ[idx] = typicality(x[idx], min(knn, idx.shape[0] // 2))
    # per cluster, its pool images by decreasing typicality (ties by index)
    queues = []
    for c, idx in enumerate(members):
        p = idx[idx < m]
        queues.append(list(p[np.lexsort((p, -typ[p]))]))
    visits = covered.astype(np.int64).copy()
    picks: list[int] = []
    for _ in range(budget):
        open_ = [c for c in range(k) if queues[c]]
        c = min(open_, key=lambda c: (bool(tiny[c]), int(visits[c]), -int(size[c]), c))
        picks.append(int(queues[c].pop(0)))
        visits[c] += 1
    picks_a = np.asarray(picks, np.int64)
    chosen_clusters = pool_lab[picks_a]
    info = {"clusters": k, "covered_clusters": int((covered > 0).sum()),
            "uncovered_clusters_taken": int(len(set(chosen_clusters[covered[chosen_clusters] == 0].tolist()))),
            "knn": knn, "min_cluster_size": int(tiny_at), "labelled_centres": int(n_lab)}
    return picks_a, typ[picks_a], info


def typical(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
            image_features=None, labelled_features=None, n_clusters: int | None = None, knn: int = KNN,
            min_cluster_size: int | None = None) -> Selection:
    """TypiClust: the most typical image of each uncovered k-means cluster of the embedding.

    Needs no detection (the table may hold none): `image_features` (M, D) aligned with table.keys
    (or key -> vector), `labelled_features` (L, D) of the labelled training images (None or empty:
    the cold start). Selection.scores are the picks' typicality."""
    budget = check_budget(budget, "typical")
    feats, lab = _features(table, image_features, labelled_features, "typical")
    picks, typ, info = typical_picks(feats, lab, budget, as_rng(rng), n_clusters, knn, min_cluster_size)
    shortfall("typical", "images", budget, picks.shape[0], info)
    return Selection(strategy="typical", unit="images", items=tuple(table.keys[i] for i in picks),
                     scores=tuple(float(s) for s in typ), info=info)


def budget_aware(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
                 image_features=None, labelled_features=None, switch_coverage: float = SWITCH_COVERAGE,
                 knn: int = KNN, empty_share: float = 0.0, **localization_options) -> Selection:
    """`typical` while the labelled training set covers less than `switch_coverage` [0.8] of the pool,
    then `localization_aware` (LocAwareAL).

    Coverage (see `coverage`): the share of pool images that have a labelled image among their look-
    alikes (within the median distance to the 20th nearest neighbour). Why this rule: the low-budget
    regime of Hacohen et al. is the one where the labelled set does not yet represent the data's
    dense regions - that is what typical picks fix, and what coverage measures, with no model and
    no validation split (which is 4-5 images at these sizes: noise, AL_NOTES.md). Once most images
    have a labelled look-alike, further typical picks repeat what is known, and the detector (now
    trained on a representative set) has uncertainties worth following. The rule adapts to the data:
    a pool of near-duplicates is covered after a few images, a varied one stays typical longer; a
    fixed share of the pool would do neither.

    The threshold: on BCCD's 292 non-test images (measured with boxloop.predict.embedding, 3 seeds) 10 random
    images already cover 0.55, 20 cover 0.64, 60 cover 0.74; typical picks cover 0.72 / 0.79 / 0.82
    at 20 / 40 / 60. A switch at 0.8 therefore falls at ~40-60 labelled training images (13-20% of
    the pool), where AL_NOTES.md saw localization_aware pull ahead of random; at 0.5 the hybrid would
    never be typical after round 0. The coverage of every round is recorded with the selection, so
    the benchmark can place the switch after the fact and this constant can follow it.
    """
    budget = check_budget(budget, "budget_aware")
    if not 0.0 <= switch_coverage <= 1.0:
        raise ValueError(f"budget_aware: switch_coverage must lie in [0, 1], got {switch_coverage}")
    rng = as_rng(rng)
    feats, lab = _features(table, image_features, labelled_features, "budget_aware")
    cov, radius = coverage(feats, lab, knn, rng=np.random.default_rng(0))
    rule = {"coverage": round(cov, 4), "coverage_radius": round(radius, 5), "switch_coverage": switch_coverage,
            "labelled_centres": int(lab.shape[0])}
    if cov < switch_coverage:
        sel = typical(table, budget, rng, image_features=feats, labelled_features=lab, knn=knn)
        phase = "typical"
    else:
        sel = localization_aware(table, budget, rng, empty_share=empty_share, **localization_options)
        phase = "localization_aware"
    return Selection(strategy="budget_aware", unit="images", items=sel.items, scores=sel.scores,
                     info={**sel.info, **rule, "phase": phase})
