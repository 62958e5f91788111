"""train.py on CPU with a tiny random-init FCOS (mobilenet_v3_large, 64 px, 32 FPN channels): the loss
falls, checkpoints hold what they promise and rebuild the model, bad checkpoints fail clearly, and an
interrupted run resumed from last.pt ends with the same weights as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxloop.train.data import Sample
from boxloop.detectors import create_detector
from boxloop.structures import Annotation, Boxes
from boxloop.train.checkpoints import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint
from boxloop.train.config import TrainConfig
from boxloop.train.fit import fit
from boxloop.train.checkpoints import load_detector
from boxloop.predict.inference import resolve_device

CLASSES = ["red", "green"]
COLOURS = {"red": (230, 30, 30), "green": (30, 230, 30)}
SIZE = 64



def tiny_fcos(num_classes: int = 2):
    return create_detector("fcos", num_classes, backbone="mobilenet_v3_large", pretrained_backbone=False,
                           min_size=SIZE, max_size=SIZE, fpn_channels=32, head_convs=1)


def make_samples(root: Path, n: int, seed: int, negatives: int = 1) -> list[Sample]:
    """Images with one coloured rectangle each on a noisy dark background (+ negatives)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n + negatives):
        arr = rng.integers(0, 40, (SIZE, SIZE, 3), dtype=np.uint8)
        name = f"img{i}.png"
        if i < n:
            cls = CLASSES[i % 2]
            w, h = rng.integers(18, 34, 2)
            x, y = rng.integers(2, SIZE - w - 2), rng.integers(2, SIZE - h - 2)
            arr[y:y + h, x:x + w] = COLOURS[cls]
            ann = Annotation(name, Boxes(np.array([[x, y, x + w, y + h]], float), (SIZE, SIZE)), (cls,))
        else:
            ann = Annotation(name, Boxes.empty((SIZE, SIZE)))
        Image.fromarray(arr).save(root / name)
        samples.append(Sample(root / name, ann))
    return samples


def config(**kw) -> TrainConfig:
    base = dict(steps=30, batch_size=4, image_size=SIZE, lr=0.01, warmup_steps=5, amp=False, device="cpu",
                seed=0, val_every=15, scale_jitter=(0.9, 1.1))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    train = make_samples(root / "train", 8, seed=1)
    val = make_samples(root / "val", 2, seed=2, negatives=0)
    torch.manual_seed(0)
    det = tiny_fcos()
    result = fit(det, train, val, CLASSES, config(), root / "out", progress=False)
    return det, result, train, val, root


def test_fit_loss_falls_and_keeps_the_best_checkpoint(trained) -> None:
    det, result, *_ = trained
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 30 and result.completed and result.step == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    for key in ("classification", "bbox_regression", "iou", "lr", "epoch"):
        assert key in result.history[0]
    evals = [h for h in result.history if "val_map50" in h]
    assert [h["step"] for h in evals] == [15, 30]
    assert result.best_map50 == max(h["val_map50"] for h in evals)
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    assert not list(result.last_checkpoint.parent.glob("*.tmp"))  # atomic writes leave nothing behind


def test_checkpoint_holds_config_and_class_names(trained) -> None:
    det, result, *_ = trained
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["version"] == 1
    assert ckpt["class_names"] == CLASSES and ckpt["detector_config"] == det.config
    assert ckpt["train_config"]["steps"] == 30 and ckpt["step"] == 30 and ckpt["complete"]
    for key in ("model", "optimizer", "scheduler", "history", "best_map50", "rng", "epoch"):
        assert key in ckpt
    best = load_checkpoint(result.best_checkpoint)
    assert best["best_map50"] == result.best_map50


def test_load_detector_rebuilds_and_predicts_like_the_fitted_model(trained) -> None:
    det, result, train, *_ = trained
    loaded, names, meta = load_detector(result.best_checkpoint, expect_classes=CLASSES)
    assert names == CLASSES and meta["detector_config"] == det.config and "model" not in meta
    images = [torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    a, b = det.predict(images, score_threshold=0.0), loaded.predict(images, score_threshold=0.0)
    for x, y in zip(a, b):
        assert len(x) == len(y) > 0
        np.testing.assert_allclose(x.boxes.xyxy, y.boxes.xyxy, atol=1e-4)
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)


def test_wrong_class_list_names_both(trained) -> None:
    _, result, *_ = trained
    with pytest.raises(CheckpointError) as e:
        load_detector(result.best_checkpoint, expect_classes=["red", "blue"])
    assert "['red', 'green']" in str(e.value) and "['red', 'blue']" in str(e.value)


def test_truncated_or_foreign_checkpoint_is_a_clear_error(trained, tmp_path: Path) -> None:
    _, result, *_ = trained
    data = result.last_checkpoint.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_detector(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a boxloop checkpoint"):
        load_detector(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_detector(tmp_path / "missing.pt")


def test_finished_run_resumes_to_its_result(trained) -> None:
    det, result, train, val, root = trained
    again = fit(tiny_fcos(), train, val, CLASSES, config(), root / "out", progress=False)
    assert again.step == 30 and again.completed and again.best_map50 == result.best_map50
    with pytest.raises(CheckpointError, match="lr"):
        fit(tiny_fcos(), train, val, CLASSES, config(lr=0.02), root / "out", progress=False)
    with pytest.raises(CheckpointError, match=r"\['green', 'red'\]"):
        fit(tiny_fcos(), train, val, ["green", "red"], config(), root / "out", progress=False)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    train = make_samples(tmp_path / "data", 5, seed=3)
    cfg = config(steps=None, epochs=2, batch_size=2, warmup_steps=2, val_every=1, optimizer="adamw", lr=1e-3)
    torch.manual_seed(0)
    full = fit(tiny_fcos(), train, [], CLASSES, cfg, tmp_path / "full", progress=False)

    torch.manual_seed(0)
    first = fit(tiny_fcos(), train, [], CLASSES, cfg, tmp_path / "cut", progress=False, stop_after=4)
    assert not first.completed and first.step == 4  # stopped mid-epoch 2 (3 steps per epoch)
    torch.manual_seed(99)  # a different process state; the checkpoint must carry what matters
    resumed_det = tiny_fcos()
    resumed = fit(resumed_det, train, [], CLASSES, cfg, tmp_path / "cut", progress=False)
    assert resumed.completed and resumed.step == full.step == 6
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], abs=1e-5)
    a = load_checkpoint(full.last_checkpoint)["model"]
    b = load_checkpoint(resumed.last_checkpoint)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    # without validation, best.pt is the final model
    torch.testing.assert_close(load_checkpoint(resumed.best_checkpoint)["model"][k], b[k])


def test_early_stopping_after_patience_evaluations(tmp_path: Path) -> None:
    train = make_samples(tmp_path / "t", 4, seed=4, negatives=0)
    val = make_samples(tmp_path / "v", 1, seed=5, negatives=0)
    # lr so small the weights do not move: mAP cannot improve, so the 3rd evaluation stops it
    cfg = config(steps=20, batch_size=4, lr=1e-12, warmup_steps=0, val_every=1, patience=2, schedule="constant")
    result = fit(tiny_fcos(), train, val, CLASSES, cfg, tmp_path / "out", progress=False)
    assert result.stopped_early and result.completed and result.step == 3
    assert load_checkpoint(result.last_checkpoint)["stopped_early"]


def test_bad_setups_are_clear_errors(tmp_path: Path) -> None:
    unlabelled = [Sample(tmp_path / "x.png", None)]
    with pytest.raises(ValueError, match="nothing to train on: label some images first"):
        fit(tiny_fcos(), unlabelled, [], CLASSES, config(), tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="exactly one of epochs or steps"):
        TrainConfig(epochs=2, steps=10)
    with pytest.raises(ValueError, match="exactly one of epochs or steps"):
        TrainConfig()
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(steps=1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="3 classes"):
        fit(tiny_fcos(3), make_samples(tmp_path / "d", 1, 0), [], CLASSES, config(), tmp_path / "o", progress=False)


def test_lr_schedule_shapes() -> None:
    c = TrainConfig(steps=100, warmup_steps=10, lr=1.0, schedule="cosine")
    assert c.lr_factor(0, 100) == pytest.approx(0.001)
    assert c.lr_factor(10, 100) == pytest.approx(1.0)
    assert c.lr_factor(55, 100) == pytest.approx(0.505)
    assert c.lr_factor(100, 100) == pytest.approx(0.01)
    s = TrainConfig(steps=90, warmup_steps=0, schedule="step", lr_milestones=(0.5,), lr_gamma=0.1)
    assert s.lr_factor(44, 90) == 1.0 and s.lr_factor(45, 90) == pytest.approx(0.1)
    assert TrainConfig.from_dict(s.to_dict()) == s


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_quality_map_is_stored_with_the_checkpoint_and_reloaded(trained, tmp_path: Path) -> None:
    from boxloop.train.fit import fit_quality_map
    from boxloop.train.checkpoints import save_checkpoint

    det, result, train, val, _ = trained
    ckpt = load_checkpoint(result.best_checkpoint)
    assert "quality_map" in ckpt  # fit() ended by fitting one on validation (None: too few detections)
    qmap = fit_quality_map(det, train + val, CLASSES, SIZE, min_score=0.0, min_pairs=1)
    assert qmap is not None and qmap.pairs > 0
    ckpt["quality_map"] = qmap.to_dict()
    path = tmp_path / "mapped.pt"
    save_checkpoint(ckpt, path)
    loaded, _, _ = load_detector(path, expect_classes=CLASSES)
    assert loaded.quality_map == qmap
    images = [torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    mapped = loaded.predict(images, score_threshold=0.0)
    loaded.quality_map = None
    raw = loaded.predict(images, score_threshold=0.0)
    for m, r in zip(mapped, raw):
        np.testing.assert_allclose(m.loc_quality, qmap(r.loc_quality), atol=1e-6)
        np.testing.assert_allclose(m.scores, r.scores)  # the map changes the quality, never the scores


def test_checkpoint_from_before_the_quality_map_loads_unmapped_with_a_note(trained, tmp_path: Path, caplog) -> None:
    from boxloop.train.checkpoints import save_checkpoint

    det, result, *_ = trained
    ckpt = load_checkpoint(result.best_checkpoint)
    ckpt.pop("quality_map", None)
    path = tmp_path / "old.pt"
    save_checkpoint(ckpt, path)
    with caplog.at_level("WARNING", logger="boxloop"):
        loaded, _, _ = load_detector(path, expect_classes=CLASSES)
    assert loaded.quality_map is None
    notes = [r.getMessage() for r in caplog.records if "before the quality map" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0]
    images = [torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))]
    det.quality_map = None
    np.testing.assert_allclose(loaded.predict(images, score_threshold=0.0)[0].loc_quality,
                               det.predict(images, score_threshold=0.0)[0].loc_quality, atol=1e-5)
