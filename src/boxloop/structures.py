"""Central value types: Boxes, Provenance, Annotation (one image's labels), Detections (one image's
predictions) and Selection (a strategy's answer).

All are frozen dataclasses over numpy arrays; every operation returns a new object. Pairwise box
maths are free functions (`iou`), as in detectron2 and torchvision.ops. No torch import here: the
formats and the store use these types without loading torch.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "Source",
    "Provenance",
    "Boxes",
    "Annotation",
    "Detections",
    "Selection",
    "iou",
]


class Source(StrEnum):
    """Where a box came from. Stored as text in the project database."""

    HUMAN = "human"  # drawn or checked by a person (or the simulated oracle)
    PSEUDO = "pseudo"  # auto-labelled: accepted from a model's prediction, not checked
    PREDICTED = "predicted"  # a model's prediction, neither accepted nor checked
    BACKGROUND = "background"  # a predicted box a person said holds no object


@dataclass(frozen=True)
class Provenance:
    """The history of one box: who made it, in which round, and the scores it had then."""

    source: Source = Source.HUMAN
    round: int = 0
    model: str | None = None
    score: float | None = None
    loc_quality: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Source(self.source))


HUMAN = Provenance()


def _as_f64(a: np.ndarray | Sequence, shape_tail: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape((0, *shape_tail))
    return arr


@dataclass(frozen=True)
class Boxes:
    """(N, 4) float boxes, xyxy in absolute pixels, with the (width, height) of their image."""

    xyxy: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        arr = _as_f64(self.xyxy, (4,))
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"Boxes needs an (N, 4) array, got shape {arr.shape}")
        arr.setflags(write=False)
        object.__setattr__(self, "xyxy", arr)
        w, h = self.image_size
        object.__setattr__(self, "image_size", (int(w), int(h)))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> Boxes:
        return cls(np.zeros((0, 4)), image_size)

    @classmethod
    def from_xywh(cls, xywh: np.ndarray | Sequence, image_size: tuple[int, int]) -> Boxes:
        a = _as_f64(xywh, (4,)).reshape(-1, 4)
        with np.errstate(over="ignore"):  # huge widths become inf, which validation then drops with a message
            return cls(np.concatenate([a[:, :2], a[:, :2] + a[:, 2:]], axis=1), image_size)

    @classmethod
    def from_cxcywh_normalized(cls, cxcywh: np.ndarray | Sequence, image_size: tuple[int, int]) -> Boxes:
        """YOLO's layout: centre and size as fractions of the image."""
        a = _as_f64(cxcywh, (4,)).reshape(-1, 4)
        w, h = image_size
        scale = np.array([w, h, w, h], dtype=np.float64)
        a = a * scale
        half = a[:, 2:] / 2
        return cls(np.concatenate([a[:, :2] - half, a[:, :2] + half], axis=1), image_size)

    # -- views ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.xyxy.shape[0]

    def __getitem__(self, index: np.ndarray | slice | Sequence[int]) -> Boxes:
        return Boxes(self.xyxy[index].reshape(-1, 4), self.image_size)

    @property
    def widths(self) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):  # inf/huge coordinates: validation reports them
            return self.xyxy[:, 2] - self.xyxy[:, 0]

    @property
    def heights(self) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return self.xyxy[:, 3] - self.xyxy[:, 1]

    @property
    def areas(self) -> np.ndarray:
        return np.clip(self.widths, 0, None) * np.clip(self.heights, 0, None)

    def to_xywh(self) -> np.ndarray:
        return np.concatenate([self.xyxy[:, :2], self.xyxy[:, 2:] - self.xyxy[:, :2]], axis=1)

    def to_cxcywh_normalized(self) -> np.ndarray:
        w, h = self.image_size
        wh = self.xyxy[:, 2:] - self.xyxy[:, :2]
        c = self.xyxy[:, :2] + wh / 2
        return np.concatenate([c, wh], axis=1) / np.array([w, h, w, h], dtype=np.float64)

    # -- checks -------------------------------------------------------------------------------
    def finite(self) -> np.ndarray:
        """Mask of boxes whose four coordinates are finite numbers."""
        return np.isfinite(self.xyxy).all(axis=1)

    def nondegenerate(self) -> np.ndarray:
        """Mask of boxes with positive width and height (and finite coordinates)."""
        with np.errstate(invalid="ignore"):
            return self.finite() & (self.widths > 0) & (self.heights > 0)

    def inside(self) -> np.ndarray:
        """Mask of boxes lying wholly inside the image."""
        w, h = self.image_size
        x = self.xyxy
        with np.errstate(invalid="ignore"):
            return (x[:, 0] >= 0) & (x[:, 1] >= 0) & (x[:, 2] <= w) & (x[:, 3] <= h)

    def clip(self) -> Boxes:
        w, h = self.image_size
        return Boxes(np.clip(self.xyxy, 0, [w, h, w, h]), self.image_size)


def iou(a: Boxes | np.ndarray, b: Boxes | np.ndarray) -> np.ndarray:
    """Pairwise IoU, (N, M). Continuous pixel coordinates (no +1), as COCO and torchvision."""
    a = a.xyxy if isinstance(a, Boxes) else np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = b.xyxy if isinstance(b, Boxes) else np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return out


def _tuple_of(values: Iterable, n: int, default, name: str) -> tuple:
    out = tuple(values) if values is not None else (default,) * n
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries for {n} boxes")
    return out


@dataclass(frozen=True)
class Annotation:
    """One image's labels as a file format or the project sees them.

    `labels` are class names (formats know names, not ids). An Annotation with no boxes is a
    negative image: it was looked at and holds no object. An image that nobody labelled has no
    Annotation at all (None), which is how formats tell unlabelled from negative.
    """

    image: str  # path relative to the image root, '/'-separated
    boxes: Boxes
    labels: tuple[str, ...] = ()
    difficult: tuple[bool, ...] | None = None
    truncated: tuple[bool, ...] | None = None
    provenance: tuple[Provenance, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.boxes)
        object.__setattr__(self, "labels", _tuple_of(self.labels, n, "", "labels"))
        object.__setattr__(self, "difficult", tuple(bool(v) for v in _tuple_of(self.difficult, n, False, "difficult")))
        object.__setattr__(self, "truncated", tuple(bool(v) for v in _tuple_of(self.truncated, n, False, "truncated")))
        object.__setattr__(self, "provenance", _tuple_of(self.provenance, n, HUMAN, "provenance"))

    @property
    def image_size(self) -> tuple[int, int]:
        return self.boxes.image_size

    @property
    def is_negative(self) -> bool:
        return len(self.boxes) == 0

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, mask: np.ndarray | Sequence[int]) -> Annotation:
        idx = np.arange(len(self))[mask]
        return replace(
            self,
            boxes=self.boxes[idx],
            labels=tuple(self.labels[i] for i in idx),
            difficult=tuple(self.difficult[i] for i in idx),
            truncated=tuple(self.truncated[i] for i in idx),
            provenance=tuple(self.provenance[i] for i in idx),
        )

    @property
    def scores(self) -> np.ndarray:
        """Per-box score at acceptance (NaN for human boxes)."""
        return np.array([np.nan if p.score is None else p.score for p in self.provenance], dtype=np.float64)


@dataclass(frozen=True)
class Detections:
    """One image's predictions. Labels are class indices into the project's class list.

    `class_probs` is the full (N, C) foreground probability vector; `loc_quality` the predicted
    localization quality (predicted IoU, or the mean top interval score of CertaintySSOD) or None where a
    model has none; `features` a fixed-length (N, D) vector per box or None.
    """

    boxes: Boxes
    labels: np.ndarray
    scores: np.ndarray
    class_probs: np.ndarray
    loc_quality: np.ndarray | None = None
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.boxes)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        probs = np.asarray(self.class_probs, dtype=np.float32)
        if probs.ndim != 2:
            raise ValueError(f"class_probs must be (N, C), got shape {probs.shape}")
        if labels.shape[0] != n or scores.shape[0] != n or probs.shape[0] != n:
            raise ValueError(
                f"Detections fields disagree: {n} boxes, {labels.shape[0]} labels, "
                f"{scores.shape[0]} scores, {probs.shape[0]} class_probs rows"
            )
        if n and (labels.min() < 0 or labels.max() >= probs.shape[1]):
            raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_probs", probs)
        if self.loc_quality is not None:
            lq = np.asarray(self.loc_quality, dtype=np.float32).reshape(-1)
            if lq.shape[0] != n:
                raise ValueError(f"loc_quality has {lq.shape[0]} entries for {n} boxes")
            object.__setattr__(self, "loc_quality", lq)
        if self.features is not None:
            f = np.asarray(self.features, dtype=np.float32)
            if f.ndim != 2 or f.shape[0] != n:
                raise ValueError(f"features must be (N, D) with N={n}, got shape {f.shape}")
            object.__setattr__(self, "features", f)

    @classmethod
    def empty(cls, num_classes: int, image_size: tuple[int, int], loc_quality: bool = False,
              feature_dim: int | None = None) -> Detections:
        return cls(
            boxes=Boxes.empty(image_size),
            labels=np.zeros(0, np.int64),
            scores=np.zeros(0, np.float32),
            class_probs=np.zeros((0, num_classes), np.float32),
            loc_quality=np.zeros(0, np.float32) if loc_quality else None,
            features=np.zeros((0, feature_dim), np.float32) if feature_dim is not None else None,
        )

    @property
    def num_classes(self) -> int:
        return self.class_probs.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.boxes.image_size

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: np.ndarray | slice | Sequence[int]) -> Detections:
        idx = np.arange(len(self))[index]
        return Detections(
            boxes=self.boxes[idx],
            labels=self.labels[idx],
            scores=self.scores[idx],
            class_probs=self.class_probs[idx],
            loc_quality=None if self.loc_quality is None else self.loc_quality[idx],
            features=None if self.features is None else self.features[idx],
        )

    @staticmethod
    def concat(items: Sequence[Detections]) -> Detections:
        """Stack detections of one image (e.g. from several passes)."""
        if not items:
            raise ValueError("concat needs at least one Detections")
        first = items[0]
        has_lq = all(d.loc_quality is not None for d in items)
        has_f = all(d.features is not None for d in items)
        return Detections(
            boxes=Boxes(np.concatenate([d.boxes.xyxy for d in items]), first.image_size),
            labels=np.concatenate([d.labels for d in items]),
            scores=np.concatenate([d.scores for d in items]),
            class_probs=np.concatenate([d.class_probs for d in items]),
            loc_quality=np.concatenate([d.loc_quality for d in items]) if has_lq else None,
            features=np.concatenate([d.features for d in items]) if has_f else None,
        )

    def to_annotation(self, image: str, class_names: Sequence[str], source: Source = Source.PREDICTED,
                      round: int = 0, model: str | None = None) -> Annotation:
        """Detections as labels (pseudo or predicted), scores kept in the provenance."""
        lq = self.loc_quality if self.loc_quality is not None else [None] * len(self)
        return Annotation(
            image=image,
            boxes=self.boxes,
            labels=tuple(class_names[i] for i in self.labels),
            provenance=tuple(
                Provenance(source=source, round=round, model=model, score=float(s),
                           loc_quality=None if q is None else float(q))
                for s, q in zip(self.scores, lq)
            ),
        )


@dataclass(frozen=True)
class Selection:
    """What a strategy asks the oracle about: images (unit 'images') or single boxes ('boxes').

    `items` are image keys for image queries, or (image key, box index into that image's
    Detections) pairs for box queries; `scores` the informativeness each was chosen by, in the
    order chosen.
    """

    strategy: str
    unit: str  # "images" | "boxes"
    items: tuple = ()
    scores: tuple[float, ...] = ()
    info: dict = field(default_factory=dict)  # e.g. per-class thresholds of localization_aware

    def __post_init__(self) -> None:
        if self.unit not in ("images", "boxes"):
            raise ValueError(f"unit must be 'images' or 'boxes', got {self.unit!r}")
        if self.scores and len(self.scores) != len(self.items):
            raise ValueError("Selection: one score per item")

    def __len__(self) -> int:
        return len(self.items)


MAX_CLASS_NAME = 200  # characters: longer is no name but a file read wrongly (or a YAML alias bomb)


def check_class_name(name: object, where: str = "") -> None:
    """A class name must be one line of visible text, at most MAX_CLASS_NAME characters: label files
    and classes.txt hold one name a line, so a line break in a name would shift every later class id,
    and every table, plot and database row repeats the name."""
    at = f"{where}: " if where else ""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{at}class names must be non-empty text, got {name!r}")
    if len(name) > MAX_CLASS_NAME:
        raise ValueError(f"{at}a class name of {len(name)} characters ({name[:40]!r}...) is longer than "
                         f"{MAX_CLASS_NAME}; is the right file given? Shorten the name")
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    if bad:
        raise ValueError(f"{at}class name {name!r} holds a line break or control character "
                         f"({', '.join(repr(c) for c in dict.fromkeys(bad))}); rename the class to one line of text")
    if name != name.strip():
        raise ValueError(f"{at}class name {name!r} starts or ends with white space; remove it")
