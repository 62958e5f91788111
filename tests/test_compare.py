"""compare.py: the resampled VOC mAP50 equals voc_map on the same (or duplicated) images, and the
paired bootstrap calls a model better only when the difference is larger than the image noise."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluate import CLASSES, random_case

from boxloop.metrics.compare import leave_one_out_map50, paired_bootstrap, resampled_map50
from boxloop.metrics.evaluate import voc_map, voc_matches
from boxloop.structures import Annotation, Boxes, Provenance, Source


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resampled_map50_equals_voc_map(seed: int) -> None:
    gt, pred = random_case(seed)
    m = voc_matches(gt, pred, CLASSES)
    assert resampled_map50(m, np.ones((1, len(gt))))[0] == pytest.approx(voc_map(gt, pred, CLASSES)["map"], abs=1e-12)
    # an image drawn twice weighs as two copies of it; an image not drawn is absent
    keys = list(gt)
    w = np.ones(len(keys))
    w[0], w[4], w[1] = 2, 3, 0
    gt2, pred2 = {}, {}
    for k, n in zip(keys, w):
        for j in range(int(n)):
            gt2[f"{j}/{k}"] = Annotation(f"{j}/{k}", gt[k].boxes, gt[k].labels, difficult=gt[k].difficult)
            if k in pred:
                pred2[f"{j}/{k}"] = pred[k]
    assert resampled_map50(m, w[None])[0] == pytest.approx(voc_map(gt2, pred2, CLASSES)["map"], abs=1e-12)


def _images(n: int, hit_every: int, seed: int = 0) -> tuple[dict, dict]:
    """n images with one 'cat' each; the prediction hits it on every `hit_every`-th image, else
    lands elsewhere."""
    rng = np.random.default_rng(seed)
    gt, pred = {}, {}
    for i in range(n):
        k = f"im{i}"
        box = np.array([[10.0, 10.0, 40.0, 40.0]])
        gt[k] = Annotation(k, Boxes(box, (100, 100)), ("cat",))
        p = box if i % hit_every == 0 else box + 50
        pred[k] = Annotation(k, Boxes(p, (100, 100)), ("cat",),
                             provenance=(Provenance(Source.PREDICTED, score=float(rng.random())),))
    return gt, pred


def test_paired_bootstrap_needs_more_than_noise() -> None:
    gt, same = _images(40, 1)
    r = paired_bootstrap(gt, same, same, ["cat"], resamples=200)
    assert r.delta == 0 and r.low == r.high == 0 and not r.a_better
    _, half = _images(40, 2)
    r = paired_bootstrap(gt, same, half, ["cat"], resamples=200)  # 1.0 vs about 0.5 on 40 images
    assert r.delta > 0.3 and r.low > 0 and r.a_better and r.images == 40
    gt3, good3 = _images(4, 1)
    worse3 = dict(good3)  # B misses on one image of four: a third of the resamples lack it
    worse3["im1"] = Annotation("im1", Boxes(good3["im1"].boxes.xyxy + 50, (100, 100)), ("cat",),
                               provenance=good3["im1"].provenance)
    r = paired_bootstrap(gt3, good3, worse3, ["cat"], resamples=500)
    assert r.delta > 0 and r.low <= 0 and not r.a_better
    empty = {k: Annotation(k, Boxes(np.zeros((0, 4)), (100, 100)), ()) for k in gt3}
    r = paired_bootstrap(empty, {}, {}, ["cat"])
    assert r.delta is None and not r.a_better


@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_matches_voc_map_without_each_image(seed: int) -> None:
    gt, pred = random_case(seed)
    loo = leave_one_out_map50(gt, pred, CLASSES)
    full = voc_map(gt, pred, CLASSES)["map"]
    changes = {k: abs(voc_map({j: a for j, a in gt.items() if j != k},
                              {j: a for j, a in pred.items() if j != k}, CLASSES)["map"] - full) for k in gt}
    assert loo["map50"] == pytest.approx(full, abs=1e-12) and loo["images"] == len(gt)
    assert loo["max_change"] == pytest.approx(max(changes.values()), abs=1e-12)
    assert changes[loo["worst_image"]] == pytest.approx(loo["max_change"], abs=1e-12)


def test_leave_one_out_of_a_perfect_test_set_moves_nothing() -> None:
    gt, hit = _images(10, 1)
    assert leave_one_out_map50(gt, hit, ["cat"])["max_change"] == 0.0
