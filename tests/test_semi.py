"""semi.py on CPU with a tiny random-init fcos_lite (the default detector) on 64 px synthetic images: the
whole teacher -> pseudo labels -> student and teacher continued -> guard pipeline runs, the fair
baseline trains exactly as many steps with the same recipe as the student, pseudo-labels pass the
dynamic thresholds when the localization quality v tracks IoU and do not when v stays low, the
switches act, bad input fails clearly, and the flip merge and pseudo-label quality match
hand-computed numbers.

The teacher is barely trained, so tau is set low (0.004, clip 0.001..0.9, candidates from 0.001) to make pseudo boxes appear
from its own predictions; the two threshold cases inject hand-made teacher predictions instead, at
the default thresholds. The tests check the machinery, not accuracy (the benchmark does that)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from boxloop.train.data import Sample
from boxloop.semi.certainty import (SemiConfig, fit_semi, pseudo_label_quality, pseudo_samples, student_samples,
                          student_train_config)
from boxloop.semi.weak_view import merge_flip
from boxloop.structures import Annotation, Boxes, Detections
from boxloop.train.checkpoints import CheckpointError, load_checkpoint
from boxloop.train.config import TrainConfig
from boxloop.train.checkpoints import load_detector

SIZE = 64
DET = dict(pretrained_backbone=False, min_size=SIZE, max_size=SIZE, channels=16, head_convs=1)  # fcos_lite
LOW = dict(tau=0.004, clip=(0.001, 0.9), candidate_threshold=0.001)



def config(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 4, "batch_size": 2, "image_size": SIZE, "device": "cpu", "lr": 0.01,
                          "warmup_steps": 0, "val_every": 4, **kw})


@pytest.fixture(scope="module")
def data(make_synthetic):
    ds = make_synthetic(n_images=14, image_size=SIZE, seed=3)
    items = [Sample(ds.images / k, a, key=k) for k, a in sorted(ds.annotations.items())]
    return ds, items[:5], items[5:10], items[10:]  # labelled, unlabelled (truth withheld), val


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    ds, labelled, unlabelled, val = data
    out = tmp_path_factory.mktemp("semi")
    torch.manual_seed(0)
    result = fit_semi((labelled, unlabelled, val), ds.classes, config(), SemiConfig(**LOW, student_steps=3), out,
                      detector_kwargs=DET, progress=False)
    return result, out


def test_end_to_end_keeps_the_better_model(run, data) -> None:
    result, out = run
    ds = data[0]
    assert result.chosen in ("supervised", "semi")
    assert isinstance(result.supervised_val_map50, float) and isinstance(result.semi_val_map50, float)
    assert isinstance(result.teacher_val_map50, float)
    assert result.delta == pytest.approx(result.semi_val_map50 - result.supervised_val_map50)
    # the guard: kept only when the bootstrap interval's lower end is above min_gain (0)
    g = result.guard
    assert g["delta"] == pytest.approx(result.delta) and g["low"] <= g["delta"] <= g["high"]
    assert g["images"] == 4 and g["level"] == 0.9 and (result.chosen == "semi") == (g["low"] > 0) == g["a_better"]
    assert result.unlabelled_images == 5 and 0 < result.pseudo_images <= 5 and result.pseudo_boxes >= result.pseudo_images
    assert result.pseudo_boxes == sum(len(a) for a in result.pseudo_labels.values())
    assert set(result.thresholds) == set(result.alpha) == set(ds.classes)
    assert all(0.001 <= t <= 0.9 for t in result.thresholds.values())
    assert result.certainty_used
    for key, ann in result.pseudo_labels.items():  # RE on, lambda_u 1: each pseudo box weighs its class's alpha_m
        np.testing.assert_allclose(result.pseudo_weights[key], [result.alpha[c] for c in ann.labels], rtol=1e-6)
    # best.pt is the chosen model's checkpoint (student or teacher continued), loadable
    chosen = result.student_checkpoint if result.chosen == "semi" else result.continued_checkpoint
    a, b = load_checkpoint(out / "best.pt")["model"], load_checkpoint(chosen)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    det, classes, _ = load_detector(out / "best.pt", expect_classes=ds.classes)
    assert det.has_loc_quality
    summary = json.loads((out / "semi.json").read_text())
    assert summary["chosen"] == result.chosen and summary["semi_config"]["tau"] == LOW["tau"]
    assert summary["guard"]["low"] == g["low"] and summary["continued_checkpoint"] == str(result.continued_checkpoint)
    assert len(result.history) == 3 and "val_map50" in result.history[-1]


def test_teacher_continued_trains_as_many_steps_as_the_student_with_its_recipe(run) -> None:
    """The fair baseline: from the teacher's weights, the student's step count, strong augmentation,
    schedule and seed; only the pseudo-labelled images differ."""
    result, _ = run
    assert result.steps == {"teacher": 4, "student": 3, "continued": 3}
    s, c = (load_checkpoint(p) for p in (result.student_checkpoint, result.continued_checkpoint))
    assert s["total_steps"] == c["total_steps"] == 3 and len(s["history"]) == len(c["history"]) == 3
    assert s["train_config"] == c["train_config"]
    assert c["train_config"]["strong"] and c["train_config"]["steps"] == 3 and c["train_config"]["epochs"] is None
    t = load_checkpoint(result.teacher_checkpoint)
    assert not t["train_config"]["strong"]
    # the default: as many steps as the teacher trained
    sc = student_train_config(config(epochs=3, steps=None, val_every=1), 10, labelled_images=5)
    assert sc.steps == 10 and sc.epochs is None and sc.strong and sc.val_every == 3  # 1 epoch = 3 steps of 2


def test_switches_change_thresholds_and_weights(run, data, tmp_path: Path) -> None:
    """No DT -> every tau_m == tau; no RE -> every alpha_m == 1; CA off changes what accumulates."""
    ds, labelled, unlabelled, val = data
    result, _ = run
    teacher = result.teacher_checkpoint
    assert len(set(result.thresholds.values())) > 1 or set(result.thresholds.values()) != {LOW["tau"]}
    off = fit_semi((labelled, unlabelled, val), ds.classes, config(),
                   SemiConfig(**LOW, dynamic_threshold=False, reweight=False, student_steps=1), tmp_path / "off",
                   teacher_checkpoint=teacher, progress=False)
    assert set(off.thresholds.values()) == {LOW["tau"]} and set(off.alpha.values()) == {1.0}
    weights = np.concatenate(list(off.pseudo_weights.values()))
    assert weights.size == off.pseudo_boxes and (weights == 1.0).all()
    no_ca = fit_semi((labelled, unlabelled, val), ds.classes, config(),
                     SemiConfig(**LOW, certainty=False, student_steps=1), tmp_path / "noca",
                     teacher_checkpoint=teacher, progress=False)
    assert not no_ca.certainty_used
    # p alone is larger than p*v, so without CA at least as many boxes pass
    assert no_ca.pseudo_boxes >= result.pseudo_boxes
    assert no_ca.thresholds != result.thresholds


def test_teacher_with_other_classes_is_rejected_naming_both(run, data, tmp_path: Path) -> None:
    ds, labelled, unlabelled, val = data
    other = ["cat", "dog", "bird"]
    with pytest.raises(CheckpointError) as err:
        fit_semi((labelled, unlabelled, val), other, config(), SemiConfig(), tmp_path,
                 teacher_checkpoint=run[0].teacher_checkpoint, progress=False)
    assert str(ds.classes) in str(err.value) and str(other) in str(err.value)


def test_no_unlabelled_images_trains_supervised_only(synthetic_project, tmp_path: Path) -> None:
    """A project whose images are all labelled: say so, train the teacher, keep it."""
    result = fit_semi(synthetic_project, None, config(steps=2, image_size=96),
                      SemiConfig(), tmp_path / "semi", detector_kwargs={**DET, "min_size": 96, "max_size": 96},
                      progress=False)
    assert result.chosen == "supervised" and "no unlabelled images" in result.message
    assert result.student_checkpoint is None and result.semi_val_map50 is None and result.pseudo_boxes == 0
    assert (tmp_path / "semi" / "best.pt").is_file()
    _, classes, _ = load_detector(tmp_path / "semi" / "best.pt")
    assert classes == synthetic_project.classes


@pytest.mark.parametrize("kw", [dict(tau=1.0), dict(tau=0.0), dict(tau=-0.2), dict(clip=(0.4, 1.2)),
                                dict(candidate_threshold=1.5), dict(lambda_u=-1.0), dict(student_steps=0),
                                dict(guard_level=1.0), dict(guard_resamples=0)])
def test_bad_settings_are_rejected(kw) -> None:
    with pytest.raises(ValueError):
        SemiConfig(**kw)


def _dets(boxes, labels, scores, lq, size=(100, 50)) -> Detections:
    probs = np.zeros((len(labels), 2), np.float32)
    probs[np.arange(len(labels)), labels] = scores
    return Detections(Boxes(np.asarray(boxes, float).reshape(-1, 4), size), np.asarray(labels), np.asarray(scores),
                      probs, loc_quality=np.asarray(lq, float))


def test_merge_flip_averages_the_two_views() -> None:
    """Pair (IoU 0.82, same class): mean box/p/v. A box of one view only: p halved, v kept.
    Same place but another class: not a pair."""
    a = _dets([[10, 10, 30, 30], [60, 10, 80, 30]], [0, 1], [0.9, 0.6], [0.8, 0.5])
    b = _dets([[12, 10, 30, 30], [60, 10, 80, 30]], [0, 0], [0.7, 0.4], [0.6, 0.9])
    m = merge_flip(a, b, 0.55)
    assert len(m) == 3
    np.testing.assert_allclose(m.boxes.xyxy[0], [11, 10, 30, 30])
    assert m.labels[0] == 0 and m.scores[0] == pytest.approx(0.8) and m.loc_quality[0] == pytest.approx(0.7)
    rest = sorted(zip(m.labels[1:], m.scores[1:], m.loc_quality[1:]))
    assert rest[0] == (0, pytest.approx(0.2), pytest.approx(0.9)) and rest[1] == (1, pytest.approx(0.3), pytest.approx(0.5))
    np.testing.assert_allclose(m.class_probs[np.arange(3), m.labels], m.scores, rtol=1e-6)
    pv = m.scores * m.loc_quality
    assert (np.diff(pv) <= 0).all()
    empty = merge_flip(Detections.empty(2, (100, 50), loc_quality=True), Detections.empty(2, (100, 50), loc_quality=True))
    assert len(empty) == 0


def test_pseudo_label_quality_hand_case() -> None:
    """Truth: 2 class-0 objects in img1, 1 class-1 in img2 (no accepted box there).
    Accepted: one hit (IoU 1) and one miss (wrong place) in img1 -> class 0: P 1/2, R 1/2; class 1: R 0."""
    size = (100, 100)
    truth = {"img1": Annotation("img1", Boxes(np.array([[0, 0, 10, 10], [50, 50, 70, 70]], float), size), ("a", "a")),
             "img2": Annotation("img2", Boxes(np.array([[5, 5, 25, 25]], float), size), ("b",))}
    accepted = {"img1": (_dets([[0, 0, 10, 10], [80, 80, 95, 95]], [0, 0], [0.9, 0.8], [1, 1], size), np.ones(2))}
    q = pseudo_label_quality(accepted, truth, ["a", "b"])
    assert q["per_class"]["a"]["precision"] == pytest.approx(0.5) and q["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert q["per_class"]["b"]["recall"] == 0.0 and q["per_class"]["b"]["precision"] is None
    assert q["precision"] == pytest.approx(0.5) and q["recall"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no withheld labels"):
        pseudo_label_quality({"other": accepted["img1"]}, truth, ["a", "b"])


def _teacher_boxes(truth: Annotation, classes, p: float, v: float) -> Detections:
    """A hand-made weak-view prediction: every true box found with class probability p and
    localization quality v."""
    n = len(truth)
    labels = np.array([classes.index(c) for c in truth.labels], dtype=np.int64)
    probs = np.full((n, len(classes)), (1 - p) / (len(classes) - 1), np.float32)
    probs[np.arange(n), labels] = p
    return Detections(truth.boxes, labels, np.full(n, p * v, np.float32), probs,
                      loc_quality=np.full(n, v, np.float32))


@pytest.mark.parametrize("v", [0.9, 0.5])
def test_pseudo_labels_pass_the_dynamic_thresholds_only_when_v_is_high(run, data, tmp_path: Path, v: float) -> None:
    """CertaintySSOD's defaults (tau 0.7, gamma1 0.05, clip 0.4..0.9). A teacher that finds every object
    with p = 0.95: with v = 0.9 (a quality that tracks IoU on right boxes) p*v = 0.855 passes every
    tau_m, the student trains on exact pseudo boxes (precision 1 against the withheld labels); with
    v = 0.5 (fcos's predicted IoU on BCCD, issue 14) p*v = 0.475 stays under every tau_m: no student,
    teacher continued is kept and the message says why."""
    ds, labelled, unlabelled, val = data
    preds = {s.name: _teacher_boxes(s.annotation, ds.classes, 0.95, v) for s in unlabelled}
    result = fit_semi((labelled, unlabelled, val), ds.classes, config(), SemiConfig(student_steps=2), tmp_path,
                      teacher_checkpoint=run[0].teacher_checkpoint, teacher_predictions=preds, progress=False)
    objects = sum(len(s.annotation) for s in unlabelled)
    tau = result.thresholds
    assert all(0.4 <= t <= 0.9 for t in tau.values()) and objects > 0
    if v == 0.9:
        assert all(0.855 > t for t in tau.values())
        assert result.pseudo_boxes == objects and result.student_checkpoint is not None
        q = pseudo_label_quality(result.pseudo_labels, {s.name: s.annotation for s in unlabelled}, ds.classes)
        assert q["precision"] == 1.0 and q["recall"] == 1.0
        assert result.steps["student"] == result.steps["continued"] == 2 and result.guard is not None
    else:
        assert all(0.475 < t for t in tau.values())
        assert result.pseudo_boxes == 0 and result.pseudo_images == 0 and result.student_checkpoint is None
        assert result.chosen == "supervised" and result.steps["continued"] == 2
        assert "no pseudo-label passed the thresholds" in result.message and "teacher continued" in result.message
        a = load_checkpoint(tmp_path / "best.pt")["model"]
        b = load_checkpoint(result.continued_checkpoint)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_unaccepted_teacher_boxes_become_ignore_regions_of_weight_zero() -> None:
    """One image, four teacher boxes (class probability p, quality v, score p*v) and a fixed tau 0.7:
    A (p .95, v .9: 0.855) is accepted; B (0.3, elsewhere) becomes an ignore region of weight 0; C
    (0.3, IoU 0.82 with A: the same object) is not an ignore region, it would take A's locations;
    D (0.02) is under the ignore threshold 0.05. An image with no accepted box gets no Sample."""
    classes = ["a", "b"]
    xyxy = np.array([[10, 10, 30, 30], [50, 50, 70, 70], [11, 11, 31, 31], [70, 10, 90, 30]], np.float32)
    p = np.array([0.95, 0.6, 0.6, 0.04])
    probs = np.stack([p, 1 - p], axis=1).astype(np.float32)
    scores = np.array([0.855, 0.3, 0.3, 0.02], np.float32)
    img = Detections(Boxes(xyxy, (100, 100)), np.zeros(4, np.int64), scores, probs,
                     loc_quality=np.array([0.9, 0.5, 0.5, 0.5], np.float32))
    none = img[np.array([1, 3])]  # nothing certain: no Sample, and its unsure box is no ignore region
    pool = {"one.png": img, "none.png": none}
    unlabelled = [Sample(Path("one.png")), Sample(Path("none.png"))]
    semi = SemiConfig(dynamic_threshold=False, reweight=False, lambda_u=0.5)
    labels, weights, samples, ignored = pseudo_samples(pool, unlabelled, classes, semi.thresholds(2), semi.lambda_u,
                                                       semi.ignore_threshold)
    assert list(labels) == ["one.png"] and len(labels["one.png"]) == 1 and ignored == 1
    np.testing.assert_allclose(labels["one.png"].boxes.xyxy, xyxy[:1])
    np.testing.assert_allclose(weights["one.png"], [0.5])
    (s,) = samples
    np.testing.assert_allclose(s.annotation.boxes.xyxy, xyxy[:2])
    np.testing.assert_allclose(s.weights, [0.5, 0.0])
    labels2, _, samples2, ignored2 = pseudo_samples(pool, unlabelled, classes, semi.thresholds(2), semi.lambda_u, None)
    assert ignored2 == 0 and len(samples2[0].annotation) == 1 and labels2.keys() == labels.keys()


def test_student_batches_hold_the_labelled_share() -> None:
    """2 labelled, 5 pseudo-labelled: share 0.5 repeats the labelled 3 times (6 of 11 >= 0.5, 2 times
    would give 4 of 9 < 0.5); 0.8 needs 10 (20 of 25); 0 is the plain union."""
    lab = [Sample(Path(f"l{i}.png")) for i in range(2)]
    pse = [Sample(Path(f"p{i}.png")) for i in range(5)]
    for share, repeat in ((0.5, 3), (0.8, 10), (0.0, 1)):
        out = student_samples(lab, pse, share)
        assert out == lab * repeat + pse
    assert student_samples(lab, [], 0.5) == lab and student_samples([], pse, 0.5) == pse
    with pytest.raises(ValueError, match="labelled_share"):
        SemiConfig(labelled_share=1.0)


def test_cli_train_semi_keeps_teacher_continued_or_the_student(make_synthetic, tmp_path: Path) -> None:
    """`boxloop train --semi` end to end on a project with 8 labelled and 12 unlabelled images; and
    `autolabel --threshold` refuses what is neither a number in (0, 1) nor 'auto'."""
    import shutil

    from typer.testing import CliRunner

    from boxloop.cli import app

    data = make_synthetic(n_images=20, image_size=SIZE, seed=3)
    ann = tmp_path / "ann"
    ann.mkdir()
    for xml in sorted(data.annotations_dir.glob("*.xml"))[:8]:
        shutil.copy(xml, ann / xml.name)
    proj = tmp_path / "proj"
    run = CliRunner().invoke
    assert run(app, ["init", str(proj), "--images", str(data.images), "--annotations", str(ann),
                     "--test-fraction", "0.25"]).exit_code == 0
    res = run(app, ["train", str(proj), "--semi", "--steps", "2", "--image-size", str(SIZE), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "teacher continued" in " ".join(res.stdout.split())  # rich wraps lines
    summary = json.loads((proj / "models" / "semi" / "semi.json").read_text())
    assert summary["steps"]["continued"] == 2 and summary["chosen"] in ("supervised", "semi")
    res = run(app, ["autolabel", str(proj), "--threshold", "often"])
    assert res.exit_code == 1 and "--threshold must be a number in (0, 1) or 'auto'" in res.stderr
