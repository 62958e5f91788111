"""Pseudo-label acceptance: which predictions on unlabelled images become training labels.

Two recipes from the seeds:

* TSODA (TSODA): an image joins training when it holds a detection whose score is above a fixed
  confidence threshold [0.8; 0.9 worked better]; its boxes above the threshold become pseudo labels
  with their scores kept. Auto-labelled images are split train/test [80/20], and each iteration trains
  longer [2,500 steps, +1,500 per iteration, at most 8,500].
* Certainty-aware pseudo labels (CertaintySSOD, Sec. 2.3): per class m the product of class score p and
  localization quality v is accumulated over the unlabelled predictions and turned into a class-wise
  threshold tau_m and loss weight alpha_m (eq. 6). Each component can be switched off (Table 5:
  CA = certainty, RE = re-weighting, DT = dynamic threshold).

Written by hand: the acceptance rules, eq. 6, the split and the step schedule. numpy does the
arithmetic; the types come from `boxloop.structures`. No torch import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from boxloop.structures import Detections

__all__ = [
    "SEED000_IMAGES",
    "SEED000_BATCH_SIZE",
    "accept_fixed",
    "tsoda_accept",
    "precision_above",
    "threshold_for_precision",
    "score_percentiles",
    "ClasswiseThresholds",
    "certainty_scores",
    "accept_certainty",
    "split_autolabelled",
    "tsoda_schedule",
    "tsoda_scale",
]

K = TypeVar("K", bound=Hashable)

# TSODA's experiment: 1,100 Asirra images (100 labelled per class for 2 classes + 900 unlabelled).
SEED000_IMAGES = 1100
# TSODA does not state its batch size. It trains SSD + Inception with the TF Object Detection API,
# whose sample config for that model (ssd_inception_v2_coco.config) uses 24: an assumption, not a fact
# from the seed. Pass your own reference if you know better.
SEED000_BATCH_SIZE = 24


def check_probability(value: float, name: str) -> float:
    """Thresholds act on probabilities: only the open interval (0, 1) makes sense."""
    v = float(value)
    if not (0.0 < v < 1.0) or math.isnan(v):
        raise ValueError(f"{name} must lie strictly between 0 and 1 (it is compared with probabilities), got {value!r}")
    return v


# -- fixed threshold (TSODA) ----------------------------------------------------------------------
def accept_fixed(detections: Detections, threshold: float, use_loc_quality: bool = False) -> np.ndarray:
    """Boolean mask of detections whose score is above `threshold` (strictly, as TSODA's TF code).

    With `use_loc_quality` the score compared is class score x localization quality (the certainty
    of CertaintySSOD), which needs a detector that fills `loc_quality`.
    """
    threshold = check_probability(threshold, "threshold")
    # Compare in float32, the dtype scores are stored in: a score of 0.8 is then not above 0.8.
    # TSODA's confidence is the detector's own score (fcos: p x predicted IoU; faster_rcnn: p).
    score = certainty_scores(detections, True) if use_loc_quality else detections.scores
    return score > np.float32(threshold)


def tsoda_accept(pool: Mapping[K, Detections], threshold: float = 0.8,
                 use_loc_quality: bool = False) -> dict[K, Detections]:
    """TSODA's image rule (TSODA): images with at least one detection above `threshold`, each with
    only its detections above the threshold (scores kept in the returned Detections).

    Images with nothing above the threshold are left out: they stay unlabelled for the next iteration
    (training on them as negatives would teach the model to miss the objects it was unsure of).
    """
    threshold = check_probability(threshold, "threshold")
    out: dict[K, Detections] = {}
    for key, dets in pool.items():
        mask = accept_fixed(dets, threshold, use_loc_quality)
        if mask.any():
            out[key] = dets[mask]
    return out


# -- choosing the fixed threshold from validation (autolabel --threshold auto) ----------------------
def _table(table: Iterable[tuple[float, bool]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(list(table) if not isinstance(table, np.ndarray) else table, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0].astype(np.float32), arr[:, 1] != 0


def precision_above(table: Iterable[tuple[float, bool]] | np.ndarray, threshold: float) -> tuple[float | None, int]:
    """(precision, count) of the table's rows whose score is above `threshold` (strictly, in float32
    as `accept_fixed`); precision None when no row is."""
    score, tp = _table(table)
    keep = score > np.float32(threshold)
    n = int(keep.sum())
    return (float(tp[keep].mean()) if n else None), n


def threshold_for_precision(table: Iterable[tuple[float, bool]] | np.ndarray, target: float = 0.9,
                            step: float = 0.01) -> float | None:
    """The lowest threshold t of the grid step, 2 step, ... (below 1) at which the rows scoring above
    t have precision >= `target`; None when no t of the grid reaches it (or the table is empty).

    `table`: (score, is_true_positive) pairs, e.g. a model's detections on the validation images
    matched to their labels (`evaluate.voc_matches`: score and tp). Precision need not rise with t,
    so this is the literal rule "the lowest threshold whose precision is >= target", not the lowest
    above which every threshold keeps it."""
    check_probability(target, "target precision")
    if not 0 < step < 1:
        raise ValueError(f"step must lie in (0, 1), got {step}")
    score, tp = _table(table)
    for t in np.round(np.arange(1, int(math.ceil(1 / step))) * step, 10):
        keep = score > np.float32(t)
        if keep.any() and tp[keep].mean() >= target - 1e-12:
            return float(t)
    return None


def score_percentiles(scores: Iterable[float] | np.ndarray) -> dict[str, Any]:
    """What a pool's detection scores look like: how many, their 50th/90th/99th percentiles and
    maximum (None for an empty pool). For saying why a threshold accepted nothing."""
    s = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=np.float64).ravel()
    if s.size == 0:
        return {"boxes": 0, "p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = (float(v) for v in np.percentile(s, [50, 90, 99]))
    return {"boxes": int(s.size), "p50": p50, "p90": p90, "p99": p99, "max": float(s.max())}


# -- certainty-aware, class-wise (CertaintySSOD) ---------------------------------------------------------
def certainty_scores(detections: Detections, certainty: bool = True) -> np.ndarray:
    """Per-box certainty p * v (CertaintySSOD: class score times localization quality); p alone when
    `certainty` is off (v taken as 1). float32, like the scores.

    p is the class probability of the box's label, not `scores`: fcos's score is already p times its
    predicted IoU, so p * v from scores would count v twice (and "p alone" would still hold v)."""
    n = len(detections)
    p = detections.class_probs[np.arange(n), detections.labels] if detections.num_classes else detections.scores
    if not certainty:
        return p
    if detections.loc_quality is None:
        raise ValueError(
            "certainty-aware scoring needs Detections.loc_quality, but this detector fills none; "
            "use a detector with a localization-quality head or switch certainty off (certainty=False)"
        )
    return p * detections.loc_quality


@dataclass
class ClasswiseThresholds:
    """Class-wise dynamic thresholds tau_m and loss weights alpha_m, CertaintySSOD eq. 6.

    For each class m the detector's foreground predictions j on the unlabelled images are accumulated
    into c_m = sum_j p_m^j v_m^j (p class score, v localization quality, eq. 4) and the count
    n_m = sum_j 1. Eq. 6 as the paper gives it:

        tau_m   = ( sum_j p_m^j v_m^j / E_{m~M} sum_j 1 ) ^ gamma1 * tau
        alpha_m = ( E_{m~M} sum_j 1 / sum_j p_m^j v_m^j ) ^ gamma2

    where E_{m~M} sum_j 1 = mean over all M classes of n_m (the average number of foreground
    instances per class) and tau the manually chosen threshold [0.7]. tau_m is clipped to [0.4, 0.9]
    (the paper: "clipping it into [0.4, 0.9] works well"); [gamma1=0.05, gamma2=0.6].

    Switches (Table 5): `dynamic_threshold=False` (no DT) gives tau_m = tau for every class;
    `reweight=False` (no RE) gives alpha_m = 1; `certainty=False` (no CA) takes v = 1, so both the
    accumulation and the acceptance use the class score alone.

    Choices the paper leaves open, made here:
    * acceptance compares the same certainty p*v that eq. 6 accumulates with tau_m, strictly (>);
    * before any prediction is seen (mean count 0) tau_m = tau and alpha_m = 1;
    * a class with c_m = 0 has alpha_m = inf by eq. 6; alpha is capped at `alpha_max` [10] (such a class
      has no pseudo boxes anyway; the cap matters only if alpha is applied to human boxes too);
    * which predictions count is the caller's choice: every Detections passed to `update` counts
      (typically the teacher's post-NMS predictions at its score threshold).
    """

    num_classes: int
    tau: float = 0.7
    gamma1: float = 0.05
    gamma2: float = 0.6
    clip: tuple[float, float] = (0.4, 0.9)
    dynamic_threshold: bool = True
    reweight: bool = True
    certainty: bool = True
    alpha_max: float = 10.0
    sum_pv: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    count: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if int(self.num_classes) < 1:
            raise ValueError(f"ClasswiseThresholds: num_classes must be >= 1, got {self.num_classes}")
        self.num_classes = int(self.num_classes)
        self.tau = check_probability(self.tau, "ClasswiseThresholds.tau")
        lo, hi = (check_probability(c, "ClasswiseThresholds.clip") for c in self.clip)
        if lo > hi:
            raise ValueError(f"ClasswiseThresholds.clip must be (low, high) with low <= high, got {self.clip}")
        self.clip = (lo, hi)
        for name in ("gamma1", "gamma2"):
            g = float(getattr(self, name))
            if not g >= 0:
                raise ValueError(f"ClasswiseThresholds.{name} must be >= 0 (0 disables it), got {g}")
            setattr(self, name, g)
        if not self.alpha_max >= 1:
            raise ValueError(f"ClasswiseThresholds.alpha_max must be >= 1, got {self.alpha_max}")
        self.sum_pv = (np.zeros(self.num_classes) if self.sum_pv is None
                       else np.asarray(self.sum_pv, dtype=np.float64).copy())
        self.count = (np.zeros(self.num_classes) if self.count is None
                      else np.asarray(self.count, dtype=np.float64).copy())
        if self.sum_pv.shape != (self.num_classes,) or self.count.shape != (self.num_classes,):
            raise ValueError(f"ClasswiseThresholds: sum_pv and count must have {self.num_classes} entries")

    # -- accumulation -----------------------------------------------------------------------------
    def update(self, detections: Detections | Iterable[Detections]) -> ClasswiseThresholds:
        """Add one image's (or many images') predictions to the per-class sums; returns self."""
        items = [detections] if isinstance(detections, Detections) else list(detections)
        for dets in items:
            if dets.num_classes != self.num_classes:
                raise ValueError(
                    f"Detections have {dets.num_classes} classes, the thresholds {self.num_classes}; "
                    "build ClasswiseThresholds with the project's number of classes"
                )
            if len(dets) == 0:
                continue
            pv = certainty_scores(dets, self.certainty)
            self.sum_pv += np.bincount(dets.labels, weights=pv.astype(np.float64), minlength=self.num_classes)
            self.count += np.bincount(dets.labels, minlength=self.num_classes)
        return self

    def reset(self) -> None:
        self.sum_pv[:] = 0
        self.count[:] = 0

    # -- eq. 6 ------------------------------------------------------------------------------------
    def _ratio(self) -> np.ndarray | None:
        """c_m / E_m[n_m], or None before anything was seen."""
        mean_count = self.count.mean()
        if mean_count <= 0:
            return None
        return self.sum_pv / mean_count

    @property
    def thresholds(self) -> np.ndarray:
        """tau_m per class, (C,)."""
        ratio = self._ratio()
        if not self.dynamic_threshold or ratio is None or self.gamma1 == 0:
            return np.full(self.num_classes, self.tau)
        with np.errstate(divide="ignore"):
            tau_m = np.power(ratio, self.gamma1) * self.tau
        return np.clip(tau_m, *self.clip)

    @property
    def weights(self) -> np.ndarray:
        """alpha_m per class, (C,)."""
        ratio = self._ratio()
        if not self.reweight or ratio is None or self.gamma2 == 0:
            return np.ones(self.num_classes)
        with np.errstate(divide="ignore"):
            alpha = np.power(1.0 / ratio, self.gamma2)
        return np.minimum(alpha, self.alpha_max)

    # -- acceptance -------------------------------------------------------------------------------
    def accept(self, detections: Detections) -> tuple[np.ndarray, np.ndarray]:
        """(mask, per-box alpha) for one image: certainty above its class's tau_m."""
        if len(detections) == 0:
            return np.zeros(0, bool), np.zeros(0)
        cert = certainty_scores(detections, self.certainty)
        mask = cert > self.thresholds.astype(np.float32)[detections.labels]
        return mask, self.weights[detections.labels]

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state, so a round can store and resume the accumulation."""
        return {
            "num_classes": self.num_classes, "tau": self.tau, "gamma1": self.gamma1, "gamma2": self.gamma2,
            "clip": list(self.clip), "dynamic_threshold": self.dynamic_threshold, "reweight": self.reweight,
            "certainty": self.certainty, "alpha_max": self.alpha_max,
            "sum_pv": self.sum_pv.tolist(), "count": self.count.tolist(),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ClasswiseThresholds:
        state = dict(state)
        state["clip"] = tuple(state.get("clip", (0.4, 0.9)))
        return cls(**state)


def accept_certainty(pool: Mapping[K, Detections], thresholds: ClasswiseThresholds
                     ) -> dict[K, tuple[Detections, np.ndarray]]:
    """Certainty-aware pseudo labels (CertaintySSOD): per image the boxes whose certainty is above their
    class's tau_m, with per-box loss weights alpha_m (eq. 6; lambda_u of eq. 2 is the trainer's).

    Uses `thresholds` as they stand (call `thresholds.update(pool.values())` first to accumulate
    this pool). Images with no accepted box are left out, as in `tsoda_accept`.
    """
    out: dict[K, tuple[Detections, np.ndarray]] = {}
    for key, dets in pool.items():
        mask, weights = thresholds.accept(dets)
        if mask.any():
            out[key] = (dets[mask], weights[mask].astype(np.float32))
    return out


# -- split and schedule (TSODA) -----------------------------------------------------------------
def split_autolabelled(keys: Sequence[K] | Iterable[K], train_ratio: float = 0.8,
                       rng: np.random.Generator | int | None = 0) -> tuple[list[K], list[K]]:
    """Split auto-labelled images into train and test keeping TSODA's ratio [80/20].

    Keys are sorted (by their text) before shuffling, so the split depends on the set of keys and the
    seed, not on the order they arrive in. n_train = round(train_ratio * n).
    """
    ratio = float(train_ratio)
    if not (0.0 <= ratio <= 1.0):
        raise ValueError(f"train_ratio must lie in [0, 1], got {train_ratio!r}")
    ordered = sorted(keys, key=str)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    perm = gen.permutation(len(ordered))
    n_train = int(round(ratio * len(ordered)))
    train = [ordered[i] for i in perm[:n_train]]
    test = [ordered[i] for i in perm[n_train:]]
    return train, test


def tsoda_schedule(iteration: int, first: int = 2500, increment: int = 1500, maximum: int = 8500,
                   scale: float = 1.0) -> int:
    """Training steps for TSODA iteration `iteration` (0-based): min(first + iteration * increment,
    maximum), times `scale`, rounded, at least 1. TSODA: 2,500, then +1,500 up to 8,500.

    Use `tsoda_scale` for `scale` to adapt the seed's steps to another dataset size and batch size.
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0 (0 is the first), got {iteration}")
    if first < 1 or increment < 0 or maximum < 1:
        raise ValueError(f"steps need first >= 1, increment >= 0, maximum >= 1; got {first}, {increment}, {maximum}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    steps = min(first + iteration * increment, maximum)
    return max(1, int(round(steps * scale)))


def tsoda_scale(num_images: int, batch_size: int = SEED000_BATCH_SIZE,
                reference_images: int = SEED000_IMAGES,
                reference_batch_size: int = SEED000_BATCH_SIZE) -> float:
    """Factor that turns TSODA's step counts into the same number of passes over your data.

    steps ~ epochs * images / batch, so keeping the seed's epochs gives
    scale = (num_images / reference_images) * (reference_batch_size / batch_size).
    The seed's run used 1,100 images in all (200 labelled, 900 unlabelled); its batch size is not
    stated (24 assumed, see SEED000_BATCH_SIZE). Example: 330 images at batch 8 -> 0.3 * 3 = 0.9.
    """
    for name, v in (("num_images", num_images), ("batch_size", batch_size),
                    ("reference_images", reference_images), ("reference_batch_size", reference_batch_size)):
        if v < 1:
            raise ValueError(f"tsoda_scale: {name} must be >= 1, got {v}")
    return (num_images / reference_images) * (reference_batch_size / batch_size)
