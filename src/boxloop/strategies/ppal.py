"""`ppal` and `class_diverse`: uncertain candidates, then category-conditioned k-means++ inside the batch.

Plug and Play Active Learning for Object Detection (Yang et al., CVPR 2024) in two stages, so that ten
frames of one tank are not all taken:

1. Difficulty-calibrated uncertainty (DCUS). Per class a difficulty weight from the model's quality on
   it (`class_skill`, which the loop measures on the labelled images, else calibrated on the pool's
   predictions: classaware.py; ppal_class_weights: 1 for a class it masters, up to 1.2 for one it
   never finds); an image's uncertainty is the sum over its boxes scoring >= `min_prob` [0.05] of the
   binary entropy of the score times its class's weight. The `pool_factor` [4] x budget most uncertain
   images are the candidates (PPAL's budget_expand_ratio).
2. Diversity. The distance between two candidate images is PPAL's category-conditioned matching
   distance: for each box of A, the cosine distance of its feature to the nearest box of B with the
   same label (2 when B has none), averaged with the boxes' scores as weights; symmetrised. The batch
   is `budget` medoids of these distances: k-means++ seeding (the most uncertain candidate first,
   then each next one drawn with probability proportional to its squared distance to the nearest
   chosen one), then k-medoids updates (assign to the nearest medoid, move each medoid to the member
   with the least summed distance to its cluster). An image identical to a chosen one has distance 0:
   it is never drawn while a distinct candidate remains.

`class_diverse` runs the same diversity step over class_difficulty's candidates (classaware.py: class
shares toward the hardest classes, rare-class mass found in other boxes' probability vectors), and
keeps each class's places: k-means++ seeding within the class of each place (`kmeans_pp_quota`),
so that the big clusters of common frames do not take a rare class's places as medoids would.

Features: the detector's per-box features (`DetectionTable.features`, what coreset uses). Without
them, `image_features` (M, D) (the pretrained embedding the loop gives coreset when the model kept no
feature) with cosine distances between whole images; without either, the most uncertain images are
taken and Selection.info["fallback"] says so (the loop copies it into the round's record). When no
image has a box to score but the embedding is given (an early model that keeps nothing), the medoids
are drawn from `pool_factor` x budget random images: diversity alone.

From PPAL (read at github.com/ChenhongyiYang/PPAL: mmdet/ppal/sampler/difficulty_calibrated_uncertainty
_sampler.py, diversity_sampler.py, models/utils.py get_img_score_distance_matrix_slow; not copied):
the DCUS image score (sum of entropy x class weight, score_thr 0.05, alpha 0.3, upper bound 0.2), the
4x candidate pool, the category-conditioned distance, medoid updates over a precomputed distance
matrix. Ours: the class quality measured after training on the labelled images, or on the pool's
predictions (classaware.py), k-means++
(D^2) seeding from the most uncertain candidate where PPAL's code seeds farthest-first from a random
one, at most `max_boxes` [20] top-scoring boxes an image in the distance, and the distance computed
one class block at a time with numpy (no (boxes x boxes x images) tensor), and class_diverse.
Written by hand; numpy does the maths.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np

from boxloop.strategies.classaware import MIN_PROB, XI, class_quality, class_ranking, ppal_class_weights, ranking_info
from boxloop.strategies.common import as_rng, binary_entropy, check_budget, fill_batch, image_selection
from boxloop.strategies.table import DetectionTable
from boxloop.structures import Selection

__all__ = ["dcus_scores", "category_distances", "kmeans_pp_medoids", "ppal", "class_diverse", "POOL_FACTOR",
           "MAX_BOXES"]

POOL_FACTOR = 4  # PPAL's budget_expand_ratio: candidates = 4 x budget
MAX_BOXES = 20  # boxes per image in the distance (the highest-scoring ones)
SAME = 1e-9  # distances below this are identical images
MEDOID_ITERS = 20  # PPAL runs 100; a few hundred candidates settle in far fewer


def dcus_scores(table: DetectionTable, class_skill: np.ndarray | None = None, min_prob: float = MIN_PROB,
                xi: float = XI, alpha: float = 0.3, upper: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """PPAL's difficulty-calibrated uncertainty: (per image (M,), NaN where no box >= min_prob; class
    weights (C,)). Image score = sum over its boxes of H(score) x weight of the box's class."""
    weights = ppal_class_weights(class_quality(table, class_skill, min_prob, xi), alpha, upper)
    keep = table.scores >= min_prob
    per_box = binary_entropy(table.scores) * weights[table.labels]
    sub = table.filter(keep) if not keep.all() else table
    return sub.per_image(per_box[keep], "sum"), weights


def category_distances(table: DetectionTable, images: np.ndarray, max_boxes: int = MAX_BOXES,
                       chunk_cells: int = 1 << 22) -> np.ndarray:
    """(K, K) PPAL distances between table images `images` (each must hold a box), over each image's
    `max_boxes` highest-scoring boxes (the stored predictions already stop at the score threshold).

    d(A -> B) = sum_a s_a min_{b in B, label b = label a} (1 - cos(f_a, f_b)) / sum_a s_a, with the
    minimum 2 when B has no box of a's label; d = (d(A->B) + d(B->A)) / 2, 0 on the diagonal."""
    k = images.shape[0]
    pos = np.full(table.num_images, -1, np.int64)
    pos[np.sort(images)] = np.arange(k)
    rows = np.flatnonzero(pos[table.image_index] >= 0)
    g = pos[table.image_index[rows]]  # candidate of each row, non-decreasing (images sorted)
    order = np.lexsort((-table.scores[rows], g))  # by candidate, then score high to low
    rows, g = rows[order], g[order]
    counts = np.bincount(g, minlength=k)
    if (counts == 0).any():
        raise ValueError("category_distances: every image needs a box")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    top = (np.arange(rows.shape[0]) - starts[g]) < max_boxes
    rows, g = rows[top], g[top]
    f = table.features[rows].astype(np.float64)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    lab, s = table.labels[rows], table.scores[rows].astype(np.float64)
    acc = np.zeros((k, k))
    for c in np.unique(lab):  # boxes only meet boxes of their own label: one block per class
        mine = np.flatnonzero(lab == c)  # still grouped by candidate
        gc, fc, sc = g[mine], f[mine], s[mine]
        present, first = np.unique(gc, return_index=True)
        absent = np.setdiff1d(np.arange(k), present)
        step = max(1, chunk_cells // max(1, mine.shape[0]))
        for r in range(0, mine.shape[0], step):
            near = np.minimum.reduceat(1.0 - fc[r:r + step] @ fc.T, first, axis=1)  # nearest box of each image
            gi, w = gc[r:r + step], sc[r:r + step]
            uniq, at = np.unique(gi, return_index=True)
            acc[np.ix_(uniq, present)] += np.add.reduceat(near * w[:, None], at, axis=0)
            acc[np.ix_(uniq, absent)] += 2.0 * np.add.reduceat(w, at)[:, None]  # no box of this label there
    acc /= np.bincount(g, weights=s, minlength=k)[:, None]
    out = np.clip(0.5 * (acc + acc.T), 0.0, None)
    np.fill_diagonal(out, 0.0)
    inv = np.argsort(np.argsort(images))  # back to the order of `images`
    return out[np.ix_(inv, inv)]


def _cosine_distances(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d = np.clip(1.0 - x @ x.T, 0.0, None)
    np.fill_diagonal(d, 0.0)
    return d


def kmeans_pp_medoids(dist: np.ndarray, k: int, rng: np.random.Generator, first: int = 0,
                      iters: int = MEDOID_ITERS) -> np.ndarray:
    """k medoids of a (K, K) distance matrix: k-means++ seeding from point `first`, then k-medoids
    updates. Points at distance 0 from a medoid are never drawn while a point at a positive distance
    is left; once none is, the lowest unused indices (the most uncertain candidates) fill in."""
    n = dist.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, np.int64)
    med = np.empty(k, np.int64)
    med[0] = first
    near = dist[first].copy()
    for j in range(1, k):
        w = np.where(near > SAME, near, 0.0) ** 2  # float rounding: identical images are at ~1e-16
        w[med[:j]] = 0.0
        total = w.sum()
        if total > 0:
            med[j] = int(np.searchsorted(np.cumsum(w), rng.random() * total, side="right").clip(0, n - 1))
        else:
            med[j] = int(np.setdiff1d(np.arange(n), med[:j])[0])
        near = np.minimum(near, dist[med[j]])
    for _ in range(iters):
        assign = np.argmin(dist[:, med], axis=1)
        assign[med] = np.arange(k)  # a medoid stays in its own cluster (ties between copies)
        new = med.copy()
        for c in range(k):
            members = np.flatnonzero(assign == c)
            new[c] = members[np.argmin(dist[np.ix_(members, members)].sum(axis=1))]
        if np.array_equal(new, med):
            break
        med = new
    return med


def kmeans_pp_quota(dist: np.ndarray, places: np.ndarray, cand_class: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with a class per place: place j goes to a candidate of class places[j], drawn
    with probability proportional to its squared distance to the nearest candidate taken so far (the
    first place: that class's first candidate, the most uncertain). When every untaken candidate of the
    class is identical to a taken one (or none is left), the place goes to the same draw over every
    class's candidates; when none is left anywhere at a positive distance, to the first untaken one."""
    n = dist.shape[0]
    taken = np.zeros(n, bool)
    near = np.full(n, np.inf)
    picks = []
    for c in places[:n]:
        free = ~taken
        mine = np.flatnonzero(free & (cand_class == c))
        if not np.isfinite(near).any():  # the first place
            i = int(mine[0]) if mine.shape[0] else int(np.flatnonzero(free)[0])
        else:
            w = np.where(near > SAME, near, 0.0) ** 2
            w[taken] = 0.0
            pick_from = mine if mine.shape[0] and w[mine].sum() > 0 else np.flatnonzero(free)
            ws = w[pick_from]
            if ws.sum() > 0:
                i = int(pick_from[np.searchsorted(np.cumsum(ws), rng.random() * ws.sum(), side="right").clip(
                    0, pick_from.shape[0] - 1)])
            else:
                i = int(pick_from[0])
        picks.append(i)
        taken[i] = True
        near = np.minimum(near, dist[i])
    return np.asarray(picks, np.int64)


def _image_features(table: DetectionTable, image_features) -> np.ndarray:
    if isinstance(image_features, Mapping):
        missing = [key for key in table.keys if key not in image_features]
        if missing:
            raise ValueError(f"ppal: image_features has no vector for {len(missing)} images, e.g. {missing[0]!r}")
        return np.stack([np.asarray(image_features[key], np.float64) for key in table.keys])
    feats = np.asarray(image_features, np.float64)
    if feats.ndim != 2 or feats.shape[0] != table.num_images:
        raise ValueError(f"ppal: image_features must be ({table.num_images}, D), got shape {feats.shape}")
    return feats


def ppal(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
         image_features: np.ndarray | Mapping[Hashable, np.ndarray] | None = None,
         labelled_features: np.ndarray | None = None, class_skill: np.ndarray | None = None,
         pool_factor: float = POOL_FACTOR, min_prob: float = MIN_PROB, max_boxes: int = MAX_BOXES,
         empty_share: float = 0.0) -> Selection:
    """PPAL: the `pool_factor` x budget most uncertain images (DCUS), then `budget` category-conditioned
    k-means++ medoids among them (see the module docstring). `labelled_features` is accepted and not
    used: PPAL's diversity is inside the batch. Selection.scores: the picks' DCUS uncertainty."""
    budget = check_budget(budget, "ppal")
    unc, weights = dcus_scores(table, class_skill, min_prob)
    has = ~np.isnan(unc)
    scored = np.flatnonzero(has)
    info = {"class_weights": [round(float(w), 4) for w in weights],
            "quality_from": "class_skill" if class_skill is not None else "predictions"}
    return _diverse_batch("ppal", table, budget, as_rng(rng), scored[np.argsort(-unc[scored], kind="stable")], unc,
                          info, image_features, pool_factor, max_boxes, empty_share)


def class_diverse(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
                  image_features: np.ndarray | Mapping[Hashable, np.ndarray] | None = None,
                  labelled_features: np.ndarray | None = None, class_skill: np.ndarray | None = None,
                  pool_factor: float = POOL_FACTOR, min_prob: float = MIN_PROB, max_boxes: int = MAX_BOXES,
                  empty_share: float = 0.0) -> Selection:
    """ppal's diversity step over class_difficulty's candidates: the first `pool_factor` x budget images
    of its class ranking (shares toward the hardest classes, rare-class mass in the probability
    vectors), then `budget` category-conditioned k-means++ medoids among them. Where PPAL's summed
    entropy passes over a rare object hidden in a box of another class, this keeps it a candidate.
    Selection.scores: the uncertainty of the box that made each pick a candidate."""
    budget = check_budget(budget, "class_diverse")
    r = class_ranking(table, int(np.ceil(max(pool_factor, 1.0) * budget)), class_skill, min_prob)
    score = np.full(table.num_images, np.nan)
    score[r.picks] = r.scores
    return _diverse_batch("class_diverse", table, budget, as_rng(rng), r.picks, score,
                          ranking_info(r, table.num_classes, r.picks.shape[0], class_skill), image_features,
                          pool_factor, max_boxes, empty_share, has=r.has, classes=r.by)


def _diverse_batch(name: str, table: DetectionTable, budget: int, rng: np.random.Generator, ranked: np.ndarray,
                   score: np.ndarray, info: dict, image_features, pool_factor: float, max_boxes: int,
                   empty_share: float, has: np.ndarray | None = None, classes: np.ndarray | None = None
                   ) -> Selection:
    """`budget` k-means++ medoids among the first pool_factor x budget of `ranked` (image indices,
    best first; `score` (M,) what they were ranked by, NaN for images that cannot be ranked). `has`:
    the images that can be ranked (default: score not NaN); the others are the empty images.
    `classes` (per ranked image, the class that made it a candidate): the batch keeps the classes'
    places of the first `budget` ranked images, k-means++ seeding within each class
    (`kmeans_pp_quota`) instead of medoids, which would hand a rare class's places to big clusters."""
    if pool_factor < 1:
        raise ValueError(f"{name}: pool_factor must be >= 1, got {pool_factor}")
    has = ~np.isnan(score) if has is None else has
    n_empty_want = min(int(round(empty_share * budget)), int((~has).sum()))
    k = min(budget - n_empty_want, int(has.sum()))
    empty = np.flatnonzero(~has)
    if k == 0 and image_features is not None:  # no uncertainty anywhere: diversity alone, on the embedding
        k = min(budget, empty.shape[0])
        ranked, empty, classes = rng.permutation(empty), np.zeros(0, np.int64), None
    cand = ranked[:max(k, int(np.ceil(pool_factor * k)))]
    info["candidates"] = int(cand.shape[0])
    if k == 0:  # nothing to rank: the batch is the empty share (the loop records the fallback)
        dist = None
    elif table.features is not None and has[cand].all():
        dist, info["distance"] = category_distances(table, cand, max_boxes), "category_conditioned"
    elif image_features is not None:
        dist, info["distance"] = _cosine_distances(_image_features(table, image_features)[cand]), "image_embedding"
    else:
        dist = None
        info["fallback"] = {"strategy": f"{name}_uncertainty",
                            "reason": "the predictions carry no box features and no image_features were given: "
                                      "the first candidates, without the diversity step"}
    if dist is None:
        picks = cand[:k]
    elif classes is not None:
        picks = cand[kmeans_pp_quota(dist, classes[:k], classes[:cand.shape[0]], rng)]
    else:
        picks = cand[kmeans_pp_medoids(dist, k, rng)]
    picks = picks[np.argsort(-np.nan_to_num(score[picks], nan=-np.inf), kind="stable")]  # most uncertain first
    idx, scores, n_empty = fill_batch(picks, score[picks], empty, budget, empty_share, rng)
    info.update(empty_share=empty_share, empty_images=int((~has).sum()), empty_images_taken=n_empty,
                pool_factor=pool_factor)
    return image_selection(name, table, idx, scores, info, budget)
