"""Faster R-CNN with FPN (CertaintySSOD and FineGrainedAL) behind boxloop's Detector protocol.

torchvision builds the network and does the heavy lifting: `FasterRCNN` (transform, RPN head,
anchor generator, proposal filtering, `MultiScaleRoIAlign`, `TwoMLPHead`, `FastRCNNPredictor`),
`BoxCoder`, `Matcher`, `BalancedPositiveNegativeSampler`, `batched_nms`; the FPN backbone comes
from boxloop.detectors.backbones, input checks and the Detections conversion from
boxloop.detectors.common, the helpers it shares with retinanet (backbone option defaults, feature
map names, bounded negatives) from boxloop.detectors.torchvision_parts. Written by hand here:

- `loss()`: the training forward pass, re-assembled from torchvision's parts so that per-box
  `weights` reach every anchor and RoI matched to a box (torchvision's losses take no weights), and
  so that negatives can be bounded (max negatives per positive, min negatives per image, hard
  negatives by loss; HardNegatives). With every weight 1 and the options off it computes exactly
  torchvision's losses (checked in tests/test_faster_rcnn.py).
- `predict()`: our own post-processing (boxloop.detectors.roi_postprocess), because
  `RoIHeads.postprocess_detections` throws away the class-probability vector and the RoI features;
  we keep the index of the RoI each box came from.
- `box_head="interval"` (CertaintySSOD): the RoI box predictor is `interval.IntervalBoxHead` (class
  logits + per-side classification over K intervals + fine offsets, eqs. 3-5) instead of
  torchvision's per-class delta regression. Training encodes each sampled RoI's matched gt box with
  the head's `IntervalBoxCoder`; the losses are loss_classifier, loss_side_cls, loss_side_reg, each
  RoI scaled by its weight. Predict decodes the argmax interval of each side (class-agnostic, one
  box per RoI), fills `loc_quality` with v (eq. 4) and ranks NMS by p*v ("scores p and v drive
  NMS", CertaintySSOD). `scores` stays the class probability p (so `scores == class_probs[i, label]`
  as for the standard head, and `pseudo.certainty_scores` = scores * loc_quality is p*v, not
  p*v*v); boxes come out in p*v order. torchvision's own `model(images, targets)` forward only
  works with the standard head.

Weights, precisely: a gt box's weight multiplies the objectness and box-regression loss of every RPN
anchor and the classification and box-regression loss of every sampled RoI matched to it;
background anchors/RoIs weigh 1. A box of weight 0 gives its matched anchors and RoIs the label
"ignore" before sampling, so they are neither positives nor negatives and take no sample slot.
Losses stay normalised by the number of sampled anchors/RoIs (as torchvision), so weights act as
plain multipliers.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import MultiScaleRoIAlign, boxes as box_ops

from boxloop.detectors.backbones import build_backbone
from boxloop.detectors.base import TorchDetector
from boxloop.detectors.common import to_torchvision_targets
from boxloop.detectors.interval import IntervalBoxHead
from boxloop.detectors.roi_postprocess import postprocess_interval, postprocess_standard
from boxloop.detectors.torchvision_parts import (bounded_num_negatives, feature_names, prepare_inputs,
                                                 resolve_backbone_options, select_negatives)
from boxloop.structures import Detections

__all__ = ["FasterRCNNDetector", "build_faster_rcnn", "BOX_HEADS"]

BOX_HEADS = ("standard", "interval")


# ---------------------------------------------------------------------------------------------
# the detector
# ---------------------------------------------------------------------------------------------


class FasterRCNNDetector(TorchDetector):
    """torchvision FasterRCNN (as `.model`) with weighted losses and rich predictions.

    Labels are boxloop's 0..C-1; torchvision's background index 0 is added and removed here.
    """

    has_loc_quality = False

    def __init__(
        self,
        model: FasterRCNN,
        num_classes: int,
        config: dict[str, Any],
        feature_dim: int,
        max_negatives_per_positive: float | None = None,
        min_negatives_per_image: int = 0,
        hard_negatives: bool = False,
        amp: bool = True,
    ) -> None:
        super().__init__(model, num_classes, config, feature_dim, max_negatives_per_positive, min_negatives_per_image,
                         amp)
        self.hard_negatives = hard_negatives
        # CertaintySSOD's interval head predicts a localization quality per box
        self.interval = isinstance(model.roi_heads.box_predictor, IntervalBoxHead)
        self.has_loc_quality = self.interval

    # -- training -------------------------------------------------------------------------------
    def loss(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted Faster R-CNN losses: loss_objectness, loss_rpn_box_reg, loss_classifier,
        loss_box_reg (sum them to train). Runs in the module's current mode (call .train())."""
        images, targets = prepare_inputs(images, targets, self.num_classes, self.device)
        targets = to_torchvision_targets(targets)  # torchvision's background is label 0
        image_list, targets = self.model.transform(images, targets)
        features = self.model.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        proposals, losses = self._rpn(image_list, features, targets)
        losses.update(self._roi_losses(features, proposals, image_list.image_sizes, targets))
        return losses

    def _rpn(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """torchvision RegionProposalNetwork.forward with per-anchor weights in the loss."""
        rpn = self.model.rpn
        feats = list(features.values())
        objectness, deltas = rpn.head(feats)
        anchors = rpn.anchor_generator(images, feats)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        if targets is None:
            return boxes, {}

        labels, matched_boxes, anchor_weights = [], [], []
        for anchors_i, t in zip(anchors, targets):
            gt, w = t["boxes"], t["weights"]
            n = anchors_i.shape[0]
            if gt.numel() == 0:
                labels.append(torch.zeros(n, dtype=torch.float32, device=anchors_i.device))
                matched_boxes.append(torch.zeros_like(anchors_i))
                anchor_weights.append(torch.ones(n, dtype=torch.float32, device=anchors_i.device))
                continue
            matched = rpn.proposal_matcher(rpn.box_similarity(gt, anchors_i))
            idx = matched.clamp(min=0)
            lab = (matched >= 0).to(torch.float32)
            lab[matched == rpn.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
            lab[matched == rpn.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            aw = torch.where(matched >= 0, w[idx], torch.ones_like(w[idx]))
            lab[(matched >= 0) & (aw == 0)] = -1.0  # weight 0: neither positive nor negative
            labels.append(lab)
            matched_boxes.append(gt[idx])
            anchor_weights.append(aw)
        regression_targets = rpn.box_coder.encode(matched_boxes, anchors)

        pos, neg = rpn.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos, dim=0))[0]
        neg = torch.where(torch.cat(neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        objectness = objectness.flatten().float()
        labels_all = torch.cat(labels, dim=0)
        reg_all = torch.cat(regression_targets, dim=0)
        w_all = torch.cat(anchor_weights, dim=0)
        denom = max(1, sampled.numel())
        box_loss = F.smooth_l1_loss(deltas[pos].float(), reg_all[pos], beta=1 / 9, reduction="none").sum(1)
        box_loss = (box_loss * w_all[pos]).sum() / denom
        obj_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels_all[sampled], reduction="none")
        obj_loss = (obj_loss * w_all[sampled]).sum() / denom
        return boxes, {"loss_objectness": obj_loss, "loss_rpn_box_reg": box_loss}

    def _match_proposals(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per proposal: matched gt index, label (0 background, -1 ignore, 1..C) and weight."""
        heads = self.model.roi_heads
        matched_idxs, labels, weights = [], [], []
        for props, t in zip(proposals, targets):
            gt, gl, gw = t["boxes"], t["labels"], t["weights"]
            n = props.shape[0]
            if gt.numel() == 0:
                matched_idxs.append(torch.zeros(n, dtype=torch.int64, device=props.device))
                labels.append(torch.zeros(n, dtype=torch.int64, device=props.device))
                weights.append(torch.ones(n, dtype=torch.float32, device=props.device))
                continue
            matched = heads.proposal_matcher(box_ops.box_iou(gt, props))
            idx = matched.clamp(min=0)
            lab = gl[idx].clone()
            lab[matched == heads.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
            lab[matched == heads.proposal_matcher.BETWEEN_THRESHOLDS] = -1
            w = torch.where(lab > 0, gw[idx], torch.ones_like(gw[idx]))
            lab[(lab > 0) & (w == 0)] = -1  # weight 0: its RoIs are ignored, not background
            matched_idxs.append(idx)
            labels.append(lab)
            weights.append(w)
        return matched_idxs, labels, weights

    def _sample(
        self,
        labels: list[Tensor],
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[Tensor]:
        """Indices of the RoIs that enter the loss, per image.

        Options off: torchvision's BalancedPositiveNegativeSampler, unchanged. Otherwise positives
        are sampled as torchvision does and the negatives are bounded (HardNegatives) and, with
        `hard_negatives`, chosen by their current classification loss (OHEM, Shrivastava et al.
        2016; computed without grad over all candidate negatives).
        """
        heads = self.model.roi_heads
        if self.max_negatives_per_positive is None and not self.hard_negatives:
            pos, neg = heads.fg_bg_sampler(labels)
            return [torch.where(p | n)[0] for p, n in zip(pos, neg)]

        hardness: list[Tensor | None] = [None] * len(labels)
        if self.hard_negatives:
            with torch.no_grad():
                neg_props = [p[lab == 0] for p, lab in zip(proposals, labels)]
                logits = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, neg_props, image_sizes)))[0]
                bg_loss = F.cross_entropy(logits.float(), torch.zeros(logits.shape[0], dtype=torch.long,
                                                                      device=logits.device), reduction="none")
                hardness = list(bg_loss.split([p.shape[0] for p in neg_props]))

        sampler = heads.fg_bg_sampler
        out = []
        for lab, hard in zip(labels, hardness):
            pos_idx = torch.where(lab >= 1)[0]
            neg_idx = torch.where(lab == 0)[0]
            num_pos = min(int(sampler.batch_size_per_image * sampler.positive_fraction), pos_idx.numel())
            pos_sel = pos_idx[torch.randperm(pos_idx.numel(), device=pos_idx.device)[:num_pos]]
            num_neg = bounded_num_negatives(num_pos, neg_idx.numel(), sampler.batch_size_per_image - num_pos,
                                            self.max_negatives_per_positive, self.min_negatives_per_image)
            out.append(torch.cat([pos_sel, select_negatives(neg_idx, num_neg, hard)]))
        return out

    def _roi_losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        heads = self.model.roi_heads
        proposals = [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets)]  # gt as proposals
        matched_idxs, labels, weights = self._match_proposals(proposals, targets)
        sampled = self._sample(labels, features, proposals, image_sizes)
        reg_targets = []
        for i, keep in enumerate(sampled):
            proposals[i] = proposals[i][keep]
            labels[i] = labels[i][keep]
            weights[i] = weights[i][keep]
            gt = targets[i]["boxes"]
            if gt.numel() == 0:
                gt = torch.zeros((1, 4), dtype=proposals[i].dtype, device=proposals[i].device)
            reg_targets.append(gt[matched_idxs[i][keep]])
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_sizes))
        if self.interval:
            head: IntervalBoxHead = heads.box_predictor
            bins, offsets = head.coder.encode(torch.cat(reg_targets).float(), torch.cat(proposals).float())
            class_logits, side_logits, side_offsets = head(box_features)
            return head.loss(class_logits.float(), side_logits.float(), side_offsets.float(), torch.cat(labels),
                             bins, offsets, torch.cat(weights))
        reg_targets = heads.box_coder.encode(reg_targets, proposals)

        class_logits, box_regression = heads.box_predictor(box_features)
        labels_all = torch.cat(labels)
        weights_all = torch.cat(weights)
        reg_all = torch.cat(reg_targets)
        denom = max(1, labels_all.numel())
        cls = F.cross_entropy(class_logits.float(), labels_all, reduction="none")
        loss_classifier = (cls * weights_all).sum() / denom
        pos = torch.where(labels_all > 0)[0]
        box_regression = box_regression.reshape(box_regression.shape[0], self.num_classes + 1, 4)
        box = F.smooth_l1_loss(box_regression[pos, labels_all[pos]].float(), reg_all[pos], beta=1 / 9,
                               reduction="none").sum(1)
        loss_box_reg = (box * weights_all[pos]).sum() / denom
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    # -- inference ------------------------------------------------------------------------------
    def default_score_threshold(self) -> float:
        return float(self.model.roi_heads.score_thresh)

    def predict_prepared(self, images: list[Tensor], original: list[tuple[int, int]],
                         score_threshold: float) -> list[Detections]:
        """`class_probs` is the softmax over background + C classes of the RoI a box came from, with
        the background column dropped and NOT renormalised (rows sum to 1 - p(background)), so that
        `scores[i] == class_probs[i, labels[i]]` as in torchvision. `features` is the box head's
        TwoMLPHead representation of that RoI ((N, feature_dim)). One RoI may yield boxes of
        several classes (per-class NMS, as torchvision). With the interval head, `loc_quality` is v
        (eq. 4) of the box's RoI, NMS ranks by p*v, the threshold applies to p (`scores`), boxes come
        in descending p*v."""
        thr = score_threshold
        image_list, _ = self.model.transform(images)
        features = self.model.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = self._rpn(image_list, features, None)
        heads = self.model.roi_heads
        rep = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))
        if self.interval:
            class_logits, side_logits, side_offsets = heads.box_predictor(rep)
            return postprocess_interval(heads, self.num_classes, class_logits.float(), side_logits.float(),
                                        side_offsets.float(), rep, proposals, image_list.image_sizes, original, thr)
        class_logits, box_regression = heads.box_predictor(rep)
        return postprocess_standard(heads, self.num_classes, class_logits.float(), box_regression.float(), rep,
                                    proposals, image_list.image_sizes, original, thr)


def build_faster_rcnn(
    num_classes: int,
    backbone: str = "efficientnet_lite0",
    pretrained_backbone: bool | str | Path = True,
    min_size: int | tuple[int, ...] = 512,
    max_size: int = 853,
    fpn_channels: int = 256,
    trainable_layers: int | None = None,
    freeze_bn: bool | None = None,
    returned_layers: tuple[int, ...] = (1, 2, 3, 4),
    anchor_sizes: tuple[int, ...] | None = None,
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    representation_size: int = 1024,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    box_batch_size_per_image: int = 512,
    box_positive_fraction: float = 0.25,
    max_negatives_per_positive: float | None = None,
    min_negatives_per_image: int = 0,
    hard_negatives: bool = False,
    amp: bool = True,
    box_head: str = "standard",
    num_intervals: int = 30,
    interval_side_range: float = 0.5,
) -> FasterRCNNDetector:
    """Faster R-CNN + FPN (strides 4..32 plus torchvision's max-pool level) over `backbone`.

    Backbone options go to boxloop.detectors.backbones.build_backbone (`trainable_layers`,
    `freeze_bn` default as there: 3 / frozen BN with weights, 5 / live BN without).
    `min_size` may be a tuple: torchvision then picks one at random per training batch (scale
    jitter). `anchor_sizes`: one size per FPN level (default 32, 64, 128, ... for as many levels as
    the backbone returns). `representation_size` is the box head's width and so `feature_dim`.
    Negatives (HardNegatives, all off by default): `max_negatives_per_positive` caps the sampled
    background RoIs per image at ratio x sampled positives, but at least `min_negatives_per_image`
    (so an image with no boxes trains on exactly that many background RoIs: keep it > 0);
    `hard_negatives` picks the background RoIs by highest current classification loss (OHEM)
    instead of at random. The RPN keeps torchvision's balanced sampler. `amp`: float16 autocast in
    predict() on CUDA. `box_head`: "standard" (torchvision's FastRCNNPredictor, per-class box
    deltas) or "interval" (CertaintySSOD's IntervalBoxHead with `num_intervals` [K=30] per side over
    `interval_side_range` [0.5] x the proposal size either side; fills loc_quality). `config` records every argument resolved; rebuild with
    `create_detector(**config)` (pretrained_backbone=False skips reading ImageNet weights when a
    checkpoint follows).
    """
    pretrained_backbone, trainable_layers, freeze_bn = resolve_backbone_options(
        pretrained_backbone, trainable_layers, freeze_bn)
    returned_layers = tuple(returned_layers)
    aspect_ratios = tuple(aspect_ratios)
    anchor_sizes = None if anchor_sizes is None else tuple(anchor_sizes)
    config: dict[str, Any] = {"name": "faster_rcnn", **locals()}
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if max_negatives_per_positive is not None and max_negatives_per_positive < 0:
        raise ValueError(f"max_negatives_per_positive must be >= 0 or None, got {max_negatives_per_positive}")
    if min_negatives_per_image < 0:
        raise ValueError(f"min_negatives_per_image must be >= 0, got {min_negatives_per_image}")
    if box_head not in BOX_HEADS:
        raise ValueError(f"box_head must be one of {', '.join(BOX_HEADS)}, got {box_head!r}")

    body = build_backbone(backbone, pretrained=pretrained_backbone, fpn_channels=fpn_channels,
                          trainable_layers=trainable_layers, returned_layers=returned_layers,
                          extra_blocks="maxpool", freeze_bn=freeze_bn)
    names = feature_names(body)
    if anchor_sizes is None:
        anchor_sizes = tuple(32 * 2**i for i in range(len(names)))
    if len(anchor_sizes) != len(names):
        raise ValueError(
            f"anchor_sizes has {len(anchor_sizes)} entries but backbone {backbone!r} returns {len(names)} "
            f"feature maps ({names}); give one size per level"
        )
    anchor_gen = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (tuple(aspect_ratios),) * len(names))
    roi_names = [n for n in names if n != "pool"] or names
    roi_pool = MultiScaleRoIAlign(featmap_names=roi_names, output_size=7, sampling_ratio=2)
    mlp_head = TwoMLPHead(body.out_channels * 7 * 7, representation_size)
    if box_head == "interval":
        predictor: nn.Module = IntervalBoxHead(representation_size, num_classes, num_intervals=num_intervals,
                                               side_range=interval_side_range)
    else:
        predictor = FastRCNNPredictor(representation_size, num_classes + 1)
    model = FasterRCNN(
        body,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=body.image_mean,
        image_std=body.image_std,
        rpn_anchor_generator=anchor_gen,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        rpn_positive_fraction=rpn_positive_fraction,
        box_roi_pool=roi_pool,
        box_head=mlp_head,
        box_predictor=predictor,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
        box_detections_per_img=detections_per_img,
        box_batch_size_per_image=box_batch_size_per_image,
        box_positive_fraction=box_positive_fraction,
    )
    return FasterRCNNDetector(
        model,
        num_classes=num_classes,
        config=config,
        feature_dim=representation_size,
        max_negatives_per_positive=max_negatives_per_positive,
        min_negatives_per_image=min_negatives_per_image,
        hard_negatives=hard_negatives,
        amp=amp,
    )
