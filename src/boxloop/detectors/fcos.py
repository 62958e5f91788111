"""FCOS with an IoU-prediction branch: the localization-aware one-stage detector of LocAwareAL.

torchvision supplies the parts: `FCOS` (its resize/normalise transform, anchor-point generator),
`FCOSHead` (classification and regression towers), `sigmoid_focal_loss`,
`generalized_box_iou_loss`, `box_iou`, `batched_nms`; the backbone comes from `backbones.py`.

Written here, because torchvision's versions cannot do it:
- IoU branch (YOLOX-like, LocAwareAL §5.2.2). The regression tower's one-channel output, which
  torchvision uses for centerness (and still names `bbox_ctrness` in the state dict), predicts
  instead the IoU between the location's decoded box and its matched ground truth. It is trained
  with BCE against that IoU (detached) on positive locations and REPLACES centerness: both
  down-weight badly placed points, but only a predicted IoU means what LocAwareAL's score needs.
- Score = class confidence x predicted IoU, the plain product of LocAwareAL eq. 5.1 / YOLOX eq. 4.1
  (`score_mode="sqrt"` gives torchvision's geometric mean instead). `loc_quality` = predicted IoU.
- Per-box weights in the loss. Every location matched to a box carries that box's weight in all
  three terms (focal loss over all classes at the location, GIoU, IoU-branch BCE); background
  locations weigh 1. Locations matched to a box of weight 0 are IGNORED (they count neither as
  positive nor as background): a zero-weight box is one we do not trust, which is not the same as
  knowing the place is empty. The terms are normalised by the number of positive locations with
  weight > 0 (at least 1), so a weight of 0.5 halves a box's share rather than being normalised away.
- Optional bounded negatives (HardNegatives, SSD's options): keep per image only the hardest
  `max(max_negatives_per_positive * positives, min_negatives_per_image)` background locations
  (by focal loss) in the classification term. Off by default: the focal loss already balances.
- A batched postprocess that keeps, for every detection, the full sigmoid class vector, the
  predicted IoU and the FPN feature vector of its location, and maps boxes to original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.ops import batched_nms, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from boxloop.detectors.backbones import build_backbone
from boxloop.detectors.base import TorchDetector
from boxloop.detectors.common import check_targets, prepare_images, to_detections
from boxloop.detectors.features import FeatureMixin, neck_of
from boxloop.structures import Detections

__all__ = ["FCOSDetector", "build_fcos", "match_locations", "own_box_iou", "quality_focal_loss", "varifocal_loss"]

IGNORE = -2  # matched to a box of weight 0
BACKGROUND = -1


def match_locations(points: Tensor, strides: Tensor, boxes: Tensor, num_per_level: Sequence[int],
                    center_sampling_radius: float = 1.5) -> Tensor:
    """FCOS assignment (torchvision's rule): index of the gt box each location regresses, -1 if none.

    A location matches a box when it lies inside it, within `radius * stride` of its centre, and
    the box's largest side distance suits the level (4..8 strides; open-ended at the extreme
    levels). Among several candidates the smallest box wins.
    """
    n = points.shape[0]
    if boxes.numel() == 0:
        return torch.full((n,), BACKGROUND, dtype=torch.int64, device=points.device)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    match = (points[:, None, :] - centers[None]).abs().amax(dim=2) < center_sampling_radius * strides[:, None]
    x, y = points[:, 0:1], points[:, 1:2]
    dist = torch.stack([x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x,
                        boxes[None, :, 3] - y], dim=2)  # (L, M, 4)
    match &= dist.amin(dim=2) > 0
    lower = strides * 4
    lower[: num_per_level[0]] = 0
    upper = strides * 8
    upper[-num_per_level[-1]:] = float("inf")
    far = dist.amax(dim=2)
    match &= (far > lower[:, None]) & (far < upper[:, None])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    score = match.float() * (1e8 - areas[None])
    best, idx = score.max(dim=1)
    idx[best < 1e-5] = BACKGROUND
    return idx


@dataclass
class FCOSOutputs:
    """Raw outputs of one batch (transform, backbone, head), flattened over levels; for loss and tests."""

    cls_logits: Tensor  # (B, L, C)
    bbox_regression: Tensor  # (B, L, 4)
    iou_logits: Tensor  # (B, L)
    points: Tensor  # (L, 2) location centres in resized-batch pixels
    strides: Tensor  # (L,)
    num_per_level: list[int]
    features: list[Tensor]  # FPN maps
    image_sizes: list[tuple[int, int]]  # resized (h, w) per image
    targets: list[dict[str, Tensor]] | None
    box_dist_logits: Tensor | None = None  # (B, L, 4, bins + 1): fcos_lite's per-side distance distributions


class FCOSDetector(FeatureMixin, TorchDetector):
    """FCOS + IoU branch behind boxloop's Detector protocol (`loss`, `predict`); with a frozen body,
    also the split forward of FeatureMixin (body maps cached, neck and head run)."""

    has_loc_quality = True
    # "positives": BCE towards the IoU on positive locations only (fcos); "varifocal" or
    # "quality_focal": every location, background towards 0 (see those functions).
    quality_loss = "positives"
    box_loss_weight = 1.0  # fcos_lite: 2, as GFL weighs its GIoU term
    dfl_weight = 0.25  # GFL's weight of the distribution focal loss (fcos_lite's distribution head only)
    # own_box_iou: "focal" (GFL's QFL), "bce" (every error counts alike) or "fit" (BCE, boxes with IoU > 0.5 x10)
    quality_weighting = "focal"

    def __init__(self, model: FCOS, num_classes: int, config: dict[str, Any], score_mode: str = "product",
                 max_negatives_per_positive: float | None = None, min_negatives_per_image: int = 0,
                 topk_candidates: int = 1000, amp: bool = True, cpu_bf16: bool = False) -> None:
        if score_mode not in ("product", "sqrt"):
            raise ValueError(f"score_mode must be 'product' or 'sqrt', got {score_mode!r}")
        super().__init__(model, num_classes, config, int(model.backbone.out_channels), max_negatives_per_positive,
                         min_negatives_per_image, amp)
        self.score_mode = score_mode
        self.topk_candidates = topk_candidates
        self.cpu_bf16 = cpu_bf16
        self.box_coder = BoxLinearCoder(normalize_by_size=True)

    # ------------------------------------------------------------------------------------------
    def forward_outputs(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None) -> FCOSOutputs:
        """Resize/normalise (targets too), body, neck, head, location points. Inputs already checked."""
        batch, targets = self.model.transform(images, targets)
        maps = self.model.backbone.body(batch.tensors.contiguous(memory_format=self.memory_format))
        return self.outputs_from_maps(maps, batch, targets)

    def outputs_from_maps(self, maps: dict[str, Tensor], batch: ImageList,
                          targets: list[dict[str, Tensor]] | None) -> FCOSOutputs:
        """Neck, head and location points on the body's maps of the transformed `batch` (FeatureMixin
        hands in maps from the feature cache, with a stand-in batch of the right shape)."""
        m = self.model
        features = list(neck_of(m.backbone)(maps).values())
        out = m.head(features)
        # same for every image in the batch; made in float32 from the maps' shapes alone: in the
        # features' fp16/bf16 a location at 200 px would sit up to 1 px (bf16) off its true place
        shapes = [f.new_empty((1, 1, *f.shape[-2:]), dtype=torch.float32) for f in features]
        anchors = m.anchor_generator(batch, shapes)[0]
        points = (anchors[:, :2] + anchors[:, 2:]) / 2
        strides = anchors[:, 2] - anchors[:, 0]
        return FCOSOutputs(out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"].squeeze(-1), points,
                           strides, [f.shape[-2] * f.shape[-1] for f in features], features,
                           [tuple(s) for s in batch.image_sizes], targets, out.get("bbox_distribution"))

    def loss(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Weighted focal (cls) + GIoU (box) + BCE (IoU branch) losses; see the module docstring."""
        if len(images) == 0:
            raise ValueError("loss needs at least one image")
        images = prepare_images(images)
        targets = check_targets(targets, self.num_classes, images)
        device = images[0].device
        targets = [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]
        fw = self.forward_outputs(images, targets)
        return self.compute_loss(fw)

    def compute_loss(self, fw: FCOSOutputs) -> dict[str, Tensor]:
        """The three loss terms from raw outputs whose `targets` were resized with the images."""
        if fw.targets is None:
            raise ValueError("compute_loss needs outputs computed with targets")
        cls_logits = fw.cls_logits.float()
        reg = fw.bbox_regression.float()
        iou_logits = fw.iou_logits.float()
        b, n_loc, c = cls_logits.shape
        anchors = torch.cat([fw.points - fw.strides[:, None] / 2, fw.points + fw.strides[:, None] / 2], dim=1)

        matched = []
        for t in fw.targets:
            idx = match_locations(fw.points, fw.strides.clone(), t["boxes"], fw.num_per_level,
                                  self.model.center_sampling_radius)
            if t["boxes"].numel():
                zero = t["weights"][idx.clamp(min=0)] <= 0
                idx = torch.where((idx >= 0) & zero, torch.full_like(idx, IGNORE), idx)
            matched.append(idx)
        matched_t = torch.stack(matched)  # (B, L)
        pos = matched_t >= 0
        neg = matched_t == BACKGROUND

        gt_boxes = torch.zeros(b, n_loc, 4, device=reg.device)
        gt_cls = torch.zeros_like(cls_logits)
        loc_w = torch.zeros(b, n_loc, device=reg.device)
        for i, t in enumerate(fw.targets):
            p = pos[i]
            j = matched_t[i][p]
            gt_boxes[i, p] = t["boxes"][j]
            gt_cls[i, p, t["labels"][j]] = 1.0
            loc_w[i, p] = t["weights"][j]
        loc_w[neg] = 1.0

        num_pos = max(1.0, float(pos.sum().item()))
        focal = sigmoid_focal_loss(cls_logits, gt_cls, reduction="none").sum(-1)  # (B, L)
        keep_neg = self._bounded_negatives(focal.detach(), neg, pos) if self._bounding() else neg
        cls_w = torch.where(pos | keep_neg, loc_w, torch.zeros_like(loc_w))
        loss_cls = (focal * cls_w).sum() / num_pos

        if pos.any():
            pred = self.box_coder.decode(reg[pos], anchors[None].expand(b, -1, -1)[pos])
            gt = gt_boxes[pos]
            w = loc_w[pos]
            loss_box = self.box_loss_weight * (generalized_box_iou_loss(pred, gt, reduction="none") * w).sum() / num_pos
            if fw.box_dist_logits is not None:  # GFL's distribution focal loss on each side's bins
                anchors_pos = anchors[None].expand(b, -1, -1)[pos]
                sides = self.box_coder.encode(anchors_pos, gt)  # (P, 4) in strides
                dfl = distribution_focal_loss(fw.box_dist_logits.float()[pos], sides).mean(dim=1)
                loss_box = loss_box + self.dfl_weight * (dfl * w).sum() / num_pos
            iou_t = box_iou(pred.detach(), gt).diagonal().clamp(0, 1)
            if self.quality_loss == "positives":
                bce = F.binary_cross_entropy_with_logits(iou_logits[pos], iou_t, reduction="none")
                loss_iou = (bce * w).sum() / num_pos
        else:  # keep the graph connected so every parameter gets a (zero) gradient
            loss_box = reg.sum() * 0.0
            if fw.box_dist_logits is not None:
                loss_box = loss_box + fw.box_dist_logits.sum() * 0.0
            loss_iou = iou_logits.sum() * 0.0
            iou_t = iou_logits.new_zeros(0)
        if self.quality_loss in ("varifocal", "quality_focal"):
            target = torch.zeros_like(iou_logits)
            target[pos] = iou_t
            per_loc = (varifocal_loss(iou_logits, target, pos) if self.quality_loss == "varifocal"
                       else quality_focal_loss(iou_logits, target))
            loss_iou = (per_loc * cls_w).sum() / num_pos  # same locations and weights as the class term
        elif self.quality_loss == "own_box_iou":
            own = self.box_coder.decode(reg.detach().reshape(-1, 4),
                                        anchors[None].expand(b, -1, -1).reshape(-1, 4)).reshape(b, n_loc, 4)
            target = own_box_iou(own, fw.targets)
            q_w = cls_w * (~ignored_locations(own, fw.targets, target)).float()  # unknown truth: no quality target
            # quality focal loss, not plain BCE: BCE towards the IoU at every location calibrated
            # better (BCCD: MAE 0.17 against 0.25) but pulled the shared box tower off its boxes
            # (test mAP50 0.786 against 0.817, COCO AP 0.436 against 0.466)
            if self.quality_weighting == "focal":
                per_loc = quality_focal_loss(iou_logits, target) * q_w
            else:
                per_loc = F.binary_cross_entropy_with_logits(iou_logits, target, reduction="none") * q_w
                if self.quality_weighting == "fit":  # the boxes that fit (IoU > 0.5) count 10x: their ranking matters
                    per_loc = per_loc * (1.0 + 9.0 * (target > 0.5).float())
            loss_iou = per_loc.sum() / num_pos
        return {"classification": loss_cls, "bbox_regression": loss_box, "iou": loss_iou}

    def _bounding(self) -> bool:
        return self.max_negatives_per_positive is not None

    def _bounded_negatives(self, focal: Tensor, neg: Tensor, pos: Tensor) -> Tensor:
        """Per image, the `max(k * positives, min_negatives_per_image)` hardest background locations."""
        ratio = self.max_negatives_per_positive
        if ratio is None:
            return neg
        keep = torch.zeros_like(neg)
        for i in range(neg.shape[0]):
            n_keep = max(int(ratio * int(pos[i].sum())), self.min_negatives_per_image)
            n_keep = min(n_keep, int(neg[i].sum()))
            if n_keep <= 0:
                continue
            hardness = torch.where(neg[i], focal[i], torch.full_like(focal[i], -1.0))
            keep[i, hardness.topk(n_keep).indices] = True
        return keep

    # ------------------------------------------------------------------------------------------
    def default_score_threshold(self) -> float:
        return float(self.model.score_thresh)

    def predict_prepared(self, images: list[Tensor], original: list[tuple[int, int]],
                         score_threshold: float) -> list[Detections]:
        """The threshold applies to the final score (class x IoU)."""
        return self._postprocess(self.forward_outputs(images, None), original, score_threshold)

    def _postprocess(self, fw: FCOSOutputs, original: list[tuple[int, int]], thresh: float) -> list[Detections]:
        probs = fw.cls_logits.float().sigmoid()  # (B, L, C)
        quality = fw.iou_logits.float().sigmoid()  # (B, L)
        scores = probs * quality[..., None]
        if self.score_mode == "sqrt":
            scores = scores.sqrt()
        b, n_loc, c = scores.shape
        k = min(self.topk_candidates, n_loc * c)
        top_s, top_i = scores.flatten(1).topk(k, dim=1)  # (B, k)
        loc = top_i // c
        lab = top_i % c
        valid = top_s > thresh
        img_idx = torch.arange(b, device=scores.device)[:, None].expand(-1, k)
        img_idx, loc, lab, top_s = img_idx[valid], loc[valid], lab[valid], top_s[valid]

        anchors = torch.cat([fw.points - fw.strides[:, None] / 2, fw.points + fw.strides[:, None] / 2], dim=1)
        boxes = self.box_coder.decode(fw.bbox_regression.float()[img_idx, loc], anchors[loc])
        sizes = torch.tensor(fw.image_sizes, dtype=boxes.dtype, device=boxes.device)  # (B, 2) h, w
        limit = sizes[img_idx][:, [1, 0, 1, 0]]
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # drop boxes clipped to nothing
        boxes, img_idx, loc, lab, top_s = boxes[ok], img_idx[ok], loc[ok], lab[ok], top_s[ok]
        keep = batched_nms(boxes, top_s, img_idx * c + lab, self.model.nms_thresh)  # sorted by score
        # first detections_per_img per image, keeping score order
        kept_img = img_idx[keep]
        order = torch.argsort(kept_img, stable=True)
        keep, kept_img = keep[order], kept_img[order]
        counts = torch.bincount(kept_img, minlength=b)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(keep), device=keep.device) - starts[kept_img]
        sel = rank < self.model.detections_per_img
        keep, kept_img = keep[sel], kept_img[sel]

        feats = torch.cat([f.flatten(2) for f in fw.features], dim=2)  # (B, D, L)
        k_loc = loc[keep]
        scale = torch.tensor([[o[1] / s[1], o[0] / s[0]] for o, s in zip(original, fw.image_sizes)],
                             dtype=boxes.dtype, device=boxes.device)[kept_img][:, [0, 1, 0, 1]]
        orig = torch.tensor(original, dtype=boxes.dtype, device=boxes.device)[kept_img][:, [1, 0, 1, 0]]
        out_boxes = torch.minimum((boxes[keep] * scale).clamp(min=0), orig)
        fields = {
            "boxes": out_boxes,
            "labels": lab[keep],
            "scores": top_s[keep],
            "class_probs": probs[kept_img, k_loc],
            "loc_quality": quality[kept_img, k_loc],
            "features": feats[kept_img, :, k_loc].float(),
            "img": kept_img,
        }
        cpu = {k: v.cpu() for k, v in fields.items()}  # one transfer per field for the whole batch
        counts_cpu = torch.bincount(cpu["img"], minlength=b).tolist()
        split = {k: v.split(counts_cpu) for k, v in cpu.items()}
        return [
            to_detections(split["boxes"][i], split["labels"][i], split["scores"][i], split["class_probs"][i],
                          original[i], loc_quality=split["loc_quality"][i], features=split["features"][i])
            for i in range(b)
        ]



def varifocal_loss(logits: Tensor, target: Tensor, positive: Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> Tensor:
    """Per-location varifocal loss (VarifocalNet, Zhang et al. 2021, eq. 2), elementwise.

    Positives: BCE towards their IoU target, weighted by that target (well-placed boxes count more).
    Background: BCE towards 0, weighted by alpha * q**gamma (the easy background fades, as in focal loss).
    """
    q = logits.sigmoid()
    weight = torch.where(positive, target, alpha * q.detach().pow(gamma))
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


def own_box_iou(pred: Tensor, targets: Sequence[dict[str, Tensor]]) -> Tensor:
    """(B, L): the IoU of every location's own decoded box with the ground-truth box it overlaps
    most (boxes of weight 0 left out; 0 on an image without boxes).

    The quality target of fcos_lite: what the calibration check and the localization-aware scores
    ask of a predicted IoU is "how well does THIS box fit the object it covers", at whatever location
    fires, so it is taught at every location, not only at the ones assigned to an object.
    """
    out = pred.new_zeros(pred.shape[:2])
    for i, t in enumerate(targets):
        keep = t["weights"] > 0
        if keep.any():
            out[i] = box_iou(pred[i], t["boxes"][keep]).amax(dim=1).clamp(0, 1)
    return out


def ignored_locations(pred: Tensor, targets: Sequence[dict[str, Tensor]], trusted: Tensor | None = None) -> Tensor:
    """(B, L) bool: locations whose own decoded box overlaps a weight-0 box more than any trusted box.

    A weight-0 box is an object we do not trust (an ignore region: an unaccepted pseudo box, an
    unchecked prediction on a partial image), which may be real. Teaching such a location the
    quality 0 of `own_box_iou` would teach the quality branch that objects like it fit nothing, and
    since the score is class probability x quality, suppress them; these locations are left out of
    the quality loss instead, as the classification loss leaves out the locations assigned to them.
    `trusted`: own_box_iou(pred, targets) when the caller has it already.
    """
    if trusted is None:
        trusted = own_box_iou(pred, targets)
    out = torch.zeros(pred.shape[:2], dtype=torch.bool, device=pred.device)
    for i, t in enumerate(targets):
        zero = t["weights"] <= 0
        if zero.any():
            out[i] = box_iou(pred[i], t["boxes"][zero]).amax(dim=1) > trusted[i]
    return out


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """GFL's distribution focal loss (Li et al. 2020, eq. 6), per side: (N, 4, n + 1) logits over the
    bins 0..n, (N, 4) targets in bin units -> (N, 4).

    The two bins around the target share it by distance (y = 3.3 puts 0.7 on bin 3 and 0.3 on bin 4),
    so the distribution concentrates where the side is and its expected value decodes to it.
    Targets beyond the last bin are clamped just below it.
    """
    n = logits.shape[-1] - 1
    t = target.clamp(0, n - 1e-4)
    left = t.floor().long()
    w_right = t - left
    logp = F.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, left[..., None]).squeeze(-1)
    rp = logp.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return -(lp * (1 - w_right) + rp * w_right)


def quality_focal_loss(logits: Tensor, target: Tensor, beta: float = 2.0) -> Tensor:
    """Per-location quality focal loss (GFL, Li et al. 2020, eq. 5), elementwise.

    BCE towards the soft target (the IoU on positives, 0 on background) weighted by |target - q|**beta:
    every location counts by how wrong it is, so a badly placed box is taught its low IoU as firmly
    as a good one its high IoU (the varifocal loss weighs positives by their IoU and lets the bad
    ones drift high).
    """
    q = logits.sigmoid()
    weight = (target - q.detach()).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


class SoftplusRegressionHead(FCOSRegressionHead):
    """torchvision's FCOS regression head with softplus instead of ReLU on the box distances.

    With ReLU, a unit whose output goes negative gets no gradient again: on BCCD at lr 0.01 the
    box branch died within one round (96% of outputs at 0, every box zero-size, mAP 0 while the
    loss still fell). Softplus keeps the distances positive and the gradient alive. Same
    parameters, so checkpoints load either way."""

    def forward(self, x: list[Tensor]) -> tuple[Tensor, Tensor]:
        regs, ctrs = [], []
        for features in x:
            feature = self.conv(features)
            reg = F.softplus(self.bbox_reg(feature))
            ctr = self.bbox_ctrness(feature)
            n, _, h, w = reg.shape
            regs.append(reg.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            ctrs.append(ctr.view(n, -1, 1, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 1))
        return torch.cat(regs, dim=1), torch.cat(ctrs, dim=1)

def build_fcos(
    num_classes: int,
    backbone: str = "efficientnet_lite0",
    pretrained_backbone: bool | str | Path = True,
    min_size: int = 512,
    max_size: int = 853,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    fpn_channels: int = 128,
    head_convs: int = 4,
    trainable_layers: int | None = None,
    freeze_bn: bool | None = None,
    center_sampling_radius: float = 1.5,
    score_mode: str = "product",
    max_negatives_per_positive: float | None = None,
    min_negatives_per_image: int = 0,
    topk_candidates: int = 1000,
    amp: bool = True,
) -> FCOSDetector:
    """FCOS + IoU branch on a backbone from `build_backbone` (P3-P7, strides 8..128).

    min_size/max_size: the shorter side is resized to min_size unless the longer would pass
    max_size. fpn_channels must be a multiple of 32 (GroupNorm in the head; even numbers below 64 also work). head_convs:
    convolutions per tower. The returned detector's `config` holds every argument resolved, so
    `create_detector(**config)` rebuilds the same architecture (pass pretrained_backbone=False when
    loading a checkpoint to skip reading ImageNet weights).
    """
    # GroupNorm(32) as torchvision's head, but at least 2 channels a group: a 1x1 P7 map of a single
    # small image would otherwise leave one value per group and GroupNorm refuses to train on it.
    groups = 32 if fpn_channels >= 64 else fpn_channels // 2
    if fpn_channels < 2 or fpn_channels % groups:
        raise ValueError(f"fpn_channels must be a multiple of 32 (or an even number below 64), got {fpn_channels}")
    has_weights = bool(pretrained_backbone) and str(pretrained_backbone).lower() != "false"
    if trainable_layers is None:
        trainable_layers = 3 if has_weights else 5
    if freeze_bn is None:
        freeze_bn = has_weights
    body = build_backbone(backbone, pretrained=pretrained_backbone, fpn_channels=fpn_channels,
                          trainable_layers=trainable_layers, returned_layers=(2, 3, 4), extra_blocks="p6p7",
                          freeze_bn=freeze_bn)
    strides = (8, 16, 32, 64, 128)
    anchor_gen = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    head = FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs)
    norm = partial(nn.GroupNorm, groups)
    head.classification_head = FCOSClassificationHead(fpn_channels, 1, num_classes, head_convs, norm_layer=norm)
    head.regression_head = SoftplusRegressionHead(fpn_channels, 1, head_convs, norm_layer=norm)
    model = FCOS(body, num_classes, min_size=min_size, max_size=max_size, image_mean=body.image_mean,
                 image_std=body.image_std, anchor_generator=anchor_gen, head=head,
                 center_sampling_radius=center_sampling_radius, score_thresh=score_thresh,
                 nms_thresh=nms_thresh, detections_per_img=detections_per_img, topk_candidates=topk_candidates)
    config: dict[str, Any] = {
        "name": "fcos", "num_classes": num_classes, "backbone": backbone,
        "pretrained_backbone": str(pretrained_backbone) if isinstance(pretrained_backbone, Path) else pretrained_backbone,
        "min_size": min_size, "max_size": max_size, "score_thresh": score_thresh, "nms_thresh": nms_thresh,
        "detections_per_img": detections_per_img, "fpn_channels": fpn_channels, "head_convs": head_convs,
        "trainable_layers": trainable_layers, "freeze_bn": freeze_bn,
        "center_sampling_radius": center_sampling_radius, "score_mode": score_mode,
        "max_negatives_per_positive": max_negatives_per_positive,
        "min_negatives_per_image": min_negatives_per_image, "topk_candidates": topk_candidates, "amp": amp,
    }
    det = FCOSDetector(model, num_classes, config, score_mode=score_mode,
                       max_negatives_per_positive=max_negatives_per_positive,
                       min_negatives_per_image=min_negatives_per_image, topk_candidates=topk_candidates, amp=amp)
    return det
