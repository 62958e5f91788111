"""data.py: boxes stay on the pixels they frame through every recipe; degenerate boxes go with their
labels and weights; augmentation is a pure function of (seed, epoch, index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxloop.images import resized_size
from boxloop.train.data import (DetectionDataset, Sample, collate, eval_transform, strong_transform, train_transform,
                                weak_transform)
from boxloop.structures import Annotation, Boxes

W, H = 96, 72
RECT = (20, 12, 56, 48)  # x1, y1, x2, y2 (exclusive right/bottom in pixels)


def _rect_image(path: Path, rect=RECT, size=(W, H), mode="RGB") -> Path:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    x1, y1, x2, y2 = rect
    arr[y1:y2, x1:x2] = 255
    Image.fromarray(arr).convert(mode).save(path)
    return path


def _sample(tmp_path: Path, boxes=(RECT,), labels=("cell",), weights=None, name="a.png") -> Sample:
    path = _rect_image(tmp_path / name)
    ann = Annotation(name, Boxes(np.array(boxes, float).reshape(-1, 4), (W, H)), labels)
    return Sample(path, ann, None if weights is None else np.array(weights, np.float32))


def _box_on_rectangle(image: torch.Tensor, box: torch.Tensor) -> None:
    """The box frames the white rectangle: inside (1 px margin) white, a 2 px ring outside dark."""
    gray = image.mean(0)
    h, w = gray.shape
    x1, y1, x2, y2 = box.tolist()
    inner = gray[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
    assert inner.numel() > 0 and inner.min() > 0.9, (box, inner.min())
    mask = torch.ones_like(gray, dtype=torch.bool)
    mask[max(0, int(y1) - 2):min(h, int(np.ceil(y2)) + 2), max(0, int(x1) - 2):min(w, int(np.ceil(x2)) + 2)] = False
    assert gray[mask].numel() == 0 or gray[mask].max() < 0.1


def test_eval_transform_scales_longer_side_and_boxes_exactly(tmp_path: Path) -> None:
    ds = DetectionDataset([_sample(tmp_path)], ["cell"], eval_transform(64))
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    s = 64 / 96
    torch.testing.assert_close(target["boxes"], torch.tensor([[20 * s, 12 * s, 56 * s, 48 * s]]))
    assert target["labels"].tolist() == [0] and target["weights"].tolist() == [1.0]
    assert target["image_id"] == "a.png" and target["orig_size"] == (W, H)
    _box_on_rectangle(image, target["boxes"][0])


@pytest.mark.parametrize("recipe", ["train", "weak"])
def test_boxes_stay_on_the_rectangle_through_augmentation(tmp_path: Path, recipe: str) -> None:
    transform = {"train": train_transform(64, flip=True, scale_jitter=(0.7, 1.3), color=False),
                 "weak": weak_transform(64)}[recipe]
    ds = DetectionDataset([_sample(tmp_path)], ["cell"], transform, seed=3)
    xs = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        image, target = ds[0]
        assert target["boxes"].shape == (1, 4)
        _box_on_rectangle(image, target["boxes"][0])
        xs.add(round(float(target["boxes"][0, 0]), 3))
    assert len(xs) > 1  # flips (and jitter) did happen


def test_strong_transform_moves_boxes_like_weak_and_changes_pixels(tmp_path: Path) -> None:
    sample = _sample(tmp_path)
    weak = DetectionDataset([sample], ["cell"], weak_transform(64), seed=1)
    strong = DetectionDataset([sample], ["cell"], strong_transform(64, flip=False), seed=1)
    plain = DetectionDataset([sample], ["cell"], eval_transform(64), seed=1)
    changed = 0
    for epoch in range(6):
        strong.set_epoch(epoch)
        image, target = strong[0]
        ref_image, ref = plain[0]
        torch.testing.assert_close(target["boxes"], ref["boxes"])  # photometric only
        changed += int(not torch.allclose(image, ref_image))
    assert changed >= 4
    _, t = weak[0]
    assert t["boxes"].shape == (1, 4)


def test_scale_jitter_changes_object_size_not_canvas(tmp_path: Path) -> None:
    ds = DetectionDataset([_sample(tmp_path)], ["cell"], train_transform(64, flip=False, scale_jitter=(0.5, 1.5),
                                                                        color=False), seed=0)
    widths = []
    for epoch in range(10):
        ds.set_epoch(epoch)
        image, target = ds[0]
        assert image.shape == (3, 48, 64)
        if len(target["boxes"]):
            widths.append(float(target["boxes"][0, 2] - target["boxes"][0, 0]))
            _box_on_rectangle(image, target["boxes"][0])
    assert max(widths) - min(widths) > 4


def test_degenerate_boxes_dropped_with_their_labels_and_weights(tmp_path: Path) -> None:
    boxes = [RECT, (200, 200, 300, 300), (30, 30, 30.5, 60), (90, 10, 120, 40)]  # outside, too thin, half out
    sample = _sample(tmp_path, boxes, ("cell", "rbc", "rbc", "wbc"), weights=[0.5, 0.25, 0.75, 0.1])
    ds = DetectionDataset([sample], ["cell", "rbc", "wbc"], eval_transform(64))
    _, target = ds[0]
    assert target["labels"].tolist() == [0, 2]
    torch.testing.assert_close(target["weights"], torch.tensor([0.5, 0.1]))
    s = 64 / 96
    torch.testing.assert_close(target["boxes"][1], torch.tensor([90 * s, 10 * s, 96 * s, 40 * s]))  # clamped


def test_negative_and_unlabelled_samples_give_empty_targets(tmp_path: Path) -> None:
    path = _rect_image(tmp_path / "n.png")
    negative = Sample(path, Annotation("n.png", Boxes.empty((W, H))))
    unlabelled = Sample(path, None)
    ds = DetectionDataset([negative, unlabelled], ["cell"], train_transform(64))
    for i in range(2):
        image, target = ds[i]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["weights"].shape == (0,)
    assert not unlabelled.labelled and negative.labelled
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == 2 and len(targets) == 2


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path: Path) -> None:
    samples = [_sample(tmp_path, name=f"{i}.png") for i in range(3)]
    a = DetectionDataset(samples, ["cell"], strong_transform(64), seed=5)
    b = DetectionDataset(samples, ["cell"], strong_transform(64), seed=5)
    torch.manual_seed(123)  # the global RNG must not matter
    b[0]
    for i in (2, 0, 1):
        torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)
    b.set_epoch(1)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(3))


def test_bad_input_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not in the class list"):
        DetectionDataset([_sample(tmp_path, labels=("dog",))], ["cell"])
    with pytest.raises(ValueError, match="1 boxes"):
        _sample(tmp_path, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        _sample(tmp_path, weights=[-1.0])


def test_grayscale_and_rgba_files_decode_to_rgb(tmp_path: Path) -> None:
    for mode in ("L", "RGBA"):
        path = _rect_image(tmp_path / f"{mode}.png", mode=mode)
        ds = DetectionDataset([Sample(path, Annotation(path.name, Boxes(np.array([RECT], float), (W, H)), ("c",)))],
                              ["c"], eval_transform(64))
        image, target = ds[0]
        assert image.shape == (3, 48, 64)
        _box_on_rectangle(image, target["boxes"][0])


def test_resized_size() -> None:
    assert resized_size(96, 72, 64) == (48, 64)
    assert resized_size(50, 100, 64) == (64, 32)
    assert resized_size(10, 10, 64) == (64, 64)  # small images grow
