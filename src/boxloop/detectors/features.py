"""The split forward of a detector whose body is frozen: body maps once per image, neck and head per step.

Why: fcos_lite's EfficientNet-Lite0 body is frozen (BN folded) and costs 1.49 of the model's 1.87
GFLOPs at 320 px, yet training and pool scoring ran it again on the same pixels every step and every
round. Split like torchvision's detection models (transform -> body -> neck -> head -> postprocess),
the body's output can be kept (boxloop.predict.feature_cache) and the rest run on it.

Contract (what the feature cache relies on, generic over whatever levels the body returns):
- `frozen_body()` is the body module when nothing in it can change (no parameter that trains, no
  BatchNorm that updates statistics, no dropout), else None: then callers take the pixel path.
- `body_features(images)` gives one `BodyFeatures` per image: its maps (level name -> (C, H, W)), the
  size the model's transform resized it to, and the padded size the maps cover. Each image is run in
  a batch of images of its own size, so its maps never depend on its batch-mates' padding.
- `loss_from_features(features, targets)` and `predict_features(features)` are `loss` and `predict`
  with the body's work already done; a batch of maps of different sizes is padded with zeros, which
  approximates (near the bottom and right edges only) the body run on a zero-padded batch.

Written here: the grouping by size, the per-image split and the padding back into a batch; the
detector's own `outputs_from_maps` (neck, head, location points) and `compute_loss` / `_postprocess`
do the rest.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from boxloop.detectors.common import check_targets, predict_context, prepare_images
from boxloop.structures import Detections

__all__ = ["BodyFeatures", "FeatureMixin", "neck_of"]


@dataclass
class BodyFeatures:
    """One image's body maps and the sizes that place them (all (h, w))."""

    maps: dict[str, Tensor]  # level name -> (C, H, W), in the body's level order
    image_size: tuple[int, int]  # after the model's transform, before padding
    input_size: tuple[int, int]  # of the tensor the caller gave
    padded_size: tuple[int, int]  # of the padded input the maps cover

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BodyFeatures:
        maps = {k: v.to(device, non_blocking=non_blocking) for k, v in self.maps.items()}
        return BodyFeatures(maps, self.image_size, self.input_size, self.padded_size)


def neck_of(backbone: nn.Module) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """What runs after the body: fcos_lite's LitePAN.neck, or the FPN of a (torchvision) BackboneWithFPN."""
    neck = getattr(backbone, "neck", None)
    return neck if callable(neck) else backbone.fpn


_CHANGING = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Dropout)


class FeatureMixin:
    """The split forward for detectors built on torchvision's FCOS container (`model.transform`,
    `model.backbone.body`, the backbone's neck, `model.head`); see the module docstring."""

    model: Any
    num_classes: int
    outputs_from_maps: Callable[..., Any]
    compute_loss: Callable[..., dict[str, Tensor]]
    _postprocess: Callable[..., list[Detections]]
    default_score_threshold: Callable[[], float]
    amp: bool
    cpu_bf16: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if getattr(self.model, "channels_last", False) else torch.contiguous_format

    def frozen_body(self) -> nn.Module | None:
        body = self.model.backbone.body
        if any(p.requires_grad for p in body.parameters()) or any(isinstance(m, _CHANGING) for m in body.modules()):
            return None
        return body

    def body_identity(self) -> str:
        """A digest of what makes the body's maps what they are besides the pixels: its architecture,
        the input transform (normalisation, resize, padding) and the memory format (oneDNN's kernels
        round differently), and its weights."""
        body = self.model.backbone.body
        # memoised while no parameter or buffer of the body is replaced or written in place
        # (load_state_dict copies in place, which bumps version counters): hashing 13 MB took 0.14 s
        tensors = [*body.parameters(), *body.buffers()]
        signature = tuple((id(t), t._version) for t in tensors)
        memo = getattr(self, "_body_identity", None)
        if memo is not None and memo[0] == signature:
            return memo[1]
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{body!r}|{self.model.transform!r}|{self.memory_format}".encode())
        for name, t in body.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().numpy().tobytes())  # logical (C) order, whatever the memory format
        self._body_identity = (signature, h.hexdigest())
        return h.hexdigest()

    @torch.no_grad()
    def body_features(self, images: list[Tensor]) -> list[BodyFeatures]:
        """The body's maps per image (no grad, the caller's autocast), images of one size batched together."""
        images = prepare_images(images)
        body = self.model.backbone.body
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape), []).append(i)
        out: list[BodyFeatures | None] = [None] * len(images)
        for idx in groups.values():
            batch, _ = self.model.transform([images[i] for i in idx], None)
            maps = body(batch.tensors.contiguous(memory_format=self.memory_format))
            padded = (int(batch.tensors.shape[-2]), int(batch.tensors.shape[-1]))
            for j, i in enumerate(idx):
                out[i] = BodyFeatures(OrderedDict((k, v[j]) for k, v in maps.items()),
                                      (int(batch.image_sizes[j][0]), int(batch.image_sizes[j][1])),
                                      (int(images[i].shape[-2]), int(images[i].shape[-1])), padded)
        return out  # type: ignore[return-value]

    def _batch(self, feats: list[BodyFeatures]) -> tuple[dict[str, Tensor], ImageList]:
        """Stack the maps (float32, zero-padded to the largest) and a stand-in ImageList of the padded size."""
        maps: dict[str, Tensor] = OrderedDict()
        for name in feats[0].maps:
            levels = [f.maps[name].float() for f in feats]
            h = max(m.shape[-2] for m in levels)
            w = max(m.shape[-1] for m in levels)
            levels = [F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2])) for m in levels]
            maps[name] = torch.stack(levels).contiguous(memory_format=self.memory_format)
        ph = max(f.padded_size[0] for f in feats)
        pw = max(f.padded_size[1] for f in feats)
        first = next(iter(maps.values()))
        stand_in = first.new_zeros(()).expand(len(feats), 3, ph, pw)  # only its shape is read
        return maps, ImageList(stand_in, [f.image_size for f in feats])

    def loss_from_features(self, feats: list[BodyFeatures], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """`loss` on cached body maps; targets in the pixels of each feature's input_size."""
        if len(feats) == 0:
            raise ValueError("loss needs at least one image")
        targets = check_targets(targets, self.num_classes)
        maps, batch = self._batch(feats)
        device = next(iter(maps.values())).device
        scaled = []
        for f, t in zip(feats, targets):
            t = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()}
            if f.image_size != f.input_size:  # the transform resized the image: move the boxes with it
                ry, rx = f.image_size[0] / f.input_size[0], f.image_size[1] / f.input_size[1]
                t["boxes"] = t["boxes"] * t["boxes"].new_tensor([rx, ry, rx, ry])
            scaled.append(t)
        return self.compute_loss(self.outputs_from_maps(maps, batch, scaled))

    def predict_features(self, feats: list[BodyFeatures], score_threshold: float | None = None) -> list[Detections]:
        """`predict` on cached body maps: detections in the pixels of each feature's input_size."""
        if not feats:
            return []
        thr = self.default_score_threshold() if score_threshold is None else float(score_threshold)
        with predict_context(self, amp=self.amp, cpu_bf16=self.cpu_bf16) as device:  # type: ignore[arg-type]
            maps, batch = self._batch([f.to(device) for f in feats])
            return self._postprocess(self.outputs_from_maps(maps, batch, None), [f.input_size for f in feats], thr)
