"""autolabel.py (TSODA, TSODA) on CPU: a tiny run on 20 generated 64 px images, 8 of them labelled,
auto-labels the pool over a few iterations until it is empty, writes autolabel.json and the metrics
rows, keeps its pseudo test share out of the fixed test set, exports VOC XML with <confidence> that
loads back, and a run stopped after iteration 1 and resumed gives the same rows as one that was not.

The detector is FCOS on the pretrained EfficientNet-Lite0 (offline weights; random-init backbones
do not reach any score above 0.05 in a few dozen CPU steps), 32 FPN channels, one head conv. The
threshold, 0.055, sits just above the detector's own 0.05 score floor: tiny models are unsure."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import numpy as np
import pytest

from boxloop import formats
from boxloop.semi.autolabel import (PSEUDO_TEST_META, RESULT_FILE, ROWS_KEY, STATE_KEY, autolabel, autolabel_pool,
                                    iteration_steps)
from boxloop.semi.autolabel_config import AutolabelConfig, default_steps
from boxloop.project import export_project, init_project
from boxloop.structures import Source

N_IMAGES, N_LABELLED, SIZE = 20, 8, 64
RUN = dict(model="fcos", threshold=0.055, steps_first=20, steps_increment=10, steps_max=30, backbone="efficientnet_lite0",
           pretrained_backbone=True, image_size=SIZE, batch_size=4, device="cpu", lr=0.05, val_every=1000,
           detector_options={"fpn_channels": 32, "head_convs": 1}, seed=0)
ROW_FIELDS = ("iteration", "steps", "images_auto_labelled", "total_auto_labelled", "boxes", "remaining_unlabelled",
              "map50", "pseudo_test_map50", "seconds")


def run(project, **settings):
    """autolabel with RUN's settings, `settings` changed."""
    return autolabel(project, AutolabelConfig.make(**{**RUN, **settings}), progress=False)


@pytest.fixture(scope="module")
def few_labels(make_synthetic, tmp_path_factory) -> tuple[Any, Path]:
    """The generated dataset and an annotations folder holding only the first 8 of its XMLs."""
    data = make_synthetic(n_images=N_IMAGES, image_size=SIZE, seed=3)
    ann = tmp_path_factory.mktemp("few_labels")
    for xml in sorted(data.annotations_dir.glob("*.xml"))[:N_LABELLED]:
        shutil.copy(xml, ann / xml.name)
    return data, ann


def new_project(few_labels, where: Path):
    data, ann = few_labels
    return init_project(where, data.images, ann, classes=data.classes, test_fraction=0.25, seed=0, progress=False)


@pytest.fixture(scope="module")
def full_run(few_labels, tmp_path_factory):
    """One uninterrupted run until the pool is empty: (project, rows, fixed test keys before the run)."""
    project = new_project(few_labels, tmp_path_factory.mktemp("full") / "project")
    test_before = sorted(project.annotations("test"))
    assert len(autolabel_pool(project)) == N_IMAGES - N_LABELLED
    rows = run(project, iterations=10)
    yield project, rows, test_before
    project.close()


def strip_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# -- cheap checks ---------------------------------------------------------------------------------


def test_default_steps_scale_seed_000():
    # TSODA: 1,100 images at (assumed) batch 24 -> its own numbers
    assert default_steps(1100, 24) == (2500, 1500, 8500)
    # 364 images at batch 8: scale = 364/1100 * 24/8 = 0.992727...
    s = 364 / 1100 * 3
    assert default_steps(364, 8) == (round(2500 * s), round(1500 * s), round(8500 * s)) == (2482, 1489, 8438)
    cfg = AutolabelConfig.make(steps_first=20, steps_increment=10, steps_max=35)
    assert [iteration_steps(cfg, i) for i in (1, 2, 3, 4)] == [20, 30, 35, 35]


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.2, 1.5, math.nan])
def test_threshold_outside_unit_interval_is_rejected(few_labels, tmp_path, threshold):
    project = new_project(few_labels, tmp_path / "project")
    with pytest.raises(ValueError, match="threshold"):
        run(project, threshold=threshold)
    assert project.metrics() == {}
    assert not (project.dir / RESULT_FILE).exists()


def test_no_unlabelled_images_does_nothing(synthetic_project):
    assert autolabel_pool(synthetic_project) == []
    assert run(synthetic_project) == []
    assert synthetic_project.metrics() == {}
    assert not (synthetic_project.dir / RESULT_FILE).exists()
    assert not (synthetic_project.dir / "models").exists()


# -- one run until the pool is empty -----------------------------------------------------------------


def test_run_auto_labels_until_the_pool_is_empty(full_run):
    project, rows, _ = full_run
    n_pool = N_IMAGES - N_LABELLED
    assert rows and [r["iteration"] for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:
        assert set(ROW_FIELDS) <= set(r)
    assert [r["steps"] for r in rows] == [min(20 + 10 * i, 30) for i in range(len(rows))]
    # every iteration labelled something (else the run stops), but the last one: it trained on what the
    # one before it labelled, when that emptied the pool, and found nothing left to label
    assert all(r["images_auto_labelled"] > 0 for r in rows[:-1])
    assert len(rows) >= 2 and rows[-2]["remaining_unlabelled"] == 0
    assert rows[-1]["images_auto_labelled"] == 0 and rows[-1]["steps"] > 0 and rows[-1]["train_images"] == (
        rows[-2]["train_images"] + rows[-2]["auto_labelled_train"])
    assert np.cumsum([r["images_auto_labelled"] for r in rows]).tolist() == [r["total_auto_labelled"] for r in rows]
    assert [r["remaining_unlabelled"] for r in rows] == [n_pool - r["total_auto_labelled"] for r in rows]
    assert rows[-1]["remaining_unlabelled"] == 0 and autolabel_pool(project) == []
    assert rows[0]["pseudo_test_map50"] is None  # no auto-labelled test share before iteration 1 labels
    # the store holds exactly the pseudo boxes the rows count, each with its score above the threshold
    pseudo = project.annotations("pseudo")
    assert len(pseudo) == n_pool
    assert sum(len(a) for a in pseudo.values()) == sum(r["boxes"] for r in rows)
    for key, ann in pseudo.items():
        assert all(p.source == Source.PSEUDO and p.score is not None and p.score > RUN["threshold"]
                   and p.loc_quality is not None for p in ann.provenance), key
        assert {p.model for p in ann.provenance} <= {f"autolabel_{r['iteration']:03d}" for r in rows}
    table = project.box_table("pseudo")
    assert np.all(table["weight"] == 1.0)
    # auto-labelled images stay unlabelled for a human; 80/20 per iteration
    assert all(project.image(k).status == "unlabelled" for k in pseudo)
    for r in rows:
        n = r["images_auto_labelled"]
        assert (r["auto_labelled_train"], r["auto_labelled_test"]) == (round(0.8 * n), n - round(0.8 * n))


def test_pseudo_test_share_stays_out_of_the_fixed_test_set(full_run):
    project, rows, test_before = full_run
    share = project.get_meta(PSEUDO_TEST_META)
    assert len(share) == sum(r["auto_labelled_test"] for r in rows) > 0
    assert sorted(project.annotations("test")) == test_before  # the fixed test set did not change
    assert not set(share) & set(project.annotations("test")) and not set(share) & set(project.annotations("val"))
    assert all(project.image(k).split == "val" for k in share)
    train_pseudo = [k for k in project.annotations("pseudo") if k not in share]
    assert all(project.image(k).split == "train" for k in train_pseudo)
    # training takes the human train images and the pseudo train share, never the pseudo test share
    from boxloop.loop.model import training_samples

    train, val = training_samples(project)
    names = {s.name for s in train}
    assert names == set(project.annotations("train")) | set(train_pseudo)
    assert not names & set(share) and not {s.name for s in val} & set(share)


def test_results_file_and_metrics(full_run):
    project, rows, _ = full_run
    doc = json.loads((project.dir / RESULT_FILE).read_text())
    assert doc["iterations"] == rows
    assert doc["stopped"] == "no unlabelled image left"
    assert doc["config"]["tsoda"]["threshold"] == RUN["threshold"] and doc["config"]["tsoda"]["steps_first"] == 20
    assert "device" not in doc["config"]["training"]
    assert project.metrics(0)[0][ROWS_KEY] == rows
    assert project.metrics(0)[0][STATE_KEY]["stopped"] == "pool_empty"
    for r in rows:
        assert (project.dir / "models" / f"autolabel_{r['iteration']:03d}" / "best.pt").exists()
    # the fixed test mAP50 is a real evaluation: a number in [0, 1] every iteration
    assert all(r["map50"] is not None and 0.0 <= r["map50"] <= 1.0 for r in rows)
    # re-running a finished run changes nothing and trains nothing
    models = sorted(p.name for p in (project.dir / "models").iterdir())
    assert run(project, iterations=10) == rows
    assert sorted(p.name for p in (project.dir / "models").iterdir()) == models


def test_voc_export_of_pseudo_labels_loads_back(full_run, tmp_path):
    project, _, _ = full_run
    pseudo = project.annotations("pseudo")
    out = export_project(project, "voc", tmp_path / "voc", subset="pseudo")
    xmls = sorted(out.rglob("*.xml"))
    assert len(xmls) == len(pseudo)
    for xml in xmls:
        objects = SafeET.parse(xml).getroot().findall("object")
        assert objects
        for obj in objects:
            conf = obj.find("confidence")
            assert conf is not None and conf.text and float(conf.text) > 0
    back = formats.load("voc", out, images_root=project.image_root, classes=project.classes).annotations
    assert set(back) == set(pseudo)
    for key, ann in pseudo.items():
        got = back[key]
        np.testing.assert_allclose(got.boxes.xyxy, ann.boxes.xyxy, atol=1e-3)
        assert got.labels == ann.labels
        np.testing.assert_allclose([p.score for p in got.provenance], [p.score for p in ann.provenance], atol=1e-4)
        assert all(p.source == Source.PSEUDO for p in got.provenance)


# -- resume ---------------------------------------------------------------------------------------------


class Killed(RuntimeError):
    pass


def test_stopped_after_iteration_1_and_resumed_equals_uninterrupted(full_run, few_labels, tmp_path, monkeypatch):
    _, full_rows, _ = full_run
    project = new_project(few_labels, tmp_path / "project")

    # 1. the process dies inside iteration 1's labelling transaction, after some pseudo boxes were added
    def die(*args, **kwargs):
        assert project.connection.in_transaction and len(project.box_table("pseudo")["id"]) > 0
        raise Killed("killed while labelling")

    monkeypatch.setattr(project, "set_meta", die)
    with pytest.raises(Killed):
        run(project, iterations=1)
    monkeypatch.undo()
    state = project.metrics(0)[0][STATE_KEY]
    assert (state["iteration"], state["phase"]) == (1, "label")  # trained and evaluated, not labelled
    assert state["pending"]["steps"] == 20 and "map50" in state["pending"]
    assert project.annotations("pseudo") == {} and ROWS_KEY not in project.metrics(0)[0]
    assert len(autolabel_pool(project)) == N_IMAGES - N_LABELLED
    # 2. the re-run finishes iteration 1 (no training: the checkpoint is complete) and stops at the limit
    best = project.dir / "models" / "autolabel_001" / "best.pt"
    stamp = best.stat().st_mtime_ns
    first = run(project, iterations=1)
    assert best.stat().st_mtime_ns == stamp
    assert strip_seconds(first) == strip_seconds(full_rows[:1])
    doc = json.loads((project.dir / RESULT_FILE).read_text())
    # (a tiny model may also have labelled the whole pool in that one iteration)
    assert doc["stopped"] in ("iteration limit reached", "no unlabelled image left") and doc["next_iteration"] == 2
    # other settings on resume: refused, naming the setting, before anything runs
    with pytest.raises(ValueError, match="threshold"):
        run(project, iterations=10, threshold=0.5)
    rows = run(project, iterations=10)
    assert strip_seconds(rows) == strip_seconds(full_rows)
    assert project.annotations("pseudo").keys() == full_run[0].annotations("pseudo").keys()
    assert project.get_meta(PSEUDO_TEST_META) == full_run[0].get_meta(PSEUDO_TEST_META)
    project.close()


def test_an_iteration_that_labels_nothing_stops_the_run(few_labels, tmp_path):
    project = new_project(few_labels, tmp_path / "project")
    rows = run(project, iterations=None, threshold=0.99, steps_first=5)
    assert len(rows) == 1
    assert (rows[0]["images_auto_labelled"], rows[0]["boxes"], rows[0]["total_auto_labelled"]) == (0, 0, 0)
    assert rows[0]["remaining_unlabelled"] == N_IMAGES - N_LABELLED
    assert json.loads((project.dir / RESULT_FILE).read_text())["stopped"] == "the last iteration labelled nothing new"
    assert project.annotations("pseudo") == {} and project.get_meta(PSEUDO_TEST_META) == []
    assert run(project, iterations=None, threshold=0.99, steps_first=5) == rows
    project.close()


# -- --threshold auto, threshold guidance, a given first model ------------------------------------------


def test_threshold_auto_uses_validation_precision_and_autolabel_json_records_it(full_run, few_labels, tmp_path,
                                                                               monkeypatch):
    """Iteration 1 is an existing model (no training); its validation table is hand-made so that
    the lowest threshold with precision >= 0.9 is 0.04 (0.03 would let the false 0.04 in)."""
    import boxloop.semi.autolabel as al

    first = al.model_dir(full_run[0], 1) / "best.pt"
    real = al.validation_table(full_run[0], al._load(full_run[0], "cpu", 1), RUN)
    assert real.ndim == 2 and real.shape[1] == 2 and set(np.unique(real[:, 1])) <= {0.0, 1.0}
    table = np.array([(0.9, 1), (0.06, 1), (0.04, 0)], float)
    monkeypatch.setattr(al, "validation_table", lambda project, det, cfg: table)
    project = new_project(few_labels, tmp_path / "project")
    rows = run(project, iterations=1, initial_checkpoint=first, threshold="auto")
    assert len(rows) == 1 and rows[0]["steps"] == 0
    r = rows[0]
    assert r["threshold"] == pytest.approx(0.04) and r["threshold_rule"].startswith("auto") and r["val_precision"] == 1.0
    assert r["images_auto_labelled"] > 0 and r["scores"]["boxes"] > 0
    doc = json.loads((project.dir / RESULT_FILE).read_text())
    assert doc["config"]["tsoda"]["threshold"] == "auto" and doc["config"]["tsoda"]["target_precision"] == 0.9
    assert doc["threshold_chosen"] == pytest.approx(0.04) and doc["iterations"][0]["threshold"] == pytest.approx(0.04)
    import torch

    a, b = (torch.load(p, weights_only=True)["model"] for p in (first, al.model_dir(project, 1) / "best.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    project.close()
    # no threshold reaches 0.9: nothing is labelled, the row says what the scores look like
    monkeypatch.setattr(al, "validation_table", lambda project, det, cfg: np.array([(0.9, 0), (0.5, 1)], float))
    project = new_project(few_labels, tmp_path / "project2")
    rows = run(project, iterations=1, initial_checkpoint=first, threshold="auto")
    assert rows[0]["threshold"] is None and rows[0]["images_auto_labelled"] == 0
    assert "no threshold reaches validation precision 0.9" in rows[0]["guidance"] and "99th" in rows[0]["guidance"]
    project.close()


def test_threshold_guidance_says_what_the_scores_look_like_and_suggests_one():
    from boxloop.semi.autolabel import threshold_guidance

    scores = {"boxes": 500, "p50": 0.1, "p90": 0.31, "p99": 0.457, "max": 0.486}  # issue 14: BCCD at 0.8
    table = np.array([(0.48, 1), (0.46, 1), (0.42, 1), (0.40, 0), (0.30, 1)], float)
    msg, t = threshold_guidance(0.8, scores, table)
    assert t == pytest.approx(0.40) and "0.310 at the 90th percentile" in msg and "0.457 at the 99th" in msg
    assert "--threshold 0.40" in msg and "validation precision >= 0.9" in msg
    msg, t = threshold_guidance(0.8, scores, None)  # no validation: the 99th percentile, rounded down
    assert t == pytest.approx(0.45) and "top 1%" in msg and "no validation image" in msg
    msg, t = threshold_guidance(0.8, {"boxes": 0}, None)
    assert t is None and "detected nothing" in msg


# -- the config: groups, flat names, the layout stored before the groups ----------------------------------


def test_config_make_routes_flat_names_and_round_trips():
    cfg = AutolabelConfig.make(threshold=" AUTO ", steps_first=5, model="fcos", lr=0.01, device="cpu",
                               detector_options={"head_convs": 1})
    assert (cfg.tsoda.threshold, cfg.tsoda.steps_first, cfg.detector.model, cfg.training.lr) == ("auto", 5, "fcos", 0.01)
    assert cfg.tsoda.warm_start is True and cfg.training.val_every is None  # autolabel's defaults, not the loop's
    assert AutolabelConfig.from_dict(cfg.to_dict()) == cfg
    assert AutolabelConfig.from_dict(cfg.flat()) == cfg  # the flat layout of runs stored before the groups
    assert AutolabelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.with_(threshold=0.5).tsoda.threshold == 0.5 and cfg.tsoda.threshold == "auto"
    assert AutolabelConfig() == AutolabelConfig.make() == AutolabelConfig.from_dict({})
    with pytest.raises(TypeError, match="did you mean 'steps_first'"):
        AutolabelConfig.make(step_first=5)
    for bad, match in ((dict(target_precision=1.0), "target_precision"), (dict(iterations=0), "iterations"),
                       (dict(train_ratio=1.5), "train_ratio"), (dict(steps_max=0), "steps_max"),
                       (dict(steps_increment=-1), "steps_increment"), (dict(val_every=0), "val_every")):
        with pytest.raises(ValueError, match=match):
            AutolabelConfig.make(**bad)
    resolved = AutolabelConfig.make(batch_size=8).resolved(364)
    assert (resolved.tsoda.steps_first, resolved.tsoda.steps_increment, resolved.tsoda.steps_max) == default_steps(364, 8)
    from boxloop.defaults import training_recipe

    assert (resolved.training.optimizer, resolved.training.lr) == training_recipe(resolved.detector.model)
    other = "adamw" if resolved.training.optimizer == "sgd" else "sgd"
    moved = AutolabelConfig.make(optimizer=other).resolved(364).training
    assert (moved.optimizer, moved.lr) == (other, 0.01 if other == "sgd" else 0.001)


def old_flat_state(config: dict[str, Any]) -> dict[str, Any]:
    """autolabel_state as runs stored it before the config's groups: the resolved settings, flat."""
    return {"iteration": 1, "phase": "train", "pending": {}, "stopped": None, "config": config}


def test_a_run_stored_flat_before_the_groups_resumes(full_run, few_labels, tmp_path):
    """An old flat state with a non-default train_ratio: another train_ratio is refused, the same one
    resumes (iteration 1 is the given model, no training) and the state is stored nested from then on."""
    import boxloop.semi.autolabel as al
    from boxloop.defaults import training_recipe

    first = (al.model_dir(full_run[0], 1) / "best.pt").resolve()
    flat = {**{k: v for k, v in RUN.items()}, "target_precision": 0.9, "initial_checkpoint": str(first),
            "train_ratio": 0.5, "warm_start": True, "optimizer": training_recipe("fcos")[0], "steps_increment": 10}
    project = new_project(few_labels, tmp_path / "project")
    project.set_metric(al.METRICS_ROUND, STATE_KEY, old_flat_state(flat))
    with pytest.raises(ValueError, match=r"train_ratio: 0\.5 -> 0\.8"):
        run(project, iterations=1, initial_checkpoint=first)
    rows = run(project, iterations=1, initial_checkpoint=first, train_ratio=0.5)
    assert len(rows) == 1 and rows[0]["steps"] == 0 and rows[0]["images_auto_labelled"] > 0
    n = rows[0]["images_auto_labelled"]
    assert rows[0]["auto_labelled_train"] + rows[0]["auto_labelled_test"] == n
    assert abs(rows[0]["auto_labelled_train"] - n / 2) <= 1
    state = project.metrics(0)[0][STATE_KEY]
    assert state["iteration"] == 2 and state["config"]["tsoda"]["train_ratio"] == 0.5
    assert AutolabelConfig.from_dict(state["config"]).tsoda.initial_checkpoint == str(first)
    project.close()


def test_an_old_flat_state_lacking_later_settings_compares_with_their_old_values(few_labels, tmp_path):
    """Stored before target_precision, initial_checkpoint and the optimizer: those read as 0.9, None and
    SGD; a changed setting is still named. (A stopped run: nothing trains.)"""
    import boxloop.semi.autolabel as al

    flat = {k: v for k, v in RUN.items()}
    flat.update(train_ratio=0.8, warm_start=True, lr=0.05)
    project = new_project(few_labels, tmp_path / "project")
    project.set_metric(al.METRICS_ROUND, STATE_KEY, {**old_flat_state(flat), "stopped": "no_new_labels"})
    assert al._stored_config(project.metrics(0)[0][STATE_KEY]).training.optimizer == "sgd"
    with pytest.raises(ValueError, match=r"target_precision: 0\.9 -> 0\.8"):
        run(project, target_precision=0.8)
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        run(project, seed=1)
    assert run(project) == []  # the same settings: resumed, already stopped
    doc = json.loads((project.dir / RESULT_FILE).read_text())
    assert doc["config"]["tsoda"]["threshold"] == RUN["threshold"] and doc["config"]["training"]["optimizer"] == "sgd"
    project.close()


def test_the_cli_command_maps_its_options_onto_the_config(few_labels, tmp_path):
    """`boxloop autolabel` with a few options: one short iteration; autolabel.json holds them in the groups."""
    from typer.testing import CliRunner

    from boxloop.cli import app

    new_project(few_labels, tmp_path / "project").close()
    args = ["autolabel", str(tmp_path / "project"), "--threshold", "0.055", "--iterations", "1", "--steps-first", "2",
            "--steps-increment", "0", "--steps-max", "2", "--model", "fcos", "--image-size", str(SIZE),
            "--batch-size", "4", "--device", "cpu", "--seed", "3", "--detector-option", "fpn_channels=32",
            "--detector-option", "head_convs=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "project" / RESULT_FILE).read_text())
    assert doc["iterations"][0]["steps"] == 2 and doc["next_iteration"] == 2
    cfg = AutolabelConfig.from_dict(doc["config"])
    assert (cfg.tsoda.threshold, cfg.tsoda.iterations, cfg.tsoda.steps_max, cfg.training.seed) == (0.055, 1, 2, 3)
    assert (cfg.detector.model, cfg.training.image_size, cfg.detector.detector_options) == \
        ("fcos", SIZE, {"fpn_channels": 32, "head_convs": 1})
    # resumed with another threshold: refused, naming it
    result = CliRunner().invoke(app, [*args[:3], "0.5", *args[4:]])
    assert result.exit_code != 0 and "threshold" in result.output
