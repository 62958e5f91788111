"""Does a detector's localization quality mean what it says? Predicted against true IoU.

The localization-aware strategy (score = class confidence x predicted IoU) and the certainty-aware
pseudo-labels (p x v) both trust `Detections.loc_quality` as an IoU. This measures that trust on
labelled images: for every detection scoring at least `min_score`, its true IoU is the best IoU with
a ground-truth box of the same class (0 when there is none), and we report the Spearman rank
correlation between predicted and true IoU and their mean absolute error.

`QualityMap` makes the predicted IoU track the IoU: a monotone (isotonic) map from predicted to
true IoU, fitted at the end of training on the validation detections that sit on a labelled box
(boxloop.train.fit.fit_quality_map), stored in the checkpoint and applied by the detector's
`predict`. Monotone, so it keeps the ranking the quality branch learnt and fixes its scale (the branch's raw output
averaged 0.54 against a true 0.77 on one dataset). Fitted on detections on a labelled box only: the
class score, not the quality, says whether there is an object, and a box on an object nobody
labelled (true IoU 0) must not pull every prediction down.

Written here: the pairing, the pool-adjacent-violators fit (sklearn's IsotonicRegression is not a
dependency; the test checks it against the max-min formula) and Spearman's rho (Pearson correlation of average ranks, ties shared, as
scipy.stats.spearmanr computes it; scipy is not a dependency for one formula). numpy does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from boxloop.structures import Annotation, Detections, iou

__all__ = ["average_ranks", "spearman", "quality_pairs", "quality_calibration", "isotonic_fit", "QualityMap",
           "matched_pairs", "MAP_MIN_SCORE", "MAP_MATCH_IOU", "MAP_MIN_PAIRS"]

# the validation detections the map is fitted on: those scoring >= MAP_MIN_SCORE on a labelled box
# of their class (true IoU >= MAP_MATCH_IOU), the population the issue measures; with fewer than
# MAP_MIN_PAIRS of them the quality stays unmapped
MAP_MIN_SCORE = 0.3
MAP_MATCH_IOU = 0.1
MAP_MIN_PAIRS = 20


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho; None with fewer than 2 pairs or when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return None
    ra, rb = average_ranks(a) - (len(a) + 1) / 2, average_ranks(b) - (len(b) + 1) / 2
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return None if den == 0 else float((ra * rb).sum() / den)


def quality_pairs(truth: Mapping[str, Annotation], detections: Mapping[str, Detections],
                  class_names: Sequence[str], min_score: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(predicted IoU, true IoU) for every detection scoring >= min_score on an image in `truth`."""
    pred, true = [], []
    for key, det in detections.items():
        if key not in truth or det.loc_quality is None:
            continue
        keep = det.scores >= min_score
        if not keep.any():
            continue
        ann = truth[key]
        gt_labels = np.array([class_names.index(n) for n in ann.labels], dtype=np.int64)
        overlaps = iou(det.boxes.xyxy[keep], ann.boxes.xyxy) if len(ann) else np.zeros((int(keep.sum()), 0))
        same = det.labels[keep][:, None] == gt_labels[None, :]
        best = np.where(same, overlaps, 0.0).max(axis=1, initial=0.0)
        pred.append(det.loc_quality[keep].astype(np.float64))
        true.append(best)
    if not pred:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(pred), np.concatenate(true)


def quality_calibration(truth: Mapping[str, Annotation], detections: Mapping[str, Detections],
                        class_names: Sequence[str], min_score: float = 0.3, match_iou: float = 0.1) -> dict:
    """{'n', 'spearman', 'mae', 'mean_predicted', 'mean_true', ...} over detections scoring >= min_score.

    Also split by whether a detection overlaps a labelled box of its class (true IoU >= match_iou):
    'matched' holds n, spearman and mae of those that do, and 'unmatched_share' /
    'unmatched_mae_share' say how many do not and how much of the MAE they carry. On a dataset whose
    test labels miss objects (BCCD leaves many red cells unlabelled) a good box on an unlabelled object
    has a true IoU of 0, and this split tells that label gap from the quality's own error.
    """
    p, t = quality_pairs(truth, detections, class_names, min_score)
    if len(p) == 0:
        return {"n": 0, "spearman": None, "mae": None, "mean_predicted": None, "mean_true": None,
                "min_score": min_score, "match_iou": match_iou, "matched": {"n": 0, "spearman": None, "mae": None},
                "unmatched_share": None, "unmatched_mae_share": None}
    err = np.abs(p - t)
    hit = t >= match_iou
    total = float(err.sum())
    return {"n": int(len(p)), "spearman": spearman(p, t), "mae": float(err.mean()),
            "mean_predicted": float(p.mean()), "mean_true": float(t.mean()), "min_score": min_score,
            "match_iou": match_iou,
            "matched": {"n": int(hit.sum()), "spearman": spearman(p[hit], t[hit]) if hit.any() else None,
                        "mae": float(err[hit].mean()) if hit.any() else None},
            "unmatched_share": float(1 - hit.mean()),
            "unmatched_mae_share": float(err[~hit].sum() / total) if total > 0 else 0.0}


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing least-squares fit of y on x (pool adjacent violators).

    Returns (knots_x, knots_y): each pooled block as its first and last x at the block's mean, so
    np.interp between knots is the step function of the fit, linear across the gaps between blocks.
    Equal x values are pooled first (one fitted value per x)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ValueError(f"isotonic_fit needs two equal non-empty 1-d arrays, got {x.shape} and {y.shape}")
    ux, inverse = np.unique(x, return_inverse=True)
    w = np.bincount(inverse).astype(np.float64)
    v = np.bincount(inverse, weights=y) / w
    # blocks as a stack: (mean, weight, first index, last index)
    means: list[float] = []
    weights: list[float] = []
    first: list[int] = []
    last: list[int] = []
    for i in range(len(ux)):
        m, wt, f = float(v[i]), float(w[i]), i
        while means and means[-1] > m:
            pm, pw = means.pop(), weights.pop()
            f = first.pop()
            last.pop()
            m, wt = (pm * pw + m * wt) / (pw + wt), pw + wt
        means.append(m)
        weights.append(wt)
        first.append(f)
        last.append(i)
    kx = np.array([ux[i] for f, l in zip(first, last) for i in ((f, l) if l > f else (f,))])
    ky = np.array([m for m, f, l in zip(means, first, last) for _ in ((f, l) if l > f else (f,))])
    return kx, ky


@dataclass(frozen=True)
class QualityMap:
    """Predicted IoU -> calibrated IoU: np.interp on the isotonic knots (clamped at the ends)."""

    knots_x: tuple[float, ...]
    knots_y: tuple[float, ...]
    pairs: int  # detections it was fitted on

    def __call__(self, quality: np.ndarray) -> np.ndarray:
        q = np.asarray(quality, dtype=np.float64)
        return np.interp(q, self.knots_x, self.knots_y).astype(np.float32)

    @classmethod
    def fit(cls, predicted: np.ndarray, true: np.ndarray) -> QualityMap:
        kx, ky = isotonic_fit(predicted, true)
        return cls(tuple(float(v) for v in kx), tuple(float(v) for v in ky), int(len(predicted)))

    def to_dict(self) -> dict[str, Any]:
        return {"knots_x": list(self.knots_x), "knots_y": list(self.knots_y), "pairs": self.pairs}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QualityMap:
        return cls(tuple(float(v) for v in d["knots_x"]), tuple(float(v) for v in d["knots_y"]), int(d["pairs"]))


def matched_pairs(truth: Mapping[str, Annotation], detections: Mapping[str, Detections], class_names: Sequence[str],
                  min_score: float = MAP_MIN_SCORE, match_iou: float = MAP_MATCH_IOU) -> tuple[np.ndarray, np.ndarray]:
    """quality_pairs of the detections on a labelled box of their class (true IoU >= match_iou)."""
    p, t = quality_pairs(truth, detections, class_names, min_score)
    hit = t >= match_iou
    return p[hit], t[hit]

