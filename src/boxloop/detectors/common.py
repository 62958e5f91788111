"""Helpers every boxloop detector shares: input checks, target conversion, the predict context,
mapping boxes back to original pixels, per-box feature pooling and tensors -> `Detections`.

Written here: validation with clear messages, label shifting, the no-grad/AMP context and the
conversion to boxloop's numpy `Detections`. torchvision does the RoI pooling
(`ops.MultiScaleRoIAlign`) and box clipping.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, clip_boxes_to_image

from boxloop.structures import Boxes, Detections

log = logging.getLogger("boxloop")

__all__ = [
    "box_features",
    "check_targets",
    "cpu_bf16_supported",
    "predict_context",
    "prepare_images",
    "scale_boxes",
    "to_detections",
    "to_torchvision_targets",
]


def prepare_images(images: Sequence[Tensor]) -> list[Tensor]:
    """Float CHW RGB in [0, 1]: grayscale is repeated to 3 channels, an alpha channel dropped.

    Integer tensors (uint8 / uint16 straight from a decoder) are scaled by their dtype's maximum.
    """
    out: list[Tensor] = []
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.ndim != 3:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"image {i}: expected a CHW tensor, got {shape}")
        if not img.is_floating_point():
            maxval = 65535.0 if img.dtype in (torch.int32, torch.uint16) else float(torch.iinfo(img.dtype).max)
            img = img.float() / maxval
        c = img.shape[0]
        if c == 1:
            img = img.expand(3, -1, -1)
        elif c == 4:
            img = img[:3]
        elif c != 3:
            raise ValueError(f"image {i}: expected 1, 3 or 4 channels, got {c} (shape {tuple(img.shape)})")
        if img.shape[1] < 1 or img.shape[2] < 1:
            raise ValueError(f"image {i}: empty image of shape {tuple(img.shape)}")
        out.append(img)
    return out


def check_targets(targets: Sequence[dict[str, Tensor]], num_classes: int,
                  images: Sequence[Tensor] | None = None) -> list[dict[str, Tensor]]:
    """Validate boxloop targets (labels 0..C-1) and fill `weights` (default 1) as float.

    Degenerate boxes (zero width/height) are an error naming the image and box, because torchvision
    asserts on them deep inside its transform with a less helpful message.
    """
    if images is not None and len(images) != len(targets):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    out: list[dict[str, Tensor]] = []
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"target {i}: needs 'boxes' (N, 4) and 'labels' (N,), has keys {sorted(t)}")
        boxes = t["boxes"].to(torch.float32).reshape(-1, 4) if t["boxes"].numel() == 0 else t["boxes"].float()
        labels = t["labels"].to(torch.int64).reshape(-1)
        n = boxes.shape[0]
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"target {i}: boxes must be (N, 4), got {tuple(t['boxes'].shape)}")
        if labels.shape[0] != n:
            raise ValueError(f"target {i}: {n} boxes but {labels.shape[0]} labels")
        if n and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"target {i}: labels must lie in 0..{num_classes - 1}, got "
                             f"{int(labels.min())}..{int(labels.max())}")
        if n and not torch.isfinite(boxes).all():
            raise ValueError(f"target {i}: boxes contain NaN or inf")
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bad.any():
            j = int(torch.nonzero(bad)[0])
            raise ValueError(f"target {i}: box {j} {boxes[j].tolist()} has no area (need x1 > x0 and y1 > y0)")
        w = t.get("weights")
        if w is None:
            w = torch.ones(n, dtype=torch.float32, device=boxes.device)
        else:
            w = w.to(torch.float32).reshape(-1)
            if w.shape[0] != n:
                raise ValueError(f"target {i}: {n} boxes but {w.shape[0]} weights")
            if n and (not torch.isfinite(w).all() or w.min() < 0):
                raise ValueError(f"target {i}: weights must be finite and >= 0")
        out.append({**t, "boxes": boxes, "labels": labels, "weights": w})
    return out


def to_torchvision_targets(targets: Sequence[dict[str, Tensor]], label_offset: int = 1) -> list[dict[str, Tensor]]:
    """boxloop labels 0..C-1 -> torchvision's 1..C (index 0 is background there); other keys kept."""
    return [{**t, "labels": t["labels"] + label_offset} for t in targets]


_BF16_FALLBACK_SAID = False


def cpu_bf16_supported() -> bool:
    """True where oneDNN runs bfloat16 natively (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_cpu_bf16(wanted: bool) -> bool:
    """Whether to autocast CPU inference to bfloat16; says once, in one line, when it falls back."""
    global _BF16_FALLBACK_SAID
    if not wanted:
        return False
    if cpu_bf16_supported():
        return True
    if not _BF16_FALLBACK_SAID:
        log.warning("this CPU has no native bfloat16 support: predicting in float32 instead")
        _BF16_FALLBACK_SAID = True
    return False


@contextlib.contextmanager
def predict_context(model: torch.nn.Module, amp: bool = True, cpu_bf16: bool = False) -> Iterator[torch.device]:
    """eval mode + no grad (+ float16 autocast on CUDA, + bfloat16 autocast on a CPU that has it
    when `cpu_bf16`) for the duration; restores the training flag after.

    Yields the model's device, so callers move inputs once.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            if amp and device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    yield device
            elif device.type == "cpu" and use_cpu_bf16(cpu_bf16):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    yield device
            else:
                yield device
    finally:
        model.train(was_training)


def scale_boxes(boxes: Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Tensor:
    """Boxes in a resized image's pixels -> another size's pixels (e.g. the original), then clipped."""
    ry = to_hw[0] / from_hw[0]
    rx = to_hw[1] / from_hw[1]
    scale = boxes.new_tensor([rx, ry, rx, ry])
    return clip_boxes_to_image(boxes * scale, (int(to_hw[0]), int(to_hw[1])))


def box_features(features: OrderedDict[str, Tensor], boxes: list[Tensor],
                 image_sizes: list[tuple[int, int]], output_size: int = 1) -> list[Tensor]:
    """A fixed-length (D * output_size**2) vector per box: RoIAlign on the FPN level that fits the box.

    For models whose detections are not tied to one feature cell (Faster R-CNN). Boxes are in the
    coordinates of the (resized) batch that produced `features`.
    """
    names = [k for k in features if k not in ("pool", "p6", "p7")]
    pooler = MultiScaleRoIAlign(names, output_size=output_size, sampling_ratio=2)
    pooled = pooler(features, [b.float() for b in boxes], image_sizes)  # (sum N, D, s, s)
    flat = pooled.flatten(1)
    return list(flat.split([len(b) for b in boxes]))


def to_detections(boxes: Tensor | np.ndarray, labels: Tensor | np.ndarray, scores: Tensor | np.ndarray,
                  class_probs: Tensor | np.ndarray, image_hw: tuple[int, int],
                  loc_quality: Tensor | np.ndarray | None = None,
                  features: Tensor | np.ndarray | None = None) -> Detections:
    """Tensors (any device/dtype) -> boxloop `Detections`; image_hw is the ORIGINAL (height, width)."""

    def np_(x: Tensor | np.ndarray | None) -> np.ndarray | None:
        if x is None or isinstance(x, np.ndarray):
            return x
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()

    h, w = int(image_hw[0]), int(image_hw[1])
    return Detections(
        boxes=Boxes(np_(boxes).reshape(-1, 4), (w, h)),
        labels=np_(labels),
        scores=np_(scores),
        class_probs=np_(class_probs),
        loc_quality=np_(loc_quality),
        features=np_(features),
    )
