"""LoopConfig's groups: defaults, checks, flat names routed to their group, saved configs read back
(nested, and flat as every round of a project made before the groups stores it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from boxloop.cli.options import loop_config
from boxloop.loop.config import (DetectorSettings, LoopConfig, PredictionSettings, PseudoSettings, SelectionSettings,
                                 TrainingSettings)

# A round's config as the flat LoopConfig saved it (dataclasses.asdict, 37 keys), written out by hand,
# with a few settings away from their defaults.
OLD_FLAT = {
    "model": "fcos", "backbone": "mobilenet_v3_large", "pretrained_backbone": False,
    "detector_options": {"fpn_channels": 32, "head_convs": 1},
    "epochs": None, "steps": 40, "min_steps": None, "warm_start": True, "warm_steps": 10, "image_size": 96,
    "batch_size": 4, "lr": None, "optimizer": None, "device": "cpu", "seed": 3, "val_every": 1000,
    "score_threshold": 0.05, "predict_batch_size": 8,
    "strategy": "least_confidence", "unit": "boxes", "budget": 7, "empty_share": 0.0, "t_d": 0.1, "lambda_d": 0.5,
    "noisy_precision": None, "take_all_last": False, "display_threshold": 0.4, "val_fraction": 0.2,
    "semi": "certainty", "pseudo_threshold": 0.8, "tau": 0.6, "gamma1": 0.05, "gamma2": 0.6,
    "dynamic_threshold": True, "reweight": False, "pseudo_guard": True, "guard_level": 0.9,
}


def test_defaults_are_the_flat_configs_defaults() -> None:
    c = LoopConfig()
    assert c.detector == DetectorSettings() and c.training == TrainingSettings() and c.pseudo == PseudoSettings()
    assert (c.training.epochs, c.training.image_size, c.training.batch_size, c.training.val_every) == (12, 320, 8, None)
    assert c.train_config(0).val_every == 2 and c.with_(epochs=None, steps=200).train_config(0).val_every == 20
    assert (c.prediction.score_threshold, c.prediction.predict_batch_size) == (0.05, 8)
    s = c.selection
    assert (s.strategy, s.unit, s.budget, s.t_d, s.noisy_precision, s.display_threshold) == \
        ("localization_aware", "images", 20, 0.05, 0.5, 0.3)
    assert (c.pseudo.semi, c.pseudo.pseudo_threshold, c.pseudo.tau, c.pseudo.guard_level) == (None, 0.8, 0.7, 0.9)
    assert len(c.flat()) == 37


def test_old_flat_dict_reads_back_to_the_same_settings() -> None:
    c = LoopConfig.from_dict(json.loads(json.dumps(OLD_FLAT)))
    assert c.flat() == OLD_FLAT and list(c.flat()) == list(OLD_FLAT)  # the same settings, in the same order
    assert c.detector.backbone == "mobilenet_v3_large" and c.detector.detector_options == {"fpn_channels": 32,
                                                                                           "head_convs": 1}
    assert c.training.steps == 40 and c.training.seed == 3 and c.training.warm_start
    assert c.selection.unit == "boxes" and c.selection.budget == 7 and c.selection.noisy_precision is None
    assert c.pseudo.semi == "certainty" and c.pseudo.tau == 0.6 and not c.pseudo.reweight
    assert c == LoopConfig.make(**OLD_FLAT)
    assert LoopConfig.from_dict({**OLD_FLAT, "retired_setting": 1}) == c  # unknown keys are ignored, as before


def test_nested_dict_round_trips() -> None:
    c = LoopConfig.from_dict(OLD_FLAT)
    d = c.to_dict()
    assert set(d) == {"detector", "training", "prediction", "selection", "pseudo"}
    assert d["selection"]["budget"] == 7 and d["training"]["steps"] == 40
    assert LoopConfig.from_dict(d) == c and LoopConfig.from_dict(json.loads(json.dumps(d))) == c
    assert LoopConfig.from_dict(LoopConfig().to_dict()) == LoopConfig()
    # partial, and a key in the wrong group or unknown: ignored; what is missing takes its default
    part = LoopConfig.from_dict({"selection": {"budget": 3, "steps": 9, "nope": 1}, "pseudo": {}})
    assert part == LoopConfig.make(budget=3)
    assert LoopConfig.from_dict({}) == LoopConfig()


def test_make_and_with_route_flat_names_to_their_group() -> None:
    c = LoopConfig.make(strategy="random", budget=5, steps=40, epochs=None, model="fcos", semi="autolabel",
                        predict_batch_size=2)
    assert c.selection == SelectionSettings(strategy="random", budget=5)
    assert c.training == TrainingSettings(steps=40, epochs=None)
    assert c.detector.model == "fcos" and c.pseudo.semi == "autolabel" and c.prediction == PredictionSettings(
        predict_batch_size=2)
    d = c.with_(strategy="coreset", seed=4)
    assert d.selection.strategy == "coreset" and d.selection.budget == 5 and d.training.seed == 4
    assert c.selection.strategy == "random"  # frozen: with_ made a new one
    with pytest.raises(TypeError, match="LoopConfig has no setting 'stratgy' .*'strategy'"):
        LoopConfig.make(stratgy="random")
    with pytest.raises(TypeError, match="no setting 'nothing_like_it'"):
        c.with_(nothing_like_it=1)
    with pytest.raises(TypeError, match="LoopConfig.selection must be a SelectionSettings"):
        LoopConfig(selection={"budget": 3})  # type: ignore[arg-type]


@pytest.mark.parametrize("settings, message", [
    ({"unit": "pixels"}, "unit must be 'images' or 'boxes', got 'pixels'"),
    ({"semi": "magic"}, "semi must be None, 'autolabel' or 'certainty', got 'magic'"),
    ({"budget": 0}, "budget must be >= 1, got 0"),
    ({"empty_share": float("nan")}, r"empty share must lie in \[0, 1\]"),
    ({"lr": -1.0}, "learning rate must be a finite number > 0, got -1.0"),
    ({"unit": "boxes", "strategy": "entropy"}, "unknown strategy 'entropy' for unit 'boxes'; choose one of random"),
])
def test_every_check_holds_through_make_with_and_from_dict(settings: dict, message: str) -> None:
    for build in (lambda: LoopConfig.make(**settings), lambda: LoopConfig().with_(**settings),
                  lambda: LoopConfig.from_dict(settings)):
        with pytest.raises(ValueError, match=message):
            build()


def test_with_changes_strategy_and_unit_together() -> None:
    boxes = LoopConfig.make(unit="boxes", strategy="least_confidence")
    assert boxes.with_(strategy="typical", unit="images").selection.strategy == "typical"
    with pytest.raises(ValueError, match="unknown strategy 'typical' for unit 'boxes'"):
        boxes.with_(strategy="typical")


def test_train_config_and_detector_spec_read_their_groups() -> None:
    c = LoopConfig.from_dict(OLD_FLAT)
    tc = c.train_config(2, warm=True)
    assert tc.steps == 10 and tc.epochs is None and tc.seed == 2003 and tc.image_size == 96 and tc.batch_size == 4
    assert c.train_config(0).steps == 40
    spec = c.detector_spec()
    assert spec.model == "fcos" and spec.loc_quality  # semi="certainty" needs localization quality
    assert spec.options == {"backbone": "mobilenet_v3_large", "pretrained_backbone": False, "min_size": 96,
                            "max_size": 96, "fpn_channels": 32, "head_convs": 1}
    assert not c.with_(semi=None).detector_spec().loc_quality


def test_cli_options_map_onto_the_groups() -> None:
    c = loop_config(device="cpu", steps=30, seed=2, no_pretrained=True, detector_option=["head_convs=1"],
                    strategy="random", budget=4, semi="autolabel")
    assert c.detector.pretrained_backbone is False and c.detector.detector_options == {"head_convs": 1}
    assert c.training.steps == 30 and c.training.epochs is None and c.training.seed == 2 and c.training.device == "cpu"
    assert c.selection.strategy == "random" and c.selection.budget == 4 and c.pseudo.semi == "autolabel"
    default = loop_config(device="cpu")  # the default schedule: epochs with a floor in steps
    assert default.training.epochs is not None and default.training.min_steps is not None
    with pytest.raises(typer.BadParameter, match="pass --epochs or --steps, not both"):
        loop_config(epochs=2, steps=3, device="cpu")


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_a_projects_saved_round_config_drives_query_and_import(layout: str, make_synthetic, tmp_path) -> None:
    """A round row of a project made before the groups stores its config flat: `boxloop query`'s batch
    (display_threshold) and `boxloop import` (val_fraction) read it as they read a nested one."""
    import shutil

    import numpy as np

    from boxloop.loop.human import import_answers, write_batch
    from boxloop.project import init_project
    from boxloop.structures import Boxes, Detections

    syn = make_synthetic(n_images=8, image_size=64, seed=0)
    ann = tmp_path / "annotations"
    ann.mkdir()
    for xml in sorted(syn.annotations_dir.glob("*.xml"))[:4]:
        shutil.copy(xml, ann / xml.name)
    flat = {**OLD_FLAT, "unit": "images", "strategy": "random", "budget": 2, "display_threshold": 0.9,
            "val_fraction": 1.0}
    saved = flat if layout == "flat" else LoopConfig.from_dict(flat).to_dict()
    with init_project(tmp_path / "p", syn.images, ann, seed=0) as p:
        keys = p.image_set("pool")[:2]
        rid = p.start_round(saved, step="oracle")
        k = p.num_classes
        p.save_predictions(rid, {key: Detections(Boxes(np.array([[2, 2, 20, 20], [30, 30, 50, 50]], float),
                                                       p.image(key).size), np.zeros(2, int),
                                                 np.array([0.5, 0.95]), np.full((2, k), 0.5)) for key in keys})
        p.add_queries(rid, [(key, None, 0.5) for key in keys], strategy="random", batch=rid)
        batch = write_batch(p, rid, tmp_path / "batch", "voc")
        for key in keys:  # only the box scoring >= the saved display_threshold (0.9) is shown
            assert (batch / (Path(key).stem + ".xml")).read_text().count("<object>") == 1
            shutil.copy(syn.annotations_dir / (Path(key).stem + ".xml"), batch / (Path(key).stem + ".xml"))
        res = import_answers(p, batch, "voc")
        assert res["images"] == 2
        assert all(p.image(key).split == "val" for key in keys)  # the saved val_fraction 1.0, not the default 0.2
