"""Does a detector's localization quality mean what it says? Predicted against true IoU.

The localization-aware strategy (score = class confidence x predicted IoU) and the certainty-aware
pseudo-labels (p x v) both trust `Detections.loc_quality` as an IoU. This measures that trust on
labelled images: for every detection scoring at least `min_score`, its true IoU is the best IoU with
a ground-truth box of the same class (0 when there is none), and we report the Spearman rank
correlation between predicted and true IoU and their mean absolute error.

Written here: the pairing and Spearman's rho (Pearson correlation of average ranks, ties shared, as
scipy.stats.spearmanr computes it; scipy is not a dependency for one formula). numpy does the rest.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from boxloop.structures import Annotation, Detections, iou

__all__ = ["average_ranks", "spearman", "quality_pairs", "quality_calibration"]


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
