"""The input size rule on hand-made box distributions (tiny, mixed, large, none) and its record in a project."""

from __future__ import annotations

import numpy as np
import pytest

from boxloop.defaults import CPU, GPU
from boxloop.loop.input_size import (RESOLVE_PX, TARGET_PX, TARGET_SHARE, SizeChoice, choose_input_size,
                                object_fractions, project_input_size, size_histogram)
from boxloop.structures import Annotation, Boxes


def boxes_of(sides_px: list[float], image: tuple[int, int] = (640, 480)) -> Annotation:
    """Square boxes of these sides (original pixels) on one image."""
    xyxy = np.array([[10, 10, 10 + s, 10 + s] for s in sides_px], dtype=float)
    return Annotation("a.jpg", Boxes(xyxy, image), labels=("x",) * len(sides_px))


def test_object_fractions_are_sides_over_the_longer_image_side() -> None:
    ann = Annotation("a.jpg", Boxes(np.array([[0, 0, 4, 16], [0, 0, 64, 64]], float), (640, 480)), ("x", "x"))
    np.testing.assert_allclose(object_fractions([ann, boxes_of([], (10, 10))]), [8 / 640, 64 / 640])


def test_large_objects_keep_the_device_default() -> None:
    # BCCD-like: cells 80-120 px on 640 px images, 40-60 px at 320
    f = object_fractions([boxes_of(list(np.linspace(80, 120, 50)))])
    c = choose_input_size(f, CPU)
    assert c.image_size == CPU.image_size and c.cost == 1.0 and c.warning is None and c.unresolved == 0
    assert "default 320 px" in c.reason and "median 50 px at 320" in c.reason
    assert choose_input_size(f, GPU).image_size == GPU.image_size


def test_mixed_objects_take_the_smallest_size_that_resolves_most_within_budget() -> None:
    # 80% at 40 px and 20% at 20 px (original, 640 px wide): the 10% quantile is 20 px = 10 px at 320;
    # 16 px needs 512 px exactly (20 / 640 * 512 = 16)
    f = object_fractions([boxes_of([40] * 80 + [20] * 20)])
    c = choose_input_size(f, CPU)
    assert c.image_size == 512 and c.cost == pytest.approx((512 / 320) ** 2, abs=0.01)
    assert np.quantile(f, 1 - TARGET_SHARE) * c.image_size >= TARGET_PX
    assert "using 512 px" in c.reason and "2.6x the cost" in c.reason and c.warning is None
    # a little larger objects need less: 24 px -> 16 / (24 / 640) = 427 -> 448
    assert choose_input_size(object_fractions([boxes_of([40] * 80 + [24] * 20)]), CPU).image_size == 448


def test_tiny_objects_take_the_budget_and_warn_how_many_stay_unresolved() -> None:
    # 30 boxes of 4 px on 640 px images: 3.2 px even at 512; 70 of 40 px
    f = object_fractions([boxes_of([4] * 30 + [40] * 70)])
    c = choose_input_size(f, CPU)
    assert c.image_size == CPU.max_image_size == 512
    assert c.unresolved == 30 and "the cpu budget" in c.reason
    assert c.warning is not None and c.warning.startswith(f"30 of 100 labelled objects are under {RESOLVE_PX} px at 512")
    assert c.resolving_size == 1280 and "--image-size 1280" in c.warning  # 8 / (4 / 640) = 1280


def test_no_labelled_box_gets_the_device_default_said_as_such() -> None:
    c = choose_input_size(np.zeros(0), CPU)
    assert c.image_size == 320 and c.objects == 0 and c.reason == "no labelled box yet: the cpu default, 320 px"


def test_histogram_counts_every_object_once() -> None:
    f = object_fractions([boxes_of([4, 12, 20, 40, 100, 200, 400])])
    h = size_histogram(f, 640)
    assert h == {"0-8": 1, "8-16": 1, "16-32": 1, "32-64": 1, "64-128": 1, "128-256": 1, ">=256": 1}
    assert sum(size_histogram(f, 320).values()) == 7


def test_size_choice_round_trips() -> None:
    c = choose_input_size(object_fractions([boxes_of([4] * 30 + [40] * 70)]), CPU)
    assert SizeChoice.from_dict(c.to_dict()) == c


def test_project_records_the_choice_and_revisits_it_when_the_labels_double(synthetic_project) -> None:
    proj = synthetic_project
    first = project_input_size(proj, "cpu")
    assert proj.get_meta("input_size") == first.to_dict() and first.objects > 0
    assert project_input_size(proj, "cpu") == first
    # labels grown by the factor: made again (a recorded choice of a quarter the boxes stands for that)
    proj.set_meta("input_size", {**first.to_dict(), "objects": first.objects // 4, "image_size": 999})
    assert project_input_size(proj, "cpu").image_size != 999
    proj.set_meta("input_size", {**first.to_dict(), "image_size": 999})
    assert project_input_size(proj, "cpu").image_size == 999  # same labels: the recorded choice holds
    assert project_input_size(proj, "cuda", record=False).device == "cuda"


def test_init_status_and_train_show_the_size_and_an_explicit_size_wins(make_synthetic, tmp_path) -> None:
    from typer.testing import CliRunner

    from boxloop.cli import app

    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    syn = make_synthetic(n_images=10, image_size=64, seed=0)
    res = run("init", tmp_path / "p", "--images", syn.images, "--annotations", syn.annotations_dir)
    assert res.exit_code == 0, res.output
    assert "input size 320 px" in res.stdout and "default 320 px" in res.stdout
    assert "recorded input size 320 px" in run("status", tmp_path / "p").stdout
    tiny = ("--model", "fcos", "--backbone", "mobilenet_v3_large", "--no-pretrained", "--steps", "1",
            "--device", "cpu", "--detector-option", "fpn_channels=32", "--detector-option", "head_convs=1")
    res = run("train", tmp_path / "p", *tiny, "--image-size", "64")
    assert res.exit_code == 0, res.output
    assert "input size" not in res.stdout  # --image-size wins, and nothing is said of a choice
    res = run("train", tmp_path / "p", *tiny)
    assert res.exit_code == 0 and "input size 320 px" in res.stdout, res.output
    res = run("init", tmp_path / "empty", "--images", syn.images)
    assert res.exit_code == 0 and "no labelled box yet: the" in res.stdout, res.output
    assert "not chosen yet" not in run("status", tmp_path / "empty").stdout
