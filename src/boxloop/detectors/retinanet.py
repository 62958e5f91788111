"""RetinaNet (FineGrainedAL's one-stage baseline) behind boxloop's Detector protocol.

torchvision builds the network: `RetinaNet` (transform, `RetinaNetHead`, `AnchorGenerator`,
`Matcher`, `BoxCoder`), with `sigmoid_focal_loss` and `batched_nms`; the FPN comes from
boxloop.detectors.backbones, input checks and the Detections conversion from
boxloop.detectors.common. Written by hand here:

- `loss()`: torchvision's `RetinaNet.compute_loss` re-done per anchor so that a box's weight
  multiplies the focal classification loss and the box-regression loss of every anchor matched to
  it (background anchors weigh 1). Anchors matched to a box of weight 0 are ignored, like anchors
  between the IoU thresholds. Normalisation stays torchvision's: per image, the number of foreground
  anchors (those of weight-0 boxes not counted). With every weight 1 and the options off it equals
  torchvision's loss (tests/test_retinanet.py).
  Negatives (HardNegatives), off by default because the focal loss already down-weights easy ones:
  `max_negatives_per_positive` keeps per image only the hardest background anchors by focal loss,
  at most ratio x foreground anchors but at least `min_negatives_per_image` (SSD-style hard
  negative mining; an image with no boxes then contributes exactly `min_negatives_per_image`).
- `predict()`: torchvision's post-processing, keeping the anchor each kept box came from, so each
  box carries the sigmoid scores of all classes at that anchor (`class_probs`) and the FPN feature
  vector at the anchor's cell (`features`, D = the FPN's out_channels).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops, generalized_box_iou_loss, sigmoid_focal_loss

from boxloop.detectors.backbones import build_backbone
from boxloop.detectors.base import TorchDetector
from boxloop.detectors.common import scale_boxes, to_detections
from boxloop.detectors.torchvision_parts import (
    bounded_num_negatives,
    feature_names,
    prepare_inputs,
    resolve_backbone_options,
)
from boxloop.structures import Detections

__all__ = ["RetinaNetDetector", "build_retinanet"]

_BOX_LOSSES = ("l1", "smooth_l1", "giou")


class RetinaNetDetector(TorchDetector):
    """torchvision RetinaNet (as `.model`) with weighted losses and rich predictions."""

    has_loc_quality = False

    def __init__(
        self,
        model: RetinaNet,
        num_classes: int,
        config: dict[str, Any],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss: str = "l1",
        max_negatives_per_positive: float | None = None,
        min_negatives_per_image: int = 0,
        amp: bool = True,
    ) -> None:
        super().__init__(model, num_classes, config, int(model.backbone.out_channels), max_negatives_per_positive,
                         min_negatives_per_image, amp)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_loss = box_loss

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _forward_features(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None):
        image_list, targets = self.model.transform(images, targets)
        features = self.model.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        feats = list(features.values())
        head_outputs = self.model.head(feats)
        anchors = self.model.anchor_generator(image_list, feats)
        return image_list, targets, feats, head_outputs, anchors

    # -- training -------------------------------------------------------------------------------
    def match(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
        """Per anchor: matched gt index (-1 background, -2 ignored) and loss weight.

        Anchors matched to a weight-0 box become -2 (ignored)."""
        ignore = self.model.proposal_matcher.BETWEEN_THRESHOLDS
        matched_all, weights_all = [], []
        for anchors_i, t in zip(anchors, targets):
            n = anchors_i.shape[0]
            if t["boxes"].numel() == 0:
                matched_all.append(torch.full((n,), -1, dtype=torch.int64, device=anchors_i.device))
                weights_all.append(torch.ones(n, dtype=torch.float32, device=anchors_i.device))
                continue
            matched = self.model.proposal_matcher(box_ops.box_iou(t["boxes"], anchors_i))
            w = torch.where(matched >= 0, t["weights"][matched.clamp(min=0)], torch.ones(n, device=anchors_i.device))
            matched = torch.where((matched >= 0) & (w == 0), torch.full_like(matched, ignore), matched)
            matched_all.append(matched)
            weights_all.append(w)
        return matched_all, weights_all

    def loss(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted RetinaNet losses: classification (focal) and bbox_regression (sum them)."""
        images, targets = prepare_inputs(images, targets, self.num_classes, self.device)
        _, targets, _, head_outputs, anchors = self._forward_features(images, targets)
        matched, weights = self.match(anchors, targets)
        return self.compute_loss(targets, head_outputs, anchors, matched, weights)

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched: list[Tensor],
        weights: list[Tensor],
    ) -> dict[str, Tensor]:
        """Focal + box loss per image from matched anchors; averaged over images as torchvision."""
        ignore = self.model.proposal_matcher.BETWEEN_THRESHOLDS
        box_coder = self.model.box_coder
        cls_losses, box_losses = [], []
        for t, logits, deltas, anchors_i, m, w in zip(
            targets, head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors, matched, weights
        ):
            logits = logits.float()
            fg = m >= 0
            num_fg = max(1, int(fg.sum()))
            target = torch.zeros_like(logits)
            target[fg, t["labels"][m[fg]]] = 1.0
            valid = m != ignore
            if self.max_negatives_per_positive is not None:
                valid = valid & self._keep_hard_negatives(logits, target, fg, valid)
            per_anchor = sigmoid_focal_loss(logits[valid], target[valid], alpha=self.focal_alpha,
                                            gamma=self.focal_gamma, reduction="none").sum(1)
            cls_losses.append((per_anchor * w[valid]).sum() / num_fg)

            fg_idx = torch.where(fg)[0]
            gt = t["boxes"][m[fg_idx]]
            pred = deltas[fg_idx].float()
            if self.box_loss == "giou":
                per_box = generalized_box_iou_loss(box_coder.decode_single(pred, anchors_i[fg_idx]), gt,
                                                   reduction="none")
            else:
                enc = box_coder.encode_single(gt, anchors_i[fg_idx])
                fn = F.l1_loss if self.box_loss == "l1" else F.smooth_l1_loss
                per_box = fn(pred, enc, reduction="none").sum(1)
            box_losses.append((per_box * w[fg_idx]).sum() / num_fg)
        n = len(targets)
        return {"classification": sum(cls_losses) / n, "bbox_regression": sum(box_losses) / n}

    def _keep_hard_negatives(self, logits: Tensor, target: Tensor, fg: Tensor, valid: Tensor) -> Tensor:
        """Mask keeping every non-background anchor and the hardest background ones (HardNegatives)."""
        neg = torch.where(valid & ~fg)[0]
        num_neg = bounded_num_negatives(int(fg.sum()), neg.numel(), neg.numel(),
                                        self.max_negatives_per_positive, self.min_negatives_per_image)
        keep = ~(valid & ~fg)
        if num_neg > 0:
            with torch.no_grad():
                hardness = sigmoid_focal_loss(logits[neg], target[neg], alpha=self.focal_alpha,
                                              gamma=self.focal_gamma, reduction="none").sum(1)
            keep[neg[torch.topk(hardness, num_neg).indices]] = True
        return keep

    # -- inference ------------------------------------------------------------------------------
    def default_score_threshold(self) -> float:
        return float(self.model.score_thresh)

    def predict_prepared(self, images: list[Tensor], original: list[tuple[int, int]],
                         score_threshold: float) -> list[Detections]:
        """`class_probs`: the sigmoid of every class logit at the anchor a box came from (independent
        per class, so rows need not sum to 1; `scores[i] == class_probs[i, labels[i]]`). `features`:
        the FPN feature vector at that anchor's cell on its level ((N, out_channels))."""
        image_list, _, feats, head_outputs, anchors = self._forward_features(images, None)
        return self._postprocess(image_list, feats, head_outputs, anchors, original, score_threshold)

    def _postprocess(
        self,
        image_list: ImageList,
        feats: list[Tensor],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        original_sizes: list[tuple[int, int]],
        score_threshold: float,
    ) -> list[Detections]:
        """RetinaNet.postprocess_detections, keeping the anchor (and so the cell) of each box."""
        model = self.model
        c = self.num_classes
        hw = [f.shape[-2] * f.shape[-1] for f in feats]
        a = head_outputs["cls_logits"].shape[1] // sum(hw)
        per_level = [n * a for n in hw]
        out = []
        for i, (size, orig) in enumerate(zip(image_list.image_sizes, original_sizes)):
            logits = head_outputs["cls_logits"][i].float().split(per_level)
            deltas = head_outputs["bbox_regression"][i].float().split(per_level)
            anchors_i = anchors[i].split(per_level)
            boxes, scores, labels, probs, vecs = [], [], [], [], []
            for lvl, (lg, dl, an) in enumerate(zip(logits, deltas, anchors_i)):
                p = torch.sigmoid(lg)
                flat = p.flatten()
                idx = torch.where(flat > score_threshold)[0]
                top = flat[idx].topk(min(model.topk_candidates, idx.numel()))
                idx = idx[top.indices]
                anchor_idx = torch.div(idx, c, rounding_mode="floor")
                b = model.box_coder.decode_single(dl[anchor_idx], an[anchor_idx])
                boxes.append(box_ops.clip_boxes_to_image(b, size))
                scores.append(top.values)
                labels.append(idx % c)
                probs.append(p[anchor_idx])
                cell = torch.div(anchor_idx, a, rounding_mode="floor")
                fmap = feats[lvl][i]  # (D, H, W)
                w = fmap.shape[-1]
                vecs.append(fmap[:, torch.div(cell, w, rounding_mode="floor"), cell % w].T.float())
            boxes_t, scores_t, labels_t = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = box_ops.batched_nms(boxes_t, scores_t, labels_t, model.nms_thresh)[: model.detections_per_img]
            out.append(to_detections(scale_boxes(boxes_t[keep], size, orig), labels_t[keep], scores_t[keep],
                                     torch.cat(probs)[keep], orig, features=torch.cat(vecs)[keep]))
        return out


def build_retinanet(
    num_classes: int,
    backbone: str = "efficientnet_lite0",
    pretrained_backbone: bool | str | Path = True,
    min_size: int | tuple[int, ...] = 512,
    max_size: int = 853,
    fpn_channels: int = 256,
    trainable_layers: int | None = None,
    freeze_bn: bool | None = None,
    returned_layers: tuple[int, ...] = (2, 3, 4),
    anchor_sizes: tuple[int, ...] | None = None,
    scales_per_octave: int = 3,
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.4,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    box_loss: str = "l1",
    max_negatives_per_positive: float | None = None,
    min_negatives_per_image: int = 0,
    amp: bool = True,
) -> RetinaNetDetector:
    """RetinaNet over `backbone`: FPN on strides 8..32 plus P6/P7 (64, 128) by default.

    Backbone options go to boxloop.detectors.backbones.build_backbone. `anchor_sizes`: base size
    per FPN level (default 32, 64, ... for as many levels as the backbone returns), each with
    `scales_per_octave` scales 2**(k/n) and `aspect_ratios`. `box_loss`: 'l1' (torchvision v1),
    'smooth_l1' or 'giou' (v2). Negatives: see the module docstring. `amp`: float16 autocast in
    predict() on CUDA. `config` records every argument resolved; `create_detector(**config)`
    rebuilds the same architecture.
    """
    pretrained_backbone, trainable_layers, freeze_bn = resolve_backbone_options(
        pretrained_backbone, trainable_layers, freeze_bn)
    returned_layers = tuple(returned_layers)
    aspect_ratios = tuple(aspect_ratios)
    anchor_sizes = None if anchor_sizes is None else tuple(anchor_sizes)
    config: dict[str, Any] = {"name": "retinanet", **locals()}
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if box_loss not in _BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {_BOX_LOSSES}, got {box_loss!r}")
    if max_negatives_per_positive is not None and max_negatives_per_positive < 0:
        raise ValueError(f"max_negatives_per_positive must be >= 0 or None, got {max_negatives_per_positive}")
    if min_negatives_per_image < 0:
        raise ValueError(f"min_negatives_per_image must be >= 0, got {min_negatives_per_image}")

    body = build_backbone(backbone, pretrained=pretrained_backbone, fpn_channels=fpn_channels,
                          trainable_layers=trainable_layers, returned_layers=returned_layers,
                          extra_blocks="p6p7", freeze_bn=freeze_bn)
    names = feature_names(body)
    if anchor_sizes is None:
        anchor_sizes = tuple(32 * 2**i for i in range(len(names)))
    if len(anchor_sizes) != len(names):
        raise ValueError(
            f"anchor_sizes has {len(anchor_sizes)} entries but backbone {backbone!r} returns {len(names)} "
            f"feature maps ({names}); give one size per level"
        )
    sizes = tuple(tuple(int(s * 2 ** (k / scales_per_octave)) for k in range(scales_per_octave)) for s in anchor_sizes)
    anchor_gen = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
    model = RetinaNet(
        body,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=body.image_mean,
        image_std=body.image_std,
        anchor_generator=anchor_gen,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        topk_candidates=topk_candidates,
    )
    model.head.regression_head._loss_type = box_loss  # so torchvision's own forward agrees with ours
    return RetinaNetDetector(
        model,
        num_classes=num_classes,
        config=config,
        focal_alpha=focal_alpha,
        focal_gamma=focal_gamma,
        box_loss=box_loss,
        max_negatives_per_positive=max_negatives_per_positive,
        min_negatives_per_image=min_negatives_per_image,
        amp=amp,
    )
