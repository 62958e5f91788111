"""Simulated annotators that answer from withheld ground truth, and what their answers cost.

- `ImageOracle` (MISSION F6/F8): returns an image's full ground truth, negatives included (zero
  boxes). With pre-annotations (LocAwareAL §5.3) the annotator fixes rather than draws: every ground
  truth box matched by a pre-annotated box (IoU >= 0.5, same class, one-to-one, greedy by IoU) is
  *verified* (VERIFY_SECONDS = 21.9 s), every unmatched one is *drawn* (DRAW_SECONDS = 50.8 s), and
  every pre-annotated box left unmatched is *removed*. Removing costs `remove_seconds`, by default
  the verification time: the annotator has to look at the box and decide it is wrong (the seed
  gives no figure). Looking at an image costs `image_seconds` [0.0] on top (no figure either).
- `BoxOracle` (FineGrainedAL §4): a queried box is adjusted to the ground-truth box of maximum IoU
  (any class) when that IoU >= 0.5 and takes that box's class; otherwise it is background and keeps
  its coordinates. Each query costs VERIFY_SECONDS, whatever the answer: the annotator checks one
  box and drags its corners. Counted as verified (box and class already right), adjusted, or
  removed (background).
- `partial_labels` (FineGrainedAL eq. 3): training labels for an image with some checked boxes.

Written by hand: the matching rules and the cost accounting; `boxloop.structures.iou` does the
geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from boxloop.strategies.box import T_D
from boxloop.structures import Annotation, Boxes, Detections, Provenance, Source, iou

__all__ = [
    "DRAW_SECONDS",
    "VERIFY_SECONDS",
    "MATCH_IOU",
    "LAMBDA_D",
    "Cost",
    "ImageOracle",
    "BoxAnswer",
    "BoxOracle",
    "answers_by_image",
    "partial_labels",
]

DRAW_SECONDS = 50.8  # LocAwareAL §5.3 (after Su et al.): drawing one box
VERIFY_SECONDS = 21.9  # LocAwareAL §5.3: verifying one box
MATCH_IOU = 0.5  # FineGrainedAL §4: box oracle adjusts when IoU >= 0.5
LAMBDA_D = 0.5  # FineGrainedAL eq. 3: weight of unchecked predicted boxes


@dataclass(frozen=True)
class Cost:
    """What an oracle's answers cost: counts and estimated annotator seconds. Add them up with +."""

    images: int = 0
    boxes_drawn: int = 0
    boxes_verified: int = 0
    boxes_adjusted: int = 0
    boxes_removed: int = 0
    seconds: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __radd__(self, other: object) -> Cost:
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    @property
    def boxes_labelled(self) -> int:
        """Boxes a person touched: the cost unit of FineGrainedAL's learning curves."""
        return self.boxes_drawn + self.boxes_verified + self.boxes_adjusted + self.boxes_removed

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _names_of(det: Detections, class_names: Sequence[str] | None, who: str) -> tuple[str, ...]:
    if class_names is None:
        raise ValueError(f"{who}: pre-annotations given as Detections (class ids) need class_names to compare "
                         "with the ground truth's class names; pass class_names=[...]")
    return tuple(class_names[i] for i in det.labels)


def _match(pre_xyxy: np.ndarray, pre_labels: Sequence[str], gt_xyxy: np.ndarray, gt_labels: Sequence[str],
           min_iou: float) -> list[tuple[int, int]]:
    """One-to-one (pre, gt) pairs with IoU >= min_iou and equal class, greedily by IoU."""
    if not len(pre_xyxy) or not len(gt_xyxy):
        return []
    m = iou(pre_xyxy, gt_xyxy)
    same = np.asarray(pre_labels, dtype=object)[:, None] == np.asarray(gt_labels, dtype=object)[None, :]
    m = np.where(same & (m >= min_iou), m, -1.0)
    pairs = []
    used_p, used_g = set(), set()
    for flat in np.argsort(-m, axis=None, kind="stable"):
        p, g = divmod(int(flat), m.shape[1])
        if m[p, g] < 0:
            break
        if p in used_p or g in used_g:
            continue
        used_p.add(p)
        used_g.add(g)
        pairs.append((p, g))
    return pairs


class ImageOracle:
    """Answers image queries with the withheld ground truth and counts what that would cost."""

    def __init__(self, truth: Mapping[Hashable, Annotation], class_names: Sequence[str] | None = None,
                 match_iou: float = MATCH_IOU, draw_seconds: float = DRAW_SECONDS,
                 verify_seconds: float = VERIFY_SECONDS, remove_seconds: float = VERIFY_SECONDS,
                 image_seconds: float = 0.0) -> None:
        self.truth = truth
        self.class_names = class_names
        self.match_iou = match_iou
        self.draw_seconds = draw_seconds
        self.verify_seconds = verify_seconds
        self.remove_seconds = remove_seconds
        self.image_seconds = image_seconds

    def _truth(self, key: Hashable) -> Annotation:
        if key not in self.truth:
            raise KeyError(f"ImageOracle: no withheld ground truth for image {key!r}; the simulated oracle can only "
                           "answer images of the labelled dataset it was built from")
        return self.truth[key]

    def answer(self, keys: Iterable[Hashable],
               pre_annotations: Mapping[Hashable, Annotation | Detections] | None = None,
               ) -> tuple[dict[Hashable, Annotation], Cost]:
        """Ground truth per key, plus the cost of labelling them (with or without pre-annotations)."""
        out: dict[Hashable, Annotation] = {}
        total = Cost()
        for key in keys:
            gt = self._truth(key)
            out[key] = gt
            pre = None if pre_annotations is None else pre_annotations.get(key)
            if pre is None or len(pre) == 0:
                drawn, verified, removed = len(gt), 0, 0
            else:
                if isinstance(pre, Detections):
                    pre_labels = _names_of(pre, self.class_names, "ImageOracle")
                else:
                    pre_labels = pre.labels
                pairs = _match(pre.boxes.xyxy, pre_labels, gt.boxes.xyxy, gt.labels, self.match_iou)
                verified = len(pairs)
                drawn = len(gt) - verified
                removed = len(pre) - verified
            total = total + Cost(
                images=1, boxes_drawn=drawn, boxes_verified=verified, boxes_removed=removed,
                seconds=self.image_seconds + drawn * self.draw_seconds + verified * self.verify_seconds
                + removed * self.remove_seconds,
            )
        return out, total


@dataclass(frozen=True, eq=False)
class BoxAnswer:
    """The oracle's answer to one box query. `label` None means background (box not adjusted)."""

    key: Hashable
    query_box: np.ndarray
    query_label: str | int | None
    box: np.ndarray
    label: str | None
    iou: float
    gt_index: int | None

    @property
    def background(self) -> bool:
        return self.label is None


class BoxOracle:
    """FineGrainedAL's simulated box annotator: snap to the max-IoU ground-truth box, or background."""

    def __init__(self, truth: Mapping[Hashable, Annotation], class_names: Sequence[str] | None = None,
                 match_iou: float = MATCH_IOU, seconds_per_box: float = VERIFY_SECONDS) -> None:
        self.truth = truth
        self.class_names = class_names
        self.match_iou = match_iou
        self.seconds_per_box = seconds_per_box

    def answer(self, queries: Iterable[tuple[Hashable, Sequence[float] | np.ndarray, str | int | None]],
               ) -> tuple[list[BoxAnswer], Cost]:
        """One answer per (image key, xyxy box, predicted label) query, in order, and their cost."""
        answers: list[BoxAnswer] = []
        verified = adjusted = removed = 0
        images = set()
        for key, box, label in queries:
            if key not in self.truth:
                raise KeyError(f"BoxOracle: no withheld ground truth for image {key!r}")
            gt = self.truth[key]
            q = np.asarray(box, dtype=np.float64).reshape(4)
            images.add(key)
            ious = iou(q[None], gt.boxes.xyxy)[0] if len(gt) else np.zeros(0)
            j = int(np.argmax(ious)) if ious.size else -1
            best = float(ious[j]) if j >= 0 else 0.0
            if j >= 0 and best >= self.match_iou:
                name = gt.labels[j]
                qname = self.class_names[label] if isinstance(label, (int, np.integer)) and self.class_names \
                    else label
                if qname == name and np.allclose(q, gt.boxes.xyxy[j], atol=1e-6):
                    verified += 1
                else:
                    adjusted += 1
                answers.append(BoxAnswer(key, q, label, gt.boxes.xyxy[j].copy(), name, best, j))
            else:
                removed += 1
                answers.append(BoxAnswer(key, q, label, q.copy(), None, best, None))
        n = verified + adjusted + removed
        return answers, Cost(images=len(images), boxes_verified=verified, boxes_adjusted=adjusted,
                             boxes_removed=removed, seconds=n * self.seconds_per_box)


def answers_by_image(items: Sequence[tuple[Hashable, int]], answers: Sequence[BoxAnswer],
                     ) -> dict[Hashable, dict[int, BoxAnswer]]:
    """Group a box Selection's items and the oracle's answers (same order) as key -> box_index -> answer."""
    if len(items) != len(answers):
        raise ValueError(f"answers_by_image: {len(items)} queried boxes but {len(answers)} answers")
    out: dict[Hashable, dict[int, BoxAnswer]] = {}
    for (key, b), a in zip(items, answers):
        out.setdefault(key, {})[int(b)] = a
    return out


def partial_labels(
    image: str,
    detections: Detections,
    checked: Mapping[int, BoxAnswer],
    class_names: Sequence[str],
    lambda_d: float = LAMBDA_D,
    min_score: float = T_D,
    suppress_iou: float = 0.5,
    round: int = 0,
    model: str | None = None,
    ignore_score: float | None = None,
) -> tuple[Annotation, np.ndarray]:
    """Training labels of a partially checked image (FineGrainedAL §3.2, eq. 3) and per-box weights.

    - checked object answers: the ground-truth box and class, Source.HUMAN, weight 1 (two queries
      snapped to the same ground-truth box give it once);
    - checked background answers: never an object; they are left out of the labels;
    - unchecked predictions with score >= min_score (the box pool's t_d): Source.PREDICTED, weight
      lambda_d [0.5] - except those overlapping any checked box (object answer or background query)
      with IoU >= suppress_iou [0.5], which are dropped: the person has looked at that spot, so such a
      box either duplicates a checked object (possibly with another class) or restates an object the
      person said is not there;
    - with `ignore_score` < min_score: unchecked predictions with ignore_score <= score < min_score
      (same overlap rule): Source.PREDICTED, weight 0, an ignore region. The detectors train a
      weight-0 box's locations neither as object nor as background; without it, every object on a
      partial image that the model scored below min_score would train as background (BCCD: ~14 cells
      an image, ~3 checked a round).
    `checked` maps box_index (into `detections`) -> BoxAnswer (see `answers_by_image`).
    """
    objects = [(i, a) for i, a in sorted(checked.items()) if not a.background]
    seen: set[int] = set()
    xyxy: list[np.ndarray] = []
    labels: list[str] = []
    prov: list[Provenance] = []
    weights: list[float] = []
    for _, a in objects:
        if a.gt_index is not None and a.gt_index in seen:
            continue
        if a.gt_index is not None:
            seen.add(a.gt_index)
        xyxy.append(np.asarray(a.box, np.float64))
        labels.append(a.label)
        prov.append(Provenance(source=Source.HUMAN, round=round, model=model))
        weights.append(1.0)
    checked_regions = [np.asarray(a.box, np.float64) for _, a in objects] + \
        [np.asarray(a.query_box, np.float64) for a in checked.values() if a.background]
    floor = min_score if ignore_score is None else min(min_score, ignore_score)
    unchecked = np.array([i for i in range(len(detections)) if i not in checked
                          and detections.scores[i] >= floor], dtype=np.int64)
    if unchecked.size and checked_regions:
        overlap = iou(detections.boxes.xyxy[unchecked], np.stack(checked_regions)).max(axis=1)
        unchecked = unchecked[overlap < suppress_iou]
    lq = detections.loc_quality
    for i in unchecked:
        xyxy.append(detections.boxes.xyxy[i])
        labels.append(class_names[int(detections.labels[i])])
        prov.append(Provenance(source=Source.PREDICTED, round=round, model=model,
                               score=float(detections.scores[i]),
                               loc_quality=None if lq is None else float(lq[i])))
        weights.append(float(lambda_d) if detections.scores[i] >= min_score else 0.0)
    boxes = Boxes(np.stack(xyxy) if xyxy else np.zeros((0, 4)), detections.image_size)
    return Annotation(image=image, boxes=boxes, labels=tuple(labels), provenance=tuple(prov)), \
        np.asarray(weights, dtype=np.float32)
