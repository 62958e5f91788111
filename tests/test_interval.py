"""Interval localization (CertaintySSOD eqs. 3-5): the coder, the quality score and the box head."""

from __future__ import annotations

import math

import pytest
import torch

from boxloop.detectors.interval import IntervalBoxCoder, IntervalBoxHead, localization_quality


def one_hot_logits(bins: torch.Tensor, k: int, big: float = 1e4) -> torch.Tensor:
    return torch.nn.functional.one_hot(bins, k).float() * big


# -- eq. 4 ------------------------------------------------------------------------------------------
def test_quality_eq4_hand_computed():
    # K = 3; per side the interval probabilities are
    #   (0.5, 0.3, 0.2) -> top 0.5; (0.6, 0.2, 0.2) -> 0.6; uniform -> 1/3; (0.1, 0.1, 0.8) -> 0.8
    # v = (0.5 + 0.6 + 1/3 + 0.8) / 4 = 2.233333 / 4 = 0.558333
    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.6, 0.2, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.1, 0.8]]])
    logits = probs.log() + 7.0  # softmax is shift-invariant
    assert localization_quality(logits).item() == pytest.approx(0.558333, abs=1e-5)


def test_quality_is_one_for_one_hot_and_one_over_k_for_uniform():
    k = 30
    bins = torch.tensor([[0, 5, 29, 12], [3, 3, 3, 3]])
    torch.testing.assert_close(localization_quality(one_hot_logits(bins, k)), torch.ones(2))
    torch.testing.assert_close(localization_quality(torch.zeros(2, 4, k)), torch.full((2,), 1 / k))
    with pytest.raises(ValueError, match=r"\(N, 4, K\)"):
        localization_quality(torch.zeros(2, 3, k))


# -- the coder --------------------------------------------------------------------------------------
def test_encode_hand_computed():
    coder = IntervalBoxCoder(num_intervals=30, side_range=0.5)
    # proposal w=30, h=60: x segments start at side - 15 with intervals of 1 px, y at side - 30, 2 px
    prop = torch.tensor([[10.0, 20.0, 40.0, 80.0]])
    gt = torch.tensor([[12.3, 15.0, 41.75, 95.0]])
    bins, offsets = coder.encode(gt, prop)
    # x1: (12.3 - (-5)) / 1 = 17.3 -> bin 17, offset 17.3 - 17.5 = -0.2
    # y1: (15 - (-10)) / 2 = 12.5 -> bin 12, offset 0.0
    # x2: (41.75 - 25) / 1 = 16.75 -> bin 16, offset 0.25
    # y2: (95 - 50) / 2 = 22.5 -> bin 22, offset 0.0
    assert bins.tolist() == [[17, 12, 16, 22]]
    torch.testing.assert_close(offsets, torch.tensor([[-0.2, 0.0, 0.25, 0.0]]), atol=1e-5, rtol=0)


def test_decode_inverts_encode_inside_the_range():
    g = torch.Generator().manual_seed(0)
    coder = IntervalBoxCoder(num_intervals=30)
    xy = torch.rand(200, 2, generator=g) * 200
    wh = torch.rand(200, 2, generator=g) * 100 + 5
    props = torch.cat([xy, xy + wh], dim=1)
    # gt sides moved by less than half the proposal size: inside the segment
    shift = (torch.rand(200, 4, generator=g) - 0.5) * 0.98 * torch.cat([wh, wh], dim=1)
    gt = props + shift
    bins, offsets = coder.encode(gt, props)
    assert bins.min() >= 0 and bins.max() <= 29 and offsets.abs().max() <= 0.5 + 1e-6
    side_offsets = torch.zeros(200, 4, 30).scatter(-1, bins.unsqueeze(-1), offsets.unsqueeze(-1))
    decoded = coder.decode(one_hot_logits(bins, 30), side_offsets, props)
    torch.testing.assert_close(decoded, gt, atol=1e-3, rtol=1e-5)
    # decoded sides never cross with the default range 0.5: x1 <= x2, y1 <= y2 even for random output
    rnd = coder.decode(torch.randn(200, 4, 30, generator=g), torch.randn(200, 4, 30, generator=g), props)
    assert (rnd[:, 2] >= rnd[:, 0]).all() and (rnd[:, 3] >= rnd[:, 1]).all()


def test_boxes_outside_the_range_clamp_to_its_ends():
    coder = IntervalBoxCoder(num_intervals=30)
    prop = torch.tensor([[10.0, 20.0, 40.0, 80.0]])
    # x1 far left of its segment [-5, 25]; y2 far below its segment [50, 110]
    gt = torch.tensor([[-100.0, 15.0, 41.75, 200.0]])
    bins, offsets = coder.encode(gt, prop)
    assert bins[0, 0].item() == 0 and offsets[0, 0].item() == pytest.approx(-0.5)
    assert bins[0, 3].item() == 29 and offsets[0, 3].item() == pytest.approx(0.5)
    side_offsets = torch.zeros(1, 4, 30).scatter(-1, bins.unsqueeze(-1), offsets.unsqueeze(-1))
    decoded = coder.decode(one_hot_logits(bins, 30), side_offsets, prop)
    torch.testing.assert_close(decoded, torch.tensor([[-5.0, 15.0, 41.75, 110.0]]), atol=1e-4, rtol=0)


def test_coder_rejects_bad_shapes():
    coder = IntervalBoxCoder(num_intervals=30)
    with pytest.raises(ValueError, match="one gt box per proposal"):
        coder.encode(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(N, 4, 30\)"):
        coder.decode(torch.zeros(1, 4, 20), torch.zeros(1, 4, 20), torch.zeros(1, 4))


# -- the head ---------------------------------------------------------------------------------------
def toy_batch(n=48, d=16, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    bins = torch.randint(0, k, (n, 4), generator=g)
    offsets = torch.rand(n, 4, generator=g) - 0.5
    return x, labels, bins, offsets


def test_head_shapes_and_predict():
    head = IntervalBoxHead(16, num_classes=2, num_intervals=8)
    x, *_ = toy_batch()
    cls, side, off = head(x)
    assert cls.shape == (48, 3) and side.shape == (48, 4, 8) and off.shape == (48, 4, 8)
    props = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(48, 1)
    probs, boxes, v = head.predict(x, props)
    torch.testing.assert_close(probs.sum(1), torch.ones(48))
    assert boxes.shape == (48, 4) and ((v >= 1 / 8 - 1e-6) & (v <= 1)).all()


def test_head_loss_zero_weight_safe_and_weights_honoured():
    head = IntervalBoxHead(16, num_classes=2, num_intervals=8)
    x, labels, bins, offsets = toy_batch()
    out = head(x)
    zero = head.loss(*out, labels, bins, offsets, torch.zeros(48))
    assert all(v.item() == 0.0 for v in zero.values())
    sum(zero.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    # no foreground RoI at all: side losses are 0, not NaN
    bg = head.loss(*head(x), torch.zeros(48, dtype=torch.long), bins, offsets)
    assert bg["loss_side_cls"].item() == 0.0 and bg["loss_side_reg"].item() == 0.0
    assert math.isfinite(bg["loss_classifier"].item())
    # empty batch
    empty = head.loss(*head(x[:0]), labels[:0], bins[:0], offsets[:0])
    assert all(v.item() == 0.0 for v in empty.values())
    # weights scale each RoI: weight 2 everywhere doubles every term; weight only on RoI i gives that
    # RoI's own loss divided by N
    with torch.no_grad():
        out = head(x)
        ones = head.loss(*out, labels, bins, offsets)
        twos = head.loss(*out, labels, bins, offsets, torch.full((48,), 2.0))
        for key in ones:
            assert twos[key].item() == pytest.approx(2 * ones[key].item(), rel=1e-5)
        i = int(torch.nonzero(labels > 0)[0])
        w = torch.zeros(48)
        w[i] = 1.0
        single = head.loss(*out, labels, bins, offsets, w)
        own = head.loss(*(t[i:i + 1] for t in out), labels[i:i + 1], bins[i:i + 1], offsets[i:i + 1])
        for key in own:
            assert single[key].item() == pytest.approx(own[key].item() / 48, rel=1e-5)


def test_head_loss_falls_on_a_toy_problem():
    torch.manual_seed(0)
    head = IntervalBoxHead(16, num_classes=2, num_intervals=8)
    x, labels, bins, offsets = toy_batch()
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(40):
        loss = sum(head.loss(*head(x), labels, bins, offsets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    # after fitting, the decoded boxes of foreground RoIs come back near the encoded targets
    coder = head.coder
    props = torch.tensor([[0.0, 0.0, 80.0, 40.0]]).repeat(48, 1)
    fg = labels > 0
    target = coder.decode_bins(bins, offsets, props)[fg]
    with torch.no_grad():
        _, side, off = head(x)
    decoded = coder.decode(side, off, props)[fg]
    assert (decoded - target).abs().mean() < 2.0  # intervals are 10 px (x) and 5 px (y) wide
