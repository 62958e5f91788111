"""Is one model better than another on the validation images, beyond the noise of a few images?

AL_NOTES: validation on a handful of images is noise (a semi-supervised model was kept for +0.02
validation mAP50 while its test mAP50 was far lower). Rules that pick a model by validation (the
never-worse guard of `semi.fit_semi`) therefore ask for more than a higher point estimate: a paired
bootstrap over the validation images. Each resample draws the images with replacement, the SAME
draw for both models (paired: what is hard in a resample is hard for both), and recomputes VOC
mAP50 of each; the difference's percentile interval at `level` [0.9] is reported, and model A
counts as better only when the interval's lower end lies above `margin` [0]. With 5 validation
images that interval is wide, so a student has to be clearly better to be kept: the default does
not hinge on the noise.

Written by hand: the weighted VOC AP that evaluates every resample at once (an image drawn k times
weighs k, which gives the same AP as k copies of it), the pairing and the interval. The matching of
detections to truth is evaluate.voc_matches (it does not depend on the resample: VOC matching is
per image).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from boxloop.metrics.evaluate import voc_matches
from boxloop.structures import Annotation

__all__ = ["BootstrapComparison", "resampled_map50", "paired_bootstrap", "leave_one_out_map50"]


@dataclass(frozen=True)
class BootstrapComparison:
    """A - B in VOC mAP50 on the validation images: point estimate, percentile interval, verdict."""

    a: float | None  # mAP50 of A on all images
    b: float | None
    delta: float | None  # a - b
    low: float | None  # the interval's ends (None: no image with a box)
    high: float | None
    level: float
    resamples: int
    images: int
    margin: float
    a_better: bool  # low > margin

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resampled_map50(matches: Mapping[str, Any], weights: np.ndarray) -> np.ndarray:
    """VOC mAP50 (all-point AP, mean over classes with truth) for each row of `weights`
    (resamples x images: how often each image is drawn), from `evaluate.voc_matches`. A row whose
    draw holds no truth box of any class gives NaN."""
    w_img = np.atleast_2d(np.asarray(weights, np.float64))
    num_gt = matches["num_gt"]
    if w_img.shape[1] != num_gt.shape[0]:
        raise ValueError(f"weights have {w_img.shape[1]} images per row, the matches {num_gt.shape[0]}")
    aps = np.full((w_img.shape[0], num_gt.shape[1]), np.nan)
    for c in range(num_gt.shape[1]):
        npos = w_img @ num_gt[:, c]
        sel = matches["label"] == c  # already in descending score
        w = w_img[:, matches["image"][sel]]
        tp = matches["tp"][sel].astype(np.float64)
        tpw = np.cumsum(w * tp, axis=1)
        fpw = np.cumsum(w * (1.0 - tp), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = np.where(tpw + fpw > 0, tpw / np.maximum(tpw + fpw, 1e-300), 0.0)
        env = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]  # precision envelope
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = (w * tp * env).sum(axis=1) / npos
        aps[:, c] = np.where(npos > 0, ap, np.nan)
    with np.errstate(invalid="ignore"):
        counted = (~np.isnan(aps)).sum(axis=1)
        return np.where(counted > 0, np.nansum(aps, axis=1) / np.maximum(counted, 1), np.nan)


def paired_bootstrap(truth: Mapping[str, Annotation], predictions_a: Mapping[str, Annotation],
                     predictions_b: Mapping[str, Annotation], class_names: Sequence[str], resamples: int = 1000,
                     level: float = 0.9, margin: float = 0.0, seed: int = 0) -> BootstrapComparison:
    """Paired bootstrap over the images of `truth` of mAP50(A) - mAP50(B) (see the module notes).
    Resamples holding no truth box are dropped; with no truth box at all every number is None and
    A is not better."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    ma = voc_matches(truth, predictions_a, class_names)
    mb = voc_matches(truth, predictions_b, class_names)
    n = len(ma["images"])
    if n == 0 or ma["num_gt"].sum() == 0:
        return BootstrapComparison(None, None, None, None, None, level, resamples, n, margin, False)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    w = np.zeros((resamples, n))
    np.add.at(w, (np.repeat(np.arange(resamples), n), draws.ravel()), 1.0)
    ones = np.ones((1, n))
    a, b = float(resampled_map50(ma, ones)[0]), float(resampled_map50(mb, ones)[0])
    d = resampled_map50(ma, w) - resampled_map50(mb, w)
    d = d[~np.isnan(d)]
    tail = (1 - level) / 2
    low, high = (float(np.quantile(d, tail)), float(np.quantile(d, 1 - tail))) if d.size else (None, None)
    return BootstrapComparison(a, b, a - b, low, high, level, resamples, n, margin,
                               bool(low is not None and low > margin))


def leave_one_out_map50(truth: Mapping[str, Annotation], predictions: Mapping[str, Annotation],
                        class_names: Sequence[str]) -> dict[str, Any]:
    """How much one test image moves mAP50: mAP50 on all images and with each image left out (one
    weight row per image, that image weighted 0). A test set is big enough for comparisons when
    `max_change` is small (issue 13: <= 0.02 for the demo)."""
    m = voc_matches(truth, predictions, class_names)
    n = len(m["images"])
    if n == 0 or m["num_gt"].sum() == 0:
        return {"images": n, "map50": None, "max_change": None, "mean_change": None, "worst_image": None}
    full = float(resampled_map50(m, np.ones((1, n)))[0])
    loo = resampled_map50(m, 1.0 - np.eye(n))
    change = np.abs(loo - full)
    change = np.where(np.isnan(change), 0.0, change)
    worst = int(np.argmax(change))
    return {"images": n, "map50": full, "max_change": float(change.max()), "mean_change": float(change.mean()),
            "worst_image": str(m["images"][worst])}
