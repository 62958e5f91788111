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
from boxloop.store import IMPORT_LOCK, Project
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


# -- 14. one line, not a traceback ---------------------------------------------------------------------------

def _coco_init(tmp_path: Path, images: list[dict], anns: list[dict] = (), raw: str | None = None):
    H.write_image(tmp_path / "images" / "img0.png")
    coco = H.write_coco(tmp_path / "c.json", images, list(anns), ["cat"], raw=raw)
    return cli("init", tmp_path / "p", "--images", tmp_path / "images", "--annotations", coco, "--format", "coco")


@pytest.mark.parametrize("case, images, anns, raw, expect", [
    ("width 1e999", [{"id": 1, "file_name": "img0.png", "width": 1e999, "height": 32}], [], None, None),
    ("id null", [{"id": None, "file_name": "img0.png"}], [], None, "must be an integer, got None"),
    ("list image_id", [{"id": 1, "file_name": "img0.png"}],
     [{"id": 1, "image_id": [1], "category_id": 1, "bbox": [1, 1, 5, 5]}], None, "image_id [1]"),
    ("100k deep", [], [], "[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_14_hostile_coco_is_one_line(tmp_path: Path, case, images, anns, raw, expect) -> None:
    res = _coco_init(tmp_path, images, anns, raw)  # before: OverflowError, TypeError, unhashable, RecursionError
    if expect is None:  # an unusable width is no width: the image's own size is used
        assert res.exit_code == 0, res.text
    else:
        assert res.exit_code == 1 and "c.json" in res.text and expect in res.text, res.text


def test_14_device_cuda_without_a_gpu_is_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = run("evaluate", tmp_path, "--device", "cuda")  # before: a RuntimeError traceback, exit 1
    assert res.returncode == 2 and "sees no CUDA GPU" in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("manifest, expect", [([], "not a batch record"), ({"round": 1}, "no 'images' object"),
                                              ({"images": {}}, "no round number")])
def test_14_a_broken_batch_json_is_named(model: Path, tmp_path: Path, manifest, expect) -> None:
    project, _, _ = voc_project(tmp_path, classes=names(model))
    query(project, model, tmp_path / "batch", budget=1)
    (tmp_path / "batch" / "batch.json").write_text(json.dumps(manifest))
    res = cli("import", project, "--annotations", tmp_path / "batch", code=1)  # before: AttributeError; "error: images"
    assert "batch.json" in res.text and expect in res.text, res.text


@pytest.mark.parametrize("args, expect", [(("--seeds", "0"), "--seeds"), (("--strategies", ""), "--strategies"),
                                          (("--strategies", " , "), "--strategies")])
def test_14_simulate_without_seeds_or_strategies_is_a_usage_error(tmp_path: Path, args, expect) -> None:
    res = cli("simulate", "--dataset", tmp_path, "--out", tmp_path / "out", *args)  # before: IndexError
    assert res.exit_code == 2 and expect in res.text, res.text


def test_14_odd_class_names_in_the_report(tmp_path: Path) -> None:
    """'$\\foo$' crashed matplotlib's mathtext; '_Platelets' vanished from the legends."""
    from boxloop.report.plots import report_figures

    per = lambda v: {"$\\foo$": {"ap50": v}, "_Platelets": {"ap50": v / 2}}  # noqa: E731
    rounds = [{"round": r, "images_labelled": 4 + 2 * r, "boxes_labelled": 10 + 5 * r, "cost_seconds": 100.0 * (r + 1),
               "map50": 0.1 * r, "coco_ap": 0.05 * r, "per_class": per(0.1 * r),
               "labelled_per_class": {"$\\foo$": 3 + r, "_Platelets": 2 + r}} for r in range(3)]
    results = {"runs": [{"strategy": "_random", "seed": 0, "unit": "images", "semi": None, "rounds": rounds}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    cli("report", tmp_path / "results.json", "--out", tmp_path / "r.html", code=0)
    legends = {t.get_text() for _, _, fig in report_figures(results)
               for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
               for t in legend.get_texts()}
    assert any("_Platelets" in t for t in legends) and any(t.strip("\u200b").startswith("_random") for t in legends), legends


def test_also_rich_prints_names_as_written(tmp_path: Path) -> None:
    images, ann = tmp_path / "images", tmp_path / "ann"
    ann.mkdir()
    H.write_image(images / "a.png")
    (ann / "a.xml").write_text(H.voc_xml("a.png", [("cat:x:dog", 2, 3, 20, 25)]))
    cli("init", tmp_path / "p", "--images", images, "--annotations", ann, code=0)
    res = run("status", tmp_path / "p")
    assert "cat:x:dog" in res.stdout and "\u274c" not in res.stdout, res.stdout  # before: 'cat❌dog'


@pytest.mark.parametrize("option", ["--image-size", "--batch-size", "--workers", "--steps"])
def test_also_zero_sizes_are_refused_not_the_default(tmp_path: Path, option: str) -> None:
    res = cli("query", tmp_path, option, "0")  # before: 0 silently meant the default
    assert res.exit_code == 2 and option in res.text and "greater than or equal to 1" in res.text, res.text


# -- 12. the documented review loop: export --subset pseudo, then import --------------------------------------

def _auto_labelled(tmp_path: Path) -> Path:
    """A project whose img2 and img3 hold auto-labels (as autolabel stores them)."""
    import numpy as np

    from boxloop.structures import Annotation, Boxes, Provenance, Source

    project, _, _ = voc_project(tmp_path, n=4, labelled=2)
    with Project.open(project) as p:
        for key, box in (("img2.png", (4, 4, 20, 20)), ("img3.png", (6, 5, 25, 22))):
            ann = Annotation(image=key, boxes=Boxes(np.array([box], dtype=float), (32, 32)), labels=("circle",),
                             provenance=(Provenance(source=Source.PSEUDO, round=1, model="autolabel_001", score=0.9),))
            p.add_boxes(key, ann, round=1)
            p.set_split([key], "train")
    return project


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_12_review_batch_of_auto_labels(tmp_path: Path, fmt: str) -> None:
    project = _auto_labelled(tmp_path)
    review = tmp_path / "review"
    cli("export", project, "--subset", "pseudo", "--format", fmt, "--out", review, code=0)
    res = cli("import", project, "--annotations", review, code=1)  # nothing reviewed yet: nothing changes
    assert "no reviewed image" in res.text, res.text
    if fmt == "voc":  # the reviewer moves img2's box and adds one
        (review / "img2.xml").write_text(H.voc_xml("img2.png", [("circle", 2, 2, 18, 18), ("circle", 20, 20, 30, 30)]))
    else:
        data = json.loads((review / "annotations.json").read_text())
        iid = next(im["id"] for im in data["images"] if im["file_name"] == "img2.png")
        for a in data["annotations"]:
            if a["image_id"] == iid:
                a["bbox"] = [2, 2, 16, 16]
                a.pop("score", None)
        data["annotations"].append({"id": 99, "image_id": iid, "category_id": data["annotations"][0]["category_id"],
                                    "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0})
        (review / "annotations.json").write_text(json.dumps(data))
    res = cli("import", project, "--annotations", review, code=0)  # before: "no open query batch"
    assert "imported 1 images, 2 boxes" in res.text and "img3.png" in res.text and "stay auto-labelled" in res.text, res.text
    with Project.open(project) as p:
        assert p.image("img2.png").status == "labelled" and p.image("img2.png").split == "train"
        human = p.annotations("labelled")["img2.png"]
        assert human.boxes.xyxy.tolist() == [[2, 2, 18, 18], [20, 20, 30, 30]]
        assert {pr.source.value for pr in human.provenance} == {"human"}
        assert list(p.annotations("pseudo")) == ["img3.png"]


# -- Also ------------------------------------------------------------------------------------------------------

def test_also_val_fraction_leaving_no_training_image_warns(tmp_path: Path) -> None:
    images, ann = tmp_path / "images", tmp_path / "ann"
    ann.mkdir()
    for i in range(3):
        H.write_image(images / f"img{i}.png", color=(40 * i, 80, 120))
        (ann / f"img{i}.xml").write_text(H.voc_xml(f"img{i}.png", [("cat", 2, 3, 20, 25)]))
    res = cli("init", tmp_path / "p", "--images", images, "--annotations", ann, "--val-fraction", "0.99", code=0)
    assert "none is left to train on" in res.text, res.text  # before: silent


def test_also_a_second_writer_is_refused_during_import(model: Path, tmp_path: Path) -> None:
    project, _, _ = voc_project(tmp_path, classes=names(model))
    query(project, model, tmp_path / "batch", budget=1)
    name = next(iter(json.loads((tmp_path / "batch" / "batch.json").read_text())["images"]))
    (tmp_path / "batch" / (name.rsplit(".", 1)[0] + ".xml")).write_text(H.voc_xml(name, [("circle", 1, 1, 9, 9)]))
    with Project.open(project) as other, other.writer_lock(IMPORT_LOCK):  # another import running
        res = cli("import", project, "--annotations", tmp_path / "batch", code=1)  # before: both succeeded
    assert "another boxloop process is writing" in res.text, res.text
    cli("import", project, "--annotations", tmp_path / "batch", code=0)


def test_also_query_on_an_empty_pool_leaves_no_round(model: Path, tmp_path: Path) -> None:
    project, _, _ = voc_project(tmp_path, n=2, labelled=2, classes=names(model))
    res = query(project, model, tmp_path / "batch")
    assert res.exit_code == 1 and "pool is empty" in res.text, res.text
    with Project.open(project) as p:
        assert p.rounds() == []  # before: round 1 and a copied checkpoint were left behind
    assert not (project / "models").exists() and not (tmp_path / "batch").exists()


def test_also_init_refuses_labels_beside_images_without_annotations(tmp_path: Path) -> None:
    images = tmp_path / "images"
    H.write_image(images / "a.png")
    (images / "a.xml").write_text(H.voc_xml("a.png", [("cat", 2, 3, 20, 25)]))  # LabelImg saves beside the image
    res = cli("init", tmp_path / "p", "--images", images, code=1)  # before: a 0-class project
    assert f"--annotations {images.resolve()}" in res.text and "a.xml" in res.text, res.text
    cli("init", tmp_path / "p", "--images", images, "--classes", "cat", code=0)  # no labels, on purpose


def test_also_init_removes_what_a_killed_init_left(tmp_path: Path) -> None:
    images = tmp_path / "images"
    H.write_image(images / "a.png")
    dead = subprocess.Popen(["true"])  # a process that is gone
    dead.wait()
    project = tmp_path / "p"
    project.mkdir()
    left = [project / f".boxloop.db.building-{dead.pid}{s}" for s in ("", "-wal")]
    for p in left:
        p.write_bytes(b"half a database")
    cli("init", project, "--images", images, "--classes", "cat", code=0)
    assert not any(p.exists() for p in left)  # before: there forever


def test_also_train_logs_lines_and_ctrl_c_says_a_rerun_resumes(tmp_path: Path) -> None:
    import signal

    project, _, _ = voc_project(tmp_path, n=4, labelled=4)
    res = run("train", project, *TRAIN, "--steps", "10")  # stderr is a pipe, not a terminal
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "train: 10/10 step (100%)" in res.stderr, res.stderr  # before: \r updates
    assert len([ln for ln in res.stderr.splitlines() if ln.startswith("train:")]) == 10
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "boxloop.cli", "train", str(project), *TRAIN, "--steps", "300",
                             "--seed", "1"], stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job ignores it
    seen = []
    for line in proc.stderr:  # the first progress line: training runs
        seen.append(line)
        if line.startswith("train:"):
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    assert "interrupted" in rest and "resumes from the last checkpoint" in rest and "Traceback" not in rest, rest
