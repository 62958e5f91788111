"""The loop, algorithm by algorithm, with real (tiny) training: what one simulated round moves from
the pool to the labelled set and what it costs, box-level rounds and partially labelled images,
the stopping rules, the cumulative cost history, and the bad inputs of issue 4.

One module-scoped base project trains its round-0 model once (mobilenet_v3_large FCOS, 64 px, 8
steps); each test works on a copy of it (`simulate.copy_project`), from the 'predict' step on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boxloop.loop.history import StopRule, round_history
from boxloop.loop.round import pool_paths, run_round, step_select
from boxloop.loop.config import LoopConfig
from boxloop.loop.model import training_samples
from boxloop.loop.oracle import DRAW_SECONDS, VERIFY_SECONDS
from boxloop.loop.simulate import copy_project, withhold
from boxloop.store import Project
from boxloop.structures import Boxes, Detections, Source, iou

SIZE = 64
TINY = dict(model="fcos", backbone="mobilenet_v3_large", pretrained_backbone=False, epochs=None, steps=8,
            image_size=SIZE, batch_size=4, device="cpu", val_every=1000, budget=3,
            detector_options={"fpn_channels": 32, "head_convs": 1})


def tiny_config(**kw) -> LoopConfig:
    return LoopConfig.make(**{**TINY, **kw})



@pytest.fixture(scope="module")
def data(make_synthetic):
    return make_synthetic(n_images=24, image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def base(data, tmp_path_factory) -> Project:
    """6 labelled images (withheld the rest), round 0 trained and evaluated, stopped at 'predict'."""
    from boxloop.project import init_project

    root = tmp_path_factory.mktemp("loop_base")
    project = init_project(root / "base", data.images, data.annotations_dir, test_fraction=0.2, seed=0,
                           progress=False)
    withhold(project, 6, 0, tiny_config())
    run_round(project, tiny_config(strategy="random"), data.annotations, 0, progress=False, stop_at="predict")
    assert project.rounds()[0].step == "predict"
    yield project
    project.close()


@pytest.fixture()
def run(base, tmp_path) -> Project:
    copy_project(base, tmp_path / "run")
    project = Project.open(tmp_path / "run")
    yield project
    project.close()


def _labelled(project: Project) -> set[str]:
    return {i.path for i in project.images(status="labelled")}


# -- one image-level round ----------------------------------------------------------------------------


def test_image_round_labels_budget_images_with_withheld_truth_and_counts_cost(run, data):
    cfg = tiny_config(strategy="random", budget=3)
    pool0 = pool_paths(run)
    labelled0 = _labelled(run)
    assert len(pool0) > 3
    run_round(run, cfg, data.annotations, 0, progress=False)

    asked = [q.path for q in run.queries(round=0)]
    assert len(asked) == 3 and len(set(asked)) == 3
    assert set(asked) <= set(pool0)
    assert all(q.state == "answered" for q in run.queries(round=0))
    assert _labelled(run) == labelled0 | set(asked)
    assert pool_paths(run) == [p for p in pool0 if p not in asked]

    anns = run.annotations("labelled")
    for key in asked:
        truth = data.annotations[key]
        np.testing.assert_allclose(anns[key].boxes.xyxy, truth.boxes.xyxy)
        assert anns[key].labels == truth.labels
        assert all(p.source == Source.HUMAN and p.round == 0 for p in anns[key].provenance)
        assert run.image(key).split in ("train", "val")

    m = run.metrics(0)[0]
    cost = m["cost"]
    gt_boxes = sum(len(data.annotations[k]) for k in asked)
    assert cost["images"] == 3
    # every ground-truth box is either verified (a pre-annotation matched it) or drawn
    assert cost["boxes_drawn"] + cost["boxes_verified"] == gt_boxes
    assert cost["seconds"] == pytest.approx(cost["boxes_drawn"] * 50.8 + (cost["boxes_verified"]
                                                                         + cost["boxes_removed"]) * 21.9)
    assert m["selection"]["count"] == 3 and "short_by" not in m["selection"]
    # how many pool images the model kept no box on, counted from the stored predictions themselves
    # (the round's stored predictions cover exactly the pool the strategy ranked)
    blind = sum(1 for d in run.load_predictions(0).values() if len(d) == 0)
    assert m["selection"]["images_without_detections"] == blind
    assert run.rounds()[0].step == "done"


def test_box_round_makes_partial_images_with_weights_and_background(run, data):
    """Hand-made predictions on the real round: the three least confident boxes are an exact hit
    (verified), a shifted box with the wrong class (adjusted) and a box on empty ground (background)."""
    names = run.classes
    pool = pool_paths(run)
    truth = data.annotations
    a = next(k for k in pool if len(truth[k]) >= 3)
    b = next(k for k in pool if k != a and len(truth[k]) >= 1)

    def empty_spot(key: str) -> np.ndarray:
        for x in range(0, SIZE - 6, 2):
            for y in range(0, SIZE - 6, 2):
                box = np.array([[x, y, x + 6, y + 6]], float)
                if not len(truth[key]) or iou(box, truth[key].boxes.xyxy).max() == 0:
                    return box[0]
        raise AssertionError("no empty spot")

    def probs(label: int, p: float) -> list[float]:
        row = [(1 - p) / (len(names) - 1)] * len(names)
        row[label] = p
        return row

    ga, gb = truth[a], truth[b]
    cls = lambda ann, i: names.index(ann.labels[i])  # noqa: E731
    shifted = ga.boxes.xyxy[1] + np.array([1.0, 0.0, 1.0, 0.0])
    wrong = (cls(ga, 1) + 1) % len(names)
    det_a = Detections(
        boxes=Boxes(np.stack([ga.boxes.xyxy[0], shifted, ga.boxes.xyxy[2]]), run.image(a).size),
        labels=[cls(ga, 0), wrong, cls(ga, 2)],
        scores=[0.4, 0.45, 0.95],
        class_probs=[probs(cls(ga, 0), 0.4), probs(wrong, 0.45), probs(cls(ga, 2), 0.95)])
    bg_box = empty_spot(b)
    det_b = Detections(boxes=Boxes(np.stack([bg_box, gb.boxes.xyxy[0]]), run.image(b).size),
                       labels=[0, cls(gb, 0)], scores=[0.5, 0.9],
                       class_probs=[probs(0, 0.5), probs(cls(gb, 0), 0.9)])
    preds = {k: Detections.empty(len(names), run.image(k).size) for k in pool}
    preds[a], preds[b] = det_a, det_b
    run.save_predictions(0, preds)
    run.update_round(0, step="select")

    lam = 0.3
    # noisy_precision None: FineGrainedAL's rule, every unchecked box of the pool (score >= t_d) trains
    cfg = tiny_config(unit="boxes", strategy="least_confidence", budget=3, t_d=0.1, lambda_d=lam,
                      noisy_precision=None)
    run_round(run, cfg, truth, 0, progress=False)

    assert {(q.path, q.box_index) for q in run.queries(round=0)} == {(a, 0), (a, 1), (b, 0)}
    assert run.image(a).status == "partial" and run.image(b).status == "partial"
    assert a in pool_paths(run) and b in pool_paths(run)  # partial images stay in the pool

    cost = run.metrics(0)[0]["cost"]
    assert (cost["boxes_verified"], cost["boxes_adjusted"], cost["boxes_removed"], cost["boxes_drawn"]) == (1, 1, 1, 0)
    assert cost["seconds"] == pytest.approx(3 * VERIFY_SECONDS)

    table = run.box_table("partial")
    rows_a = table["path"] == a
    human_a = rows_a & (table["source"] == "human")
    np.testing.assert_allclose(table["xyxy"][human_a], ga.boxes.xyxy[:2])  # adjusted to the ground truth
    assert [names[c] for c in table["class_id"][human_a]] == list(ga.labels[:2])
    assert np.all(table["weight"][human_a] == 1.0)
    pred_a = rows_a & (table["source"] == "predicted")
    np.testing.assert_allclose(table["xyxy"][pred_a], ga.boxes.xyxy[2:3])
    assert np.allclose(table["weight"][pred_a], lam)
    rows_b = table["path"] == b
    assert set(table["source"][rows_b]) == {"predicted"}
    np.testing.assert_allclose(table["weight"][rows_b], [lam])

    bg = run.connection.execute(
        "SELECT x1, y1, x2, y2, active FROM boxes b JOIN images i ON i.id = b.image_id "
        "WHERE i.path = ? AND b.source = 'background'", (b,)).fetchall()
    assert len(bg) == 1 and bg[0][4] == 1
    np.testing.assert_allclose(bg[0][:4], bg_box)

    train, _ = training_samples(run)
    by_key = {s.key: s for s in train}
    np.testing.assert_allclose(sorted(by_key[a].weights), sorted([1.0, 1.0, lam]))
    sb = by_key[b]
    assert len(sb.annotation) == 1 and np.allclose(sb.weights, [lam])
    np.testing.assert_allclose(sb.annotation.boxes.xyxy, gb.boxes.xyxy[:1])  # the object, not the background box
    assert iou(sb.annotation.boxes.xyxy, bg_box[None]).max() < 0.5


def test_noisy_label_threshold_comes_from_validation_precision(run, monkeypatch):
    """Unchecked predicted boxes train from the lowest score whose validation precision is >= 0.5.
    By hand: rows above 0.3 are 2 right of 5 (0.4), above 0.4 are 2 of 4 (0.5): the threshold is 0.4."""
    from boxloop.loop import round as loop
    from boxloop.semi import autolabel

    table = np.array([(0.9, 1), (0.8, 0), (0.6, 0), (0.5, 1), (0.4, 0), (0.3, 0), (0.2, 0)], float)
    monkeypatch.setattr(autolabel, "validation_table", lambda project, det, cfg: table)
    monkeypatch.setattr(loop, "load_round_detector", lambda project, round_id, config: None)
    cfg = tiny_config(unit="boxes", strategy="least_confidence")
    assert loop.noisy_label_threshold(run, 0, cfg) == pytest.approx(0.4)
    m = run.metrics(0)[0]
    assert m["noisy_label_threshold"] == pytest.approx(0.4) and "precision >= 0.5" in m["noisy_label_rule"]
    # stored with the round: a second call (a human answering in parts) gives the same threshold
    monkeypatch.setattr(autolabel, "validation_table", lambda project, det, cfg: table[:0])
    assert loop.noisy_label_threshold(run, 0, cfg) == pytest.approx(0.4)
    # no validation detection reaches the precision: what the annotator is shown
    assert loop.noisy_label_threshold(run, 1, cfg) == cfg.selection.display_threshold
    # FineGrainedAL's rule on request: the box pool's t_d
    assert loop.noisy_label_threshold(run, 2, tiny_config(noisy_precision=None, t_d=0.07)) == pytest.approx(0.07)


# -- stopping rules and history --------------------------------------------------------------------------


def _hist(*maps, images=None, boxes=None):
    return [{"round": i, "map50": m, "images_labelled": (images or [0] * len(maps))[i],
             "boxes_labelled": (boxes or [0] * len(maps))[i]} for i, m in enumerate(maps)]


def test_stop_rule_target_budget_plateau():
    assert StopRule(target_map50=0.5).reason([]) is None
    assert StopRule(target_map50=0.5).reason(_hist(0.2, 0.49)) is None
    assert "target" in StopRule(target_map50=0.5).reason(_hist(0.2, 0.5))
    assert StopRule(max_images=30).reason(_hist(0.1, 0.2, images=[10, 29])) is None
    assert "image budget" in StopRule(max_images=30).reason(_hist(0.1, 0.2, images=[10, 30]))
    assert "box budget" in StopRule(max_boxes=100).reason(_hist(0.1, boxes=[120]))
    plateau = StopRule(plateau_delta=0.01, plateau_rounds=2)
    assert plateau.reason(_hist(0.30, 0.305)) is None  # not enough rounds yet
    assert plateau.reason(_hist(0.1, 0.3, 0.305, 0.306)) is not None  # gains 0.005, 0.001
    assert plateau.reason(_hist(0.1, 0.3, 0.305, 0.33)) is None  # the last gain is 0.025
    assert plateau.reason(_hist(0.3, 0.32, 0.325)) is None  # gains 0.02, 0.005: only one flat round
    assert plateau.reason(_hist(0.3, 0.29, 0.28)) is not None  # a falling curve is flat too


def test_round_history_cumulative_cost(synthetic_project):
    p = synthetic_project
    p.set_metrics(0, {"images_labelled": 6, "human_boxes": 10, "map50": 0.1,
                      "cost": {"images": 3, "boxes_drawn": 2, "boxes_verified": 4, "boxes_adjusted": 0,
                               "boxes_removed": 1, "seconds": 2 * 50.8 + 5 * 21.9}})
    p.set_metrics(1, {"images_labelled": 9, "human_boxes": 16, "map50": 0.2,
                      "cost": {"images": 3, "boxes_drawn": 5, "boxes_verified": 0, "boxes_adjusted": 0,
                               "boxes_removed": 0, "seconds": 5 * 50.8}})
    p.set_metrics(2, {"images_labelled": 12, "human_boxes": 21, "map50": 0.3})
    h = round_history(p)
    assert [r["round"] for r in h] == [0, 1, 2]
    assert [r["images_labelled"] for r in h] == [6, 9, 12]
    # the seed set counts as drawn; each round adds what its answers cost
    assert [r["boxes_labelled"] for r in h] == [10, 17, 22]
    assert h[0]["cost_seconds"] == pytest.approx(10 * DRAW_SECONDS)
    assert h[1]["cost_seconds"] == pytest.approx(round(12 * 50.8 + 5 * 21.9, 1))
    assert h[2]["cost_seconds"] == pytest.approx(round(17 * 50.8 + 5 * 21.9, 1))


# -- bad input -------------------------------------------------------------------------------------------


def test_unknown_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown strategy 'entropy' for unit 'boxes'"):
        tiny_config(unit="boxes", strategy="entropy")


def test_strategy_needing_loc_quality_with_retinanet_names_strategy_and_models(run):
    """RetinaNet predicts no localization quality: localization_aware must say so, not crash."""
    from boxloop.detectors import create_detector
    from boxloop.predict.inference import predict_paths

    torch.manual_seed(0)
    det = create_detector("retinanet", num_classes=run.num_classes, backbone="mobilenet_v3_large",
                          pretrained_backbone=False, min_size=SIZE, max_size=SIZE, fpn_channels=32)
    pool = pool_paths(run)
    preds = dict(predict_paths(det, [run.image_root / k for k in pool], SIZE, device="cpu", score_threshold=0.0,
                               progress=False, keys=pool))
    assert all(d.loc_quality is None for d in preds.values())
    assert any(len(d) for d in preds.values())
    run.save_predictions(0, preds)
    run.update_round(0, step="select")
    with pytest.raises(ValueError, match=r"strategy 'localization_aware' needs Detections.loc_quality.*fcos"):
        step_select(run, 0, tiny_config(strategy="localization_aware"))
    assert not run.queries(round=0)  # nothing half-written
    # the same predictions serve a strategy that needs no loc_quality
    step_select(run, 0, tiny_config(strategy="least_confidence", budget=2))
    assert len(run.queries(round=0, state="open")) == 2


def test_budget_larger_than_pool_takes_the_rest_and_says_so_then_empty_pool_stops(run, data):
    pool0 = pool_paths(run)
    cfg = tiny_config(strategy="random", budget=len(pool0) + 5)
    with pytest.warns(UserWarning, match=f"only {len(pool0)} left"):
        run_round(run, cfg, data.annotations, 0, progress=False)
    sel = run.metrics(0)[0]["selection"]
    assert sel["count"] == len(pool0)
    assert sel["budget"] == len(pool0) + 5 and sel["short_by"] == 5
    assert run.metrics(0)[0]["cost"]["images"] == len(pool0)
    assert pool_paths(run) == []
    # nothing left to ask: a clear message, nothing written
    with pytest.raises(ValueError, match="pool is empty"):
        step_select(run, 1, cfg)
    assert not run.queries(round=1)
