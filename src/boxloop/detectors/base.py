"""The Detector protocol every model in boxloop implements.

Two methods instead of torchvision's mode-dependent forward: `loss` (train) and `predict` (eval,
no grad). Images are lists of float CHW tensors in [0, 1] on the model's device, any size (the model
resizes internally and maps boxes back). Targets use boxloop's labels 0..C-1 (no background index;
models shift internally where torchvision needs it):

    {"boxes": FloatTensor (N, 4) xyxy pixels, "labels": LongTensor (N,),
     "weights": FloatTensor (N,) optional, default 1}

An image with N=0 is a negative and must train as one.

Every detector is also a torch `nn.Module`; the protocol names the part of that interface the
trainer, the checkpoints and inference use (mode, device, parameters, state), so callers need no
casts. `TorchDetector` is the base class of boxloop's own detectors: what they share (the wrapped
torchvision model, the rebuild config, the bounded-negatives settings) and the predict template
(checked inputs, original sizes, eval mode, no grad, autocast, the quality map), leaving each model its forward pass
and post-processing (`predict_prepared`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn import Parameter

from boxloop.detectors.common import predict_context, prepare_images
from boxloop.structures import Detections

if TYPE_CHECKING:
    from boxloop.metrics.calibration import QualityMap


@runtime_checkable
class Detector(Protocol):
    num_classes: int
    # Everything create_detector needs to rebuild this model: {"name": ..., "num_classes": ..., **kwargs}
    config: dict[str, Any]
    # True where predict() fills Detections.loc_quality; feature_dim where it fills features.
    has_loc_quality: bool
    feature_dim: int | None

    def loss(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]: ...

    def predict(self, images: list[Tensor], score_threshold: float = 0.05) -> list[Detections]: ...

    # the nn.Module part
    training: bool

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...


class TorchDetector(nn.Module):
    """Base of boxloop's detectors (fcos, fcos_lite, retinanet, faster_rcnn): see the module docstring."""

    has_loc_quality: bool = False
    cpu_bf16: bool = False  # predict in bfloat16 on a CPU that supports it (fcos_lite)
    # predicted IoU -> IoU, fitted on validation at the end of training and kept in the checkpoint
    # (boxloop.metrics.calibration); None: the quality branch's raw output
    quality_map: QualityMap | None = None

    def __init__(self, model: nn.Module, num_classes: int, config: dict[str, Any], feature_dim: int,
                 max_negatives_per_positive: float | None = None, min_negatives_per_image: int = 0,
                 amp: bool = True) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.config = config
        self.feature_dim = int(feature_dim)
        self.max_negatives_per_positive = max_negatives_per_positive
        self.min_negatives_per_image = int(min_negatives_per_image)
        self.amp = amp

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def default_score_threshold(self) -> float:
        """The builder's score threshold, used when `predict` is given none."""
        raise NotImplementedError

    def predict(self, images: list[Tensor], score_threshold: float | None = None) -> list[Detections]:
        """Detections per image in ORIGINAL pixels; batched, eval mode, no grad, AMP on CUDA.
        `score_threshold` None: the builder's (`default_score_threshold`)."""
        thr = self.default_score_threshold() if score_threshold is None else float(score_threshold)
        if len(images) == 0:
            return []
        images = prepare_images(images)
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        with predict_context(self, amp=self.amp, cpu_bf16=self.cpu_bf16) as device:
            dets = self.predict_prepared([im.to(device, non_blocking=True) for im in images], original, thr)
        if self.quality_map is not None:
            dets = [d if d.loc_quality is None else dataclasses.replace(d, loc_quality=self.quality_map(d.loc_quality))
                    for d in dets]
        return dets

    def predict_prepared(self, images: list[Tensor], original: list[tuple[int, int]],
                         score_threshold: float) -> list[Detections]:
        """The model's forward pass and post-processing on checked images already on its device,
        inside the predict context; boxes mapped back to `original` (h, w) sizes."""
        raise NotImplementedError
