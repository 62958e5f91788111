"""Never worse with pseudo-labels inside the loop (issue 13): a round that trains on the loop's
pseudo-labels also trains without them, and keeps them only when validation shows they help.

The verdict is checked on hand-made predictions whose mAP50 is known by hand (every box found: 1.0;
every box missed: 0.0); the round is checked with real tiny training on generated images, with
pseudo-labels that are wrong on purpose (boxes of the wrong class in the image's empty corner).
"""

from __future__ import annotations

import filecmp

import numpy as np
import pytest

from boxloop.loop.history import round_history
from boxloop.loop.config import LoopConfig
from boxloop.loop.model import guard_verdict, model_dir, step_train, training_samples
from boxloop.loop.simulate import withhold
from boxloop.structures import Annotation, Boxes, Detections, Source

CLASSES = ["circle", "square"]


def _ann(key: str, boxes: list[list[float]], labels: list[int], scores: list[float] | None = None) -> Annotation:
    """Truth (no scores) or predictions (scores kept in the provenance, as the loop stores them)."""
    b = Boxes(np.asarray(boxes, np.float64).reshape(-1, 4), (100, 100))
    if scores is None:
        return Annotation(key, b, tuple(CLASSES[i] for i in labels))
    return _det(b, labels, scores).to_annotation(key, CLASSES)


def _det(boxes: Boxes, labels: list[int], scores: list[float], num_classes: int = 2) -> Detections:
    probs = np.zeros((len(labels), num_classes), np.float32)
    probs[np.arange(len(labels)), labels] = scores
    return Detections(boxes, np.asarray(labels, np.int64), np.asarray(scores, np.float32), probs)


@pytest.fixture()
def val_case():
    """12 validation images with one box each; 'good' finds every box, 'bad' finds none of them."""
    truth, good, bad = {}, {}, {}
    for i in range(12):
        key, box, label = f"v{i}.png", [10 + i, 10, 40 + i, 40], i % 2
        truth[key] = _ann(key, [box], [label])
        good[key] = _ann(key, [box], [label], [0.9])
        bad[key] = _ann(key, [[60, 60, 90, 90]], [label], [0.9])  # no overlap with the truth
    return truth, good, bad


def test_pseudo_labels_that_hurt_are_dropped(val_case) -> None:
    truth, good, bad = val_case
    v = guard_verdict(truth, bad, good, CLASSES, level=0.9, seed=0, pseudo_images=5)
    assert not v["kept"] and v["with"] == 0.0 and v["without"] == 1.0  # by hand: all missed vs all found
    assert v["pseudo_images"] == 5 and v["images"] == 12 and "dropped" in v["reason"]


def test_pseudo_labels_that_help_clearly_are_kept_and_a_tie_is_not(val_case) -> None:
    truth, good, bad = val_case
    assert guard_verdict(truth, good, bad, CLASSES, level=0.9, seed=0, pseudo_images=5)["kept"]
    tie = guard_verdict(truth, good, good, CLASSES, level=0.9, seed=0, pseudo_images=5)
    assert not tie["kept"] and tie["with"] == tie["without"] == 1.0  # not better: the labels do not pay


def test_no_validation_box_keeps_no_pseudo_label() -> None:
    truth = {"v.png": _ann("v.png", [], [])}
    v = guard_verdict(truth, truth, truth, CLASSES, level=0.9, seed=0, pseudo_images=3)
    assert not v["kept"] and "no validation box" in v["reason"]


def test_a_round_with_pseudo_labels_trains_both_ways_and_keeps_the_guarded_model(make_synthetic, tmp_path) -> None:
    from boxloop.project import init_project

    data = make_synthetic(n_images=24, image_size=64, seed=3)
    config = LoopConfig.make(model="fcos", backbone="mobilenet_v3_large", pretrained_backbone=False, epochs=None, steps=4,
                             image_size=64, batch_size=4, device="cpu", val_every=1000, semi="autolabel",
                             detector_options={"fpn_channels": 32, "head_convs": 1})
    with init_project(tmp_path / "p", data.images, data.annotations_dir, test_fraction=0.2, seed=0,
                      progress=False) as project:
        withhold(project, 10, 0, config)
        pool = sorted(i.path for i in project.images(status="unlabelled"))[:4]
        for key in pool:  # wrong on purpose: the rare class, in a corner
            rec = project.image(key)
            det = _det(Boxes(np.array([[0, 0, 12, 12]], np.float64), (rec.width, rec.height)), [2], [0.99],
                       num_classes=len(project.classes))
            project.add_boxes(key, det.to_annotation(key, project.classes, source=Source.PSEUDO, round=0,
                                                     model="loop_round_000"), round=0, weights=[1.0])
        train, val = training_samples(project)
        assert len(val) >= 1 and {s.name for s in train} >= set(pool)
        project.start_round(config.to_dict(), step="train", round_id=1)
        step_train(project, 1, config, progress=False)

        m = project.metrics()[1]
        guard = m["pseudo_guard"]
        chosen = "with_pseudo" if guard["kept"] else "without_pseudo"
        out = model_dir(project, 1)
        assert (out / "with_pseudo" / "best.pt").exists() and (out / "without_pseudo" / "best.pt").exists()
        assert filecmp.cmp(out / "best.pt", out / chosen / "best.pt", shallow=False)
        assert guard["pseudo_images"] == 4 and guard["images"] == len(val)
        assert m["train_images"] == len(train) - (0 if guard["kept"] else 4)
        # the same steps both ways: the comparison is of the labels, not of the schedule
        assert m["train_steps"] == config.training.steps

        # without the guard, the same round trains once, on everything
        plain = config.with_(pseudo_guard=False)
        project.start_round(plain.to_dict(), step="train", round_id=2)
        step_train(project, 2, plain, progress=False)
        assert "pseudo_guard" not in project.metrics()[2] and not (model_dir(project, 2) / "with_pseudo").exists()
        assert project.metrics()[2]["train_images"] == len(train)


def test_round_history_says_whether_the_pseudo_labels_were_kept(synthetic_project) -> None:
    project = synthetic_project
    project.start_round({}, step="train", round_id=0)
    project.set_metrics(0, {"images_labelled": 5, "map50": 0.5, "pseudo_guard": {
        "kept": False, "reason": "val mAP50 with pseudo-labels 0.3, without 0.5: dropped"}})
    row = round_history(project)[0]
    assert row["pseudo_kept"] is False and "dropped" in row["pseudo_guard"]
