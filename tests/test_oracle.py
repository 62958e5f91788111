"""Simulated oracles: FineGrainedAL's box rule, LocAwareAL's costs, FineGrainedAL eq. 3's partial labels."""

from __future__ import annotations

import numpy as np
import pytest

from boxloop.loop.oracle import (
    DRAW_SECONDS,
    VERIFY_SECONDS,
    BoxOracle,
    Cost,
    ImageOracle,
    answers_by_image,
    partial_labels,
)
from boxloop.structures import Annotation, Boxes, Detections, Source


def ann(name, xyxy, labels, size=(100, 100)) -> Annotation:
    return Annotation(image=name, boxes=Boxes(np.asarray(xyxy, float).reshape(-1, 4), size), labels=tuple(labels))


TRUTH = {
    "a.jpg": ann("a.jpg", [[0, 0, 10, 10], [50, 50, 90, 90], [20, 60, 40, 80]], ["cat", "dog", "cat"]),
    "neg.jpg": ann("neg.jpg", np.zeros((0, 4)), []),
    "b.jpg": ann("b.jpg", [[0, 0, 10, 10], [0, 0, 10, 20]], ["cat", "dog"]),
}


def test_box_oracle_iou_049_vs_051_and_class_from_gt():
    oracle = BoxOracle(TRUTH)
    # query [0, 0, w, 10] inside gt [0, 0, 10, 10]: IoU = w / 10
    answers, cost = oracle.answer([("a.jpg", [0, 0, 4.9, 10], "dog"), ("a.jpg", [0, 0, 5.1, 10], "dog")])
    bg, hit = answers
    assert bg.background and bg.label is None and bg.iou == pytest.approx(0.49)
    np.testing.assert_allclose(bg.box, [0, 0, 4.9, 10])  # background keeps its coordinates
    assert not hit.background and hit.label == "cat" and hit.iou == pytest.approx(0.51)
    np.testing.assert_allclose(hit.box, [0, 0, 10, 10])  # snapped to the ground truth
    assert cost == Cost(images=1, boxes_adjusted=1, boxes_removed=1, seconds=2 * VERIFY_SECONDS)


def test_box_oracle_takes_max_iou_gt_of_any_class_and_counts_verified():
    oracle = BoxOracle(TRUTH, class_names=["cat", "dog"])
    # [0,0,10,18]: IoU 0.556 with cat [0,0,10,10], 0.9 with dog [0,0,10,20] -> dog
    answers, cost = oracle.answer([("b.jpg", [0, 0, 10, 18], 0), ("a.jpg", [50, 50, 90, 90], 1),
                                   ("neg.jpg", [1, 1, 5, 5], 0)])
    assert answers[0].label == "dog" and answers[0].gt_index == 1 and answers[0].iou == pytest.approx(0.9)
    assert answers[1].label == "dog" and answers[1].iou == pytest.approx(1.0)
    assert answers[2].background  # a negative image has nothing to snap to
    assert cost == Cost(images=3, boxes_verified=1, boxes_adjusted=1, boxes_removed=1, seconds=3 * VERIFY_SECONDS)


def test_image_oracle_costs_by_hand():
    oracle = ImageOracle(TRUTH)
    gts, cost = oracle.answer(["a.jpg", "neg.jpg"])
    assert gts["neg.jpg"].is_negative and len(gts["a.jpg"]) == 3
    assert cost == Cost(images=2, boxes_drawn=3, seconds=3 * DRAW_SECONDS)
    # pre-annotation: cat matched (IoU 0.81), dog box labelled cat (not matched), one spurious box
    pre = {"a.jpg": ann("a.jpg", [[0, 0, 9, 9], [50, 50, 90, 90], [0, 80, 10, 90]], ["cat", "cat", "cat"])}
    _, cost = oracle.answer(["a.jpg", "neg.jpg"], pre)
    assert (cost.boxes_verified, cost.boxes_drawn, cost.boxes_removed) == (1, 2, 2)
    assert cost.seconds == pytest.approx(1 * 21.9 + 2 * 50.8 + 2 * 21.9)  # 167.2
    assert cost.boxes_labelled == 5


def test_image_oracle_detections_pre_annotations_need_class_names():
    d = Detections(boxes=Boxes([[0, 0, 10, 10], [50, 50, 90, 90]], (100, 100)), labels=[0, 1], scores=[0.9, 0.8],
                   class_probs=[[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="class_names"):
        ImageOracle(TRUTH).answer(["a.jpg"], {"a.jpg": d})
    _, cost = ImageOracle(TRUTH, class_names=["cat", "dog"]).answer(["a.jpg"], {"a.jpg": d})
    assert (cost.boxes_verified, cost.boxes_drawn, cost.boxes_removed) == (2, 1, 0)
    assert cost.seconds == pytest.approx(2 * 21.9 + 50.8)
    with pytest.raises(KeyError, match="no withheld ground truth"):
        ImageOracle(TRUTH).answer(["missing.jpg"])


def test_cost_addition():
    total = sum([Cost(images=1, boxes_drawn=2, seconds=101.6), Cost(images=1, boxes_verified=1, seconds=21.9)])
    assert total == Cost(images=2, boxes_drawn=2, boxes_verified=1, seconds=pytest.approx(123.5))


def test_partial_labels_weights_background_and_suppression():
    d = Detections(
        boxes=Boxes([[0, 0, 10, 10], [60, 0, 80, 20], [61, 0, 80, 20], [30, 30, 50, 50], [0, 70, 10, 80],
                     [1, 0, 10, 10]], (100, 100)),
        labels=[0, 1, 1, 1, 0, 1], scores=[0.4, 0.3, 0.35, 0.6, 0.05, 0.5],
        class_probs=[[0.4, 0.1], [0.1, 0.3], [0.1, 0.35], [0.1, 0.6], [0.05, 0.0], [0.1, 0.5]],
    )
    truth = {"x": ann("x", [[0, 0, 10, 11], [30, 30, 50, 50]], ["cat", "dog"])}
    items = [("x", 0), ("x", 1)]
    answers, _ = BoxOracle(truth).answer([(k, d.boxes.xyxy[b], int(d.labels[b])) for k, b in items])
    checked = answers_by_image(items, answers)["x"]
    assert checked[1].background
    labels, w = partial_labels("x", d, checked, ["cat", "dog"], lambda_d=0.5, min_score=0.1)
    # box 0 -> gt cat (weight 1); box 1 background (dropped); box 2 overlaps the background query
    # (IoU 0.95) -> suppressed; box 3 unchecked -> weight 0.5; box 4 under t_d; box 5 overlaps the
    # checked cat (IoU 0.82) -> suppressed
    np.testing.assert_allclose(labels.boxes.xyxy, [[0, 0, 10, 11], [30, 30, 50, 50]])
    assert labels.labels == ("cat", "dog")
    assert w.tolist() == [1.0, 0.5]
    assert [p.source for p in labels.provenance] == [Source.HUMAN, Source.PREDICTED]
    assert labels.provenance[1].score == pytest.approx(0.6)
    # with an ignore band [0.05, 0.55): box 3 (0.6) stays a noisy label; box 4 (0.05, overlapping
    # nothing checked) becomes an ignore region of weight 0; boxes 2 and 5 stay suppressed
    labels, w = partial_labels("x", d, checked, ["cat", "dog"], lambda_d=0.5, min_score=0.55, ignore_score=0.05)
    np.testing.assert_allclose(labels.boxes.xyxy, [[0, 0, 10, 11], [30, 30, 50, 50], [0, 70, 10, 80]])
    assert w.tolist() == [1.0, 0.5, 0.0] and labels.labels == ("cat", "dog", "cat")
    assert [p.source for p in labels.provenance] == [Source.HUMAN, Source.PREDICTED, Source.PREDICTED]
