"""Pieces every strategy shares: per-box scores, budget checks, the batch filler, field checks.

Scoring is kept apart from selecting (DESIGN.md): the `*_scores` functions return one number per
table row (higher = more informative); `fill_batch` turns a ranking into a Selection while honouring
the budget, the share of "empty" images and the rule "budget larger than the pool: take what is
left and say so".

Written by hand; numpy does the arithmetic.
"""

from __future__ import annotations

import warnings

import numpy as np

from boxloop.strategies.table import DetectionTable
from boxloop.structures import Selection

__all__ = [
    "least_confidence_scores",
    "entropy_scores",
    "localization_scores",
    "as_rng",
    "check_budget",
    "require_field",
    "fill_batch",
    "image_selection",
    "binary_entropy",
    "LOC_QUALITY_MODELS",
    "FEATURE_MODELS",
]

# Which of boxloop's detectors fill the optional Detections fields (for error messages).
LOC_QUALITY_MODELS = "fcos_lite, fcos, faster_rcnn (box_head='interval')"
FEATURE_MODELS = "fcos_lite, fcos, faster_rcnn, retinanet"


def least_confidence_scores(table: DetectionTable) -> np.ndarray:
    """Per box 1 - max_c P(c) (FineGrainedAL §3.3 'mean classification uncertainty', before the mean)."""
    if len(table) == 0:
        return np.zeros(0, np.float32)
    return 1.0 - table.class_probs.max(axis=1)


def entropy_scores(table: DetectionTable, mode: str = "categorical") -> np.ndarray:
    """Per box entropy of the class-probability vector, in nats.

    class_probs may be softmax foreground probabilities (rows sum to <= 1, the rest is background)
    or independent sigmoid scores (rows may sum to anything). Two readings:
      - "categorical" (default): append the missing mass max(0, 1 - sum p) as a background class,
        renormalise the row to sum 1 and take the Shannon entropy. Exact for softmax detectors
        (Faster R-CNN), a normalised reading for sigmoid ones (FCOS, RetinaNet).
      - "binary": sum over classes of the binary entropy H(p_c); the natural measure for sigmoid
        scores, where each class is its own yes/no question.
    """
    p = table.class_probs
    if len(table) == 0:
        return np.zeros(0, np.float32)
    if mode == "categorical":
        # H = log T - (sum p log p + b log b) / T with T = sum p + b, b the background mass: the
        # entropy of the renormalised row without materialising it (float32, one pass of logs)
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(p), 0.0).sum(axis=1, dtype=np.float64)
        sp = p.sum(axis=1, dtype=np.float64)
        bg = np.clip(1.0 - sp, 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            blogb = np.where(bg > 0, bg * np.log(np.where(bg > 0, bg, 1.0)), 0.0)
        total = np.clip(sp + bg, 1e-12, None)
        return np.clip(np.log(total) - (plogp + blogb) / total, 0.0, None)
    if mode == "binary":
        return binary_entropy(p).sum(axis=1)
    raise ValueError(f"entropy: mode must be 'categorical' or 'binary', got {mode!r}")


def localization_scores(table: DetectionTable) -> np.ndarray:
    """LocAwareAL eq. 5.1: S_total = max_c P(c) x predicted IoU (low = uncertain)."""
    require_field(table, "loc_quality", "localization_aware")
    if len(table) == 0:
        return np.zeros(0, np.float32)
    return table.class_probs.max(axis=1) * table.loc_quality


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def check_budget(budget: int | None, strategy: str, allow_none: bool = False) -> int | None:
    if budget is None:
        if allow_none:
            return None
        raise ValueError(f"{strategy}: budget is required (number of images or boxes to query)")
    if isinstance(budget, bool) or int(budget) != budget or budget < 0:
        raise ValueError(f"{strategy}: budget must be a non-negative integer, got {budget!r}")
    return int(budget)


def require_field(table: DetectionTable, name: str, strategy: str) -> None:
    """A clear error when the model did not produce what the strategy needs."""
    if getattr(table, name) is None:
        who = LOC_QUALITY_MODELS if name == "loc_quality" else FEATURE_MODELS
        raise ValueError(
            f"strategy {strategy!r} needs Detections.{name}, but the predictions have none. "
            f"Models that provide it: {who}. Predict the pool with one of them, or pick another strategy."
        )


def shortfall(strategy: str, unit: str, budget: int, got: int, info: dict) -> None:
    """Budget larger than the pool: keep what there is, warn, and record it in info."""
    if got < budget:
        info["budget"] = budget
        info["short_by"] = budget - got
        warnings.warn(
            f"{strategy}: budget {budget} {unit} but only {got} left in the pool; taking all {got}",
            stacklevel=3,
        )


def fill_batch(
    ranked: np.ndarray,
    ranked_scores: np.ndarray,
    empty: np.ndarray,
    budget: int,
    empty_share: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Batch of image indices: best of `ranked` plus a random share of `empty` images.

    `ranked` are image indices in order of preference, `empty` images no score reached (nothing
    above the strategy's low threshold: they may hide missed objects or be negatives). The batch
    gives round(empty_share x budget) places to random empty images; when either side runs short,
    the other fills its places, so a budget up to the pool size is always met. Empty images carry
    score NaN. Returns (indices, scores, number of empty images taken).
    """
    if not 0.0 <= empty_share <= 1.0:
        raise ValueError(f"empty_share must lie in [0, 1], got {empty_share}")
    n_empty = min(int(round(empty_share * budget)), empty.shape[0])
    n_main = min(budget - n_empty, ranked.shape[0])
    n_empty = min(budget - n_main, empty.shape[0])
    chosen_empty = rng.permutation(empty)[:n_empty] if n_empty else np.zeros(0, np.int64)
    idx = np.concatenate([ranked[:n_main], chosen_empty]).astype(np.int64)
    sc = np.concatenate([ranked_scores[:n_main], np.full(n_empty, np.nan)])
    return idx, sc, n_empty


def image_selection(name: str, table: DetectionTable, idx: np.ndarray, scores: np.ndarray, info: dict,
                    budget: int | None) -> Selection:
    """An image-level Selection of table rows `idx` (a shortfall against `budget` is warned and recorded)."""
    if budget is not None:
        shortfall(name, "images", budget, idx.shape[0], info)
    return Selection(strategy=name, unit="images", items=tuple(table.keys[i] for i in idx),
                     scores=tuple(float(s) for s in scores), info=info)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H(p) = -p log p - (1 - p) log(1 - p) in nats, elementwise: the uncertainty of one yes/no score."""
    pc = np.clip(np.asarray(p, np.float64), 1e-7, 1.0 - 1e-7)
    return -(pc * np.log(pc) + (1.0 - pc) * np.log1p(-pc))
