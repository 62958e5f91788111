"""Stored predictions (store.detections_to_bytes): the raw blob round-trips every Detections field
exactly, an older store's .npz blob still reads, the bulk DetectionTable decoder
(`detection_table_from_blobs`, used by selection) is bit-identical to building the table image by
image, and a truncated blob is a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest

from boxloop.store import detection_table_from_blobs, detections_from_bytes, detections_to_bytes
from boxloop.strategies.table import DetectionTable
from boxloop.structures import Boxes, Detections

RNG = np.random.default_rng(0)
FIELDS = ("image_index", "box_index", "boxes", "labels", "scores", "class_probs", "loc_quality", "features")


def det(n: int, c: int = 3, lq: bool = True, d: int | None = 8) -> Detections:
    xy = RNG.uniform(0, 50, (n, 2))
    p = RNG.uniform(size=(n, c)).astype(np.float32)
    return Detections(Boxes(np.concatenate([xy, xy + 5], 1), (100, 80)),
                      p.argmax(1) if n else np.zeros(0, int), p.max(1) if n else np.zeros(0), p,
                      RNG.uniform(size=n) if lq else None, RNG.normal(size=(n, d)) if d is not None else None)


CASES = {
    "normal": lambda: [det(int(k)) for k in RNG.poisson(3, 50)],
    "one class": lambda: [det(int(k), c=1) for k in RNG.poisson(3, 50)],
    "20 classes, first empty": lambda: [det(0, c=20)] + [det(int(k), c=20) for k in RNG.poisson(3, 50)],
    "no loc_quality or features": lambda: [det(int(k), lq=False, d=None) for k in RNG.poisson(3, 20)],
    "no loc_quality": lambda: [det(int(k), lq=False) for k in RNG.poisson(3, 20)],
    "zero-length features": lambda: [det(int(k), d=0) for k in RNG.poisson(3, 20)],
    "all empty": lambda: [det(0) for _ in range(5)],
    "one image": lambda: [det(1)],
    "mixed loc_quality": lambda: [det(3), det(2, lq=False)],
    "empty image with other class count": lambda: [det(3), det(0, c=5, d=None, lq=False), det(2)],
}
ERRORS = {"mixed feature sizes": lambda: [det(3, d=4), det(2, d=8)]}


def _assert_same(a: DetectionTable, b: DetectionTable, features: bool) -> None:
    assert list(a.keys) == list(b.keys)
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        if f == "features" and not features:
            assert x is None
            continue
        assert (x is None) == (y is None), f
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f


@pytest.mark.parametrize("case", list(CASES))
def test_blob_round_trip_and_bulk_table_equal_per_image(case: str) -> None:
    ds = CASES[case]()
    blobs = [detections_to_bytes(d) for d in ds]
    for d, b in zip(ds, blobs):
        back = detections_from_bytes(b)
        assert back.image_size == d.image_size and len(back) == len(d)
        np.testing.assert_array_equal(back.boxes.xyxy, d.boxes.xyxy)
        np.testing.assert_array_equal(back.labels, d.labels)
        np.testing.assert_array_equal(back.class_probs, d.class_probs.astype(np.float32))
        assert (back.loc_quality is None) == (d.loc_quality is None)
        assert (back.features is None) == (d.features is None)
    keys = [f"k{i}" for i in range(len(ds))]
    ref = DetectionTable.from_detections({k: detections_from_bytes(b) for k, b in zip(keys, blobs)})
    for features in (True, False):
        _assert_same(detection_table_from_blobs(keys, blobs, features=features), ref, features)


@pytest.mark.parametrize("case", list(ERRORS))
def test_inconsistent_images_give_the_same_error_both_ways(case: str) -> None:
    ds = ERRORS[case]()
    keys = [f"k{i}" for i in range(len(ds))]
    blobs = [detections_to_bytes(d) for d in ds]
    with pytest.raises(ValueError) as ref:
        DetectionTable.from_detections({k: detections_from_bytes(b) for k, b in zip(keys, blobs)})
    with pytest.raises(ValueError) as got:
        detection_table_from_blobs(keys, blobs)
    assert str(got.value) == str(ref.value)


def test_truncated_blob_is_a_clear_error() -> None:
    blobs = [detections_to_bytes(det(3)) for _ in range(4)]
    blobs[2] = blobs[2][:-4]
    with pytest.raises(ValueError, match="predict"):
        detection_table_from_blobs(list("abcd"), blobs)
    with pytest.raises(ValueError, match="predict"):
        detections_from_bytes(blobs[2])


def test_older_npz_blob_still_reads() -> None:
    d = det(4)
    buf = io.BytesIO()
    np.savez_compressed(buf, xyxy=d.boxes.xyxy, labels=d.labels, scores=d.scores, class_probs=d.class_probs,
                        loc_quality=d.loc_quality, features=d.features, image_size=np.array(d.image_size))
    back = detections_from_bytes(buf.getvalue())
    np.testing.assert_allclose(back.boxes.xyxy, d.boxes.xyxy)
    np.testing.assert_allclose(back.class_probs, d.class_probs)
    assert back.image_size == d.image_size
