"""The input size chosen from the labelled boxes, once per project, with the reason said.

Why: the CPU default of 320 px was chosen on BCCD, whose cells span 40-50 px at that size. Where a
user's objects are a few pixels at 320 px, the head's finest level (stride 8) puts at most one
location on them and the model cannot learn them, whatever the labels. boxloop knows every labelled
box, so it can enlarge the input until most objects reach two cells of the finest level, within the
device's cost budget (`RunDefaults.max_image_size`; training and prediction cost grow as the square
of the size). It never goes below the device default: large objects keep the measured default.

The rule (`choose_input_size`): the object size is sqrt(w * h) at the input size (the longer image
side equals the size); take the smallest multiple of 32 from the default up that puts
`TARGET_SHARE` of the objects at >= `TARGET_PX`; none within the budget: the budget's largest, and a
warning when objects stay under `RESOLVE_PX` there, naming how many and the size that would resolve
them. `project_input_size` records the choice in the project (meta "input_size") and makes it again
only when the labelled boxes have grown or shrunk by half or more, or the device differs.
A finer level (stride 4) is not offered: fcos_lite has no such level yet.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from boxloop.defaults import RunDefaults, run_defaults
from boxloop.structures import Annotation

if TYPE_CHECKING:
    from boxloop.store import Project

__all__ = ["SizeChoice", "object_fractions", "choose_input_size", "size_histogram", "project_input_size",
           "FINEST_STRIDE", "RESOLVE_PX", "TARGET_PX", "TARGET_SHARE"]

FINEST_STRIDE = 8  # fcos_lite's (and fcos's) finest level, P3
RESOLVE_PX = FINEST_STRIDE  # under one cell of the finest level the head has no location of its own on an object
TARGET_PX = 2 * FINEST_STRIDE  # two cells: FCOS's centre sampling (radius 1.5 strides) gives it several locations
TARGET_SHARE = 0.9  # of the labelled objects at or above TARGET_PX
SIZE_STEP = 32  # sizes are multiples of the coarsest stride
REVISIT_FACTOR = 2.0  # choose again when the labelled boxes grow or shrink by this factor
HISTOGRAM_EDGES = (0, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class SizeChoice:
    """The input size chosen for a project, what it was chosen from and why."""

    image_size: int
    default_size: int  # the device default it was measured against
    device: str
    objects: int  # labelled boxes the choice was made from
    median_px: float | None  # median object size at the default size
    cost: float  # training/prediction cost per image against the default size, (size / default)^2
    unresolved: int  # objects under RESOLVE_PX at image_size
    resolving_size: int | None  # the size that would put 99% of the objects at RESOLVE_PX, where some are under it
    reason: str
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SizeChoice:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def object_fractions(annotations: Iterable[Annotation]) -> np.ndarray:
    """sqrt(w * h) of every box over its image's longer side: its size in pixels at input size 1."""
    out: list[np.ndarray] = []
    for ann in annotations:
        if not len(ann):
            continue
        xyxy = ann.boxes.xyxy
        w, h = ann.image_size
        side = np.sqrt(np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None))
        out.append(side / max(w, h, 1))
    return np.concatenate(out) if out else np.zeros(0)


def _round_up(size: float) -> int:
    return int(math.ceil(size / SIZE_STEP) * SIZE_STEP)


def choose_input_size(fractions: np.ndarray, defaults: RunDefaults) -> SizeChoice:
    """The input size for objects of these sizes (object_fractions), within defaults.max_image_size."""
    base, top = defaults.image_size, max(defaults.image_size, defaults.max_image_size)
    fractions = np.asarray(fractions, dtype=np.float64)
    fractions = fractions[fractions > 0]
    if not len(fractions):
        return SizeChoice(base, base, defaults.device, 0, None, 1.0, 0, None,
                          f"no labelled box yet: the {defaults.device} default, {base} px")
    median = float(np.median(fractions) * base)
    small = float(np.quantile(fractions, 1 - TARGET_SHARE))  # the (1 - share) quantile, at size 1
    need = _round_up(TARGET_PX / small)
    size = min(max(base, need), top)
    cost = (size / base) ** 2
    unresolved = int((fractions * size < RESOLVE_PX).sum())
    head = f"objects: median {median:.0f} px at {base}, {1 - TARGET_SHARE:.0%} under {small * base:.1f} px"
    if size == base:
        reason = f"{head}; {TARGET_SHARE:.0%} reach {TARGET_PX} px at {base}: using the {defaults.device} default {base} px"
    elif size == need:
        reason = f"{head}; using {size} px, where {TARGET_SHARE:.0%} reach {TARGET_PX} px: {cost:.1f}x the cost"
    else:
        reason = (f"{head}; using {size} px, the {defaults.device} budget ({cost:.1f}x the cost; {need} px would "
                  f"put {TARGET_SHARE:.0%} at {TARGET_PX} px)")
    resolving, warning = None, None
    if unresolved:
        resolving = _round_up(RESOLVE_PX / float(np.quantile(fractions, 0.01)))
        warning = (f"{unresolved} of {len(fractions)} labelled objects are under {RESOLVE_PX} px at {size} px: the "
                   f"model will not resolve them; {resolving} px would resolve 99% "
                   f"({(resolving / base) ** 2:.1f}x the cost of {base} px; pass --image-size {resolving})")
    return SizeChoice(size, base, defaults.device, int(len(fractions)), round(median, 1), round(cost, 2),
                      unresolved, resolving, reason, warning)


def size_histogram(fractions: np.ndarray, image_size: int) -> dict[str, int]:
    """How many objects fall in each size bin (sqrt(w * h), px) at `image_size`."""
    px = np.asarray(fractions, dtype=np.float64) * image_size
    edges = [*HISTOGRAM_EDGES, math.inf]
    return {(f"{lo}-{hi}" if hi != math.inf else f">={lo}"): int(((px >= lo) & (px < hi)).sum())
            for lo, hi in zip(edges[:-1], edges[1:])}


def project_input_size(project: Project, device: str = "auto", record: bool = True) -> SizeChoice:
    """The project's input size: the recorded choice while it still holds (same device, labelled boxes
    within a factor REVISIT_FACTOR of those it was made from), else made again from the train and
    validation boxes (never the fixed test set) and, with `record`, stored."""
    defaults = run_defaults(device)
    anns = [*project.annotations("labelled", split="train").values(),
            *project.annotations("labelled", split="val").values()]
    fractions = object_fractions(anns)
    old = project.get_meta("input_size")
    if old:
        prev = SizeChoice.from_dict(old)
        n, m = len(fractions), prev.objects
        same_labels = (n == m == 0) or (n > 0 and m > 0 and max(n, m) < REVISIT_FACTOR * min(n, m))
        if prev.device == defaults.device and prev.default_size == defaults.image_size and same_labels:
            return prev
    choice = choose_input_size(fractions, defaults)
    if record:
        project.set_meta("input_size", choice.to_dict())
    return choice
