"""`class_difficulty`: a class-balanced batch whose shares lean toward the classes the model does worst on.

`localization_aware` (LocAwareAL Algorithm 2) balances a batch round-robin over the classes the model
predicts: every class gets an equal share whatever the model's skill on it, and a rare class the
model barely predicts has few candidates to offer. Here:

1. Per-class skill q_c in [0, 1], PPAL's class quality: the mean over a class's objects of
   p^xi x IoU^(1-xi) [xi=0.6]. Where the answer is known (`labelled_class_quality`, what the loop
   passes as `class_skill`): per ground-truth box of the labelled images, its best prediction's
   probability of the true class and IoU; 0 for an object the model misses or a class no labelled
   image holds. Without it (a caller with no labelled set), calibrated on the pool's predictions
   (`class_quality`): the mean of score^xi x loc_quality^(1-xi) over the class's boxes, 0 for a class
   the model never predicts. Any per-class number in [0, 1] fits, e.g. validation AP50.
2. Shares s_c proportional to the difficulty 1 - q_c (at least `min_share` [0.05] before normalising,
   so no class is starved). Places go to classes by Sainte-Lague apportionment: the next place to the
   class with the smallest (2 x places so far + 1) / s_c, so any prefix of the batch follows the shares.
3. Candidates of class c are every box whose probability of c is >= `min_prob` [0.05], whatever its
   label: an object of a rare class the model misses shows as a low-score box of that class, or as a
   box labelled another class with some of its mass on c. A box's uncertainty about c is the binary
   entropy of P(c)^xi x loc_quality^(1-xi) (highest at 0.5: neither background nor sure), an image's
   the max over its boxes; each class takes its most uncertain images not taken yet. A class out of
   candidates passes its places to the others; images without any candidate fill what is left
   (and `empty_share` of the batch, as in the other strategies).

From PPAL (read at github.com/ChenhongyiYang/PPAL, mmdet/ppal/sampler/difficulty_calibrated_uncertainty
_sampler.py and models/retinanet_al/retinanet_quality_head.py; not copied): the per-class quality
p^xi x IoU^(1-xi) with xi = 0.6, a class never seen counting as quality 0, and the difficulty weight
`ppal_class_weights` (1 + alpha log(b (1 - q) + 1) x ub, b = e^(1/alpha) - 1). PPAL averages the
quality over the training anchors assigned to ground truth during training, with an EMA across
iterations; boxloop keeps no training-time statistics, so the round's model is measured after
training on the labelled images (each object's best prediction), or, without labels, on its pool
predictions. Written by hand: both measurements, the share rule, the per-class candidates from the
whole probability vector, the apportionment; numpy does the arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from boxloop.strategies.common import as_rng, binary_entropy, check_budget, fill_batch, image_selection
from boxloop.strategies.table import DetectionTable
from boxloop.structures import Detections, Selection, iou

__all__ = ["class_quality", "labelled_class_quality", "ppal_class_weights", "class_shares", "class_ranking",
           "ClassRanking", "ranking_info", "class_difficulty", "XI", "MIN_PROB"]

XI = 0.6  # PPAL's quality_xi: quality = score^xi x IoU^(1 - xi)
MIN_PROB = 0.05  # PPAL's score_thr: boxes below it are neither counted nor ranked
MIN_SHARE = 0.05  # the least difficulty a class counts with, so that no class gets no place at all


def _quality_terms(table: DetectionTable, probs: np.ndarray, xi: float) -> np.ndarray:
    """p^xi x loc_quality^(1-xi) row-wise for `probs` (N,) or (N, C); p alone without loc_quality."""
    if table.loc_quality is None:
        return probs.astype(np.float64)
    lq = np.clip(table.loc_quality.astype(np.float64), 0.0, 1.0)
    lq = lq if probs.ndim == 1 else lq[:, None]
    return np.power(np.clip(probs, 0.0, 1.0), xi) * np.power(lq, 1.0 - xi)


def class_quality(table: DetectionTable, class_skill: np.ndarray | None = None, min_prob: float = MIN_PROB,
                  xi: float = XI) -> np.ndarray:
    """Per-class skill (C,) in [0, 1]: `class_skill` where given (not NaN), else PPAL's calibration on the
    model's own predictions, the mean of score^xi x loc_quality^(1-xi) over the class's boxes scoring
    >= min_prob; 0 for a class with no such box (the model does not find it at all)."""
    c = table.num_classes
    keep = table.scores >= min_prob
    terms = _quality_terms(table, table.scores, xi)[keep]
    labels = table.labels[keep]
    counts = np.bincount(labels, minlength=c)
    q = np.bincount(labels, weights=terms, minlength=c) / np.maximum(counts, 1)
    if class_skill is not None:
        ap = np.asarray(class_skill, np.float64)
        if ap.shape != (c,):
            raise ValueError(f"class_skill must hold one value per class ({c}), got shape {ap.shape}")
        q = np.where(np.isnan(ap), q, np.clip(ap, 0.0, 1.0))
    return q


def labelled_class_quality(predictions: Sequence[Detections], truths: Sequence[tuple[np.ndarray, np.ndarray]],
                           num_classes: int, xi: float = XI) -> np.ndarray:
    """PPAL's class quality where the answer is known: (C,), per class the mean over its ground-truth
    boxes of max over the image's predictions of P(true class)^xi x IoU^(1-xi); 0 for a missed object
    and for a class no image holds. `truths[i]` = (boxes xyxy (G, 4), class ids (G,)) of the image
    `predictions[i]` was made on."""
    per_box, labels = [], []
    for det, (boxes, cls) in zip(predictions, truths):
        cls = np.asarray(cls, np.int64)
        if cls.shape[0] == 0:
            continue
        if len(det) == 0:
            per_box.append(np.zeros(cls.shape[0]))
        else:
            overlap = np.clip(iou(np.asarray(boxes, np.float64), det.boxes.xyxy), 0.0, 1.0)  # (G, N)
            p = np.clip(det.class_probs[:, cls].T.astype(np.float64), 0.0, 1.0)  # (G, N)
            per_box.append((np.power(p, xi) * np.power(overlap, 1.0 - xi)).max(axis=1))
        labels.append(cls)
    if not labels:
        return np.zeros(num_classes)
    lab, q = np.concatenate(labels), np.concatenate(per_box)
    counts = np.bincount(lab, minlength=num_classes)
    return np.bincount(lab, weights=q, minlength=num_classes) / np.maximum(counts, 1)


def ppal_class_weights(quality: np.ndarray, alpha: float = 0.3, upper: float = 0.2) -> np.ndarray:
    """PPAL's difficulty weight per class: 1 + alpha log(b (1 - q) + 1) x upper, b = e^(1/alpha) - 1;
    1 for a class of quality 1, 1 + upper [0.2] for quality 0 (PPAL's class_weight_alpha / _ub)."""
    b = np.exp(1.0 / alpha) - 1.0
    return 1.0 + alpha * np.log(b * (1.0 - np.asarray(quality, np.float64)) + 1.0) * upper


def class_shares(quality: np.ndarray, min_share: float = MIN_SHARE) -> np.ndarray:
    """Each class's share of the batch: difficulty 1 - q (at least min_share), normalised to sum 1."""
    d = np.maximum(1.0 - np.asarray(quality, np.float64), min_share)
    return d / d.sum()


def _per_class_uncertainty(table: DetectionTable, min_prob: float, xi: float) -> np.ndarray:
    """(M, C): per image and class, the highest uncertainty of a box about that class (binary entropy
    of P(c)^xi x loc_quality^(1-xi)) among boxes with P(c) >= min_prob; -inf where none, NaN for an
    image without boxes."""
    p = table.class_probs
    u = binary_entropy(_quality_terms(table, p, xi))
    u[p < min_prob] = -np.inf
    return table.per_image(u, "max")


def _apportion(unc: np.ndarray, shares: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to n distinct images, each class's most uncertain first, places by Sainte-Lague over `shares`.
    Returns (image indices, their uncertainty, the class that brought each)."""
    m, c = unc.shape
    queues = []
    for k in range(c):  # C is small (tens): a Python loop over classes, numpy inside
        col = unc[:, k]
        cand = np.flatnonzero(np.isfinite(col))
        queues.append(cand[np.argsort(-col[cand], kind="stable")])
    ptr = np.zeros(c, np.int64)
    placed = np.zeros(c, np.int64)
    taken = np.zeros(m, bool)
    picks, scores, by = [], [], []
    priority = np.where(shares > 0, 1.0 / np.maximum(shares, 1e-12), np.inf)
    while len(picks) < n:
        for k in range(c):  # skip images another class took already
            q = queues[k]
            while ptr[k] < q.shape[0] and taken[q[ptr[k]]]:
                ptr[k] += 1
        open_ = np.array([ptr[k] < queues[k].shape[0] for k in range(c)])
        if not open_.any():
            break
        key = np.where(open_, (2 * placed + 1) * priority, np.inf)
        k = int(np.argmin(key))  # ties: the lower class id
        i = int(queues[k][ptr[k]])
        taken[i] = True
        placed[k] += 1
        picks.append(i)
        scores.append(unc[i, k])
        by.append(k)
    return np.asarray(picks, np.int64), np.asarray(scores, np.float64), np.asarray(by, np.int64)


class ClassRanking(NamedTuple):
    """Images in class_difficulty's order, and why."""

    picks: np.ndarray  # image indices, in the order taken
    scores: np.ndarray  # the uncertainty of the box that brought each in
    by: np.ndarray  # the class that brought each in
    has: np.ndarray  # (M,) images holding a candidate box of some class
    quality: np.ndarray  # (C,) per-class skill
    shares: np.ndarray  # (C,) per-class share of the batch


def class_ranking(table: DetectionTable, n: int, class_skill: np.ndarray | None = None, min_prob: float = MIN_PROB,
                  xi: float = XI, min_share: float = MIN_SHARE) -> ClassRanking:
    """Up to n images by steps 1-3 of the module docstring. Any prefix of the ranking is the ranking of
    a smaller n (places are given one at a time)."""
    quality = class_quality(table, class_skill, min_prob, xi)
    shares = class_shares(quality, min_share)
    unc = _per_class_uncertainty(table, min_prob, xi)
    has = np.isfinite(unc).any(axis=1) if unc.size else np.zeros(table.num_images, bool)
    picks, scores, by = _apportion(unc, shares, min(n, int(has.sum())))
    return ClassRanking(picks, scores, by, has, quality, shares)


def class_difficulty(table: DetectionTable, budget: int, rng: np.random.Generator | int | None = None, *,
                     class_skill: np.ndarray | None = None, min_prob: float = MIN_PROB, xi: float = XI,
                     min_share: float = MIN_SHARE, empty_share: float = 0.0) -> Selection:
    """Class-balanced batch with shares weighted toward the hardest classes (see the module docstring).

    `class_skill` (C,): the model's per-class skill when the caller has it (`labelled_class_quality`,
    validation AP50; NaN for a class without a value); None calibrates it on the pool's predictions.
    Selection.scores: the uncertainty of the box that brought the image in (NaN for the empty share).
    info: class_quality, class_shares and the images each class brought (per_class_images)."""
    budget = check_budget(budget, "class_difficulty")
    rng = as_rng(rng)
    r = class_ranking(table, budget, class_skill, min_prob, xi, min_share)
    n_empty_want = min(int(round(empty_share * budget)), int((~r.has).sum()))
    n = budget - n_empty_want
    idx, scores, n_empty = fill_batch(r.picks[:n], r.scores[:n], np.flatnonzero(~r.has), budget, empty_share, rng)
    info = {**ranking_info(r, table.num_classes, n, class_skill), "min_prob": min_prob, "empty_share": empty_share,
            "empty_images": int((~r.has).sum()), "empty_images_taken": n_empty}
    return image_selection("class_difficulty", table, idx, scores, info, budget)


def ranking_info(r: ClassRanking, num_classes: int, n: int, class_skill: np.ndarray | None) -> dict:
    """What a round records of a class ranking: skill, shares, images per class among the first n."""
    return {"class_quality": [round(float(q), 4) for q in r.quality],
            "class_shares": [round(float(s), 4) for s in r.shares],
            "per_class_images": np.bincount(r.by[:n], minlength=num_classes).tolist(),
            "quality_from": "class_skill" if class_skill is not None else "predictions"}
