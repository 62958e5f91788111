"""Training data: samples, the torch Dataset, and the augmentation recipes (train, eval, weak, strong).

Written by hand: `Sample` (an image path, its labels and per-box loss weights), the mapping of class
names to 0..C-1, the per-item seeding that makes augmentation a pure function of (seed, epoch,
index) -- so results do not depend on the number of loader workers and a resumed run sees the same
augmented images -- and the scale-jitter step (resize, then crop or pad back to the eval canvas so
the objects change scale but the canvas does not; a detector that resizes internally cannot undo it).
torchvision.transforms.v2 does the rest: it moves `tv_tensors.BoundingBoxes` with the pixels
(resize, flip, crop, pad), clamps them, and `SanitizeBoundingBoxes` drops boxes that became
degenerate together with their labels and weights. Decoding goes through `boxloop.images.load_rgb`
(EXIF rotation, 16-bit, CMYK, RGBA).

Boxes are taken as pixel coordinates of the decoded image; `Annotation.image_size` is not used to
rescale them (format size fields are often wrong, the pixels are not).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from boxloop.images import resized_size
from boxloop.structures import Annotation

__all__ = [
    "Sample",
    "DetectionDataset",
    "Transform",
    "train_transform",
    "eval_transform",
    "weak_transform",
    "strong_transform",
    "collate",
    "item_seed",
]

Target = dict[str, Any]
# A transform takes a uint8 CHW tv_tensors.Image and a target dict whose "boxes" is a
# tv_tensors.BoundingBoxes, and returns (float image in [0, 1], target).
Transform = Callable[[tv_tensors.Image, Target], tuple[Tensor, Target]]


@dataclass(frozen=True)
class Sample:
    """One training image: where it is, its labels, and a loss weight per box.

    `annotation` None means nobody labelled the image (it is skipped for training); an Annotation
    with no boxes is a negative and trains as one. `weights` (one per box, default 1) are taken as
    given: dampening unchecked boxes or dropping background boxes is the caller's decision.
    `key` names the image in evaluation results (default: the annotation's image, else the path).
    """

    path: Path
    annotation: Annotation | None = None
    weights: np.ndarray | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float32).reshape(-1)
            n = 0 if self.annotation is None else len(self.annotation)
            if w.shape[0] != n:
                raise ValueError(f"{self.path}: {w.shape[0]} loss weights for {n} boxes; give one weight per box")
            if not np.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"{self.path}: loss weights must be finite and >= 0, got {w.tolist()}")
            w.setflags(write=False)
            object.__setattr__(self, "weights", w)

    @property
    def name(self) -> str:
        if self.key is not None:
            return self.key
        if self.annotation is not None and self.annotation.image:
            return self.annotation.image
        return str(self.path)

    @property
    def labelled(self) -> bool:
        return self.annotation is not None


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item of one epoch (numpy's SeedSequence mixes the three numbers)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint64)[0] >> 1)


class DetectionDataset(Dataset):
    """(image float CHW in [0, 1], target) pairs for `Detector.loss`.

    target: {"boxes": float (N, 4) xyxy in the transformed image, "labels": int64 (N,) in 0..C-1,
    "weights": float (N,), "image_id": sample name, "orig_size": (w, h) of the full-size image}.
    Call `set_epoch` before each epoch: augmentation is seeded by (seed, epoch, index).
    """

    def __init__(self, samples: Sequence[Sample], class_names: Sequence[str],
                 transform: Transform | None = None, seed: int = 0) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.class_to_id = {name: i for i, name in enumerate(self.class_names)}
        if len(self.class_to_id) != len(self.class_names):
            raise ValueError(f"class names must be unique, got {self.class_names}")
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        for s in self.samples:  # fail before training starts, not at step 5,000
            if s.annotation is not None:
                unknown = sorted(set(s.annotation.labels) - set(self.class_to_id))
                if unknown:
                    raise ValueError(f"{s.path}: labels {unknown} are not in the class list {self.class_names}; "
                                     "add them to the project's classes or relabel the boxes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def raw_target(self, index: int, width: int, height: int, scale: tuple[float, float] = (1.0, 1.0)) -> Target:
        """The sample's boxes on a (width, height) canvas; `scale` maps original pixels onto it."""
        s = self.samples[index]
        ann = s.annotation
        n = 0 if ann is None else len(ann)
        xyxy = np.zeros((0, 4), np.float32) if ann is None else ann.boxes.xyxy.astype(np.float32)
        if scale != (1.0, 1.0):
            xyxy = xyxy * np.array([scale[0], scale[1], scale[0], scale[1]], np.float32)
        labels = [self.class_to_id[name] for name in ann.labels] if ann is not None else []
        weights = s.weights if s.weights is not None else np.ones(n, np.float32)
        return {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(xyxy.copy()).reshape(-1, 4), format="XYXY",
                                              canvas_size=(height, width)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "weights": torch.tensor(np.asarray(weights, np.float32).copy(), dtype=torch.float32),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        from boxloop.images import load_rgb  # decoding rules live in one place

        s = self.samples[index]
        pil = load_rgb(s.path, reduce_to=getattr(self.transform, "image_size", None))
        image = tv_tensors.Image(F.pil_to_tensor(pil))
        height, width = image.shape[-2:]
        full_w, full_h = pil.info.get("original_size", (width, height))
        target = self.raw_target(index, width, height, scale=(width / full_w, height / full_h))
        # Out-of-image and degenerate boxes: clamp to the image, drop what has no area left.
        target["boxes"] = F.clamp_bounding_boxes(target["boxes"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, index))
            if self.transform is None:
                out_image, target = _to_float(image), _sanitize(image, target)[1]
            else:
                out_image, target = self.transform(image, target)
        target = {
            "boxes": target["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4),
            "labels": target["labels"],
            "weights": target["weights"],
            "image_id": s.name,
            "orig_size": (int(full_w), int(full_h)),
        }
        return out_image.as_subclass(torch.Tensor), target


def collate(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Keep images and targets as lists: images differ in size and the detector batches them."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


# -- augmentation recipes -----------------------------------------------------------------------

def _labels_and_weights(inputs: Any) -> tuple[Tensor, Tensor]:
    target = inputs[1]
    return target["labels"], target["weights"]


_SANITIZE = v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_weights)


def _sanitize(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    target["boxes"] = F.clamp_bounding_boxes(target["boxes"])
    return _SANITIZE(image, target)


def _to_float(image: Tensor) -> Tensor:
    return F.to_dtype(image, torch.float32, scale=True)


class _Recipe:
    """resize (longest side = image_size) -> [scale jitter] -> [flip] -> float -> [photometric] -> sanitize."""

    def __init__(self, image_size: int, flip: bool = False, scale_jitter: tuple[float, float] | None = None,
                 photometric: Sequence[Callable] = ()) -> None:
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        if scale_jitter is not None and not (0 < scale_jitter[0] <= scale_jitter[1]):
            raise ValueError(f"scale_jitter must be (low, high) with 0 < low <= high, got {scale_jitter}")
        self.image_size = image_size
        self.flip = v2.RandomHorizontalFlip(0.5) if flip else None
        self.scale_jitter = scale_jitter
        self.photometric = list(photometric)

    def __call__(self, image: tv_tensors.Image, target: Target) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        base_h, base_w = resized_size(width, height, self.image_size)
        if self.scale_jitter is not None:
            low, high = self.scale_jitter
            s = low + (high - low) * float(torch.rand(()))
            size = [max(1, round(base_h * s)), max(1, round(base_w * s))]
        else:
            size = [base_h, base_w]
        image, boxes = F.resize(image, size, antialias=True), F.resize(target["boxes"], size)
        target = {**target, "boxes": boxes}
        if self.scale_jitter is not None and size != [base_h, base_w]:
            # Back to the eval canvas: crop a random window (zoom in) or pad (zoom out).
            image, target = v2.RandomCrop((base_h, base_w), pad_if_needed=True, fill=0)(image, target)
        if self.flip is not None:
            image, target = self.flip(image, target)
        image = _to_float(image)
        if self.photometric:
            with warnings.catch_warnings():  # RandomErasing says it passes boxes through: intended
                warnings.simplefilter("ignore", UserWarning)
                for t in self.photometric:
                    image, target = t(image, target)
        return _sanitize(image, target)


def train_transform(image_size: int, flip: bool = True, scale_jitter: tuple[float, float] | None = (0.8, 1.2),
                    color: bool = True, strong: bool = False) -> Transform:
    """Supervised training augmentation: flip, scale jitter, mild colour jitter. `strong`: the
    student's photometric recipe (see `strong_transform`) instead of the mild colour jitter, so a
    supervised run can see exactly the augmentation a semi-supervised student sees."""
    # No hue jitter: torchvision's hue shift (an RGB->HSV->RGB round trip) took 17 ms of a 25 ms
    # training item on a CPU, and a 0.02 hue shift adds little that brightness/contrast/saturation lack.
    if strong:
        photometric = _strong_photometric()
    else:
        photometric = [v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.2)], p=0.5)] if color else []
    return _Recipe(image_size, flip=flip, scale_jitter=scale_jitter, photometric=photometric)


def eval_transform(image_size: int) -> Transform:
    """Resize only (longest side = image_size)."""
    return _Recipe(image_size)


def weak_transform(image_size: int) -> Transform:
    """Teacher view of the teacher-student methods (CertaintySSOD): resize + horizontal flip."""
    return _Recipe(image_size, flip=True)


def strong_transform(image_size: int, flip: bool = True) -> Transform:
    """Student view (CertaintySSOD, Unbiased Teacher recipe): colour jitter p=0.8, grayscale p=0.2,
    Gaussian blur p=0.5, then three random-erasing (Cutout) patches of decreasing probability."""
    return _Recipe(image_size, flip=flip, photometric=_strong_photometric())


def _strong_photometric() -> list[Callable]:
    return [
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=0.5),
        v2.RandomErasing(p=0.7, scale=(0.05, 0.2), ratio=(0.3, 3.3), value=0.0),
        v2.RandomErasing(p=0.5, scale=(0.02, 0.2), ratio=(0.1, 6.0), value=0.0),
        v2.RandomErasing(p=0.3, scale=(0.02, 0.2), ratio=(0.05, 8.0), value=0.0),
    ]
