"""FCOS + IoU branch: training signal, predict contract, per-box weights, negatives, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from boxloop.detectors import create_detector
from boxloop.detectors.base import Detector
from boxloop.detectors.common import check_targets, prepare_images
from boxloop.detectors.fcos import match_locations
from boxloop.structures import Detections

COLOURS = [(1.0, 0.1, 0.1), (0.1, 0.2, 1.0)]
SMALL = dict(min_size=96, max_size=128, fpn_channels=32, head_convs=1)


def scene(h: int, w: int, boxes: list[tuple[tuple[int, int, int, int], int]]):
    """A grey image with filled coloured rectangles, and its target."""
    img = torch.full((3, h, w), 0.45)
    for (x0, y0, x1, y1), c in boxes:
        img[:, y0:y1, x0:x1] = torch.tensor(COLOURS[c])[:, None, None]
    target = {
        "boxes": torch.tensor([b for b, _ in boxes], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([c for _, c in boxes], dtype=torch.int64),
    }
    return img, target



@pytest.fixture(scope="module")
def trained(one_thread):
    """A tiny detector trained a few Adam steps on three generated images (one negative)."""
    torch.manual_seed(0)
    det = create_detector("fcos", num_classes=2, pretrained_backbone=True, **SMALL)
    data = [scene(96, 96, [((10, 12, 52, 44), 0)]),
            scene(80, 112, [((50, 30, 100, 72), 1), ((6, 8, 34, 30), 0)]),
            scene(96, 72, [])]
    images, targets = [d[0] for d in data], [d[1] for d in data]
    opt = torch.optim.Adam([p for p in det.parameters() if p.requires_grad], lr=2e-3)
    det.train()
    history = []
    for _ in range(16):
        losses = det.loss(images, targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return det, images, targets, history


def test_is_a_detector(trained):
    det = trained[0]
    assert isinstance(det, Detector)
    assert det.has_loc_quality and det.feature_dim == 32 and det.num_classes == 2


def test_loss_falls(trained):
    history = trained[3]
    first, last = history[0], history[-1]
    assert all(np.isfinite(v) for h in history for v in h.values())
    assert sum(last.values()) < 0.6 * sum(first.values())
    assert last["bbox_regression"] < first["bbox_regression"]


def test_predict_fields_and_original_coordinates(trained):
    det, images, targets, _ = trained
    out = det.predict(images, score_threshold=0.01)
    assert len(out) == 3 and all(isinstance(d, Detections) for d in out)
    for img, d in zip(images, out):
        h, w = img.shape[-2:]
        assert d.image_size == (w, h)
        n = len(d)
        assert d.class_probs.shape == (n, 2) and d.class_probs.dtype == np.float32
        assert d.loc_quality.shape == (n,) and d.features.shape == (n, 32)
        assert d.labels.dtype == np.int64 and d.scores.dtype == np.float32
        assert ((d.class_probs >= 0) & (d.class_probs <= 1)).all()
        assert ((d.loc_quality >= 0) & (d.loc_quality <= 1)).all()
        assert (d.scores >= 0.01).all() and (np.diff(d.scores) <= 1e-6).all()
        # score = class probability of the label x predicted IoU (plain product, LocAwareAL eq. 5.1)
        np.testing.assert_allclose(d.scores, d.class_probs[np.arange(n), d.labels] * d.loc_quality, rtol=1e-5)
        assert (d.boxes.xyxy >= 0).all() and (d.boxes.xyxy[:, [0, 2]] <= w).all()
        assert (d.boxes.xyxy[:, [1, 3]] <= h).all() and d.boxes.nondegenerate().all()
        assert n <= det.model.detections_per_img
    # the best detection of the first image sits on its rectangle, with the right label
    from boxloop.structures import iou
    best = out[0][np.array([0])]
    assert iou(best.boxes, targets[0]["boxes"].numpy())[0, 0] > 0.5 and best.labels[0] == 0


def test_boxes_scale_with_the_image(trained):
    """The same scene at 64 and 128 px is resized to the same input: boxes must differ by 2x."""
    det = trained[0]
    small, _ = scene(64, 64, [((8, 8, 36, 30), 0)])
    big = torch.nn.functional.interpolate(small[None], size=(128, 128), mode="nearest")[0]
    a, b = det.predict([small, big], score_threshold=0.02)
    # resizing 64->96 and 128->96 interpolate differently, so compare the best box, not all of them
    assert len(a) > 0 and len(b) > 0 and a.labels[0] == b.labels[0]
    np.testing.assert_allclose(b.boxes.xyxy[0], 2 * a.boxes.xyxy[0], atol=2.0)
    assert abs(float(a.scores[0]) - float(b.scores[0])) < 0.05


def test_features_are_fpn_cells(trained):
    det, images, _, _ = trained
    d = det.predict(images[:1], score_threshold=0.01)[0]
    det.eval()
    with torch.no_grad():
        fw = det.forward_outputs(prepare_images(images[:1]), None)
    cells = torch.cat([f.flatten(2) for f in fw.features], dim=2)[0].T.numpy()  # (L, D)
    dist = np.abs(d.features[:, None, :] - cells[None]).max(axis=2).min(axis=1)
    assert (dist < 1e-5).all()


def _raw(det, images, targets):
    images = prepare_images(images)
    targets = check_targets(targets, det.num_classes, images)
    return det.forward_outputs(images, targets)


def test_weight_zero_box_is_ignored():
    """Box B with weight 0: regression/IoU terms equal those of A alone; in the class term B's
    locations are ignored (not background), so it equals A-alone's minus their background loss."""
    torch.manual_seed(1)
    det = create_detector("fcos", num_classes=2, pretrained_backbone=True, **SMALL)
    det.train()
    img, t_both = scene(96, 96, [((4, 4, 40, 36), 0), ((56, 54, 92, 92), 1)])
    t_both["weights"] = torch.tensor([1.0, 0.0])
    t_a = {"boxes": t_both["boxes"][:1], "labels": t_both["labels"][:1]}
    with torch.no_grad():
        fw_both = _raw(det, [img], [t_both])
        fw_a = _raw(det, [img], [t_a])
        l_both, l_a = det.compute_loss(fw_both), det.compute_loss(fw_a)
    torch.testing.assert_close(fw_both.cls_logits, fw_a.cls_logits)
    assert float(l_a["bbox_regression"]) > 0
    torch.testing.assert_close(l_both["bbox_regression"], l_a["bbox_regression"])
    torch.testing.assert_close(l_both["iou"], l_a["iou"])
    # independent reference for the class term: torchvision's focal loss over the locations
    b_boxes = fw_both.targets[0]["boxes"][1:]
    loc_b = match_locations(fw_a.points, fw_a.strides.clone(), b_boxes, fw_a.num_per_level) >= 0
    loc_a = match_locations(fw_a.points, fw_a.strides.clone(), fw_a.targets[0]["boxes"], fw_a.num_per_level) >= 0
    assert loc_b.sum() > 0 and not (loc_a & loc_b).any()
    b_background = sigmoid_focal_loss(fw_a.cls_logits[0, loc_b], torch.zeros_like(fw_a.cls_logits[0, loc_b]),
                                      reduction="sum") / loc_a.sum()
    torch.testing.assert_close(l_both["classification"], l_a["classification"] - b_background)
    assert l_both["classification"] < l_a["classification"]


def test_weight_scales_the_box_terms():
    torch.manual_seed(2)
    det = create_detector("fcos", num_classes=2, pretrained_backbone=False, **SMALL)
    img, t = scene(96, 96, [((10, 10, 60, 50), 1)])
    with torch.no_grad():
        fw1 = _raw(det, [img], [t])
        fw_half = _raw(det, [img], [{**t, "weights": torch.tensor([0.5])}])
        l1, lh = det.compute_loss(fw1), det.compute_loss(fw_half)
    torch.testing.assert_close(lh["bbox_regression"], 0.5 * l1["bbox_regression"])
    torch.testing.assert_close(lh["iou"], 0.5 * l1["iou"])
    assert lh["classification"] < l1["classification"]


def test_negative_image_trains_as_negative():
    torch.manual_seed(3)
    det = create_detector("fcos", num_classes=2, pretrained_backbone=False, **SMALL)
    img, t = scene(64, 80, [])
    losses = det.loss([img], [t])
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["classification"].detach()) > 0 and float(losses["bbox_regression"].detach()) == 0
    sum(losses.values()).backward()  # graph stays connected with no positives
    assert det.model.head.classification_head.cls_logits.weight.grad.abs().sum() > 0


def test_bounded_negatives_keep_the_hardest():
    torch.manual_seed(4)
    det = create_detector("fcos", num_classes=2, pretrained_backbone=False, max_negatives_per_positive=3,
                          min_negatives_per_image=5, **SMALL)
    neg_img, neg_t = scene(64, 64, [])
    with torch.no_grad():
        fw = _raw(det, [neg_img], [neg_t])
        loss = det.compute_loss(fw)["classification"]
    focal = sigmoid_focal_loss(fw.cls_logits[0], torch.zeros_like(fw.cls_logits[0]), reduction="none").sum(-1)
    torch.testing.assert_close(loss, focal.topk(5).values.sum())  # no positive: min_negatives_per_image
    img, t = scene(96, 96, [((10, 10, 60, 50), 1)])
    with torch.no_grad():
        fw = _raw(det, [img], [t])
        bounded = det.compute_loss(fw)["classification"]
        det.max_negatives_per_positive = None
        full = det.compute_loss(fw)["classification"]
    assert bounded < full


def test_config_round_trip(trained):
    det = trained[0]
    again = create_detector(**{**det.config, "pretrained_backbone": False})
    assert list(again.state_dict()) == list(det.state_dict())
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in det.state_dict().items()}
    again.load_state_dict(det.state_dict())
    img = trained[1][0]
    a, b = det.predict([img]), again.predict([img])
    np.testing.assert_allclose(a[0].boxes.xyxy, b[0].boxes.xyxy, atol=1e-4)


def test_bad_targets_are_named():
    det = create_detector("fcos", num_classes=2, pretrained_backbone=False, **SMALL)
    img, t = scene(64, 64, [((10, 10, 30, 30), 0)])
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        det.loss([img], [{**t, "labels": torch.tensor([2])}])
    with pytest.raises(ValueError, match="box 0 .* no area"):
        det.loss([img], [{**t, "boxes": torch.tensor([[10.0, 10, 10, 30]])}])
    with pytest.raises(ValueError, match="1 boxes but 2 weights"):
        det.loss([img], [{**t, "weights": torch.ones(2)}])
