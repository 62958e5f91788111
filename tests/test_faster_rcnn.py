"""Faster R-CNN detector: losses against torchvision's own, weights, negatives, predict contract.

Tiny on purpose (random-init Lite0, FPN 64 channels, 64-96 px images): the whole file runs on CPU
in well under a minute.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from boxloop.detectors import create_detector
from boxloop.detectors.faster_rcnn import FasterRCNNDetector, build_faster_rcnn
from boxloop.detectors.torchvision_parts import bounded_num_negatives, select_negatives
from boxloop.structures import Detections, iou

TINY = dict(pretrained_backbone=False, min_size=64, max_size=96, fpn_channels=64, representation_size=128,
            rpn_post_nms_top_n_train=200, rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)


def tiny(**kw) -> FasterRCNNDetector:
    torch.manual_seed(0)
    return build_faster_rcnn(num_classes=2, **{**TINY, **kw})


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


@pytest.fixture(scope="module")
def det() -> FasterRCNNDetector:
    return tiny()


def batch():
    a = scene(64, 80, [(8, 10, 40, 44), (48, 20, 74, 58)], [0, 1], seed=1)
    b = scene(72, 64, [(20, 16, 52, 50)], [1], seed=2)
    return [a[0], b[0]], [a[1], b[1]]


def tv_targets(targets):
    return [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]


def test_unit_weights_equal_torchvision_losses(det):
    """With every weight 1 and no options, our re-assembled forward is torchvision's."""
    images, targets = batch()
    det.train()
    torch.manual_seed(123)
    ref = det.model(images, tv_targets(targets))
    torch.manual_seed(123)
    ours = det.loss(images, [{**t, "weights": torch.ones(len(t["labels"]))} for t in targets])
    assert set(ours) == set(ref) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    for k in ref:
        assert torch.allclose(ours[k], ref[k], rtol=1e-5, atol=1e-7), (k, float(ours[k]), float(ref[k]))


def test_weights_scale_box_losses_linearly(det):
    images, targets = batch()
    det.train()
    torch.manual_seed(7)
    full = {k: v.detach() for k, v in det.loss(images, targets).items()}
    torch.manual_seed(7)
    half = {k: v.detach() for k, v in
            det.loss(images, [{**t, "weights": torch.full((len(t["labels"]),), 0.5)} for t in targets]).items()}
    for k in ("loss_box_reg", "loss_rpn_box_reg"):
        assert float(full[k]) > 0
        assert math.isclose(float(half[k]), 0.5 * float(full[k]), rel_tol=1e-5)
    # the classification losses mix weighted positives with unweighted background: strictly between
    assert 0.5 * float(full["loss_classifier"]) < float(half["loss_classifier"]) < float(full["loss_classifier"])


def test_weight_zero_box_contributes_nothing(det):
    """A weight-0 box: its label is irrelevant (its anchors/RoIs are excluded), unlike weight 1."""
    img, t = scene(64, 80, [(8, 10, 40, 44), (48, 20, 74, 58)], [0, 1], seed=3)
    det.train()

    def run(label_b: int, weight_b: float):
        target = {"boxes": t["boxes"], "labels": torch.tensor([0, label_b]), "weights": torch.tensor([1.0, weight_b])}
        torch.manual_seed(11)
        return {k: float(v.detach()) for k, v in det.loss([img], [target]).items()}

    zero_a, zero_b = run(0, 0.0), run(1, 0.0)
    assert zero_a == zero_b
    one_a, one_b = run(0, 1.0), run(1, 1.0)
    assert one_a["loss_classifier"] != one_b["loss_classifier"]


def test_matching_ignores_rois_of_weight_zero_box(det):
    """Hand-made proposals: on the weight-0 box -> ignore (-1); elsewhere -> background; on the
    weight-1 box -> its class (+1 for torchvision's background) with its weight."""
    target = {"boxes": torch.tensor([[0.0, 0, 20, 20], [40, 40, 60, 60]]), "labels": torch.tensor([1, 2]),
              "weights": torch.tensor([0.7, 0.0])}
    proposals = torch.tensor([[0.0, 0, 20, 20], [1, 1, 21, 21], [40, 40, 60, 60], [41, 40, 60, 61],
                              [70, 0, 90, 20], [0, 70, 20, 90]])
    _, labels, weights = det._match_proposals([proposals], [target])
    assert labels[0].tolist() == [1, 1, -1, -1, 0, 0]
    assert torch.allclose(weights[0][:2], torch.tensor([0.7, 0.7]))
    assert weights[0][4:].tolist() == [1.0, 1.0]


def test_negative_images_train_and_negatives_can_be_bounded():
    det = tiny(max_negatives_per_positive=3.0, min_negatives_per_image=0)
    neg_img, neg_t = scene(64, 64, [], [], seed=4)
    det.train()
    losses = det.loss([neg_img], [neg_t])
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert float(losses["loss_classifier"]) == 0.0  # no positive -> no background RoI sampled
    sum(losses.values()).backward()  # graph is intact even with zero RoIs

    det.min_negatives_per_image = 5
    labels = [torch.tensor([1] * 4 + [0] * 100 + [-1] * 3), torch.zeros(50, dtype=torch.int64)]
    picked = det._sample(labels, {}, [], [])
    assert (labels[0][picked[0]] >= 1).sum() == 4
    assert (labels[0][picked[0]] == 0).sum() == 12  # 3 per positive
    assert (labels[0][picked[0]] == -1).sum() == 0
    assert picked[1].numel() == 5  # negative image: the per-image minimum

    default = tiny()
    default.train()
    losses = default.loss([neg_img], [neg_t])
    assert all(math.isfinite(float(v)) for v in losses.values()) and float(losses["loss_classifier"]) > 0


def test_hard_negatives_pick_highest_loss():
    hardness = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2])
    idx = torch.tensor([10, 11, 12, 13, 14])
    assert sorted(select_negatives(idx, 2, hardness).tolist()) == [11, 13]
    assert select_negatives(idx, 9, hardness).tolist() == idx.tolist()
    # ratio x positives, but never fewer than the minimum, never more than room or supply
    assert bounded_num_negatives(4, 100, 60, 3.0, 0) == 12
    assert bounded_num_negatives(0, 100, 60, 3.0, 5) == 5
    assert bounded_num_negatives(4, 100, 8, 3.0, 0) == 8
    assert bounded_num_negatives(4, 100, 60, None, 0) == 60

    det = tiny(hard_negatives=True, max_negatives_per_positive=2.0, min_negatives_per_image=4)
    images, targets = batch()
    det.train()
    losses = det.loss(images, targets)
    assert all(math.isfinite(float(v)) for v in losses.values())


def test_loss_falls_over_a_few_steps():
    det = tiny()
    images, targets = batch()
    det.train()
    opt = torch.optim.Adam(det.parameters(), lr=1e-3)
    totals = []
    for step in range(8):
        torch.manual_seed(step)
        loss = sum(det.loss(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss))
    assert np.mean(totals[-2:]) < 0.75 * np.mean(totals[:2]), totals


def test_predict_fields_and_original_coordinates(det):
    images, _ = batch()
    images = [images[0], torch.nn.functional.interpolate(images[1][None], size=(96, 72))[0]]
    out = det.predict(images, score_threshold=0.05)
    assert len(out) == 2 and all(isinstance(d, Detections) for d in out)
    # torchvision's own eval path (its postprocess + transform.postprocess) as the reference
    det.eval()
    with torch.no_grad():
        ref = det.model(images)
    det.train()
    for d, r, img in zip(out, ref, images):
        h, w = img.shape[-2:]
        assert d.image_size == (w, h)
        n = len(d)
        assert n == len(r["boxes"]) > 0
        assert d.class_probs.shape == (n, 2) and d.class_probs.dtype == np.float32
        assert d.features.shape == (n, det.feature_dim) == (n, 128) and d.features.dtype == np.float32
        assert d.loc_quality is None and det.has_loc_quality is False
        assert d.labels.dtype == np.int64 and d.scores.dtype == np.float32
        np.testing.assert_allclose(d.boxes.xyxy, r["boxes"].numpy(), atol=1e-3)
        np.testing.assert_array_equal(d.labels, r["labels"].numpy() - 1)
        np.testing.assert_allclose(d.scores, r["scores"].numpy(), rtol=1e-5)
        np.testing.assert_allclose(d.class_probs[np.arange(n), d.labels], d.scores, rtol=1e-6)
        assert (d.class_probs.sum(1) <= 1 + 1e-5).all()
        xyxy = d.boxes.xyxy
        assert (xyxy >= 0).all() and (xyxy[:, [0, 2]] <= w).all() and (xyxy[:, [1, 3]] <= h).all()

    empty = det.predict(images[:1], score_threshold=1.0)[0]
    assert len(empty) == 0 and empty.class_probs.shape == (0, 2) and empty.features.shape == (0, 128)


def test_config_rebuilds_same_model(det):
    again = create_detector(**json.loads(json.dumps(det.config)))  # as a checkpoint stores it
    assert isinstance(again, FasterRCNNDetector)
    a, b = det.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    again.load_state_dict(a)
    images, _ = batch()
    p, q = det.predict(images[:1]), again.predict(images[:1])
    np.testing.assert_allclose(p[0].boxes.xyxy, q[0].boxes.xyxy, atol=1e-4)


def test_bad_targets_are_named():
    det = tiny()
    img, t = scene(64, 64, [(5, 5, 20, 20)], [0])
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        det.loss([img], [{**t, "labels": torch.tensor([2])}])
    with pytest.raises(ValueError, match="weights"):
        det.loss([img], [{**t, "weights": torch.tensor([-1.0])}])
    with pytest.raises(ValueError, match="no area"):
        det.loss([img], [{**t, "boxes": torch.tensor([[5.0, 5, 5, 20]])}])


# -- CertaintySSOD's interval head (box_head="interval") ------------------------------------------------


def test_interval_head_trains_and_predicts_loc_quality(one_thread):
    """A few steps on one batch: the loss falls, the top box finds an object, v lies in [1/K, 1],
    scores are p (== class_probs[label]) and boxes come in descending p*v (the NMS ranking)."""
    k = 10
    det = tiny(box_head="interval", num_intervals=k)
    assert det.has_loc_quality and not tiny().has_loc_quality
    images, targets = batch()
    opt = torch.optim.SGD(det.parameters(), lr=0.02, momentum=0.9)
    totals = []
    det.train()
    for _ in range(30):
        torch.manual_seed(0)
        losses = det.loss(images, targets)
        assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_side_cls",
                               "loss_side_reg"}
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert np.mean(totals[-5:]) < 0.8 * totals[0], totals
    dets = det.predict(images, score_threshold=0.05)
    for d, t in zip(dets, targets):
        assert len(d) > 0 and d.loc_quality is not None and d.loc_quality.shape == (len(d),)
        assert (d.loc_quality >= 1 / k - 1e-6).all() and (d.loc_quality <= 1 + 1e-6).all()
        np.testing.assert_allclose(d.class_probs[np.arange(len(d)), d.labels], d.scores, rtol=1e-6)
        pv = d.scores * d.loc_quality
        assert (np.diff(pv) <= 1e-6).all()
        best = iou(d.boxes.xyxy[:1], t["boxes"].numpy())[0]
        assert best.max() > 0.5 and d.labels[0] == int(t["labels"][best.argmax()])


def test_interval_config_round_trip(one_thread):
    det = tiny(box_head="interval", num_intervals=12)
    again = create_detector(**json.loads(json.dumps(det.config)))
    assert again.config == det.config and again.has_loc_quality
    assert again.model.roi_heads.box_predictor.num_intervals == 12
    again.load_state_dict(det.state_dict())
    images, _ = batch()
    p, q = det.predict(images[:1], score_threshold=0.0), again.predict(images[:1], score_threshold=0.0)
    np.testing.assert_allclose(p[0].loc_quality, q[0].loc_quality, atol=1e-6)
    with pytest.raises(ValueError, match="box_head"):
        tiny(box_head="cascade")


def test_interval_weights_scale_side_losses_and_weight_zero_box_contributes_nothing(one_thread):
    det = tiny(box_head="interval", num_intervals=10)
    images, targets = batch()
    det.train()

    def run(tgts):
        torch.manual_seed(7)
        return {k: float(v.detach()) for k, v in det.loss(images, tgts).items()}

    full = run(targets)
    half = run([{**t, "weights": torch.full((len(t["labels"]),), 0.5)} for t in targets])
    for k in ("loss_side_cls", "loss_side_reg", "loss_rpn_box_reg"):
        assert full[k] > 0 and math.isclose(half[k], 0.5 * full[k], rel_tol=1e-5), k
    # a weight-0 box: its label is irrelevant, so it adds nothing to any loss
    img, t = scene(64, 80, [(8, 10, 40, 44), (48, 20, 74, 58)], [0, 1], seed=3)

    def one(label_b: int, weight_b: float):
        torch.manual_seed(11)
        target = {"boxes": t["boxes"], "labels": torch.tensor([0, label_b]), "weights": torch.tensor([1.0, weight_b])}
        return {k: float(v.detach()) for k, v in det.loss([img], [target]).items()}

    assert one(0, 0.0) == one(1, 0.0)
    # every weight 0: the side losses are exactly 0, not NaN
    losses = det.loss([img], [{**t, "weights": torch.zeros(2)}])
    assert float(losses["loss_side_cls"]) == 0.0 and float(losses["loss_side_reg"]) == 0.0
