"""fit()'s hooks and the one build-and-train path: every training method runs fit()'s loop, and a
method plugs into it through FitHooks instead of copying it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_train import CLASSES, SIZE, config, make_samples, tiny_fcos

from boxloop.detectors import LOC_QUALITY_OPTIONS, DetectorSpec
from boxloop.train.fit import FitHooks, fit
from boxloop.train.config import short_warmup
from boxloop.train.run import train_detector
from boxloop.train.config import TrainConfig
from boxloop.train.checkpoints import load_checkpoint

SPEC = DetectorSpec("fcos", {"backbone": "mobilenet_v3_large", "pretrained_backbone": False, "min_size": SIZE,
                             "max_size": SIZE, "fpn_channels": 32, "head_convs": 1})


def test_hooks_run_once_per_step_and_an_identity_batch_hook_changes_nothing(tmp_path: Path) -> None:
    train = make_samples(tmp_path / "data", 5, seed=3)
    cfg = config(steps=6, batch_size=2, warmup_steps=2, val_every=3)
    val = make_samples(tmp_path / "val", 1, seed=4, negatives=0)
    plain = fit(SPEC.build(2, seed=0), train, val, CLASSES, cfg, tmp_path / "plain", progress=False)

    seen_batches: list[tuple[int, int]] = []
    seen_steps: list[dict] = []

    def batch(step: int, images: list, targets: list) -> tuple[list, list]:
        seen_batches.append((step, len(images)))
        return images, targets

    hooked = fit(SPEC.build(2, seed=0), train, val, CLASSES, cfg, tmp_path / "hooked", progress=False,
                 hooks=FitHooks(batch=batch, after_step=lambda step, entry: seen_steps.append(dict(entry))))
    assert [s for s, _ in seen_batches] == list(range(6))
    assert all(n == 2 for _, n in seen_batches)
    assert [e["step"] for e in seen_steps] == [1, 2, 3, 4, 5, 6]
    assert [("val_map50" in e) for e in seen_steps] == [False, False, True, False, False, True]
    assert [h["loss"] for h in hooked.history] == pytest.approx([h["loss"] for h in plain.history], abs=1e-6)
    a, b = load_checkpoint(plain.last_checkpoint)["model"], load_checkpoint(hooked.last_checkpoint)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_a_batch_hook_changes_what_trains_and_after_step_can_keep_an_ema_teacher(tmp_path: Path) -> None:
    train = make_samples(tmp_path / "data", 4, seed=5)
    cfg = config(steps=4, batch_size=2, warmup_steps=0, val_every=4)
    student = tiny_fcos()
    teacher = copy.deepcopy(student)
    start = {k: v.clone() for k, v in teacher.state_dict().items()}

    def ema(step: int, entry: dict) -> None:
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.mul_(0.5).add_(s.detach(), alpha=0.5)

    def no_boxes(step: int, images: list, targets: list) -> tuple[list, list]:
        return images, [{**t, "weights": torch.zeros_like(t["weights"])} for t in targets]

    fit(student, train, [], CLASSES, cfg, tmp_path / "ema", progress=False, hooks=FitHooks(after_step=ema))
    moved = [k for k, v in teacher.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert moved, "the EMA teacher never moved"
    plain = fit(SPEC.build(2, seed=0), train, [], CLASSES, cfg, tmp_path / "plain", progress=False)
    zeroed = fit(SPEC.build(2, seed=0), train, [], CLASSES, cfg, tmp_path / "zeroed", progress=False,
                 hooks=FitHooks(batch=no_boxes))
    assert [h["loss"] for h in zeroed.history] != pytest.approx([h["loss"] for h in plain.history])


def test_train_detector_builds_from_the_spec_with_the_train_seed(tmp_path: Path) -> None:
    train = make_samples(tmp_path / "data", 4, seed=6)
    cfg = config(steps=2, batch_size=2, warmup_steps=0, seed=7)
    det, result = train_detector(SPEC, CLASSES, train, [], cfg, tmp_path / "a", progress=False)
    assert result.completed and det.config == SPEC.build(len(CLASSES), seed=7).config
    _, res2 = train_detector(SPEC, CLASSES, train, [], cfg, tmp_path / "b", init=result.best_checkpoint,
                                progress=False)
    assert res2.history[0]["loss"] < result.history[0]["loss"]  # started from the trained weights


def test_loc_quality_rule_and_warmup_rule() -> None:
    rcnn = DetectorSpec("faster_rcnn", {"backbone": "x"}, loc_quality=True)
    assert rcnn.kwargs() == {**LOC_QUALITY_OPTIONS["faster_rcnn"], "backbone": "x"}
    assert DetectorSpec("faster_rcnn", {"box_head": "standard"}, loc_quality=True).kwargs() == {"box_head": "standard"}
    assert DetectorSpec("faster_rcnn", {}).kwargs() == {}
    assert DetectorSpec("fcos", {}, loc_quality=True).kwargs() == {}
    assert [short_warmup(s) for s in (None, 10, 40, 400, 10_000)] == [5, 5, 10, 100, 100]
    assert TrainConfig(epochs=3, batch_size=4, min_steps=10).total_steps(9) == 10
    assert TrainConfig(epochs=3, batch_size=4).total_steps(9) == 9
    assert TrainConfig(steps=7).total_steps(100) == 7


def test_semi_and_plain_training_share_fits_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Teacher, teacher continued and student all step through train._train_step: one loop."""
    import boxloop.train.fit as train_mod
    from boxloop.semi.certainty import SemiConfig, fit_semi

    calls: list[int] = []
    real = train_mod._train_step
    monkeypatch.setattr(train_mod, "_train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    labelled = make_samples(tmp_path / "l", 4, seed=8)
    val = make_samples(tmp_path / "v", 2, seed=9, negatives=0)
    unlabelled = [s.path for s in make_samples(tmp_path / "u", 3, seed=10)]
    cfg = config(steps=3, batch_size=2, warmup_steps=0, val_every=3)
    res = fit_semi((labelled, unlabelled, val), CLASSES, cfg, SemiConfig(tau=0.01, student_steps=2, guard_resamples=10),
                   tmp_path / "semi", model=SPEC.model, detector_kwargs=dict(SPEC.options), progress=False)
    trained = res.steps["teacher"] + res.steps["continued"] + (res.steps["student"] or 0)
    assert len(calls) == trained
