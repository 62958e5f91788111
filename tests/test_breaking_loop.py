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
