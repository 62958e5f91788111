"""The store read/write functions the benchmarks use instead of raw SQL (issue 30, deliverable 7):
boxes from arrays, stored prediction blobs and counts, table sizes."""

from __future__ import annotations

import numpy as np

from boxloop.store import ImageRecord, Project
from boxloop.structures import Detections


def project(tmp_path) -> Project:
    p = Project.create(tmp_path / "p", tmp_path, ["cat", "dog"])
    p.add_images([ImageRecord(f"{k}.png", 40, 30, None, split="train", status="labelled") for k in "abc"])
    return p


def test_add_box_arrays_round_trips(tmp_path):
    with project(tmp_path) as p:
        n = p.add_box_arrays(np.array([1, 1, 2]), np.array([0, -1, 1]), np.array([[1, 2, 10, 12]] * 3, float),
                             np.array(["human", "background", "pseudo"], dtype=object), model="m",
                             scores=np.array([np.nan, np.nan, 0.9]), weights=np.array([1.0, 1.0, 0.9]))
        assert n == 3
        t = p.box_table("all")  # the boxes of classes (the background box has none)
        o = np.argsort(t["id"])
        assert list(t["path"][o]) == ["a.png", "b.png"] and list(t["class_id"][o]) == [0, 1]
        assert list(t["source"][o]) == ["human", "pseudo"] and list(t["model"][o]) == ["m", "m"]
        assert np.allclose(t["xyxy"], [[1, 2, 10, 12]] * 2)
        assert np.isnan(t["score"][o][0]) and t["score"][o][1] == 0.9 and list(t["weight"][o]) == [1.0, 0.9]


def test_prediction_blobs_counts_and_table_sizes(tmp_path):
    with project(tmp_path) as p:
        p.save_predictions(1, {k: Detections.empty(2, (40, 30)) for k in ("a.png", "b.png")})
        assert p.prediction_counts(1) == (2, 2) and p.prediction_counts(2) == (0, 0)
        blobs = p.prediction_blobs(1)
        assert set(blobs) == {"a.png", "b.png"} and all(isinstance(b, bytes) and b for b in blobs.values())
        sizes = p.table_sizes()
        assert sizes is None or ("boxes" in sizes and all(v > 0 for v in sizes.values()))
