"""fcos_lite: the CPU-first default detector. FCOS on the offline Lite0 with a light neck and head.

Why: on 2 CPU cores the default `fcos` spent most of its time in a 128-channel FPN and two 4-conv
GroupNorm towers run on five levels (5.1 of its 7.2 GFLOPs at 320 px). This model keeps the same
pretrained backbone and the same FCOS machinery (assignment, box coding, per-box weights, ignored
boxes, bounded negatives, the batched postprocess that keeps class vectors, quality and features:
all inherited from `FCOSDetector`), and replaces the rest, in the manner of NanoDet and PicoDet:
- three levels (strides 8, 16, 32), no P6/P7: objects above 128 px go to the last level;
- neck: 1x1 lateral convs to `channels` (no norm, as torchvision's FPN), then a parameter-free PAN
  (top-down and bottom-up by resize-and-add, NanoDet v1's PAN);
- head: a classification tower and a box tower, each shared across levels (GFL) and made of
  depthwise-separable convs with GroupNorm; 1x1 convs predict C class logits from the first,
  4 distances and 1 quality logit from the second; a learnable scale per level multiplies the
  distances (FCOS / GFL). The box term of the loss weighs 2 (GFL's GIoU weight).
  GroupNorm, not BatchNorm: measured here (1 thread, 8x96x30x40), BatchNorm's training backward
  on channels_last tensors took 19 ms against GroupNorm's 2.6 ms (4 ms on contiguous tensors);
  GroupNorm also does not mix the levels' statistics in a shared head;
- the pretrained backbone is frozen by default (`trainable_layers=0`): on 2 CPU cores the backward
  through its depthwise stages cost more than the rest of a step, and on BCCD (30 epochs) the
  frozen backbone reached a higher validation mAP50 than 1 or 3 trainable levels (0.80 against
  0.70 and 0.76), so the neck and head learn on fixed ImageNet features. Frozen stages have their
  BatchNorm folded into the conv before them (exact, since neither changes), and the whole model
  runs in channels_last, which oneDNN's CPU convolutions prefer;
- boxes as distributions (GFL): each side's distance, in strides, is a distribution over the bins
  0..`box_bins` [16] whose expected value is the distance, trained with GFL's distribution focal
  loss beside the GIoU term. On BCCD (15 epochs) it lifted test AP75 from 0.43 to 0.53 and mAP50
  from 0.789 to 0.801 over plain distances (`box_bins=0`, still buildable);
- localization quality trained to mean the IoU: at EVERY location the quality logit is taught the
  IoU of that location's own decoded box with the ground-truth box it overlaps most (0 where it
  overlaps none). It is read by a small MLP off the box tower's features and, as GFLv2's
  distribution-guided quality predictor, off the shape of the four side distributions (top-4
  probabilities and their mean), both detached: a quality loss that reached the box tower cost up
  to 3 points of mAP50. `fcos` trains its IoU branch on the assigned (positive) locations only, so
  where a neighbouring location fires its "predicted IoU" is whatever the branch extrapolates.
  Losses measured on BCCD, 15 epochs, test detections scoring >= 0.3 (`quality_weighting`): GFL's
  quality focal loss ("focal", plain distances) ranked them at Spearman 0.19 against the true IoU
  (its weight |t - q|^2 ignores small errors), plain BCE ("bce") at 0.17, BCE with the boxes that
  fit (IoU > 0.5) weighed 10x ("fit", the default) at 0.42. Since the score is class probability x
  quality, the ranking also lifted test mAP50 from 0.801 ("bce") to 0.873, Platelets from 0.58 to
  0.78. The varifocal loss (`quality_loss="varifocal"`) overestimated the IoU of poorly placed boxes.
  `quality_loss="positives"` trains the quality on the assigned locations only, as `fcos` does
  (BCCD, same recipe, seed 0): it ranked the detections on a labelled box better (Spearman 0.45
  against 0.38) but scored lower on validation (mAP50 0.871 against 0.883), so it is an option,
  not the default.

Written here: the neck, the head, the BN folding and the builder. torchvision supplies FCOS's
transform (resize, normalise, batch), the anchor-point generator and the ops; timm the backbone.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator

from boxloop.detectors.backbones import LITE_MEAN, LITE_STD, lite0_body
from boxloop.detectors.fcos import FCOSDetector

__all__ = ["LitePAN", "LiteHead", "build_fcos_lite"]

STRIDES = (8, 16, 32)
QUALITY_LOSSES = ("own_box_iou", "quality_focal", "varifocal", "positives")
QUALITY_WEIGHTINGS = ("focal", "bce", "fit")
DGQP_TOPK = 4


class LitePAN(nn.Module):
    """1x1 laterals + parameter-free top-down and bottom-up paths; returns an OrderedDict like an FPN."""

    def __init__(self, body: nn.Module, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.body = body
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.out_channels = channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.neck(self.body(x))

    def neck(self, maps: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """Everything after the body (laterals, top-down, bottom-up): what runs on cached body maps."""
        feats = [lat(f) for lat, f in zip(self.laterals, maps.values())]
        for i in range(len(feats) - 1, 0, -1):  # top-down
            feats[i - 1] = feats[i - 1] + F.interpolate(feats[i], size=feats[i - 1].shape[-2:], mode="bilinear",
                                                        align_corners=False)
        for i in range(len(feats) - 1):  # bottom-up
            feats[i + 1] = feats[i + 1] + F.interpolate(feats[i], size=feats[i + 1].shape[-2:], mode="bilinear",
                                                        align_corners=False)
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


def _dw_separable(channels: int, groups: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, each with GroupNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False), nn.GroupNorm(groups, channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 1, bias=False), nn.GroupNorm(groups, channels), nn.ReLU(inplace=True))


class LiteHead(nn.Module):
    """Two towers shared across levels (GFL): classification -> C logits; box -> 4 softplus distances
    (in strides, times a learnable per-level scale) and the quality logit, which is read off the box
    tower because it judges the box (FCOS puts its centerness there too).

    Returns torchvision FCOSHead's dict (`bbox_ctrness` holds the quality logit, the name FCOSDetector
    reads), each flattened to (B, sum of H*W over levels, ...) in level order.
    """

    def __init__(self, channels: int, num_classes: int, levels: int, num_convs: int = 2,
                 prior_prob: float = 0.01, box_bins: int = 16, quality_hidden: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box_bins = int(box_bins)
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 2)
        self.cls_tower = nn.Sequential(*(_dw_separable(channels, groups) for _ in range(num_convs)))
        self.box_tower = nn.Sequential(*(_dw_separable(channels, groups) for _ in range(num_convs)))
        self.cls_out = nn.Conv2d(channels, num_classes, 1)
        if self.box_bins:
            self.box_out = nn.Conv2d(channels, 4 * (self.box_bins + 1), 1)
            # the quality reads the box tower's features and, as GFLv2's distribution-guided quality
            # predictor, the top-4 probabilities of each side's distribution and their mean
            self.quality_mlp = nn.Sequential(nn.Linear(channels + 4 * (DGQP_TOPK + 1), quality_hidden),
                                             nn.ReLU(inplace=True), nn.Linear(quality_hidden, 1))
            self.register_buffer("bin_values", torch.arange(self.box_bins + 1, dtype=torch.float32), persistent=False)
            convs = (self.cls_out, self.box_out)
        else:
            self.box_out = nn.Conv2d(channels, 5, 1)
            self.scales = nn.Parameter(torch.ones(levels))
            convs = (self.cls_out, self.box_out)
        for conv in convs:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        with torch.no_grad():
            self.cls_out.bias.fill_(-math.log((1 - prior_prob) / prior_prob))

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        cls, box, qual = [], [], []
        for f in x:
            cls.append(self.cls_out(self.cls_tower(f)).flatten(2))  # (B, C, H*W)
            t = self.box_tower(f)
            if self.box_bins:
                # distribution logits in float32: their softmax's expected value moved boxes by up
                # to 3 px at stride 32 when the logits were bfloat16
                with torch.autocast(t.device.type, enabled=False):
                    box.append(self.box_out(t.float()).flatten(2))
                # the quality never pulls on the box features: measured on BCCD, a quality loss that
                # reached the box tower cost up to 3 points of mAP50
                qual.append(t.detach().flatten(2))
            else:
                box.append(self.box_out(t).flatten(2))
        cls_t = torch.cat(cls, dim=2).transpose(1, 2)
        box_t = torch.cat(box, dim=2).transpose(1, 2)
        if not self.box_bins:
            sizes = torch.tensor([b.shape[2] for b in box], device=x[0].device)
            scale = torch.repeat_interleave(self.scales, sizes)[None, :, None]  # each level's scale, per location
            return {"cls_logits": cls_t, "bbox_regression": F.softplus(box_t[..., :4] * scale),
                    "bbox_ctrness": box_t[..., 4:]}
        dist = box_t.float().unflatten(-1, (4, self.box_bins + 1))  # (B, L, 4, n + 1)
        probs = dist.softmax(dim=-1)
        sides = (probs * self.bin_values).sum(-1)  # expected distance per side, in strides
        stats = probs.detach().topk(DGQP_TOPK, dim=-1).values
        stats = torch.cat([stats, stats.mean(-1, keepdim=True)], dim=-1).flatten(-2)  # (B, L, 20)
        tower = torch.cat(qual, dim=2).transpose(1, 2).float()  # (B, L, channels)
        quality = self.quality_mlp(torch.cat([tower, stats], dim=-1))
        return {"cls_logits": cls_t, "bbox_regression": sides, "bbox_ctrness": quality, "bbox_distribution": dist}


class LiteFCOSModel(FCOS):
    """torchvision's FCOS container; the batch goes channels_last before the backbone."""

    def __init__(self, *args: Any, channels_last: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channels_last = channels_last


class FCOSLiteDetector(FCOSDetector):
    """FCOSDetector with a quality loss over every location (channels_last inputs: `memory_format`)."""

    def __init__(self, *args: Any, quality_loss: str = "own_box_iou", quality_weighting: str = "fit",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if quality_loss not in QUALITY_LOSSES:
            raise ValueError(f"quality_loss must be one of {', '.join(QUALITY_LOSSES)}, got {quality_loss!r}")
        if quality_weighting not in QUALITY_WEIGHTINGS:
            raise ValueError(f"quality_weighting must be one of {', '.join(QUALITY_WEIGHTINGS)}, "
                             f"got {quality_weighting!r}")
        self.quality_loss = quality_loss
        self.quality_weighting = quality_weighting

    box_loss_weight = 2.0


def build_fcos_lite(
    num_classes: int,
    pretrained_backbone: bool | str | Path = True,
    min_size: int = 320,
    max_size: int = 320,
    channels: int = 128,
    head_convs: int = 2,
    trainable_layers: int | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    center_sampling_radius: float = 1.5,
    max_negatives_per_positive: float | None = None,
    min_negatives_per_image: int = 0,
    topk_candidates: int = 1000,
    channels_last: bool = True,
    fold_frozen_bn: bool = True,
    amp: bool = True,
    cpu_bf16: bool = True,
    backbone: str = "efficientnet_lite0",
    quality_loss: str = "own_box_iou",
    quality_weighting: str = "fit",
    box_bins: int = 16,
) -> FCOSDetector:
    """fcos_lite on the offline Lite0 (P3-P5, strides 8, 16, 32).

    min_size/max_size as for `fcos` (training passes images already at image_size). channels: the
    neck and head width. trainable_layers: backbone levels that train, counted from the top
    (default 0 with weights: the backbone is frozen; 5 without). cpu_bf16: predict in bfloat16 on a CPU that has it
    (training stays float32: bf16 made the backward slower here). box_bins: each box side as a
    distribution over 0..box_bins strides (0: a plain distance). quality_weighting: "fit" (default),
    "bce" or "focal" (see the module docstring). The returned detector's `config` rebuilds it.
    """
    if backbone != "efficientnet_lite0":
        raise ValueError(f"fcos_lite is built on efficientnet_lite0 only, got backbone={backbone!r}; "
                         "use --model fcos for other backbones")
    if channels < 8:
        raise ValueError(f"channels must be >= 8, got {channels}")
    if box_bins < 0:
        raise ValueError(f"box_bins must be >= 0 (0: plain distances), got {box_bins}")
    if head_convs < 1:
        raise ValueError(f"head_convs must be >= 1, got {head_convs}")
    has_weights = bool(pretrained_backbone) and str(pretrained_backbone).lower() != "false"
    if trainable_layers is None:
        trainable_layers = 0 if has_weights else 5
    body, in_channels = lite0_body(pretrained_backbone, levels=(2, 3, 4), trainable_layers=trainable_layers,
                                   freeze_bn=True, fold_frozen=fold_frozen_bn)
    neck = LitePAN(body, in_channels, channels)
    anchor_gen = AnchorGenerator(tuple((s,) for s in STRIDES), ((1.0,),) * len(STRIDES))
    head = LiteHead(channels, num_classes, len(STRIDES), num_convs=head_convs, box_bins=box_bins)
    model = LiteFCOSModel(neck, num_classes, min_size=min_size, max_size=max_size, image_mean=list(LITE_MEAN),
                          image_std=list(LITE_STD), anchor_generator=anchor_gen, head=head,
                          center_sampling_radius=center_sampling_radius, score_thresh=score_thresh,
                          nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                          topk_candidates=topk_candidates, channels_last=channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    config: dict[str, Any] = {
        "name": "fcos_lite", "num_classes": num_classes, "backbone": backbone,
        "pretrained_backbone": str(pretrained_backbone) if isinstance(pretrained_backbone, Path) else pretrained_backbone,
        "min_size": min_size, "max_size": max_size, "channels": channels, "head_convs": head_convs,
        "trainable_layers": trainable_layers, "score_thresh": score_thresh, "nms_thresh": nms_thresh,
        "detections_per_img": detections_per_img, "center_sampling_radius": center_sampling_radius,
        "max_negatives_per_positive": max_negatives_per_positive,
        "min_negatives_per_image": min_negatives_per_image, "topk_candidates": topk_candidates,
        "channels_last": channels_last, "fold_frozen_bn": fold_frozen_bn, "amp": amp, "cpu_bf16": cpu_bf16,
        "quality_loss": quality_loss, "quality_weighting": quality_weighting, "box_bins": box_bins,
    }
    return FCOSLiteDetector(model, num_classes, config, max_negatives_per_positive=max_negatives_per_positive,
                            min_negatives_per_image=min_negatives_per_image, topk_candidates=topk_candidates,
                            amp=amp, cpu_bf16=cpu_bf16, quality_loss=quality_loss,
                            quality_weighting=quality_weighting)
