"""The `boxloop` CLI: commands through typer's CliRunner, one real subprocess of the installed
script, user errors as one red line with exit 1, and BCCD (skips when absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from boxloop.cli import app
from boxloop.store import Project

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _status(project: Path) -> dict:
    res = _run("status", project, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_init_status_export(synthetic_dataset, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    res = _run("init", proj, "--images", synthetic_dataset.images, "--annotations", synthetic_dataset.annotations_dir,
               "--test-fraction", "0.2", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert "created" in res.stdout and "40 images" in res.stdout
    s = _status(proj)
    c = synthetic_dataset.counts
    for key in ("images", "negative_images", "boxes", "boxes_per_class"):
        assert s[key] == c[key], key
    assert s["test_images"] == 8 and s["labelled_images"] == 40 and s["unlabelled_images"] == 0
    assert s["boxes_per_source"] == {"human": c["boxes"], "pseudo": 0, "predicted": 0, "background": 0}
    assert s["rounds"] == 0 and s["warning_messages"] == []
    table = _run("status", proj)
    assert table.exit_code == 0 and "triangle" in table.stdout and str(c["boxes"]) in table.stdout
    for fmt in ("voc", "coco", "yolo"):
        res = _run("export", proj, "--format", fmt, "--out", tmp_path / fmt)
        assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "voc").glob("*.xml"))) == 40
    assert len(json.loads((tmp_path / "coco" / "annotations.json").read_text())["annotations"]) == c["boxes"]
    # the classes flag, with the COCO export as input
    res = _run("init", tmp_path / "p2", "--images", synthetic_dataset.images, "--annotations",
               tmp_path / "coco" / "annotations.json", "--format", "coco", "--classes", "circle,square,triangle")
    assert res.exit_code == 0, res.output
    assert _status(tmp_path / "p2")["boxes_per_class"] == c["boxes_per_class"]


def test_user_errors_are_one_red_line(synthetic_dataset, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    assert _run("init", proj, "--images", synthetic_dataset.images).exit_code == 0
    cases = [
        (["init", proj, "--images", synthetic_dataset.images], "already holds a boxloop project; pass --force"),
        (["status", tmp_path / "nope"], "does not exist"),
        (["status", tmp_path], "not a boxloop project"),
        (["init", tmp_path / "q", "--images", synthetic_dataset.images, "--annotations",
          synthetic_dataset.annotations_dir, "--classes", "circle"], "not in the given classes"),
        (["init", tmp_path / "q", "--images", tmp_path / "missing"], "does not exist"),
        (["export", proj, "--format", "pascal", "--out", tmp_path / "x"], "format must be one of"),
        (["export", proj, "--format", "voc", "--out", tmp_path / "x", "--subset", "some"], "subset must be one of"),
    ]
    for args, expected in cases:
        res = _run(*args)
        assert res.exit_code == 1, (args, res.output)
        assert expected in res.stderr and "Traceback" not in res.output, (args, res.stderr)
        assert res.stderr.startswith("error:") and res.stderr.count("\n") == 1, res.stderr
    res = _run("init", tmp_path / "q", "--images", synthetic_dataset.images, "--test-list", "t.txt",
               "--test-fraction", "0.1")
    assert res.exit_code == 2 and "not both" in res.output


DEMO_TINY = ("--image-size", "64", "--steps", "2", "--warm-steps", "2", "--rounds", "1", "--initial", "4",
             "--budget", "2", "--seeds", "0")


def test_demo(tmp_path: Path) -> None:
    """The demo's whole story at toy size (the real one: `make demo`): status, the two strategies'
    learning curves, results.json and a report that names its path."""
    res = _run("demo", "--out", tmp_path / "demo", "--images", "14", *DEMO_TINY)
    assert res.exit_code == 0, res.output
    assert "circle" in res.stdout and "human boxes" in res.stdout
    s = _status(tmp_path / "demo" / "project")
    assert s["images"] == 14 and s["test_images"] == 4  # a quarter, the demo's test share
    loo = json.loads((tmp_path / "demo" / "simulate" / "test_sensitivity.json").read_text())
    assert loo["images"] == 4 and "test set: 4 images" in res.stdout.replace("\n", " ")
    runs = json.loads((tmp_path / "demo" / "simulate" / "results.json").read_text())["runs"]
    assert sorted(r["strategy"] for r in runs) == ["localization_aware+autolabel", "random+autolabel"] or \
        sorted(r["strategy"] for r in runs) == ["localization_aware", "random"]
    assert all([x["images_labelled"] for x in r["rounds"]] == [4, 6] for r in runs)
    report = tmp_path / "demo" / "report.html"
    assert report.stat().st_size > 10_000 and str(report.resolve()) in res.stdout.replace("\n", "")
    # running it again replaces its own output; a foreign folder is refused
    assert _run("demo", "--out", tmp_path / "demo", "--images", "12", *DEMO_TINY).exit_code == 0
    assert _status(tmp_path / "demo" / "project")["images"] == 12
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    res = _run("demo", "--out", tmp_path / "other")
    assert res.exit_code == 1 and "not made by `boxloop demo`" in res.stderr


def _boxloop_script() -> Path:
    here = Path(sys.executable).with_name("boxloop")
    return here if here.exists() else Path(__file__).resolve().parents[1] / ".venv" / "bin" / "boxloop"


def test_installed_script_subprocess(synthetic_dataset, tmp_path: Path) -> None:
    exe = _boxloop_script()
    if not exe.exists():
        pytest.skip("the boxloop console script is not installed (run `make venv`)")
    proj = tmp_path / "proj"
    done = subprocess.run([str(exe), "init", str(proj), "--images", str(synthetic_dataset.images),
                           "--annotations", str(synthetic_dataset.annotations_dir), "--test-fraction", "0.2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([str(exe), "status", str(proj), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["images"] == 40 and s["boxes"] == synthetic_dataset.counts["boxes"]
    # a second process writing the same project: a clear busy error, the project intact
    with Project.open(proj) as p, p.writer_lock():
        done = subprocess.run([str(exe), "init", str(proj), "--images", str(synthetic_dataset.images), "--force"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "another boxloop process is writing" in done.stderr and "Traceback" not in done.stderr
    with Project.open(proj) as p:
        assert p.status()["boxes"] == synthetic_dataset.counts["boxes"]


@pytest.mark.bccd
def test_bccd_init_with_test_list(bccd_dir: Path, tmp_path: Path) -> None:
    res = _run("init", tmp_path / "bccd", "--images", bccd_dir / "JPEGImages", "--annotations",
               bccd_dir / "Annotations", "--test-list", bccd_dir / "ImageSets" / "Main" / "test.txt")
    assert res.exit_code == 0, res.output
    assert res.stderr.count("warning:") == 2 and "BloodImage_00338" in res.stderr and "BloodImage_00343" in res.stderr
    s = _status(tmp_path / "bccd")
    assert s["images"] == 364 and s["test_images"] == 72 and s["labelled_images"] == 364
    assert s["boxes"] == 4886 and s["negative_images"] == 0 and s["unlabelled_images"] == 0
    assert s["boxes_per_class"] == {"WBC": 372, "RBC": 4153, "Platelets": 361}
    assert s["boxes_per_source"]["human"] == 4886 and s["warnings"] == 2 and len(s["warning_messages"]) == 2
    test_names = (bccd_dir / "ImageSets" / "Main" / "test.txt").read_text().split()
    with Project.open(tmp_path / "bccd") as p:
        assert sorted(r.path for r in p.images(split="test")) == sorted(f"{n}.jpg" for n in test_names)
