"""The Detector contract, for every detector in the registry: loss, negatives, per-box weights,
predict's fields in original pixels, config round trip, and clear errors for unknown options.

Tiny on purpose (random-init backbones, 64-96 px generated images), CPU, one thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boxloop.detectors import DETECTORS, create_detector
from boxloop.detectors.base import Detector
from boxloop.structures import Detections

# small variants of each detector, so that a few steps run in seconds
SMALL: dict[str, dict] = {
    "fcos": dict(min_size=96, max_size=96, fpn_channels=32, head_convs=1),
    "fcos_lite": dict(min_size=96, max_size=96, channels=32, head_convs=1),
    "faster_rcnn": dict(min_size=96, max_size=96, fpn_channels=32, representation_size=128,
                        rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=200, rpn_post_nms_top_n_test=100,
                        box_batch_size_per_image=64),
    "retinanet": dict(min_size=96, max_size=96, fpn_channels=32),
}


def test_every_registered_detector_has_a_small_variant_here():
    assert set(SMALL) == set(DETECTORS)


def scene(h: int, w: int, boxes: list[tuple[int, int, int, int]], labels: list[int], seed: int = 0):
    """A grey image with coloured rectangles (red = class 0, blue = class 1) and its target."""
    g = torch.Generator().manual_seed(seed)
    img = 0.45 + 0.05 * torch.rand(3, h, w, generator=g)
    colours = {0: (0.9, 0.1, 0.1), 1: (0.1, 0.2, 0.9)}
    for (x1, y1, x2, y2), lab in zip(boxes, labels):
        img[:, y1:y2, x1:x2] = torch.tensor(colours[lab])[:, None, None]
    return img, {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                 "labels": torch.tensor(labels, dtype=torch.int64)}


def data():
    a = scene(96, 96, [(10, 12, 52, 44)], [0], seed=1)
    b = scene(80, 112, [(50, 30, 100, 72), (6, 8, 34, 30)], [1, 0], seed=2)
    c = scene(96, 72, [], [], seed=3)  # a negative image
    return [a[0], b[0], c[0]], [a[1], b[1], c[1]]


def build(name: str, **kw) -> Detector:
    return create_detector(name, num_classes=2, seed=0, pretrained_backbone=False, **{**SMALL[name], **kw})


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def trained(request, one_thread):
    name = request.param
    det = build(name)
    images, targets = data()
    opt = torch.optim.Adam([p for p in det.parameters() if p.requires_grad], lr=2e-3)
    det.train()
    history = []
    for _ in range(12):
        losses = det.loss(images, targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(float(total.detach()))
    return name, det, images, history


def test_is_a_detector_and_loss_falls(trained):
    name, det, _, history = trained
    assert isinstance(det, Detector) and det.num_classes == 2 and det.config["name"] == name
    assert all(np.isfinite(history))
    # the trend, not the last step: fcos_lite's quality target is the IoU of its own boxes, so as the
    # boxes improve more locations count as fitting (weighed 10x) and that term can rise for a step
    assert np.mean(history[-4:]) < history[0], history


def test_predict_fields_in_original_pixels(trained):
    name, det, images, _ = trained
    out = det.predict(images, score_threshold=0.0)
    assert len(out) == 3 and all(isinstance(d, Detections) for d in out)
    for img, d in zip(images, out):
        h, w = img.shape[-2:]
        n = len(d)
        assert d.image_size == (w, h)
        assert d.class_probs.shape == (n, 2)
        assert (d.loc_quality is not None) == bool(det.has_loc_quality)
        if d.loc_quality is not None:
            assert d.loc_quality.shape == (n,) and ((d.loc_quality >= 0) & (d.loc_quality <= 1)).all()
        if det.feature_dim is not None:
            assert d.features.shape == (n, det.feature_dim)
        assert (d.boxes.xyxy >= 0).all() and (d.boxes.xyxy[:, [0, 2]] <= w).all()
        assert (d.boxes.xyxy[:, [1, 3]] <= h).all()


def test_negative_image_alone_trains(trained):
    name = trained[0]
    det = build(name)
    det.train()
    img, t = scene(64, 64, [], [])
    losses = det.loss([img], [t])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()  # a graph exists: negatives teach the background


def test_weight_zero_box_changes_the_loss(trained):
    """A box with weight 0 must not train like a box of weight 1."""
    name = trained[0]
    det = build(name)
    det.train()
    images, targets = data()
    torch.manual_seed(0)
    full = {k: float(v.detach()) for k, v in det.loss(images, targets).items()}
    torch.manual_seed(0)
    zero = [{**t, "weights": torch.zeros(len(t["labels"]))} for t in targets]
    muted = {k: float(v.detach()) for k, v in det.loss(images, zero).items()}
    assert full != muted


def test_config_round_trip(trained):
    name, det, images, _ = trained
    again = create_detector(**{**det.config, "pretrained_backbone": False})
    assert list(again.state_dict()) == list(det.state_dict())
    again.load_state_dict(det.state_dict())
    a, b = det.predict(images[:1], score_threshold=0.0), again.predict(images[:1], score_threshold=0.0)
    np.testing.assert_allclose(a[0].boxes.xyxy, b[0].boxes.xyxy, atol=1e-3)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_unknown_option_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match=rf"detector '{name}' has no option 'no_such_option'.*options are: .*min_size"):
        create_detector(name, num_classes=2, no_such_option=3)


def test_unknown_detector_lists_the_registry():
    with pytest.raises(ValueError, match="unknown detector 'yolo'.*fcos_lite"):
        create_detector("yolo", num_classes=2)
