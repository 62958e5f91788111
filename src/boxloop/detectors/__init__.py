"""Detector registry: one plain dict from name to builder, and `create_detector`.

Builders are imported lazily so that `import boxloop.detectors` stays cheap and a broken optional
model never stops the others from loading.

Owns: the Detector protocol (base), the models and their parts. May import: the root modules.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

from boxloop.detectors.base import Detector

# name -> "module:function"; each builder takes (num_classes, **kwargs) and returns a Detector.
DETECTORS: dict[str, str] = {
    "fcos": "boxloop.detectors.fcos:build_fcos",
    "fcos_lite": "boxloop.detectors.fcos_lite:build_fcos_lite",
    "faster_rcnn": "boxloop.detectors.faster_rcnn:build_faster_rcnn",
    "retinanet": "boxloop.detectors.retinanet:build_retinanet",
}

# Options added to a builder after checkpoints were written without them: the value those
# checkpoints were built with (a saved config lacking the key gets it back when it loads).
CONFIG_BEFORE: dict[str, dict[str, Any]] = {
    "fcos_lite": {"box_bins": 0, "quality_weighting": "focal"},
}


def saved_config(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's builder options, with the options it predates set as it was built."""
    return {**CONFIG_BEFORE.get(name, {}), **config}


def _builder(name: str):
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(sorted(DETECTORS))}")
    module_name, func = DETECTORS[name].split(":")
    return getattr(importlib.import_module(module_name), func)


def check_options(name: str, options: dict[str, Any]) -> None:
    """ValueError naming the unknown detector or options, and listing the valid ones."""
    valid = [p for p in inspect.signature(_builder(name)).parameters if p != "num_classes"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"detector {name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
                         f"{', '.join(valid)}")


def create_detector(name: str, num_classes: int, seed: int | None = None, **kwargs: Any) -> Detector:
    """Build a detector by registry name; `kwargs` go to its builder (backbone, sizes, ...).

    With `seed`, randomly initialised layers come from that seed alone (the global RNG is left as it
    was), so a resumed process builds the same model as one that ran everything before it.
    """
    check_options(name, kwargs)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    builder = _builder(name)
    if seed is None:
        return builder(num_classes=num_classes, **kwargs)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(num_classes=num_classes, **kwargs)


# What a detector needs to predict localization quality (CertaintySSOD's v, which certainty-aware
# pseudo-labelling multiplies in): faster_rcnn only with the interval box head; the others always do.
LOC_QUALITY_OPTIONS: dict[str, dict[str, Any]] = {"faster_rcnn": {"box_head": "interval"}}


@dataclass(frozen=True)
class DetectorSpec:
    """A detector to build: registry name and builder options. `loc_quality`: it must predict
    localization quality, so LOC_QUALITY_OPTIONS are added where `options` do not say otherwise."""

    model: str
    options: Mapping[str, Any] = field(default_factory=dict)
    loc_quality: bool = False

    @classmethod
    def sized(cls, model: str, backbone: str, pretrained_backbone: bool, image_size: int,
              options: Mapping[str, Any] | None = None, loc_quality: bool = False) -> DetectorSpec:
        """A spec whose detector takes images of `image_size` as they come (min_size = max_size =
        image_size, see train.fit's warning); `options` add to or override those."""
        base = {"backbone": backbone, "pretrained_backbone": pretrained_backbone, "min_size": image_size,
                "max_size": image_size}
        return cls(model, {**base, **(options or {})}, loc_quality)

    def kwargs(self) -> dict[str, Any]:
        """The builder's keyword arguments."""
        extra = LOC_QUALITY_OPTIONS.get(self.model, {}) if self.loc_quality else {}
        return {**extra, **self.options}

    def build(self, num_classes: int, seed: int | None = None) -> Detector:
        return create_detector(self.model, num_classes, seed=seed, **self.kwargs())


__all__ = ["DETECTORS", "Detector", "DetectorSpec", "LOC_QUALITY_OPTIONS", "check_options", "create_detector",
           "saved_config"]
