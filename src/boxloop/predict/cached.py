"""Pool scoring on a frozen body's cached maps (boxloop.predict.feature_cache holds them).

`predict_cached` is what predict_paths does when given a cache: a hit reads the maps, a miss decodes,
runs the body under the predict context (bfloat16 on a CPU that has it, as today, so the stored maps
are those of today's path bit for bit) and stores them; then neck, head and postprocess run on the
batch. `BoundCache` ties a cache to one detector's body and precision (training uses it too:
boxloop.train.cached).

Written here: the keys and the scoring loop. The detector's FeatureMixin does the split forward;
boxloop.predict.feature_cache the storage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from boxloop.detectors.common import predict_context, prepare_images, use_cpu_bf16
from boxloop.detectors.features import BodyFeatures
from boxloop.predict.feature_cache import FeatureCache, storable
from boxloop.structures import Detections

__all__ = ["BoundCache", "bind", "predict_cached", "predict_precision"]

log = logging.getLogger("boxloop")

class BoundCache:
    """A FeatureCache tied to one detector's body and precision: maps per (image file, size, view)."""

    def __init__(self, cache: FeatureCache, detector: Any, precision: str) -> None:
        self.cache = cache
        self.detector = detector
        self.precision = precision
        self.identity = detector.body_identity()

    def key(self, path: Path, image_size: int, view: str) -> str:
        return self.cache.key(self.cache.image_hash(path), self.identity, image_size, view, self.precision)

    def get(self, key: str) -> tuple[BodyFeatures, dict[str, Any]] | None:
        got = self.cache.get(key)
        if got is None:
            return None
        maps, meta = got
        sizes = {k: tuple(meta[k]) for k in ("image_size", "input_size", "padded_size")}
        return BodyFeatures(maps, **sizes), meta  # type: ignore[arg-type]

    def put(self, key: str | None, feats: BodyFeatures, original: tuple[int, int]) -> BodyFeatures:
        """Store the maps (`key` None: a file that cannot be hashed, not stored); returns them rounded as
        stored, so a run's results do not depend on whether an image was a hit or a miss."""
        maps = {k: storable(v) for k, v in feats.maps.items()}
        if not all(bool(torch.isfinite(v).all()) for v in maps.values()):
            self.cache.refuse_range()
            return feats  # beyond float16's range: used as computed, not stored
        meta = {"image_size": list(feats.image_size), "input_size": list(feats.input_size),
                "padded_size": list(feats.padded_size), "original": list(original)}
        if key is not None:
            self.cache.put(key, maps, meta, checked=True)
        return BodyFeatures(maps, feats.image_size, feats.input_size, feats.padded_size)


def bind(cache: FeatureCache | None, detector: Any, precision: str) -> BoundCache | None:
    """The cache bound to `detector`, or None when there is no cache or the body can change."""
    frozen = getattr(detector, "frozen_body", None)
    if cache is None or frozen is None or frozen() is None:
        return None
    return BoundCache(cache, detector, precision)


def predict_precision(detector: Any, device: torch.device) -> str:
    """The precision predict_context runs the body in (part of the key: maps differ between them)."""
    if device.type == "cuda" and getattr(detector, "amp", False):
        return "fp16"
    if device.type == "cpu" and use_cpu_bf16(getattr(detector, "cpu_bf16", False)):
        return "bf16"
    return "fp32"


# -- training ---------------------------------------------------------------------------------------



# -- scoring ----------------------------------------------------------------------------------------
def predict_cached(detector: Any, bound: BoundCache, paths: Sequence[Path], names: Sequence[Any], image_size: int,
                   batch_size: int, score_threshold: float, skip: Callable[[Path, str], None],
                   to_original: Callable[[Detections, tuple[int, int]], Detections],
                   load: Callable[[int], tuple[Tensor | None, Any, int]]) -> Iterator[tuple[Any, Detections]]:
    """Yield (name, Detections in original pixels) in the order of `paths`, the body run only on misses.
    `load(i)`: predict_paths' decode of image i ((uint8 CHW, (w, h), i) or (None, problem, i))."""
    device = detector.device
    for start in range(0, len(paths), batch_size):
        idx = list(range(start, min(start + batch_size, len(paths))))
        feats: dict[int, BodyFeatures] = {}
        original: dict[int, tuple[int, int]] = {}
        keys: dict[int, str] = {}
        for i in idx:
            try:
                keys[i] = bound.key(paths[i], image_size, "plain")
            except OSError:
                continue  # missing or unreadable: the decode below says why
            got = bound.get(keys[i])
            if got is not None:
                feats[i], meta = got
                original[i] = (int(meta["original"][0]), int(meta["original"][1]))
        pixels: dict[int, Tensor] = {}
        for i in idx:
            if i in feats:
                continue
            image, orig, _ = load(i)
            if image is None:
                skip(paths[i], orig)
                continue
            pixels[i], original[i] = image, orig
        if pixels:
            images = prepare_images([im.to(device).float().div_(255.0) for im in pixels.values()])
            with predict_context(detector, amp=detector.amp, cpu_bf16=detector.cpu_bf16):
                computed = detector.body_features(images)
            for i, f in zip(pixels, computed):
                feats[i] = bound.put(keys.get(i), f, original[i])
        ready = [i for i in idx if i in feats]
        dets = detector.predict_features([feats[i] for i in ready], score_threshold)
        for i, d in zip(ready, dets):
            yield names[i], to_original(d, original[i])
