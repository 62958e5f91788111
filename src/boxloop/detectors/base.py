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
casts.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

from torch import Tensor
from torch.nn import Parameter

from boxloop.structures import Detections


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
