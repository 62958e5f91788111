"""The teacher's weak view (CertaintySSOD): its predictions on an image and on the image's mirror, merged.

A same-class pair of boxes with IoU >= `flip_iou` [0.55] becomes one box (mean coordinates, mean p,
mean class_probs, mean v); a box seen in one view only keeps its box and v but its p (and
class_probs) is halved, as if the other view had scored it 0. So a pseudo box must be certain in
both views.

Written by hand: the merge and the mirroring of boxes. Delegated: decoding (images.load_rgb),
resizing (torchvision transforms v2), the batched prediction (inference)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from boxloop.images import resized_size
from boxloop.detectors.base import Detector
from boxloop.structures import Boxes, Detections, iou

__all__ = ["merge_flip", "weak_predict"]


def _flip_back(det: Detections) -> Detections:
    """Boxes predicted on the mirrored image, in the unmirrored image's frame."""
    w = det.image_size[0]
    x = det.boxes.xyxy
    flipped = np.stack([w - x[:, 2], x[:, 1], w - x[:, 0], x[:, 3]], axis=1)
    return dataclasses.replace(det, boxes=Boxes(flipped, det.image_size))


def merge_flip(a: Detections, b: Detections, iou_threshold: float = 0.55) -> Detections:
    """Average two views' detections of one image (see the module notes): greedy same-class pairs
    in descending p*v of `a`, IoU >= `iou_threshold`; pairs averaged, singles keep box and v with p
    halved. Output sorted by descending p (x v where both views have v)."""
    def cert(d: Detections) -> np.ndarray:
        return d.scores * (d.loc_quality if d.loc_quality is not None else 1.0)

    has_lq = a.loc_quality is not None and b.loc_quality is not None
    has_f = a.features is not None and b.features is not None
    ious = iou(a.boxes, b.boxes) if len(a) and len(b) else np.zeros((len(a), len(b)))
    ious = np.where(a.labels[:, None] == b.labels[None, :], ious, 0.0)
    used_b = np.zeros(len(b), bool)
    rows: list[tuple[np.ndarray, int, float, np.ndarray, float | None, np.ndarray | None]] = []
    for i in np.argsort(-cert(a), kind="stable"):
        cand = np.where(~used_b & (ious[i] >= iou_threshold))[0]
        lq_a = float(a.loc_quality[i]) if has_lq else None
        feat = a.features[i] if has_f else None
        if cand.size:
            j = int(cand[np.argmax(ious[i, cand])])
            used_b[j] = True
            rows.append(((a.boxes.xyxy[i] + b.boxes.xyxy[j]) / 2, int(a.labels[i]),
                         (float(a.scores[i]) + float(b.scores[j])) / 2, (a.class_probs[i] + b.class_probs[j]) / 2,
                         None if lq_a is None else (lq_a + float(b.loc_quality[j])) / 2, feat))
        else:
            rows.append((a.boxes.xyxy[i], int(a.labels[i]), float(a.scores[i]) / 2, a.class_probs[i] / 2, lq_a, feat))
    for j in np.where(~used_b)[0]:
        rows.append((b.boxes.xyxy[j], int(b.labels[j]), float(b.scores[j]) / 2, b.class_probs[j] / 2,
                     float(b.loc_quality[j]) if has_lq else None, b.features[j] if has_f else None))
    if not rows:
        return Detections.empty(a.num_classes, a.image_size, loc_quality=has_lq,
                                feature_dim=a.features.shape[1] if has_f else None)
    merged = Detections(
        boxes=Boxes(np.stack([r[0] for r in rows]), a.image_size),
        labels=np.array([r[1] for r in rows]), scores=np.array([r[2] for r in rows]),
        class_probs=np.stack([r[3] for r in rows]),
        loc_quality=np.array([r[4] for r in rows]) if has_lq else None,
        features=np.stack([r[5] for r in rows]) if has_f else None)
    return merged[np.argsort(-cert(merged), kind="stable")]


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], image_size: int) -> None:
        self.paths, self.image_size = list(paths), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[int, int]]:
        from torchvision.transforms.v2 import functional as F

        from boxloop.images import load_rgb

        pil = load_rgb(self.paths[i])
        w, h = pil.size
        return F.resize(F.pil_to_tensor(pil), list(resized_size(w, h, self.image_size)), antialias=True), (w, h)


def weak_predict(detector: Detector, paths: Sequence[str | Path], image_size: int, flip: bool = True,
                 score_threshold: float = 0.05, batch_size: int = 8, flip_iou: float = 0.55,
                 num_workers: int = 0) -> list[Detections]:
    """The teacher's weak view (CertaintySSOD: horizontal flip): Detections per path in original pixels,
    the image and its mirror merged by `merge_flip` when `flip`, else the image alone."""
    from boxloop.predict.inference import predict_batch, model_device, to_original

    dev = model_device(detector)
    was_training = bool(getattr(detector, "training", False))
    detector.eval()
    loader = DataLoader(_ImageFiles([Path(p) for p in paths], image_size), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=list)
    out: list[Detections] = []
    state = {"chunk": batch_size * (2 if flip else 1)}
    try:
        for batch in loader:
            images = [im.to(dev).float().div_(255.0) for im, _ in batch]
            views = images + [im.flip(-1) for im in images] if flip else images
            dets = predict_batch(detector, views, score_threshold, state)
            n = len(images)
            for k, (_, orig) in enumerate(batch):
                d = dets[k]
                if flip:
                    d = merge_flip(d, _flip_back(dets[n + k]), flip_iou)
                out.append(to_original(d, orig))
    finally:
        if was_training:
            detector.train()
    return out
