"""Faster R-CNN's predict() post-processing, for either box head, keeping what torchvision drops.

torchvision's `RoIHeads.postprocess_detections` throws away the class-probability vector and the
RoI features; these do its work (box decoding, clipping, score threshold, small-box removal,
per-class `batched_nms`, the detections cap, all torchvision's) while keeping the index of the
RoI each box came from, so that a box carries its RoI's class probabilities and box-head features.
Written by hand: that bookkeeping, and for the interval head (CertaintySSOD) the decoding of one
class-agnostic box per RoI with its localization quality v and NMS ranked by p*v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from boxloop.detectors.common import scale_boxes, to_detections
from boxloop.detectors.interval import IntervalBoxHead, localization_quality
from boxloop.structures import Detections

__all__ = ["postprocess_standard", "postprocess_interval"]


def postprocess_standard(
    heads: RoIHeads,
    num_classes: int,
    class_logits: Tensor,
    box_regression: Tensor,
    rep: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
    score_threshold: float,
) -> list[Detections]:
    """RoIHeads.postprocess_detections, keeping the RoI index of every kept box."""
    c = num_classes
    counts = [p.shape[0] for p in proposals]
    pred_boxes = heads.box_coder.decode(box_regression, proposals)  # (R, C+1, 4)
    probs = F.softmax(class_logits, -1)
    out = []
    for boxes, scores, feats, size, orig in zip(
        pred_boxes.split(counts), probs.split(counts), rep.split(counts), image_sizes, original_sizes
    ):
        r = scores.shape[0]
        boxes = box_ops.clip_boxes_to_image(boxes, size)[:, 1:].reshape(-1, 4)
        fg = scores[:, 1:]
        flat = fg.reshape(-1)
        roi = torch.arange(r, device=flat.device).repeat_interleave(c)
        lab = torch.arange(c, device=flat.device).repeat(r)
        keep = torch.where(flat > score_threshold)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
        keep = keep[box_ops.batched_nms(boxes[keep], flat[keep], lab[keep], heads.nms_thresh)]
        keep = keep[: heads.detections_per_img]
        k_roi = roi[keep]
        out.append(to_detections(scale_boxes(boxes[keep], size, orig), lab[keep], flat[keep], fg[k_roi], orig,
                                 features=feats[k_roi]))
    return out


def postprocess_interval(
    heads: RoIHeads,
    num_classes: int,
    class_logits: Tensor,
    side_logits: Tensor,
    side_offsets: Tensor,
    rep: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
    score_threshold: float,
) -> list[Detections]:
    """Like `postprocess_standard`, for the interval head: one class-agnostic box per RoI decoded from
    the argmax interval of each side, v per RoI, NMS (per class) ranked by p*v."""
    head: IntervalBoxHead = heads.box_predictor
    c = num_classes
    counts = [p.shape[0] for p in proposals]
    all_props = torch.cat(proposals).float()
    pred_boxes = head.coder.decode(side_logits, side_offsets, all_props)  # (R, 4)
    quality = localization_quality(side_logits)  # (R,)
    probs = F.softmax(class_logits, -1)
    out = []
    for boxes, scores, v, feats, size, orig in zip(pred_boxes.split(counts), probs.split(counts),
                                                   quality.split(counts), rep.split(counts), image_sizes,
                                                   original_sizes):
        r = scores.shape[0]
        boxes = box_ops.clip_boxes_to_image(boxes, size)
        fg = scores[:, 1:]
        flat = fg.reshape(-1)
        roi = torch.arange(r, device=flat.device).repeat_interleave(c)
        lab = torch.arange(c, device=flat.device).repeat(r)
        keep = torch.where(flat > score_threshold)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[roi[keep]], min_size=1e-2)]
        certainty = flat[keep] * v[roi[keep]]
        keep = keep[box_ops.batched_nms(boxes[roi[keep]], certainty, lab[keep], heads.nms_thresh)]
        keep = keep[: heads.detections_per_img]  # batched_nms returns descending p*v
        k_roi = roi[keep]
        out.append(to_detections(scale_boxes(boxes[k_roi], size, orig), lab[keep], flat[keep], fg[k_roi], orig,
                                 loc_quality=v[k_roi], features=feats[k_roi]))
    return out
