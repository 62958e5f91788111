"""Localization as classification over intervals plus fine regression (CertaintySSOD, eqs. 3-5).

Each side of a proposal gets a line segment perpendicular to it, split evenly into K intervals
[K=30]. The head predicts, per side, which interval holds the ground-truth side (K-way
classification, eq. 3) and an offset from that interval's centre line to the true side (smooth-L1,
eq. 5). The localization quality v of a box is the mean over its four sides of the top interval
probability (eq. 4).

Interval range (the paper does not give it; chosen here): the segment of a side is centred on the
proposal's side and spans `side_range` [0.5] times the proposal size to either side, i.e. for the
left side x1 of a proposal of width w it covers [x1 - 0.5 w, x1 + 0.5 w] (length w, intervals of
w / K). With 0.5 the left and right segments meet at the proposal centre, so decoded sides never
cross (x1 <= cx <= x2). Ground-truth sides outside the segment are clamped to its end: the first or
last interval, with the offset clamped to the interval's half-width.

Offsets are measured in interval widths (so the true bin's offset lies in [-0.5, 0.5]); decoding
clamps predicted offsets to that range, refining within the interval as the paper describes.

Choices where the printed equations are loose: eq. 3 prints only the positive term of a sigmoid
loss; we use softmax cross-entropy over the K intervals, so each side's interval scores form a
distribution and v lies in [1/K, 1] (1 for a certain side, 1/K for a uniform one). Losses are summed
over the four sides as in eqs. 3 and 5 and averaged over the sampled RoIs (torchvision's
normalisation), each RoI scaled by its weight.

Written by hand: the coder, the quality score and the head's loss. torch does the tensor work
(`torch.nn.functional.cross_entropy`, `smooth_l1_loss`); the class head follows torchvision's
`FastRCNNPredictor` layout so `faster_rcnn` can swap this in as its box predictor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IntervalBoxCoder", "IntervalBoxHead", "localization_quality"]


def localization_quality(side_logits: Tensor) -> Tensor:
    """v = mean over the four sides of the top interval probability (eq. 4). (N, 4, K) -> (N,)."""
    if side_logits.ndim != 3 or side_logits.shape[1] != 4:
        raise ValueError(f"side_logits must be (N, 4, K), got shape {tuple(side_logits.shape)}")
    return side_logits.softmax(dim=-1).amax(dim=-1).mean(dim=-1)


class IntervalBoxCoder:
    """Encodes ground-truth boxes against proposals as (interval index, offset) per side, and back.

    Sides are ordered (x1, y1, x2, y2), like the boxes.
    """

    def __init__(self, num_intervals: int = 30, side_range: float = 0.5, min_size: float = 1e-3) -> None:
        if int(num_intervals) < 1:
            raise ValueError(f"num_intervals must be >= 1, got {num_intervals}")
        if not side_range > 0:
            raise ValueError(f"side_range must be > 0 (a fraction of the proposal size), got {side_range}")
        self.num_intervals = int(num_intervals)
        self.side_range = float(side_range)
        self.min_size = float(min_size)  # guards degenerate proposals against division by zero

    def _geometry(self, proposals: Tensor) -> tuple[Tensor, Tensor]:
        """Per side: start of the segment and interval width, both (N, 4)."""
        if proposals.ndim != 2 or proposals.shape[1] != 4:
            raise ValueError(f"proposals must be (N, 4) xyxy, got shape {tuple(proposals.shape)}")
        w = (proposals[:, 2] - proposals[:, 0]).clamp(min=self.min_size)
        h = (proposals[:, 3] - proposals[:, 1]).clamp(min=self.min_size)
        size = torch.stack([w, h, w, h], dim=1)
        start = proposals - self.side_range * size
        width = 2.0 * self.side_range * size / self.num_intervals
        return start, width

    def encode(self, gt_boxes: Tensor, proposals: Tensor) -> tuple[Tensor, Tensor]:
        """(side_bins (N, 4) long, side_offsets (N, 4) float in interval widths from the bin centre)."""
        if gt_boxes.shape != proposals.shape:
            raise ValueError(
                f"encode needs one gt box per proposal: gt_boxes {tuple(gt_boxes.shape)} vs proposals "
                f"{tuple(proposals.shape)}"
            )
        start, width = self._geometry(proposals)
        pos = (gt_boxes - start) / width  # position along the segment, in intervals
        bins = pos.floor().clamp(0, self.num_intervals - 1)
        offsets = (pos - (bins + 0.5)).clamp(-0.5, 0.5)
        return bins.long(), offsets

    def decode_bins(self, bins: Tensor, offsets: Tensor, proposals: Tensor) -> Tensor:
        """Boxes from one (bin, offset) per side, both (N, 4)."""
        start, width = self._geometry(proposals)
        return start + (bins.to(start.dtype) + 0.5 + offsets.clamp(-0.5, 0.5)) * width

    def decode(self, side_logits: Tensor, side_offsets: Tensor, proposals: Tensor) -> Tensor:
        """Boxes (N, 4) from the argmax interval of each side and that interval's offset.

        side_logits, side_offsets: (N, 4, K).
        """
        k = self.num_intervals
        if side_logits.ndim != 3 or side_logits.shape[1:] != (4, k) or side_offsets.shape != side_logits.shape:
            raise ValueError(
                f"decode needs side_logits and side_offsets of shape (N, 4, {k}), got "
                f"{tuple(side_logits.shape)} and {tuple(side_offsets.shape)}"
            )
        bins = side_logits.argmax(dim=-1)
        offsets = side_offsets.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
        return self.decode_bins(bins, offsets, proposals)


class IntervalBoxHead(nn.Module):
    """Two-stage box predictor: per RoI, class logits (C+1, index 0 = background as in torchvision),
    side logits (4, K) and side offsets (4, K). Class-agnostic localization: one set of sides per RoI.
    """

    def __init__(self, in_features: int, num_classes: int, num_intervals: int = 30,
                 side_range: float = 0.5, beta: float = 1.0 / 9) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
        self.num_classes = int(num_classes)
        self.num_intervals = int(num_intervals)
        self.beta = float(beta)  # smooth-L1 switch point, torchvision's Fast R-CNN value
        self.coder = IntervalBoxCoder(num_intervals, side_range)
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.side_score = nn.Linear(in_features, 4 * num_intervals)
        self.side_offset = nn.Linear(in_features, 4 * num_intervals)
        for layer, std in ((self.cls_score, 0.01), (self.side_score, 0.01), (self.side_offset, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(class_logits (N, C+1), side_logits (N, 4, K), side_offsets (N, 4, K))."""
        x = x.flatten(start_dim=1)
        k = self.num_intervals
        return (self.cls_score(x), self.side_score(x).view(-1, 4, k), self.side_offset(x).view(-1, 4, k))

    def loss(self, class_logits: Tensor, side_logits: Tensor, side_offsets: Tensor, labels: Tensor,
             bins: Tensor, offsets: Tensor, weights: Tensor | None = None) -> dict[str, Tensor]:
        """Classification CE over C+1 classes, plus for foreground RoIs (label > 0) eq. 5: CE over the
        K intervals of each side and smooth-L1 on the offset predicted for the true interval.

        labels (N,) long with 0 = background; bins (N, 4) long, offsets (N, 4) from `coder.encode`
        (ignored for background RoIs); weights (N,) per-RoI loss weights (default 1). Each term is the
        weighted sum over RoIs divided by N, so zero weights give zero loss, never NaN.
        """
        n = labels.shape[0]
        if weights is None:
            weights = torch.ones(n, dtype=class_logits.dtype, device=class_logits.device)
        if weights.shape != (n,) or class_logits.shape[0] != n or side_logits.shape[0] != n:
            raise ValueError(
                f"loss: {n} labels, {class_logits.shape[0]} class rows, {side_logits.shape[0]} side rows, "
                f"weights of shape {tuple(weights.shape)}; all must describe the same RoIs"
            )
        denom = max(n, 1)
        cls = (F.cross_entropy(class_logits, labels, reduction="none") * weights).sum() / denom

        fg = labels > 0
        fg_logits, fg_offsets = side_logits[fg], side_offsets[fg]  # (F, 4, K)
        fg_bins, fg_w = bins[fg], weights[fg]
        k = self.num_intervals
        side_ce = F.cross_entropy(fg_logits.reshape(-1, k), fg_bins.reshape(-1), reduction="none")
        side_ce = side_ce.view(-1, 4).sum(dim=1)
        pred_off = fg_offsets.gather(-1, fg_bins.unsqueeze(-1)).squeeze(-1)
        reg = F.smooth_l1_loss(pred_off, offsets[fg].to(pred_off.dtype), beta=self.beta, reduction="none").sum(dim=1)
        return {
            "loss_classifier": cls,
            "loss_side_cls": (side_ce * fg_w).sum() / denom,
            "loss_side_reg": (reg * fg_w).sum() / denom,
        }

    @torch.no_grad()
    def predict(self, x: Tensor, proposals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(class probabilities (N, C+1), boxes (N, 4), localization quality v (N,)) for RoI features
        `x` pooled from `proposals` (N, 4)."""
        class_logits, side_logits, side_offsets = self(x)
        boxes = self.coder.decode(side_logits, side_offsets, proposals)
        return class_logits.softmax(dim=-1), boxes, localization_quality(side_logits)
