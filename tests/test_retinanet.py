"""RetinaNet detector: losses against torchvision's own, weights, negatives, predict contract.

Tiny on purpose (random-init Lite0, FPN 64 channels, 64-96 px images), CPU only.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou, sigmoid_focal_loss

from boxloop.detectors import create_detector
from boxloop.detectors.retinanet import RetinaNetDetector, build_retinanet
from boxloop.structures import Detections

TINY = dict(pretrained_backbone=False, min_size=64, max_size=96, fpn_channels=64)


def tiny(**kw) -> RetinaNetDetector:
    torch.manual_seed(0)
    return build_retinanet(num_classes=2, **{**TINY, **kw})


def scene(h: int, w: int, boxes: list[tuple[float, float, float, float]], labels: list[int], seed: int = 0):
    """A grey image with coloured rectangles (red = class 0, blue = class 1) and its target."""
    g = torch.Generator().manual_seed(seed)
    img = 0.5 + 0.05 * torch.rand(3, h, w, generator=g)
    colours = {0: (0.9, 0.1, 0.1), 1: (0.1, 0.2, 0.9)}
    for (x1, y1, x2, y2), lab in zip(boxes, labels):
        img[:, int(y1):int(y2), int(x1):int(x2)] = torch.tensor(colours[lab])[:, None, None]
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.tensor(labels, dtype=torch.int64)}
    return img, target


def batch():
    a = scene(64, 80, [(8, 10, 40, 44), (48, 20, 74, 58)], [0, 1], seed=1)
    b = scene(72, 64, [(20, 16, 52, 50)], [1], seed=2)
    return [a[0], b[0]], [a[1], b[1]]


@pytest.fixture(scope="module")
def det() -> RetinaNetDetector:
    d = tiny()
    d.train()
    return d


def test_unit_weights_equal_torchvision_losses(det):
    images, targets = batch()
    ref = det.model(images, targets)
    ours = det.loss(images, [{**t, "weights": torch.ones(len(t["labels"]))} for t in targets])
    assert set(ours) == set(ref) == {"classification", "bbox_regression"}
    for k in ref:
        assert torch.allclose(ours[k], ref[k], rtol=1e-5), (k, float(ours[k]), float(ref[k]))


def test_weight_zero_box_equals_torchvision_loss_with_its_anchors_excluded(det):
    """Reference: torchvision's own head.compute_loss, with the anchors matched to box B marked
    'between thresholds' (ignored) by hand."""
    img, t = scene(64, 80, [(8, 10, 40, 44), (48, 20, 74, 58)], [0, 1], seed=3)
    ours = det.loss([img], [{**t, "weights": torch.tensor([1.0, 0.0])}])

    m = det.model
    image_list, tt = m.transform([img], [dict(t)])
    feats = list(m.backbone(image_list.tensors).values())
    head_outputs = m.head(feats)
    anchors = m.anchor_generator(image_list, feats)
    matched = m.proposal_matcher(box_iou(tt[0]["boxes"], anchors[0]))
    assert (matched == 1).sum() > 0  # box B has anchors to exclude
    matched = torch.where(matched == 1, torch.full_like(matched, m.proposal_matcher.BETWEEN_THRESHOLDS), matched)
    ref = m.head.compute_loss(tt, head_outputs, anchors, [matched])
    for k in ref:
        assert torch.allclose(ours[k], ref[k], rtol=1e-5), (k, float(ours[k]), float(ref[k]))
    # B's label no longer matters; at weight 1 its anchors are positives and the loss differs (the
    # classification term hardly moves at init: every positive anchor costs about the same and the
    # normaliser grows with them)
    relabel = det.loss([img], [{**t, "labels": torch.tensor([0, 0]), "weights": torch.tensor([1.0, 0.0])}])
    assert float(relabel["classification"]) == pytest.approx(float(ours["classification"]), rel=1e-6)
    full = det.loss([img], [t])
    assert float(full["bbox_regression"]) != pytest.approx(float(ours["bbox_regression"]), rel=1e-3)


def test_weights_scale_regression_linearly(det):
    images, targets = batch()
    full = det.loss(images, targets)
    half = det.loss(images, [{**t, "weights": torch.full((len(t["labels"]),), 0.5)} for t in targets])
    assert math.isclose(float(half["bbox_regression"]), 0.5 * float(full["bbox_regression"]), rel_tol=1e-5)
    assert float(half["classification"]) < float(full["classification"])


def test_negative_image_and_hard_negative_bound():
    neg_img, neg_t = scene(64, 64, [], [], seed=4)
    det = tiny()
    det.train()
    losses = det.loss([neg_img], [neg_t])
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert float(losses["bbox_regression"]) == 0.0 and float(losses["classification"]) > 0
    sum(losses.values()).backward()

    # bounded: an image with no boxes keeps exactly min_negatives_per_image anchors, the hardest
    det.max_negatives_per_positive, det.min_negatives_per_image = 3.0, 5
    ours = float(det.loss([neg_img], [neg_t])["classification"])
    image_list, _ = det.model.transform([neg_img])
    feats = list(det.model.backbone(image_list.tensors).values())
    logits = det.model.head(feats)["cls_logits"][0]
    per_anchor = sigmoid_focal_loss(logits, torch.zeros_like(logits), reduction="none").sum(1)
    assert ours == pytest.approx(float(per_anchor.topk(5).values.sum()), rel=1e-5)  # / max(1, 0 positives)


def test_loss_falls_over_a_few_steps():
    det = tiny()
    images, targets = batch()
    images, targets = images[:1], targets[:1]
    det.train()
    opt = torch.optim.Adam(det.parameters(), lr=5e-4)  # 1e-3 spikes with live BN
    totals = []
    for _ in range(8):
        loss = sum(det.loss(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss))
    assert np.mean(totals[-2:]) < 0.85 * np.mean(totals[:2]), totals


def test_predict_fields_and_original_coordinates(det):
    images, _ = batch()
    images = [images[0], torch.nn.functional.interpolate(images[1][None], size=(96, 72))[0]]
    out = det.predict(images, score_threshold=0.005)
    assert det.training  # predict restores the mode
    det.eval()
    with torch.no_grad():
        det.model.score_thresh = 0.005
        ref = det.model(images)
        det.model.score_thresh = 0.05
        image_list, _ = det.model.transform(images)
        feats = list(det.model.backbone(image_list.tensors).values())
    det.train()
    for i, (d, r, img) in enumerate(zip(out, ref, images)):
        assert isinstance(d, Detections)
        h, w = img.shape[-2:]
        assert d.image_size == (w, h)
        n = len(d)
        assert n == len(r["boxes"]) > 0
        assert d.class_probs.shape == (n, 2) and d.class_probs.dtype == np.float32
        assert d.features.shape == (n, det.feature_dim) == (n, 64)
        assert d.loc_quality is None and det.has_loc_quality is False
        np.testing.assert_allclose(d.boxes.xyxy, r["boxes"].numpy(), atol=1e-3)
        np.testing.assert_array_equal(d.labels, r["labels"].numpy())
        np.testing.assert_allclose(d.scores, r["scores"].numpy(), rtol=1e-5)
        np.testing.assert_allclose(d.class_probs[np.arange(n), d.labels], d.scores, rtol=1e-6)
        # every feature vector is one FPN cell of this image
        cells = torch.cat([f[i].flatten(1).T for f in feats]).numpy()
        dist = ((d.features[:, None, :] - cells[None]) ** 2).sum(-1).min(1)
        assert dist.max() < 1e-8
    empty = det.predict(images[:1], score_threshold=1.0)[0]
    assert len(empty) == 0 and empty.features.shape == (0, 64)


def test_config_rebuilds_same_model(det):
    again = create_detector(**json.loads(json.dumps(det.config)))  # as a checkpoint stores it
    assert isinstance(again, RetinaNetDetector)
    a, b = det.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    again.load_state_dict(a)
    images, _ = batch()
    np.testing.assert_allclose(det.predict(images[:1])[0].scores, again.predict(images[:1])[0].scores, rtol=1e-6)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="box_loss"):
        build_retinanet(num_classes=2, box_loss="iou", **TINY)
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_retinanet(num_classes=2, anchor_sizes=(32, 64), **TINY)
