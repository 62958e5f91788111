"""Rounds whose model kept no box (issue 13): every strategy still selects, through the real loop
(predict -> select -> oracle), and the round's results record the fallback it took.

Zero detections are made the way a real under-trained model makes them: the round predicts with a
score threshold (and t_d) above anything the tiny model scores, so the stored predictions are empty.
Where a case needs boxes on the pool but none on the labelled images, the pool's predictions are
written by hand (high scores, with features) and the labelled images are predicted for real.
"""

from __future__ import annotations

import numpy as np
import pytest

from boxloop.loop.history import round_history
from boxloop.loop.round import pool_paths, run_round
from boxloop.loop.simulate import copy_project
from boxloop.store import Project
from boxloop.structures import Boxes, Detections

# the tiny loop of test_loop.py, and its base project (6 labelled images, round 0 stopped at predict)
from test_loop import base, data, tiny_config as cfg  # noqa: E402,F401  (fixtures, re-registered here)

BLIND = dict(score_threshold=0.99, t_d=0.99)  # nothing the 8-step model predicts scores this high


@pytest.fixture()
def run(base, tmp_path) -> Project:
    copy_project(base, tmp_path / "run")
    project = Project.open(tmp_path / "run")
    yield project
    project.close()


def _blind_round(run: Project, data, **kw) -> dict:
    pool = pool_paths(run)
    run_round(run, cfg(**BLIND, **kw), data.annotations, 0, progress=False)
    preds = run.load_predictions(0)
    assert set(preds) == set(pool) and all(len(d) == 0 for d in preds.values())  # really no box
    return run.metrics(0)[0]["selection"]


def test_image_coreset_with_zero_detections_uses_the_backbone_embedding(run, data):
    before = len(pool_paths(run))
    sel = _blind_round(run, data, strategy="coreset")
    assert sel["fallback"]["strategy"] == "coreset_embedding"
    assert "no box on any of the" in sel["fallback"]["reason"]
    assert sel["count"] == 3 and len(pool_paths(run)) == before - 3  # asked and answered
    row = round_history(run)[0]
    assert row["fallback"] == sel["fallback"]  # in results.json's round row


@pytest.mark.parametrize("strategy", ["least_confidence", "entropy", "localization_aware"])
def test_score_strategies_with_zero_detections_record_random(run, data, strategy):
    sel = _blind_round(run, data, strategy=strategy)
    assert sel["fallback"]["strategy"] == "random" and strategy in sel["fallback"]["reason"]
    assert sel["count"] == 3 and sel["images_without_detections"] == len(run.load_predictions(0))


def test_random_takes_no_fallback(run, data):
    sel = _blind_round(run, data, strategy="random")
    assert "fallback" not in sel and sel["count"] == 3


@pytest.mark.parametrize("strategy", ["coreset", "least_confidence", "random"])
def test_box_level_with_zero_detections_asks_whole_images(run, data, strategy):
    pool = pool_paths(run)
    sel = _blind_round(run, data, strategy=strategy, unit="boxes", budget=5)
    fb = sel["fallback"]
    assert fb["strategy"] == "random_images" and fb["images"] >= 1
    assert all(q.box_index is None for q in run.queries(round=0))
    asked = {q.path for q in run.queries(round=0)}
    assert len(asked) == fb["images"] and asked <= set(pool)
    assert all(run.image(k).status == "labelled" for k in asked)  # the image oracle answered them whole
    cost = run.metrics(0)[0]["cost"]
    assert cost["images"] == fb["images"]
    assert cost["boxes_drawn"] == sum(len(data.annotations[k]) for k in asked)
    assert round_history(run)[0]["fallback"]["strategy"] == "random_images"


def _confident_pool(run: Project, dim: int = 6, with_features: bool = True) -> None:
    """Hand-made pool predictions: two sure boxes an image, with features, none on labelled images."""
    rng = np.random.default_rng(0)
    c = run.num_classes
    preds = {}
    for k in pool_paths(run):
        probs = np.full((2, c), 0.001, np.float32)
        probs[:, 0] = 0.995
        preds[k] = Detections(boxes=Boxes(np.array([[1, 1, 20, 20], [30, 30, 50, 50]], float), run.image(k).size),
                              labels=[0, 0], scores=[0.995, 0.995], class_probs=probs,
                              loc_quality=np.full(2, 0.9, np.float32),
                              features=rng.standard_normal((2, dim)) if with_features else None)
    run.save_predictions(0, preds)
    run.update_round(0, step="select")


def test_box_coreset_without_labelled_box_features_starts_farthest_first(run, data):
    _confident_pool(run)
    run_round(run, cfg(**BLIND, strategy="coreset", unit="boxes", budget=4), data.annotations, 0, progress=False)
    sel = run.metrics(0)[0]["selection"]
    assert sel["fallback"]["strategy"] == "coreset" and "random first pick" in sel["fallback"]["reason"]
    assert len([q for q in run.queries(round=0) if q.box_index is not None]) == 4


def test_image_coreset_without_labelled_features_uses_the_embedding(run, data):
    _confident_pool(run)
    run_round(run, cfg(**BLIND, strategy="coreset", budget=3), data.annotations, 0, progress=False)
    sel = run.metrics(0)[0]["selection"]
    assert sel["fallback"]["strategy"] == "coreset_embedding"
    assert "labelled training image" in sel["fallback"]["reason"] and sel["count"] == 3


def test_coreset_with_boxes_everywhere_takes_no_fallback(run, data):
    run_round(run, cfg(strategy="coreset", score_threshold=0.0, t_d=0.0), data.annotations, 0, progress=False)
    sel = run.metrics(0)[0]["selection"]
    assert "fallback" not in sel and sel["count"] == 3


def test_warm_start_continues_from_the_previous_round(run, data):
    c = cfg(strategy="random", warm_start=True, warm_steps=3)
    run_round(run, c, data.annotations, 0, progress=False)
    run_round(run, c, data.annotations, 1, progress=False, last=True)
    m = run.metrics()
    assert m[1]["train_steps"] == 3 and m[1]["warm_start_from"] == 0
    rows = round_history(run)
    assert rows[1]["warm_start_from"] == 0 and rows[1]["train_steps"] == 3
    # from scratch: the configured steps, no warm start
    assert c.train_config(1, warm=False).steps == 8 and c.train_config(1, warm=True).steps == 3


def test_ppal_without_box_features_records_its_uncertainty_fallback(run, data):
    """Pool predictions with no features (a detector that gives none): ppal ranks by its uncertainty
    alone and the round says so; its class weights come from the labelled images."""
    _confident_pool(run, with_features=False)
    run_round(run, cfg(strategy="ppal", budget=3), data.annotations, 0, progress=False)
    sel = run.metrics(0)[0]["selection"]
    assert sel["fallback"]["strategy"] == "ppal_uncertainty" and sel["count"] == 3
    assert sel["quality_from"] == "class_skill"
