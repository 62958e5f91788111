"""Training through torchrun with 2 gloo processes on a tiny fcos: the losses match one process on the
same effective batch within tolerance, rank 0 alone writes checkpoints of the usual
format, an interrupted run resumes to exactly the weights of an uninterrupted one, a rank's user error
(diverged) is raised as itself, and `boxloop train --nproc 2` trains a project. Also the sampler: the ranks' shares of each batch make up the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from boxloop.train.ddp import EpochOrderSampler, fit_distributed
from boxloop.detectors import create_detector
from boxloop.train.config import TrainConfig
from boxloop.train.checkpoints import TrainingDiverged, load_checkpoint
from boxloop.train.fit import epoch_order, fit
from test_train import CLASSES, SIZE, make_samples

STEPS = 24


def tiny(seed: int = 0):
    # frozen BatchNorm: per-rank batch statistics would be a second source of difference
    return create_detector("fcos", len(CLASSES), seed=seed, backbone="mobilenet_v3_large", pretrained_backbone=False,
                           min_size=SIZE, max_size=SIZE, fpn_channels=32, head_convs=1, freeze_bn=True)


def cfg(**kw) -> TrainConfig:
    base = dict(steps=STEPS, batch_size=4, image_size=SIZE, lr=0.01, warmup_steps=5, amp=False, device="cpu", seed=0,
                val_every=STEPS // 2, scale_jitter=(0.9, 1.1))
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("n,world,batch", [(17, 2, 4), (16, 2, 4), (10, 4, 8), (3, 2, 2)])
def test_ranks_shares_make_up_the_one_process_batches(n, world, batch) -> None:
    order = epoch_order(n, 0, 3)
    one = [order[i:i + batch] for i in range(0, n, batch)]
    shares = []
    for r in range(world):
        s = EpochOrderSampler(n, world, r, seed=0)
        s.set_epoch(3)
        mine = list(s)
        shares.append([mine[i:i + batch // world] for i in range(0, len(mine), batch // world)])
    assert all(len(x) == len(one) for x in shares)
    for k, want in enumerate(one):
        got = [i for r in range(world) for i in shares[r][k]]
        assert set(want) <= set(got) and len(got) == batch if k < len(one) - 1 else set(got) >= set(want)
        if len(want) == batch:
            assert sorted(got) == sorted(want)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    train = make_samples(root / "train", 16, seed=1)  # + 1 negative: the last batch of an epoch is short
    val = make_samples(root / "val", 4, seed=2, negatives=0)
    one = fit(tiny(), train, val, CLASSES, cfg(), root / "one", progress=False)
    two = fit_distributed(tiny(), train, val, CLASSES, cfg(), root / "two", nproc=2, progress=False)
    return root, train, val, one, two


def test_two_processes_match_one_within_tolerance(runs) -> None:
    root, _, _, one, two = runs
    assert two.completed and two.step == one.step == STEPS
    a = np.array([h["loss"] for h in one.history])
    b = np.array([h["loss"] for h in two.history])
    # the same images in every step; first steps start from the same weights: only each rank's own
    # foreground normalisation differs
    assert np.allclose(a[:5], b[:5], rtol=0.01, atol=1e-3), (a[:5], b[:5])
    assert abs(a[-8:].mean() - b[-8:].mean()) <= 0.05 * a[-8:].mean(), (a, b)
    # validation at the same steps (rank 0 validates, every rank takes the same early-stopping
    # decision); its mAP on 4 images of a barely trained model is noise, so the mAP comparison is
    # benchmarks/ddp_train.py's, on a model trained long enough to detect
    va = [h["step"] for h in one.history if "val_map50" in h]
    vb = [h["step"] for h in two.history if "val_map50" in h]
    assert va == vb == [STEPS // 2, STEPS] and 0 <= two.best_map50 <= 1
    # rank 0 alone wrote checkpoints, of the one-process format
    assert sorted(p.name for p in (root / "two").iterdir()) == ["best.pt", "last.pt"]
    ca, cb = load_checkpoint(root / "one" / "last.pt"), load_checkpoint(root / "two" / "last.pt")
    assert ca.keys() == cb.keys() and ca["detector_config"] == cb["detector_config"] and cb["step"] == STEPS


def test_interrupted_run_resumes_exactly(runs) -> None:
    root, train, val, _, two = runs
    out = root / "two_resumed"
    part = fit_distributed(tiny(), train, val, CLASSES, cfg(), out, nproc=2, progress=False, stop_after=STEPS // 2 + 3)
    assert not part.completed and part.step == STEPS // 2 + 3
    done = fit_distributed(tiny(), train, val, CLASSES, cfg(), out, nproc=2, progress=False)
    assert done.completed and done.step == STEPS
    wa = load_checkpoint(root / "two" / "last.pt")["model"]
    wb = load_checkpoint(out / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h["loss"] for h in done.history] == [h["loss"] for h in two.history]


def test_a_rank_that_diverges_is_the_same_user_error(tmp_path) -> None:
    """TrainingDiverged in a rank (NaN loss) reaches the caller as itself, as without --nproc."""
    train = make_samples(tmp_path / "train", 8, seed=1)
    val = make_samples(tmp_path / "val", 2, seed=2, negatives=0)
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        fit_distributed(tiny(), train, val, CLASSES, cfg(lr=1e30, warmup_steps=0, steps=6, grad_clip=None),
                        tmp_path / "out", nproc=2, progress=False)
    assert not list((tmp_path / "out").glob("ddp_error*"))


def test_cli_train_nproc(synthetic_project) -> None:
    from typer.testing import CliRunner

    from boxloop.cli import app
    from boxloop.loop.model import current_checkpoint

    d = synthetic_project.dir
    synthetic_project.close()
    res = CliRunner().invoke(app, ["train", str(d), "--nproc", "2", "--model", "fcos", "--steps", "2",
                                   "--batch-size", "4", "--image-size", "64", "--backbone", "mobilenet_v3_large",
                                   "--no-pretrained", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "trained fcos" in res.output
    from boxloop.store import Project

    with Project.open(d) as p:
        best = current_checkpoint(p)
    # validation now runs at both steps of a 2-step run (step_val_every), so best.pt may be step 1;
    # last.pt beside it says the run trained its 2 steps
    ckpt = load_checkpoint(best.with_name("last.pt"))
    assert ckpt["step"] == 2 and ckpt["train_config"]["batch_size"] == 4
    assert load_checkpoint(best)["step"] in (1, 2)
    bad = CliRunner().invoke(app, ["train", str(d), "--nproc", "3", "--model", "fcos", "--steps", "2",
                                   "--batch-size", "4", "--backbone", "mobilenet_v3_large", "--no-pretrained",
                                   "--device", "cpu"])
    assert bad.exit_code == 1 and "multiple of --nproc" in bad.output
