"""Image-level strategies: which whole images to send to the annotator (MISSION F6).

Every strategy is `fn(table, budget, rng, **options) -> Selection(unit="images")`, registered in
boxloop.strategies' `IMAGE_STRATEGIES`. Selection.scores are "higher = more informative" (NaN for
images taken through the empty share).

- random: uniform over the pool (images with no detections included).
- least_confidence: per box 1 - max P, aggregated per image by mean (FineGrainedAL) or max.
- entropy: per box entropy of the class-probability vector (see `entropy_scores` for the two
  readings of sigmoid vs softmax vectors), aggregated by mean or max.
- localization_aware: LocAwareAL Algorithms 1-2 (see the function's docstring for our choices where
  the seed is silent: budget, ties, classes with fewer than [100] detections).
- coreset: greedy k-center over image features (mean of the image's box features, or given ones),
  starting from the labelled set's features.
- typical: TypiClust, the most typical image of each uncovered cluster of the pretrained backbone's
  embedding; needs no trained detector (the cold start). budget_aware: typical while the labelled
  set covers less than 80% of the pool (embedding look-alikes), then localization_aware. Both in
  typical.py.
- class_difficulty: class-balanced like localization_aware, with shares toward the classes the model
  does worst on and candidates from the whole class-probability vector (classaware.py).
- ppal: PPAL's difficulty-calibrated uncertainty, then category-conditioned k-means++ medoids inside
  the batch (ppal.py). class_diverse: the same diversity step over class_difficulty's candidates.

"Empty" images - no box reaches the strategy's low threshold (`min_score`, or [0.2] on the
combined score for localization_aware) - have no uncertainty score. They may hide objects the
model misses, or be negatives, so they get a share of each batch picked at random
(`empty_share`, default 0.0: the seeds never query them before the last round; set e.g. 0.1 on
your own data), and they fill any places the ranked images cannot.

Written by hand: the strategies. numpy does the arithmetic; k-center lives in coreset.py.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np

from boxloop.strategies.common import (
    as_rng,
    check_budget,
    entropy_scores,
    fill_batch,
    image_selection,
    least_confidence_scores,
    localization_scores,
    require_field,
)
from boxloop.strategies.coreset import auto_device, k_center_greedy
from boxloop.strategies.table import DetectionTable
from boxloop.structures import Selection

__all__ = [
    "random_images",
    "least_confidence",
    "entropy",
    "localization_aware",
    "coreset",
    "class_thresholds",
]

LOW_THRESHOLD = 0.2  # LocAwareAL Algorithm 1: keep detections with S_total > 0.2
PER_CLASS = 100  # LocAwareAL Algorithm 2: the 100 lowest-scoring detections per class


def random_images(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None) -> Selection:
    """Uniform sample without replacement over every image of the pool."""
    budget = check_budget(budget, "random")
    rng = as_rng(rng)
    idx = rng.permutation(table.num_images)[:budget]
    return image_selection("random", table, idx, np.zeros(idx.shape[0]), {}, budget)


def _rank_by_image_score(name: str, table: DetectionTable, box_scores: np.ndarray, budget: int,
                         rng: np.random.Generator, aggregate: str, min_score: float,
                         empty_share: float, info: dict) -> Selection:
    keep = table.scores >= min_score
    sub = table.filter(keep) if not keep.all() else table
    per_image = sub.per_image(box_scores[keep], aggregate)
    has = ~np.isnan(per_image)
    cand = np.flatnonzero(has)
    order = cand[np.argsort(-per_image[cand], kind="stable")]
    idx, sc, n_empty = fill_batch(order, per_image[order], np.flatnonzero(~has), budget, empty_share, rng)
    info.update(aggregate=aggregate, min_score=min_score, empty_share=empty_share,
                empty_images=int((~has).sum()), empty_images_taken=n_empty)
    return image_selection(name, table, idx, sc, info, budget)


def least_confidence(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
                     aggregate: str = "mean", min_score: float = 0.0, empty_share: float = 0.0) -> Selection:
    """Images whose boxes are least sure of their class: mean (FineGrainedAL) or max of 1 - max P."""
    budget = check_budget(budget, "least_confidence")
    return _rank_by_image_score("least_confidence", table, least_confidence_scores(table), budget,
                                as_rng(rng), aggregate, min_score, empty_share, {})


def entropy(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
            aggregate: str = "mean", mode: str = "categorical", min_score: float = 0.0,
            empty_share: float = 0.0) -> Selection:
    """Images whose boxes have the most uncertain class vectors (entropy, mean or max per image)."""
    budget = check_budget(budget, "entropy")
    return _rank_by_image_score("entropy", table, entropy_scores(table, mode), budget, as_rng(rng),
                                aggregate, min_score, empty_share, {"mode": mode})


def _class_order(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row order by (class, score), ties by row: one float-key argsort (faster than lexsort)."""
    lo = float(scores.min()) if scores.size else 0.0
    span = float(scores.max()) - lo + 1.0 if scores.size else 1.0
    return np.argsort(labels * 2.0 * span + (scores - lo), kind="stable")


def class_thresholds(scores: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int = PER_CLASS,
                     order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LocAwareAL Algorithm 2's per-class threshold: the `per_class`-th lowest score of each class.

    A class with fewer detections gets 1.0 (all of them qualify; LocAwareAL Fig. 6.5 shows 100% for
    such classes), a class with none NaN. Returns (thresholds (C,), kept detections per class (C,)).
    `order` may pass a precomputed `_class_order(scores, labels)`.
    """
    if per_class < 1:
        raise ValueError(f"localization_aware: per_class must be >= 1, got {per_class}")
    counts = np.bincount(labels, minlength=num_classes)
    thr = np.where(counts >= per_class, 0.0, 1.0)
    thr[counts == 0] = np.nan
    order = _class_order(scores, labels) if order is None else order
    s_sorted = scores[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    full = np.flatnonzero(counts >= per_class)
    thr[full] = s_sorted[starts[full] + per_class - 1]
    return thr, counts


def localization_aware(table: DetectionTable, budget: int | None = None,
                       rng: np.random.Generator | int | None = None, *, low_threshold: float = LOW_THRESHOLD,
                       per_class: int = PER_CLASS, empty_share: float = 0.0) -> Selection:
    """LocAwareAL Algorithms 1-2: class confidence x predicted IoU, class-balanced lowest scores.

    1. S = max_c P(c) x loc_quality per detection; keep S > low_threshold [0.2].
    2. Per class, threshold = the per_class-th [100] lowest kept S (1.0 when the class has fewer).
    3. An image qualifies when it holds a kept detection with S <= its class threshold. (The seed's
       pseudo-code writes '<', its text says the 100 lowest are selected; '<=' selects exactly those
       100, plus ties.)

    budget=None returns every qualifying image, as the seed does. With a budget, images are taken in
    class round-robin: every class's lowest detection, then every class's second lowest, ..., so a
    smaller budget keeps the batch class-balanced; a larger budget continues the same round-robin
    past the thresholds (info['extended'] = True). The per-class thresholds are in
    info['thresholds'] (list over class ids, None for a class with no kept detection) for plots
    like LocAwareAL Fig. 6.5. Selection.scores are 1 - S of the detection that brought the image in.
    """
    budget = check_budget(budget, "localization_aware", allow_none=True)
    rng = as_rng(rng)
    s_all = localization_scores(table)
    keep = s_all > low_threshold
    s = s_all[keep].astype(np.float64)
    labels = table.labels[keep]
    img = table.image_index[keep]
    order = _class_order(s, labels)
    thr, counts = class_thresholds(s, labels, table.num_classes, per_class, order)
    s_sorted, l_sorted, i_sorted = s[order], labels[order], img[order]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(s_sorted.shape[0]) - starts[l_sorted]
    qualifies = s_sorted <= thr[l_sorted]
    # qualifying detections first, then by rank within class (round-robin), then by score; the
    # scores lie in [0, 1], so one float key (stable argsort) does what a 3-key lexsort would
    n = s_sorted.shape[0]
    g = np.argsort((~qualifies) * (4.0 * (n + 1)) + rank * 2.0 + np.clip(s_sorted, 0.0, 1.5), kind="stable")
    img_g = i_sorted[g]
    first_pos = np.full(table.num_images, n, dtype=np.int64)
    np.minimum.at(first_pos, img_g, np.arange(n, dtype=np.int64))
    uniq = np.flatnonzero(first_pos < n)
    ranked = uniq[np.argsort(first_pos[uniq], kind="stable")]
    ranked_scores = 1.0 - s_sorted[g][first_pos[ranked]]
    n_qual = int((first_pos < int(qualifies.sum())).sum())

    has = np.zeros(table.num_images, bool)
    has[uniq] = True
    empty = np.flatnonzero(~has)
    if budget is None:
        if empty_share >= 1.0:
            raise ValueError("localization_aware: empty_share must be < 1 when budget is None")
        n_emp = int(round(empty_share / (1.0 - empty_share) * n_qual)) if empty_share > 0 else 0
        idx, sc, n_empty = fill_batch(ranked[:n_qual], ranked_scores[:n_qual], empty,
                                      n_qual + min(n_emp, empty.shape[0]), empty_share, rng)
    else:
        idx, sc, n_empty = fill_batch(ranked, ranked_scores, empty, budget, empty_share, rng)
    info = {
        "thresholds": [None if np.isnan(t) else float(t) for t in thr],
        "kept_per_class": [int(c) for c in counts],
        "qualifying_images": n_qual,
        "extended": bool(idx.shape[0] - n_empty > n_qual),
        "low_threshold": low_threshold,
        "per_class": per_class,
        "empty_share": empty_share,
        "empty_images": int(empty.shape[0]),
        "empty_images_taken": n_empty,
    }
    return image_selection("localization_aware", table, idx, sc, info, budget)


def coreset(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
            labelled_features: np.ndarray | None = None,
            image_features: np.ndarray | Mapping[Hashable, np.ndarray] | None = None,
            min_score: float = 0.0, empty_share: float = 0.0, device: str | None = "auto") -> Selection:
    """Greedy k-center on image features, starting from the labelled images' features.

    Image features are `image_features` ((M, D) aligned with table.keys, or key -> vector), or else
    the mean feature of the image's boxes scoring >= min_score; images without any are empty.
    `labelled_features` (L, D) are the centres already covered; pass np.zeros((0, D)) to start
    from nothing (the first pick is then random).
    """
    budget = check_budget(budget, "coreset")
    rng = as_rng(rng)
    if image_features is None:
        require_field(table, "features", "coreset")
        keep = table.scores >= min_score
        sub = table.filter(keep) if not keep.all() else table
        feats = sub.per_image(sub.features, "mean")
    elif isinstance(image_features, Mapping):
        missing = [k for k in table.keys if k not in image_features]
        if missing:
            raise ValueError(f"coreset: image_features has no vector for {len(missing)} images, e.g. {missing[0]!r}")
        feats = np.stack([np.asarray(image_features[k], np.float64) for k in table.keys]) if table.keys else \
            np.zeros((0, 0))
    else:
        feats = np.asarray(image_features, np.float64)
        if feats.ndim != 2 or feats.shape[0] != table.num_images:
            raise ValueError(f"coreset: image_features must be ({table.num_images}, D), got shape {feats.shape}")
    if labelled_features is None:
        raise ValueError(
            "coreset needs labelled_features=(L, D) array: the features of the images already labelled, "
            f"used as the first centres (pass np.zeros((0, {feats.shape[1] if feats.ndim == 2 else 'D'})) "
            "to start from nothing)"
        )
    has = ~np.isnan(feats).any(axis=1)
    cand = np.flatnonzero(has)
    n_empty_want = min(int(round(empty_share * budget)), int((~has).sum()))
    k = min(budget - n_empty_want, cand.shape[0])
    picks, dists = k_center_greedy(feats[cand], k, np.asarray(labelled_features), rng, auto_device(device))
    idx, sc, n_empty = fill_batch(cand[picks], dists, np.flatnonzero(~has), budget, empty_share, rng)
    info = {"empty_share": empty_share, "empty_images": int((~has).sum()), "empty_images_taken": n_empty,
            "labelled_centres": int(np.asarray(labelled_features).shape[0])}
    return image_selection("coreset", table, idx, sc, info, budget)
