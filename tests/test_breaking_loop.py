"""Issue 31, cases 7-12 and 14 and the "Also" list: the loop's jams, hangs, wrong results and tracebacks.

The real CLI (typer's CliRunner through test_breaking's `cli`, or a subprocess where a hang, a signal
or the terminal matters), real SQLite projects, tiny generated images (tests/hostile) and the tiny
FCOS test_breaking trains once. Each test names its case: 7-14 the numbered ones, `also_*` the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hostile as H
from boxloop.store import Project
from test_breaking import TRAIN, cli, model, names, query, voc_project  # noqa: F401  (model: the fixture)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(*args: object, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """`python -m boxloop.cli ARGS` in a fresh process (output to a pipe: not a terminal)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "boxloop.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, **kw)


# -- 9. 'c:9.jpg' is a file name on Linux, not a Windows absolute path ----------------------------------------

def test_9_colon_names_are_relative_paths(model: Path, tmp_path: Path) -> None:
    images, ann = tmp_path / "images", tmp_path / "ann"
    ann.mkdir()
    H.write_image(images / "c:9.jpg")
    H.write_image(images / "k:1.png", color=(10, 200, 10))
    (ann / "k:1.xml").write_text(H.voc_xml("k:1.png", [("circle", 2, 3, 20, 25)]))  # before: "absolute path"
    project = tmp_path / "p"
    cli("init", project, "--images", images, "--annotations", ann, "--classes", names(model), code=0)
    res = query(project, model, tmp_path / "batch", budget=1)
    assert res.exit_code == 0, res.text  # before: picked, then refused as an absolute path
    batch = tmp_path / "batch"
    assert (batch / "c:9.jpg").is_file() and (batch / "c:9.xml").is_file()
    (batch / "c:9.xml").write_text(H.voc_xml("c:9.jpg", [("square", 1, 1, 9, 9)]))
    assert "imported 1 images, 1 boxes" in cli("import", project, "--annotations", batch, code=0).text
    # a real Windows absolute path is still refused
    (ann / "k:1.xml").write_text(H.voc_xml("C:\\Users\\me\\k:1.png", [("circle", 2, 3, 20, 25)]))
    assert "absolute path" in cli("init", tmp_path / "q", "--images", images, "--annotations", ann, code=1).text


# -- 10. only regular files are images ------------------------------------------------------------------------

def test_10_fifo_and_symlink_loop_in_images_are_skipped(tmp_path: Path) -> None:
    images = tmp_path / "images"
    H.write_image(images / "a.png")
    os.mkfifo(images / "pipe.jpg")  # before: init blocked on it forever
    os.symlink(images / "loop2.jpg", images / "loop1.jpg")  # before (14): a traceback (symlink loop)
    os.symlink(images / "loop1.jpg", images / "loop2.jpg")
    res = run("init", tmp_path / "p", "--images", images, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "pipe.jpg: not a regular file" in res.stderr and "loop1.jpg" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    with Project.open(tmp_path / "p") as p:
        assert [r.path for r in p.images()] == ["a.png"]


# -- 7, 8. simulate: one experiment per OUT; --steps validates ten times -------------------------------------

SIM = ("--model", "fcos", "--backbone", "mobilenet_v3_large", "--no-pretrained", "--image-size", "64",
       "--batch-size", "4", "--device", "cpu", "--detector-option", "fpn_channels=32", "--detector-option",
       "head_convs=1", "--strategies", "random", "--initial", "4", "--budget", "2", "--rounds", "0",
       "--test-fraction", "0.25")


def _simulate(syn, out: Path, *extra: object, code: int | None = 0):
    return cli("simulate", "--dataset", syn.images, "--annotations", syn.annotations_dir, "--out", out, *SIM, *extra,
               code=code)


def test_7_simulate_refuses_an_out_of_another_experiment(make_synthetic, tmp_path: Path) -> None:
    syn, other = make_synthetic(n_images=12, image_size=64, seed=0), make_synthetic(n_images=12, image_size=64, seed=3)
    out = tmp_path / "out"
    _simulate(syn, out, "--steps", "2")
    results = (out / "results.json").read_text()
    res = cli("simulate", "--dataset", other.images, "--annotations", other.annotations_dir, "--out", out, *SIM,
              "--steps", "2", code=1)  # before: exit 0, the old dataset's numbers under the new config
    assert "another experiment" in res.text and "--dataset" in res.text and str(other.images) in res.text, res.text
    res = _simulate(syn, out, "--steps", "3", "--budget", "1", code=1)
    assert "--steps 2 (now 3)" in res.text and "--budget 2 (now 1)" in res.text, res.text
    assert (out / "results.json").read_text() == results
    _simulate(syn, out, "--steps", "2")  # the same experiment resumes (here: nothing left to do)
    _simulate(syn, out, "--steps", "2", "--strategies", "least_confidence")  # another strategy joins it
    assert {r["strategy"] for r in json.loads((out / "results.json").read_text())["runs"]} == {"random", "least_confidence"}


def test_8_simulate_steps_validates_ten_times(make_synthetic, tmp_path: Path) -> None:
    syn = make_synthetic(n_images=12, image_size=64, seed=0)
    _simulate(syn, tmp_path / "out", "--steps", "40")
    import torch

    ckpt = torch.load(tmp_path / "out" / "seed0" / "base" / "models" / "round_000" / "last.pt", weights_only=False)
    vals = [h["step"] for h in ckpt["history"] if "val_map50" in h]
    assert vals == list(range(4, 41, 4)), vals  # before: every 2 steps, 20 validations


# -- 11. every path inside a project is relative to it -------------------------------------------------------

def test_11_a_moved_project_keeps_its_model_and_a_copy_uses_its_own(tmp_path: Path) -> None:
    project, images, _ = voc_project(tmp_path, n=3, labelled=2)
    shutil.copytree(images, project / "images")  # images inside the project move with it
    cli("init", project, "--images", project / "images", "--annotations", tmp_path / "ann", "--force", code=0)
    cli("train", project, *TRAIN, "--steps", "1", code=0)
    shutil.copytree(project, tmp_path / "backup", symlinks=True)  # cp -a
    project.rename(tmp_path / "moved")
    shutil.rmtree(images)
    for where in ("moved", "backup"):  # before: "no trained model yet" for both
        res = cli("predict", tmp_path / where, "--images", tmp_path / where / "images", "--out", tmp_path / f"pred_{where}",
                  "--device", "cpu", code=0)
        assert "predicted 3 images" in res.text, res.text
        with Project.open(tmp_path / where) as p:
            assert p.get_path_meta("current_checkpoint").resolve().is_relative_to((tmp_path / where).resolve())
            assert p.image_root.resolve() == (tmp_path / where / "images").resolve()
