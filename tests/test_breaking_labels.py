"""Issue 31, cases 1-6 and 13: nothing lost, nothing mislabelled. One test (or more) per case.

Real SQLite projects, the real CLI (typer's CliRunner through test_breaking's `cli`, which fails on
a traceback), real images and label files generated in code (tests/hostile). Query batches with the
model's boxes as pre-annotations are written by `human.write_batch` over stored predictions, so no
model is trained; the batch-folder case runs `boxloop query` itself (a cold start: no training).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import hostile as H
from boxloop.store import DB_NAME, Project
from test_breaking import cli, md5, tree, voc_project
from test_report import make_results

CLASSES = "circle,square"
POOL = ["img2.png", "img3.png", "img4.png"]


def status(project: Path) -> dict:
    return json.loads(cli("status", project, "--json", code=0).stdout)


def labelled(project: Path) -> set[str]:
    with Project.open(project) as p:
        return {r.path for r in p.images(status="labelled")}


def pre_annotated_batch(tmp_path: Path, fmt: str, boxes: bool = True) -> tuple[Path, Path]:
    """A project (img0, img1 labelled) with round 1 open on img2-4, written as a `fmt` batch with two
    model boxes per image as pre-annotations (none with `boxes=False`: a cold-start-like batch)."""
    from boxloop.loop.human import write_batch
    from boxloop.structures import Boxes, Detections

    project, _, _ = voc_project(tmp_path, n=5, classes=CLASSES)
    with Project.open(project) as p:
        p.start_round({"unit": "images", "budget": 3}, step="oracle", round_id=1)
        det = Detections(Boxes(np.array([[2.0, 2.0, 20.0, 20.0], [5.0, 6.0, 28.0, 30.0]]), (32, 32)),
                         np.array([0, 1]), np.array([0.9, 0.8]), np.full((2, 2), 0.5))
        p.save_predictions(1, {k: det if boxes else Detections.empty(2, (32, 32)) for k in POOL})
        p.add_queries(1, [(k, None, 0.5) for k in POOL], strategy="random")
        batch = write_batch(p, 1, tmp_path / "batch", fmt)
    return project, batch


# -- 1. report --out replaced any file, the project's database included ------------------------------------

def test_1_report_out_follows_the_output_rule(tmp_path: Path) -> None:
    project, _, _ = voc_project(tmp_path)
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "results.json").write_text(json.dumps(make_results()))
    db = project / DB_NAME
    before = md5(db)
    for extra in ((), ("--overwrite",)):  # before: exit 0, and `status` said "not a boxloop database"
        res = cli("report", sim, "--out", db, *extra, code=1)
        assert "database" in res.text and "nothing was written" in res.text, res.text
        assert md5(db) == before
    assert status(project)["images"] == 4
    mine = tmp_path / "notes.html"
    mine.write_text("my notes")
    res = cli("report", sim, "--out", mine, code=1)
    assert "--overwrite" in res.text and mine.read_text() == "my notes"
    cli("report", sim, "--out", mine, "--overwrite", code=0)
    assert "<!DOCTYPE html>" in mine.read_text()
    folder = tmp_path / "folder"
    folder.mkdir()
    res = cli("report", sim, "--out", folder, code=1)  # before: IsADirectoryError and a 400 KB folder.tmp
    assert "is a folder, not a file" in res.text
    assert list(folder.iterdir()) == [] and not [p for p in tmp_path.iterdir() if "tmp" in p.name or "staging" in p.name]
    cli("report", sim, "--out", tmp_path / "new" / "r.html", code=0)  # a new file is written as before
    assert (tmp_path / "new" / "r.html").stat().st_size > 1000


# -- 2. query --out into a folder that holds a batch rewrote the annotator's files ---------------------

def test_2_query_never_writes_over_a_batch(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(6):
        H.write_image(images / f"img{i}.png", color=(40 * i, 80, 120))
    project, batch = tmp_path / "p", tmp_path / "batch"
    cli("init", project, "--images", images, "--classes", CLASSES, code=0)
    query = ("--budget", 2, "--device", "cpu", "--image-size", 64)
    cli("query", project, "--out", batch, *query, code=0)  # a cold start: no training
    manifest = json.loads((batch / "batch.json").read_text())
    for name in manifest["images"]:  # the annotator saves boxes
        (batch / (Path(name).stem + ".xml")).write_text(H.voc_xml(name, [("circle", 2, 2, 20, 20)] * 9))
    saved = tree(batch)
    cli("init", project, "--images", images, "--classes", CLASSES, "--force", code=0)
    res = cli("query", project, "--out", batch, *query, code=1)  # before: exit 0, 18 saved boxes -> 0 objects
    assert "holds a query batch already" in res.text and "round 1" in res.text and "new folder" in res.text
    assert tree(batch) == saved
    assert status(project)["rounds"] == 0  # refused before any work
    (tmp_path / "other").mkdir()  # a non-empty folder without a batch
    (tmp_path / "other" / "keep.txt").write_text("mine")
    res = cli("query", project, "--out", tmp_path / "other", *query, code=1)
    assert "not empty" in res.text and (tmp_path / "other" / "keep.txt").read_text() == "mine"
    # round 1 in a new folder, answered and imported; round 2 may not reuse that folder either
    cli("query", project, "--out", tmp_path / "round1", *query, code=0)
    for name in json.loads((tmp_path / "round1" / "batch.json").read_text())["images"]:
        (tmp_path / "round1" / (Path(name).stem + ".xml")).write_text(H.voc_xml(name, [("circle", 2, 2, 20, 20)]))
    cli("import", project, "--annotations", tmp_path / "round1", code=0)
    saved = tree(tmp_path / "round1")
    res = cli("query", project, "--out", tmp_path / "round1", *query, code=1)
    assert "holds a query batch already" in res.text and tree(tmp_path / "round1") == saved


# -- 3. an untouched COCO or CVAT batch made every queried image a negative ----------------------------

@pytest.mark.parametrize("fmt", ["coco", "cvat", "voc", "yolo"])
@pytest.mark.parametrize("boxes", [False, True], ids=["empty", "pre-annotated"])
def test_3_an_untouched_batch_answers_nothing(fmt: str, boxes: bool, tmp_path: Path) -> None:
    project, batch = pre_annotated_batch(tmp_path, fmt, boxes=boxes)
    before = status(project)
    for source in (batch, batch / "labels") if fmt == "yolo" else (batch,):
        res = cli("import", project, "--annotations", source, code=1)  # before (coco, cvat): "imported 3 images, 0 boxes"
        assert "no answer yet" in res.text and "never saved" in res.text, res.text
        assert status(project) == before and labelled(project) == {"img0.png", "img1.png"}
    # what was never saved is no answer, whatever --unchanged says
    res = cli("import", project, "--annotations", batch, "--unchanged", "answered", code=1)
    assert "no answer yet" in res.text and status(project) == before


def test_3_a_cvat_tag_answers_an_image_with_no_box(tmp_path: Path) -> None:
    """A cold CVAT batch: one image tagged 'negative', one with a box drawn, one never opened."""
    project, batch = pre_annotated_batch(tmp_path, "cvat", boxes=False)
    doc = ET.parse(batch / "annotations.xml")
    images = {im.get("name"): im for im in doc.getroot().iter("image")}
    ET.SubElement(images["img2.png"], "tag", {"label": "negative", "source": "manual"})
    ET.SubElement(images["img3.png"], "box", {"label": "circle", "source": "manual", "occluded": "0", "xtl": "1",
                                             "ytl": "1", "xbr": "9", "ybr": "9", "z_order": "0"})
    doc.write(batch / "annotations.xml")
    res = cli("import", project, "--annotations", batch, code=1)
    assert "1 image(s) still hold exactly the boxes boxloop wrote" in res.text and "img4.png" in res.text
    res = cli("import", project, "--annotations", batch, "--unchanged", "open", code=0)
    assert "imported 2 images, 1 boxes" in res.text and "1 queries still open" in res.text, res.text
    assert status(project)["negative_images"] == 1  # img2, tagged; img4 stays open


# -- 4. pre-annotated files nobody changed were imported as human answers --------------------------------

def _correct_img2(fmt: str, batch: Path) -> None:
    """The annotator corrects img2 only (drops the model's second box) and saves, in the format's own way."""
    if fmt == "voc":
        (batch / "img2.xml").write_text(H.voc_xml("img2.png", [("circle", 2, 2, 20, 20)]))
    elif fmt == "yolo":
        (batch / "labels" / "img2.txt").write_text("0 0.343750 0.343750 0.562500 0.562500\n")
    elif fmt == "coco":
        data = json.loads((batch / "annotations.json").read_text())
        img2 = next(im["id"] for im in data["images"] if im["file_name"] == "img2.png")
        data["annotations"] = [a for a in data["annotations"] if not (a["image_id"] == img2 and a["category_id"] == 2)]
        for a in data["annotations"]:  # a tool re-exports with its own rounding
            a["bbox"] = [round(v, 1) for v in a["bbox"]]
        (batch / "annotations.json").write_text(json.dumps(data))
    elif fmt == "cvat":
        doc = ET.parse(batch / "annotations.xml")
        img2 = next(im for im in doc.getroot().iter("image") if im.get("name") == "img2.png")
        img2.remove(next(b for b in img2.findall("box") if b.get("label") == "square"))
        doc.write(batch / "annotations.xml")


@pytest.mark.parametrize("fmt", ["voc", "yolo", "coco", "cvat"])
def test_4_half_labelled_batch_imports_only_what_a_person_saved(fmt: str, tmp_path: Path) -> None:
    project, batch = pre_annotated_batch(tmp_path, fmt)
    _correct_img2(fmt, batch)
    if fmt in ("coco", "cvat"):  # one file for every image: the format cannot tell, so import asks
        before = status(project)
        res = cli("import", project, "--annotations", batch, code=1)  # before: 3 images, 5 boxes "verified"
        assert "img3.png, img4.png" in res.text and "still hold exactly the boxes boxloop wrote" in res.text
        assert "--unchanged answered" in res.text and "--unchanged open" in res.text, res.text
        assert status(project) == before
        res = cli("import", project, "--annotations", batch, "--unchanged", "open", code=0)
    else:  # a file per image: the ones never saved are no answer
        res = cli("import", project, "--annotations", batch, code=0)  # before: imported 3 images
        assert "never saved since" in res.text
    assert "imported 1 images, 1 boxes" in res.text and "2 queries still open" in res.text, res.text
    assert "img3.png" in res.text and "img4.png" in res.text
    assert labelled(project) == {"img0.png", "img1.png", "img2.png"}
    with Project.open(project) as p:
        assert p.annotations("labelled")["img2.png"].labels == ("circle",)
    if fmt in ("coco", "cvat"):  # a person checked the other two and agrees with the model: said explicitly
        res = cli("import", project, "--annotations", batch, "--unchanged", "answered", code=0)
        assert "imported 2 images, 4 boxes" in res.text and "left as imported: img2.png" in res.text, res.text
        assert status(project)["open_queries"] == 0
        return
    res = cli("import", project, "--annotations", batch, "--unchanged", "answered", code=1)  # never saved: no flag helps
    assert "nothing new to import: the 2 image(s) still open hold what boxloop wrote, never saved" in res.text
    # the annotator checks img3 and saves it as it is: the tool writes its own bytes, an answer
    if fmt == "voc":
        (batch / "img3.xml").write_text(H.voc_xml("img3.png", [("circle", 2, 2, 20, 20), ("square", 5, 6, 28, 30)]))
    else:
        (batch / "labels" / "img3.txt").write_text("0 0.34375 0.34375 0.5625 0.5625\n1 0.515625 0.5625 0.71875 0.75\n")
    res = cli("import", project, "--annotations", batch, code=0)
    assert "imported 1 images, 2 boxes" in res.text and "1 queries still open" in res.text, res.text


def test_4_a_file_with_boxloops_bytes_under_a_new_time_asks(tmp_path: Path) -> None:
    """VOC and YOLO: other bytes are a tool's save (an answer); boxloop's bytes under a new modification
    time were saved unchanged or only copied (a zip round trip): import cannot tell, and asks."""
    project, batch = pre_annotated_batch(tmp_path, "voc")
    _correct_img2("voc", batch)
    st = (batch / "img3.xml").stat()
    os.utime(batch / "img3.xml", ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    res = cli("import", project, "--annotations", batch, code=1)
    assert "1 image(s) still hold exactly the boxes boxloop wrote" in res.text and "saved unchanged, or copied" in res.text
    assert "img3.png" in res.text and "--unchanged" in res.text, res.text
    res = cli("import", project, "--annotations", batch, "--unchanged", "answered", code=0)
    assert "imported 2 images, 3 boxes" in res.text and "1 queries still open" in res.text  # img4: never saved, open


def test_4_a_batch_written_before_fingerprints_asks_too(tmp_path: Path) -> None:
    """A VOC batch from an older boxloop (its batch.json fingerprints only the empty files): the
    untouched pre-annotated files cannot be told from checked ones, so import asks."""
    project, batch = pre_annotated_batch(tmp_path, "voc")
    manifest = json.loads((batch / "batch.json").read_text())
    del manifest["label_files"]
    (batch / "batch.json").write_text(json.dumps({**manifest, "empty_files": {}}))
    _correct_img2("voc", batch)
    res = cli("import", project, "--annotations", batch, code=1)
    assert "img3.png, img4.png" in res.text and "older batch" in res.text and "--unchanged" in res.text
    res = cli("import", project, "--annotations", batch, "--unchanged", "open", code=0)
    assert "imported 1 images, 1 boxes" in res.text and "2 queries still open" in res.text


def test_4_answers_outside_a_batch_folder_are_answers(tmp_path: Path) -> None:
    """VOC files in a folder boxloop did not write (no batch.json) were saved by someone: answers."""
    project, batch = pre_annotated_batch(tmp_path, "voc")
    answers = tmp_path / "answers"
    answers.mkdir()
    for name in ("img2", "img3"):  # identical to the pre-annotations, but written by a person's tool
        (answers / f"{name}.xml").write_text((batch / f"{name}.xml").read_text())
    res = cli("import", project, "--annotations", answers, "--format", "voc", code=0)
    assert "imported 2 images, 4 boxes" in res.text and "1 queries still open" in res.text


def test_4_label_studio_tells_submissions_from_predictions(tmp_path: Path) -> None:
    project, batch = pre_annotated_batch(tmp_path, "labelstudio")
    for source in (batch / "tasks.json", batch):
        res = cli("import", project, "--annotations", source, code=1)
        assert "no answer for any queried image" in res.text and "Export > JSON" in res.text  # predictions: no answer
    export = H.write_labelstudio_export(batch / "tasks.json", tmp_path / "export.json",
                                        {"img2.png": [("circle", 2, 2, 20, 20), ("square", 5, 6, 28, 30)]})
    res = cli("import", project, "--annotations", export, "--format", "labelstudio", code=0)
    assert "imported 1 images, 2 boxes" in res.text and "2 queries still open" in res.text  # submitted unchanged


# -- 5. polygon, keypoint or ellipse-only images became negatives ----------------------------------------

def _ls_task(key: str, results: list[dict]) -> dict:
    return {"data": {"image": key}, "annotations": [{"result": [
        {"original_width": 32, "original_height": 32, "from_name": "label", "to_name": "image", **r} for r in results]}]}


def test_5_outlines_become_boxes_and_other_shapes_leave_images_unlabelled(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(5):
        H.write_image(images / f"img{i}.png", color=(40 * i, 80, 120))
    polygon = {"type": "polygonlabels", "value": {"points": [[10, 20], [50, 25], [30, 60]], "polygonlabels": ["circle"]}}
    ellipse = {"type": "ellipselabels", "value": {"x": 50, "y": 50, "radiusX": 25, "radiusY": 12.5, "rotation": 0,
                                                  "ellipselabels": ["square"]}}
    keypoint = {"type": "keypointlabels", "value": {"x": 40, "y": 40, "width": 1, "keypointlabels": ["circle"]}}
    ls = tmp_path / "ls.json"
    ls.write_text(json.dumps([_ls_task("img0.png", [polygon]), _ls_task("img1.png", [ellipse]),
                              _ls_task("img2.png", [keypoint]), _ls_task("img3.png", [])]))
    cvat = tmp_path / "cvat.xml"
    cvat.write_text('<annotations><version>1.1</version>'
                    '<image id="0" name="img0.png" width="32" height="32">'
                    '<polygon label="circle" points="3.2,6.4;16,8;9.6,19.2"/></image>'
                    '<image id="1" name="img1.png" width="32" height="32">'
                    '<ellipse label="square" cx="16" cy="16" rx="8" ry="4"/></image>'
                    '<image id="2" name="img2.png" width="32" height="32">'
                    '<points label="circle" points="12.8,12.8"/></image>'
                    '<image id="3" name="img3.png" width="32" height="32"/></annotations>')
    for fmt, source in (("labelstudio", ls), ("cvat", cvat)):
        project = tmp_path / f"p_{fmt}"
        res = cli("init", project, "--images", images, "--annotations", source, "--format", fmt,
                  "--classes", CLASSES, code=0)
        assert "img2.png holds only shapes that are not boxes" in res.text, res.text
        assert "1 ellipse(s) and 1 polygon(s) read as their bounding boxes" in res.text
        s = status(project)  # before: 4 labelled, 3 of them negatives and 0 boxes
        assert (s["labelled_images"], s["negative_images"], s["boxes"]) == (3, 1, 2), s
        with Project.open(project) as p:
            anns = p.annotations("labelled")
            np.testing.assert_allclose(anns["img0.png"].boxes.xyxy, [[3.2, 6.4, 16, 19.2]], atol=1e-6)
            np.testing.assert_allclose(anns["img1.png"].boxes.xyxy, [[8, 12, 24, 20]], atol=1e-6)
            assert p.image("img2.png").status == "unlabelled" and len(anns["img3.png"]) == 0


# -- 6. duplicate class names in YOLO; COCO scores silently made pseudo-labels ---------------------------

@pytest.mark.parametrize("names_file", ["classes.txt", "data.yaml"])
def test_6_yolo_names_one_class_twice(names_file: str, tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    for i in range(2):
        H.write_image(images / f"img{i}.png", color=(40 * i, 80, 120))
    labels.mkdir()
    if names_file == "classes.txt":
        H.write_classes_txt(labels / "classes.txt", ["cat", "dog", "cat"])
    else:
        (labels / "data.yaml").write_text("names: [cat, dog, cat]\n")
    (labels / "img0.txt").write_text("0 0.5 0.5 0.2 0.2\n2 0.3 0.3 0.2 0.2\n")
    res = cli("init", tmp_path / "p", "--images", images, "--annotations", labels, code=1)  # before: ids 0 and 2 merged
    assert names_file in res.text and "'cat' is named twice, as ids 0 and 2" in res.text, res.text
    assert not (tmp_path / "p").exists()


def test_6_coco_scores_are_said_and_read_as_predictions(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(3):
        H.write_image(images / f"img{i}.png", color=(40 * i, 80, 120))
    coco = H.write_coco(tmp_path / "c.json",
                        [{"id": i + 1, "file_name": f"img{i}.png", "width": 32, "height": 32} for i in range(3)],
                        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
                         {"id": 2, "image_id": 2, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.9}])
    res = cli("init", tmp_path / "p", "--images", images, "--annotations", coco, code=0)
    assert "carry a 'score' and no boxloop provenance: img1.png" in res.text, res.text  # before: silent
    s = status(tmp_path / "p")
    assert s["boxes_per_source"]["pseudo"] == 0 and s["boxes_per_source"]["predicted"] == 1  # before: 1 pseudo
    assert labelled(tmp_path / "p") == {"img0.png", "img2.png"}


# -- 13. YAML alias bombs in data.yaml; class-name length ------------------------------------------------

def test_13_yaml_aliases_are_refused_and_class_names_bounded(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    H.write_image(images / "img0.png")
    labels.mkdir()
    (labels / "img0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, 7):  # each level multiplies by 9: 6 levels made a 3.85 MB class name
        levels.append(f"{'abcdefg'[n]}: &{'abcdefg'[n]} [" + ",".join([f"*{'abcdefg'[n - 1]}"] * 9) + "]")
    (labels / "data.yaml").write_text("\n".join(levels) + "\nnames: [*g]\n")
    res = cli("init", tmp_path / "p", "--images", images, "--annotations", labels, code=1)
    assert "data.yaml" in res.text and "YAML alias" in res.text and "line 2" in res.text, res.text
    assert not (tmp_path / "p").exists()
    (labels / "data.yaml").unlink()
    H.write_classes_txt(labels / "classes.txt", ["x" * 5000])
    res = cli("init", tmp_path / "p", "--images", images, "--annotations", labels, code=1)
    assert "a class name of 5000 characters" in res.text and "longer than 200" in res.text, res.text
    res = cli("init", tmp_path / "p", "--images", images, "--classes", "y" * 201, code=1)
    assert "longer than 200" in res.text and not (tmp_path / "p").exists()
