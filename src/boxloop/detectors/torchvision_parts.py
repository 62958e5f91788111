"""Pieces the detectors built on torchvision's detection models (faster_rcnn, retinanet) share.

Written by hand: the backbone option defaults made explicit (so a detector's `config` records
them), the names of the feature maps a backbone returns (found by one tiny forward pass),
input checks moved to a device, and the bounded, optionally hardest-first choice of negatives
(HardNegatives, the TF HardExampleMiner rule). Input checks themselves are boxloop.detectors.common.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from boxloop.detectors.common import check_targets, prepare_images

__all__ = ["resolve_backbone_options", "feature_names", "prepare_inputs", "select_negatives", "bounded_num_negatives"]


def resolve_backbone_options(
    pretrained: bool | str | Path, trainable_layers: int | None, freeze_bn: bool | None
) -> tuple[bool | str, int, bool]:
    """The defaults build_backbone would pick, made explicit so that `config` records them."""
    has_weights = bool(pretrained) and str(pretrained).lower() != "false"
    if trainable_layers is None:
        trainable_layers = 3 if has_weights else 5
    if freeze_bn is None:
        freeze_bn = has_weights
    return (str(pretrained) if isinstance(pretrained, Path) else pretrained), trainable_layers, freeze_bn


@torch.no_grad()
def feature_names(backbone: nn.Module, probe_size: int = 128) -> list[str]:
    """Names of the feature maps the backbone returns, found by one tiny forward pass (the
    anchor generator needs one size tuple per level, the RoI pooler the level names)."""
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        out = backbone(torch.zeros(1, 3, probe_size, probe_size, device=device))
    finally:
        backbone.train(was_training)
    if isinstance(out, Tensor):
        return ["0"]
    return list(out.keys())


def prepare_inputs(
    images: list[Tensor], targets: list[dict[str, Tensor]], num_classes: int, device: torch.device
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """common.prepare_images + check_targets, moved to `device`."""
    images = [im.to(device) for im in prepare_images(images)]
    targets = [{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in t.items()}
               for t in check_targets(targets, num_classes, images)]
    return images, targets


def select_negatives(
    neg_idx: Tensor,
    num_neg: int,
    hardness: Tensor | None,
) -> Tensor:
    """`num_neg` of the candidate negatives: the hardest by `hardness` (OHEM) or a random subset."""
    if num_neg >= neg_idx.numel():
        return neg_idx
    if hardness is not None:
        return neg_idx[torch.topk(hardness, num_neg).indices]
    return neg_idx[torch.randperm(neg_idx.numel(), device=neg_idx.device)[:num_neg]]


def bounded_num_negatives(
    num_pos: int, available: int, room: int, max_negatives_per_positive: float | None, min_negatives_per_image: int
) -> int:
    """HardNegatives / TF HardExampleMiner rule: at most max(ratio * positives, min per image) negatives."""
    num = min(available, room)
    if max_negatives_per_positive is not None:
        num = min(num, max(int(math.floor(max_negatives_per_positive * num_pos)), min_negatives_per_image))
    return max(num, 0)
