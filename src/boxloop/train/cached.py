"""Training on a frozen body's cached maps (boxloop.predict.feature_cache).

`CachedTrainSet`, used by fit() when it is given a cache and the detector's body is frozen: each item
is the body's maps of the resized image or of its horizontal flip (the flip drawn per (seed, epoch,
index) as data.py draws it), so the flip survives as a second cached view. Scale jitter and colour
jitter change the pixels the body sees and are dropped. Measured on BCCD (train_bccd.py's fcos_lite
recipe, 15 epochs, 320 px, 1 thread; benchmarks/README): test mAP50 0.863 cached against 0.861 with
every augmentation on pixels (COCO AP 0.516 against 0.489) and 0.866 on pixels with flip only, with
1.7x less CPU time, fills included.
`strong` augmentation, hooks that rewrite batches and torchrun keep the pixel path. A miss decodes
and resizes exactly as the pixel path does (DetectionDataset, eval recipe), runs the body in float32
and stores the maps; the targets are the labelled boxes scaled to the resized image, flipped with it,
clamped, and boxes under 1 px dropped (SanitizeBoundingBoxes' rule).

Written here: the views and the target bookkeeping.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from boxloop.detectors.features import BodyFeatures
from boxloop.predict.cached import BoundCache
from boxloop.train.data import DetectionDataset, Sample, eval_transform, item_seed

__all__ = ["CachedTrainSet"]

class CachedTrainSet(Dataset):
    """(BodyFeatures, target) per labelled sample; the view drawn per (seed, epoch, index). Items are
    made in the main process (a miss runs the body), so the loader must use num_workers=0."""

    def __init__(self, samples: Sequence[Sample], class_names: Sequence[str], image_size: int, flip: bool,
                 bound: BoundCache, seed: int = 0) -> None:
        self.pixels = DetectionDataset(samples, class_names, eval_transform(image_size), seed=seed)
        self.image_size = image_size
        self.flip = flip
        self.bound = bound
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pixels)

    def _flipped(self, index: int) -> bool:
        return self.flip and np.random.default_rng(item_seed(self.seed, self.epoch, index)).random() < 0.5

    def __getitem__(self, index: int) -> tuple[BodyFeatures, dict[str, Any]]:
        view = "hflip" if self._flipped(index) else "plain"
        sample = self.pixels.samples[index]
        key = self.bound.key(sample.path, self.image_size, view)
        got = self.bound.get(key)
        if got is not None:
            feats, meta = got
            original = (int(meta["original"][0]), int(meta["original"][1]))
        else:
            image, target = self.pixels[index]
            if view == "hflip":
                image = image.flip(-1)
            with torch.autocast("cpu", enabled=False):
                feats = self.bound.detector.body_features([image.to(self.bound.detector.device)])[0]
            original = target["orig_size"]
            feats = self.bound.put(key, feats, original)
        return feats, self._target(index, feats.input_size, original, view == "hflip")

    def _target(self, index: int, input_size: tuple[int, int], original: tuple[int, int],
                flipped: bool) -> dict[str, Any]:
        h, w = input_size
        t = self.pixels.raw_target(index, w, h, scale=(w / original[0], h / original[1]))
        boxes = t["boxes"].as_subclass(Tensor).float().reshape(-1, 4)
        if flipped:
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                             boxes[:, 3].clamp(0, h)], dim=1)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
        return {"boxes": boxes[keep], "labels": t["labels"][keep], "weights": t["weights"][keep],
                "image_id": self.pixels.samples[index].name, "orig_size": original}
