"""inference.predict_paths: boxes come back in each ORIGINAL image's pixels, whatever its size, in the
order of the paths; broken files raise or are skipped; out-of-memory halves the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxloop.images import resized_size
from boxloop.detectors import create_detector
from boxloop.images import ImageError
from boxloop.predict.inference import predict_batch, predict_paths, to_original
from boxloop.structures import Boxes, Detections

# (width, height, rectangle x1 y1 x2 y2): landscape, portrait, larger and smaller than image_size
CASES = [(96, 72, (20, 12, 56, 48)), (50, 100, (10, 40, 30, 90)), (160, 120, (100, 20, 150, 60)),
         (40, 30, (5, 5, 25, 20))]



def _write(tmp_path: Path) -> list[Path]:
    paths = []
    for i, (w, h, (x1, y1, x2, y2)) in enumerate(CASES):
        arr = np.zeros((h, w, 3), np.uint8)
        arr[y1:y2, x1:x2] = 255
        p = tmp_path / f"{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


class BrightBoxFinder(torch.nn.Module):
    """A reference 'detector' with a known answer: the bounding box of the pixels above 0.5, in the
    coordinates of the tensor it is given (as the Detector protocol requires). Records input sizes."""

    num_classes, has_loc_quality, feature_dim = 1, False, None
    config: dict = {}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def predict(self, images: list[torch.Tensor], score_threshold: float = 0.05) -> list[Detections]:
        out = []
        for im in images:
            h, w = im.shape[-2:]
            self.seen.append((w, h))
            ys, xs = torch.nonzero(im.mean(0) > 0.5, as_tuple=True)
            box = [[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]]
            out.append(Detections(Boxes(np.array(box, float), (w, h)), [0], [1.0], [[1.0]]))
        return out


def test_boxes_come_back_in_original_pixels_for_every_size(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    finder = BrightBoxFinder()
    results = list(predict_paths(finder, paths, image_size=64, batch_size=3, progress=False))
    assert [p for p, _ in results] == paths
    for (w, h, rect), (_, det), seen in zip(CASES, results, finder.seen):
        assert seen == resized_size(w, h, 64)[::-1]  # the model saw the longer side at 64
        assert det.image_size == (w, h)
        # one resized pixel of slack, mapped back to the original scale
        tol = max(w, h) / 64 + 0.5
        np.testing.assert_allclose(det.boxes.xyxy[0], rect, atol=tol)


def test_real_fcos_boxes_are_the_resized_predictions_scaled_back(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    torch.manual_seed(0)
    det = create_detector("fcos", 2, backbone="mobilenet_v3_large", pretrained_backbone=False,
                          min_size=64, max_size=64, fpn_channels=32, head_convs=1)
    # batch_size 1: in a batch, torchvision pads images to one size, which changes border features
    results = list(predict_paths(det, paths, image_size=64, batch_size=1, device="cpu", progress=False,
                                 score_threshold=0.0))
    assert len(results) == len(paths)
    from torchvision.transforms.v2 import functional as F
    for (w, h, _), path, (_, d) in zip(CASES, paths, results):
        assert d.image_size == (w, h) and len(d) > 0
        assert d.class_probs.shape[1] == 2 and d.loc_quality is not None and d.features is not None
        assert (d.boxes.xyxy >= 0).all() and (d.boxes.xyxy[:, [0, 2]] <= w).all() and (d.boxes.xyxy[:, [1, 3]] <= h).all()
        # reference: predict on the resized tensor by hand and scale by original / resized
        img = F.pil_to_tensor(Image.open(path).convert("RGB"))
        rh, rw = resized_size(w, h, 64)
        small = F.resize(img, [rh, rw], antialias=True).float() / 255
        ref = det.predict([small], score_threshold=0.0)[0]
        assert ref.image_size == (rw, rh)  # the detector answers in the frame of the tensor it got
        expected = np.clip(ref.boxes.xyxy * [w / rw, h / rh, w / rw, h / rh], 0, [w, h, w, h])

        def rows(xyxy, scores):  # order-free comparison: untrained scores tie
            a = np.round(np.concatenate([xyxy, scores[:, None]], axis=1), 3)
            return a[np.lexsort(a.T[::-1])]

        np.testing.assert_allclose(rows(d.boxes.xyxy, d.scores), rows(expected, ref.scores), atol=2e-3)


def test_broken_file_raises_or_is_skipped(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError):
        list(predict_paths(BrightBoxFinder(), [paths[0], bad], 64, progress=False))
    got = list(predict_paths(BrightBoxFinder(), [paths[0], bad, paths[1]], 64, progress=False, skip_errors=True))
    assert [p for p, _ in got] == [paths[0], paths[1]]


def test_keys_name_each_result_and_a_skipped_image_shifts_none(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    skipped: list[tuple[Path, str]] = []
    files = [paths[0], bad, paths[1], paths[2]]
    got = list(predict_paths(BrightBoxFinder(), files, 64, batch_size=2, progress=False, keys=["a", "b", "c", "d"],
                             on_skip=lambda path, problem: skipped.append((path, problem))))
    assert [k for k, _ in got] == ["a", "c", "d"] and [p for p, _ in skipped] == [bad]
    # the same detections as without keys, each under its own key
    plain = dict(predict_paths(BrightBoxFinder(), files, 64, batch_size=2, progress=False, skip_errors=True))
    for key, path in (("a", paths[0]), ("c", paths[1]), ("d", paths[2])):
        np.testing.assert_array_equal(dict(got)[key].boxes.xyxy, plain[path].boxes.xyxy)
    with pytest.raises(ValueError, match="keys must name every path"):
        list(predict_paths(BrightBoxFinder(), paths, 64, progress=False, keys=["a"]))


class OOMAbove(BrightBoxFinder):
    """Raises torch.OutOfMemoryError for batches larger than `limit`, like a GPU that is too small."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def predict(self, images, score_threshold=0.05):
        if len(images) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().predict(images, score_threshold)


def test_out_of_memory_halves_the_batch(tmp_path: Path, caplog) -> None:
    paths = _write(tmp_path)
    model = OOMAbove(limit=1)
    results = list(predict_paths(model, paths, 64, batch_size=4, progress=False))
    assert len(results) == 4 and "batch halved to 1" in caplog.text
    state = {"chunk": 8}
    with pytest.raises(RuntimeError, match="single image"):
        predict_batch(OOMAbove(limit=0), [torch.zeros(3, 8, 8)], 0.05, state)


def test_to_original_scales_each_axis() -> None:
    d = Detections(Boxes(np.array([[8.0, 4.0, 32.0, 16.0]]), (64, 32)), [0], [0.9], [[0.9]])
    out = to_original(d, (128, 96))
    np.testing.assert_allclose(out.boxes.xyxy, [[16.0, 12.0, 64.0, 48.0]])
    assert out.image_size == (128, 96)
