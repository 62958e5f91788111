"""The hand-written core of boxloop.metrics.evaluate: many small Annotations flattened into a few arrays,
and the greedy matching of predictions to ground truth, vectorised over all (image, class) groups.

numpy only, no torch, no library. The conventions (continuous-pixel IoU, a match at IoU >=
threshold, the VOC devkit's best-box rule, COCO's best-free-box rule, difficult boxes ignored) are
documented in boxloop.metrics.evaluate, whose VOC AP, COCO dicts and precision/recall build on these.
Ground truth defines the evaluated images; predictions on any other image are an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from boxloop.structures import Annotation, iou

__all__ = ["Flat", "class_index", "image_index", "flatten", "require_scores", "descending", "match_predictions",
           "TP", "FP", "IGNORED"]

_IOU_CHUNK = 2_000_000  # prediction x candidate pairs per vectorised IoU block (memory bound)


# ------------------------------------------------------------------------------------------------
# Flattening: many small Annotations -> a few flat arrays
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flat:
    """All boxes of one side (truth or predictions) as parallel arrays."""

    image: np.ndarray  # (N,) int64 index into the evaluated image list
    label: np.ndarray  # (N,) int64 index into class_names
    xyxy: np.ndarray  # (N, 4) float64
    score: np.ndarray  # (N,) float64, NaN where a box has none
    difficult: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return self.label.shape[0]


def class_index(class_names: Sequence[str]) -> dict[str, int]:
    names = list(class_names)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class_names holds duplicates {dupes}; give each class once")
    return {n: i for i, n in enumerate(names)}


def image_index(truth: Mapping[str, Annotation], other: Mapping[str, Annotation], other_name: str,
                 truth_name: str) -> dict[str, int]:
    """Images are those of the ground truth; predictions on any other image are an error."""
    unlabelled = [key for key, a in truth.items() if a is None]
    if unlabelled:
        raise ValueError(
            f"{truth_name}[{unlabelled[0]!r}] is None, i.e. unlabelled ({len(unlabelled)} such image(s)); "
            f"evaluation needs labelled images: drop them, or give negatives an empty Annotation"
        )
    index = {key: i for i, key in enumerate(truth)}
    unknown = [key for key in other if key not in index]
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise ValueError(
            f"{other_name} holds {len(unknown)} image(s) that {truth_name} lacks ({shown}). "
            f"Evaluated images are those of {truth_name}: keep only those keys in {other_name} "
            f"(or add the images to {truth_name}, with an empty Annotation if they are negatives)."
        )
    return index


def flatten(annotations: Mapping[str, Annotation], images: dict[str, int], classes: dict[str, int],
             what: str) -> Flat:
    img, lab, boxes, score, diff = [], [], [], [], []
    for key, ann in annotations.items():
        n = 0 if ann is None else len(ann)
        if n == 0:
            continue
        try:
            lab.append(np.fromiter((classes[name] for name in ann.labels), dtype=np.int64, count=n))
        except KeyError as err:
            raise ValueError(
                f"{what}: image {key!r} has a box labelled {err.args[0]!r}, which is not in class_names "
                f"{list(classes)}; add the class or drop the box"
            ) from None
        img.append(np.full(n, images[key], dtype=np.int64))
        boxes.append(ann.boxes.xyxy)
        score.append(ann.scores)
        diff.append(np.asarray(ann.difficult, dtype=bool))
    if not img:
        return Flat(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool))
    xyxy = np.concatenate(boxes)
    if not np.isfinite(xyxy).all():
        bad = int(np.flatnonzero(~np.isfinite(xyxy).all(axis=1))[0])
        raise ValueError(f"{what}: box {bad} (in flattened order) has a non-finite coordinate")
    return Flat(np.concatenate(img), np.concatenate(lab), xyxy, np.concatenate(score), np.concatenate(diff))


def require_scores(pred: Flat, what: str) -> None:
    if len(pred) and np.isnan(pred.score).any():
        raise ValueError(
            f"{what}: {int(np.isnan(pred.score).sum())} box(es) carry no score in their provenance; "
            "AP ranks predictions by score. Build predictions with Detections.to_annotation, or set "
            "Provenance.score on each box"
        )


def descending(score: np.ndarray) -> np.ndarray:
    """Stable order by descending score; boxes without a score go last, in input order."""
    key = np.where(np.isnan(score), -np.inf, score)
    return np.argsort(-key, kind="stable")


# ------------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------------
TP, FP, IGNORED = 1, 0, -1


def _pairwise_group_iou(pred: Flat, gt_xyxy: np.ndarray, starts: np.ndarray, counts: np.ndarray,
                        thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each prediction: (index of its best-IoU gt in the sorted gt array or -1, that IoU,
    number of gts at IoU >= thr), looking only at gts of the same (image, class) group."""
    n = len(pred)
    best = np.full(n, -1, np.int64)
    ovmax = np.zeros(n, np.float64)
    n_above = np.zeros(n, np.int64)
    gmax = int(counts.max()) if n else 0
    if gmax == 0:
        return best, ovmax, n_above
    chunk = max(1, _IOU_CHUNK // gmax)
    ar = np.arange(gmax)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        valid = ar[None, :] < counts[lo:hi, None]
        idx = np.where(valid, starts[lo:hi, None] + ar[None, :], 0)
        g = gt_xyxy[idx]  # (p, gmax, 4)
        p = pred.xyxy[lo:hi, None, :]
        iw = np.clip(np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]), 0, None)
        ih = np.clip(np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]), 0, None)
        inter = iw * ih
        area_p = np.clip(p[..., 2] - p[..., 0], 0, None) * np.clip(p[..., 3] - p[..., 1], 0, None)
        area_g = np.clip(g[..., 2] - g[..., 0], 0, None) * np.clip(g[..., 3] - g[..., 1], 0, None)
        union = area_p + area_g - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            ious = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        ious = np.where(valid, ious, -1.0)
        arg = ious.argmax(axis=1)
        ov = ious[np.arange(hi - lo), arg]
        has = counts[lo:hi] > 0
        best[lo:hi] = np.where(has, idx[np.arange(hi - lo), arg], -1)
        ovmax[lo:hi] = np.where(has, ov, 0.0)
        n_above[lo:hi] = (ious >= thr).sum(axis=1)
    return best, ovmax, n_above


def match_predictions(pred: Flat, gt: Flat, num_classes: int, thr: float, reassign: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching of predictions (already in descending score order) to ground truth.

    Returns per prediction: status (TP / FP / IGNORED), the index of the matched gt box in `gt`
    (-1 if none) and the IoU of that match (0 if none).

    reassign=False is the VOC devkit rule: a detection only considers its best-IoU box; if that box
    is taken it is a FP. It vectorises exactly: the TP for a box is the first detection (in score
    order) whose best box it is. reassign=True is the COCO rule: a detection takes the best-IoU box
    still free (non-difficult preferred). It equals the VOC rule wherever no detection has two
    boxes above the threshold; only (image, class) groups with such a detection are looped over.
    """
    n = len(pred)
    status = np.full(n, FP, np.int8)
    matched = np.full(n, -1, np.int64)
    match_iou = np.zeros(n, np.float64)
    if n == 0 or len(gt) == 0:
        return status, matched, match_iou
    gkey = gt.image * num_classes + gt.label
    gorder = np.argsort(gkey, kind="stable")
    gkey_sorted = gkey[gorder]
    pkey = pred.image * num_classes + pred.label
    starts = np.searchsorted(gkey_sorted, pkey, side="left")
    counts = np.searchsorted(gkey_sorted, pkey, side="right") - starts
    best_sorted, ovmax, n_above = _pairwise_group_iou(pred, gt.xyxy[gorder], starts, counts, thr)
    best = np.where(best_sorted >= 0, gorder[np.maximum(best_sorted, 0)], -1)

    hit = (best >= 0) & (ovmax >= thr)
    diff_hit = hit & gt.difficult[np.maximum(best, 0)]
    status[diff_hit] = IGNORED
    cand = np.flatnonzero(hit & ~diff_hit)
    _, first = np.unique(best[cand], return_index=True)
    tp = cand[first]
    status[tp] = TP
    matched[tp] = best[tp]
    match_iou[tp] = ovmax[tp]

    if reassign:
        ambiguous = np.unique(pkey[n_above >= 2])
        for key in ambiguous:
            p_idx = np.flatnonzero(pkey == key)  # ascending = descending score
            g_idx = gorder[np.searchsorted(gkey_sorted, key, "left"):np.searchsorted(gkey_sorted, key, "right")]
            ious = iou(pred.xyxy[p_idx], gt.xyxy[g_idx])
            g_diff = gt.difficult[g_idx]
            taken = np.zeros(len(g_idx), bool)
            for row, i in enumerate(p_idx):
                above = ious[row] >= thr
                free = above & ~g_diff & ~taken
                if free.any():
                    j = int(np.argmax(np.where(free, ious[row], -1.0)))
                    taken[j] = True
                    status[i], matched[i], match_iou[i] = TP, g_idx[j], ious[row, j]
                elif (above & g_diff).any():
                    status[i], matched[i], match_iou[i] = IGNORED, -1, 0.0
                else:
                    status[i], matched[i], match_iou[i] = FP, -1, 0.0
    return status, matched, match_iou
