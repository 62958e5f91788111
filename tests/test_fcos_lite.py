"""fcos_lite, the CPU-first default: its FLOP budget (counted, not timed), exact BN folding, the
varifocal quality loss on a hand-computed case, bfloat16 against float32, and old fcos checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from boxloop.defaults import DETECTOR, run_defaults
from boxloop.detectors import create_detector
from boxloop.detectors.backbones import lite0_body
from boxloop.detectors.common import cpu_bf16_supported
from boxloop.detectors.fcos import (distribution_focal_loss, ignored_locations, own_box_iou, quality_focal_loss,
                                    varifocal_loss)
from boxloop.structures import iou

from test_detector_contract import scene


def gflops(det, size: int = 320) -> float:
    det.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        det.predict([torch.rand(3, size, size)])
    return counter.get_total_flops() / 1e9


def test_flop_budget_is_a_third_of_fcos(one_thread):
    """Issue target: <= 2.4 GFLOPs per 320x320 image, as torch.utils.flop_counter counts."""
    lite = gflops(create_detector("fcos_lite", num_classes=3, pretrained_backbone=False))
    old = gflops(create_detector("fcos", num_classes=3, pretrained_backbone=False, min_size=320, max_size=320))
    assert lite <= 2.4, lite
    assert old > 7.0 and old / lite >= 3.0, (old, lite)


def test_it_is_the_default_everywhere():
    assert DETECTOR == "fcos_lite"
    assert run_defaults("cpu").detector == run_defaults("cuda").detector == "fcos_lite"
    assert run_defaults("cpu").image_size == 320 and run_defaults("cuda").image_size == 480
    from boxloop.loop.config import LoopConfig

    assert LoopConfig().detector.model == "fcos_lite"


def test_folding_frozen_batchnorm_is_exact(one_thread):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 128)
    plain, _ = lite0_body(True, trainable_layers=2, fold_frozen=False)
    folded, _ = lite0_body(True, trainable_layers=2, fold_frozen=True)
    plain.eval(), folded.eval()
    with torch.no_grad():
        a, b = plain(x), folded(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
    n_bn = lambda m: sum("BatchNorm" in type(s).__name__ for s in m.modules())  # noqa: E731
    assert n_bn(folded) < n_bn(plain)
    # frozen stays frozen, the top levels still train
    assert not folded.model.conv_stem.weight.requires_grad
    assert folded.model.blocks[6][0].conv_pw.weight.requires_grad


def test_varifocal_loss_on_a_hand_computed_case():
    logits = torch.tensor([0.0, math.log(4.0), -math.log(3.0)])  # q = 0.5, 0.8, 0.25
    target = torch.tensor([0.8, 0.0, 0.0])
    positive = torch.tensor([True, False, False])
    got = varifocal_loss(logits, target, positive).tolist()
    # positive: target-weighted BCE towards 0.8; background: 0.75 * q**2 * -log(1 - q)
    want = [0.8 * -(0.8 * math.log(0.5) + 0.2 * math.log(0.5)),
            0.75 * 0.8 ** 2 * -math.log(0.2),
            0.75 * 0.25 ** 2 * -math.log(0.75)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_quality_focal_loss_on_a_hand_computed_case():
    logits = torch.tensor([0.0, math.log(4.0)])  # q = 0.5, 0.8
    target = torch.tensor([0.8, 0.0])
    got = quality_focal_loss(logits, target).tolist()
    # |target - q|**2 times BCE towards the soft target
    want = [0.3 ** 2 * -(0.8 * math.log(0.5) + 0.2 * math.log(0.5)), 0.8 ** 2 * -math.log(0.2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_distribution_focal_loss_on_a_hand_computed_case():
    """GFL eq. 6: y = 1.25 over bins 0..2 -> -(0.75 log p1 + 0.25 log p2); beyond the last bin -> last bin."""
    logits = torch.log(torch.tensor([[[0.2, 0.5, 0.3]] * 4]))  # probabilities 0.2, 0.5, 0.3 on every side
    target = torch.tensor([[1.25, 0.0, 2.0, 7.0]])
    got = distribution_focal_loss(logits, target)[0]
    want = [-(0.75 * math.log(0.5) + 0.25 * math.log(0.3)), -math.log(0.2),
            -math.log(0.3), -math.log(0.3)]
    assert got.tolist() == pytest.approx(want, abs=1e-3)


def test_distribution_head_decodes_expected_distances_and_reads_quality_off_them(one_thread):
    """fcos_lite's box head: per-side distributions over 0..16 strides; the side is their expected value,
    and the quality depends on their shape (GFLv2's DGQP) without its gradient reaching the boxes."""
    det = create_detector("fcos_lite", num_classes=2, pretrained_backbone=False, box_bins=16)
    head = det.model.head
    feats = [torch.randn(1, 128, s, s) for s in (8, 4, 2)]
    out = head(feats)
    n_loc = 64 + 16 + 4
    assert out["bbox_distribution"].shape == (1, n_loc, 4, 17)
    probs = out["bbox_distribution"].softmax(-1)
    assert torch.allclose(out["bbox_regression"], (probs * torch.arange(17.0)).sum(-1), atol=1e-5)
    out["bbox_ctrness"].sum().backward()
    assert head.quality_mlp[0].weight.grad.abs().sum() > 0  # reads the tower and the distributions
    assert head.box_out.weight.grad is None or head.box_out.weight.grad.abs().sum() == 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head.box_tower.parameters())


def test_own_box_iou_is_the_best_overlap_with_a_trusted_box():
    pred = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 60, 60], [20, 0, 30, 10]]])
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]]), "weights": torch.tensor([1.0, 0.0])}]
    # exact fit 1; half of it 0.5; far from everything 0; on the weight-0 (untrusted) box: 0
    np.testing.assert_allclose(own_box_iou(pred, targets)[0].tolist(), [1.0, 0.5, 0.0, 0.0])
    negative = [{"boxes": torch.zeros(0, 4), "weights": torch.zeros(0)}]
    assert own_box_iou(pred, negative).abs().sum() == 0
    # the location on the weight-0 box gets no quality target at all (its object may be real)
    assert ignored_locations(pred, targets)[0].tolist() == [False, False, False, True]
    assert not ignored_locations(pred, negative).any()
    only_unsure = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "weights": torch.tensor([0.0])}]
    assert ignored_locations(pred, only_unsure)[0].tolist() == [True, True, False, False]


@pytest.fixture(scope="module")
def trained_lite(one_thread):
    det = create_detector("fcos_lite", num_classes=2, seed=0, pretrained_backbone=True, min_size=96, max_size=96,
                          channels=32, head_convs=1)
    a = scene(96, 96, [(10, 12, 52, 44)], [0], seed=1)
    b = scene(80, 112, [(50, 30, 100, 72), (6, 8, 34, 30)], [1, 0], seed=2)
    images, targets = [a[0], b[0]], [a[1], b[1]]
    opt = torch.optim.Adam([p for p in det.parameters() if p.requires_grad], lr=3e-3)
    det.train()
    for _ in range(50):
        loss = sum(det.loss(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return det, images, targets


BF16_U = 2.0 ** -8  # bfloat16 keeps 8 significant bits: one rounding is off by at most 2^-8, relatively


def bf16_logit_bound(det, logits: torch.Tensor) -> float:
    """How far bf16 autocast can move a logit, propagated through the network rather than measured on
    one machine: every conv and linear layer rounds its input, its weight and its output (3 roundings
    of at most BF16_U each), and n independent roundings grow as sqrt(n) * BF16_U (probabilistic
    rounding-error analysis, Higham & Mary 2019), relative to the outputs' scale (the largest |logit|
    in float32). Every layer is counted, as if all were on one path: an upper bound on the depth."""
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in det.modules())
    return math.sqrt(3 * layers) * BF16_U * float(logits.abs().max())


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bfloat16")
def test_bfloat16_outputs_agree_with_float32(trained_lite):
    """Tolerance, at every location: class probability and predicted IoU within what bf16 rounding
    guarantees (bf16_logit_bound, through the sigmoid's slope of at most 1/4: 0.064 and 0.029 here,
    where an AMD EPYC measured 0.0201 and 0.0098), box distances within 10% (+1 px), and within 3%
    (+0.5 px) at 99% of the locations (a side whose distribution is flat, as at background locations,
    moves most when its logits are rounded). Detections themselves may swap between two neighbours
    whose scores tie."""
    from boxloop.detectors.common import prepare_images

    det, images, _ = trained_lite
    det.eval()
    outs = []
    for bf16 in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fw = det.forward_outputs(prepare_images(images), None)
        outs.append((fw.cls_logits.float(), fw.iou_logits.float(), fw.bbox_regression.float() * fw.strides[None, :, None]))
    (z32, v32, d32), (z16, v16, d16) = outs
    p_bound, q_bound = bf16_logit_bound(det, z32) / 4, bf16_logit_bound(det, v32) / 4
    assert (z16.sigmoid() - z32.sigmoid()).abs().max() <= p_bound
    assert (v16.sigmoid() - v32.sigmoid()).abs().max() <= q_bound
    err = (d16 - d32).abs()
    assert (err <= 0.03 * d32.abs() + 0.5).float().mean() >= 0.99
    assert (err <= 0.10 * d32.abs() + 1.0).all()
    # and predict() uses bf16 when asked, float32 when not (a score, class probability times predicted
    # IoU, both in [0, 1], moves at most as much as the two together)
    det.cpu_bf16 = True
    a = det.predict(images[:1], score_threshold=0.0)[0]
    det.cpu_bf16 = False
    b = det.predict(images[:1], score_threshold=0.0)[0]
    assert not np.array_equal(a.scores, b.scores)
    assert abs(float(a.scores[0]) - float(b.scores[0])) <= p_bound + q_bound


def test_trained_lite_finds_its_rectangles(trained_lite):
    det, images, targets = trained_lite
    det.cpu_bf16 = False
    out = det.predict(images, score_threshold=0.0)
    best = out[0]
    overlap = iou(best.boxes.xyxy[:1], targets[0]["boxes"].numpy())[0, 0]
    assert best.labels[0] == 0 and overlap > 0.5
    # (whether the quality tracks the IoU is measured on BCCD: benchmarks/train_bccd.py)


def test_old_fcos_checkpoint_loads_and_predicts_as_before(tmp_path, one_thread):
    """A checkpoint written before fcos_lite existed: its detector_config has only the old keys."""
    from boxloop.train.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
    from boxloop.train.checkpoints import load_detector

    old_config = {"name": "fcos", "num_classes": 2, "backbone": "efficientnet_lite0", "pretrained_backbone": False,
                  "min_size": 96, "max_size": 96, "score_thresh": 0.05, "nms_thresh": 0.6,
                  "detections_per_img": 100, "fpn_channels": 32, "head_convs": 1, "trainable_layers": 5,
                  "freeze_bn": False, "center_sampling_radius": 1.5, "score_mode": "product",
                  "max_negatives_per_positive": None, "min_negatives_per_image": 0, "topk_candidates": 1000,
                  "amp": True}
    det = create_detector(**old_config, seed=3)
    img = scene(96, 96, [(10, 12, 52, 44)], [0], seed=1)[0]
    before = det.predict([img], score_threshold=0.0)[0]
    path = tmp_path / "old.pt"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "detector_config": old_config,
                     "class_names": ["a", "b"], "model": det.state_dict()}, path)
    again, names, _ = load_detector(path)
    after = again.predict([img], score_threshold=0.0)[0]
    assert names == ["a", "b"] and again.config["name"] == "fcos"
    np.testing.assert_allclose(after.scores, before.scores, atol=1e-6)
    np.testing.assert_allclose(after.boxes.xyxy, before.boxes.xyxy, atol=1e-4)


def test_fcos_lite_checkpoint_from_before_the_distribution_head_loads(tmp_path, one_thread):
    """A checkpoint whose config predates `box_bins` was built with plain distances: it loads as such."""
    from boxloop.train.checkpoints import load_detector
    from boxloop.train.checkpoints import save_checkpoint

    old = create_detector("fcos_lite", num_classes=2, pretrained_backbone=False, box_bins=0).eval()
    config = {k: v for k, v in old.config.items() if k not in ("box_bins", "quality_weighting")}
    save_checkpoint({"format": "boxloop-checkpoint", "version": 1, "detector_config": config,
                     "class_names": ["a", "b"], "model": old.state_dict()}, tmp_path / "old.pt")
    loaded, _, _ = load_detector(tmp_path / "old.pt")
    image = torch.rand(3, 96, 128)
    a, b = old.predict([image], score_threshold=0.0)[0], loaded.predict([image], score_threshold=0.0)[0]
    assert loaded.model.head.box_bins == 0
    np.testing.assert_allclose(a.boxes.xyxy, b.boxes.xyxy, atol=1e-4)


def test_backbone_other_than_lite0_is_refused():
    with pytest.raises(ValueError, match="fcos_lite is built on efficientnet_lite0 only"):
        create_detector("fcos_lite", num_classes=2, backbone="resnet50", pretrained_backbone=False)


def test_cli_train_without_options_uses_the_cpu_defaults(synthetic_dataset, tmp_path, one_thread):
    """`boxloop train proj` with no model, size, batch or optimizer: fcos_lite at 320 px, batch 8,
    AdamW at 0.002 (the CPU defaults in boxloop/defaults.py), recorded in the checkpoint."""
    from typer.testing import CliRunner

    from boxloop.cli import app
    from boxloop.loop.model import current_checkpoint
    from boxloop.store import Project
    from boxloop.train.checkpoints import load_checkpoint

    runner = CliRunner()
    proj = tmp_path / "proj"
    res = runner.invoke(app, ["init", str(proj), "--images", str(synthetic_dataset.images), "--annotations",
                              str(synthetic_dataset.annotations_dir), "--test-fraction", "0.2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", str(proj), "--steps", "2", "--device", "cpu", "--no-pretrained"])
    assert res.exit_code == 0, res.output
    assert "trained fcos_lite" in res.output
    with Project.open(proj) as p:
        ckpt = load_checkpoint(current_checkpoint(p))
    assert ckpt["detector_config"]["name"] == "fcos_lite"
    tc = ckpt["train_config"]
    assert (tc["image_size"], tc["batch_size"], tc["optimizer"], tc["lr"]) == (320, 8, "adamw", 0.002)


def test_cli_unknown_detector_option_is_refused_before_any_work(synthetic_dataset, tmp_path):
    from typer.testing import CliRunner

    from boxloop.cli import app

    runner = CliRunner()
    proj = tmp_path / "proj"
    assert runner.invoke(app, ["init", str(proj), "--images", str(synthetic_dataset.images), "--annotations",
                               str(synthetic_dataset.annotations_dir)]).exit_code == 0
    res = runner.invoke(app, ["train", str(proj), "--detector-option", "chanels=64"])
    assert res.exit_code == 1
    assert "has no option 'chanels'" in res.output and "channels" in res.output
    assert not (proj / "models").exists() or not any((proj / "models").iterdir())
