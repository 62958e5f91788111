"""VOC / COCO / YOLO load and dump on tiny real files: exact round trips, negatives kept, pycocotools
reads what we write, and every kind of bad input gets a message naming the file."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxloop.formats import FormatError, detect_format, dump, load
from boxloop.formats.coco import dump_coco, dump_coco_results, load_coco, load_coco_results
from boxloop.formats.voc import dump_voc, find_voc_layout, load_voc, read_image_set
from boxloop.formats.yolo import dump_yolo, load_yolo
from boxloop.structures import Annotation, Boxes, Provenance, Source

CLASSES = ["cat", "dog", "bird"]
BCCD = Path(__file__).parents[2] / "shared" / "datasets" / "bccd"


def _image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _annotations() -> dict[str, Annotation]:
    """Human boxes with flags and fractional coordinates, a pseudo box with full provenance, a
    predicted box, a negative; the images: a.jpg 96x64, sub/b.png 80x80, neg.jpg 64x48."""
    a = Annotation(
        image="a.jpg",
        boxes=Boxes(np.array([[10, 5, 40, 30], [50.5, 20.25, 95.75, 64]]), (96, 64)),
        labels=("cat", "dog"),
        difficult=(True, False),
        truncated=(False, True),
        provenance=(Provenance(), Provenance(source=Source.HUMAN, round=3)),
    )
    b = Annotation(
        image="sub/b.png",
        boxes=Boxes(np.array([[0, 0, 80, 80], [12.125, 30, 33, 41.5]]), (80, 80)),
        labels=("bird", "cat"),
        provenance=(
            Provenance(source=Source.PSEUDO, round=2, model="m-r2", score=0.8734, loc_quality=0.61),
            Provenance(source=Source.PREDICTED, round=4, model="m-r4", score=0.25),
        ),
    )
    neg = Annotation(image="neg.jpg", boxes=Boxes.empty((64, 48)))
    return {x.image: x for x in (a, b, neg)}


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    _image(root / "a.jpg", 96, 64)
    _image(root / "sub" / "b.png", 80, 80)
    _image(root / "neg.jpg", 64, 48)
    _image(root / "unlabelled.jpg", 64, 64)
    return root


def _same(got: dict[str, Annotation], want: dict[str, Annotation], atol: float = 0.0,
          provenance: bool = True, flags: bool = True) -> None:
    assert sorted(got) == sorted(want)
    for key, w in want.items():
        g = got[key]
        assert g.image_size == w.image_size, key
        assert g.labels == w.labels, key
        np.testing.assert_allclose(g.boxes.xyxy, w.boxes.xyxy, rtol=0, atol=atol, err_msg=key)
        if flags:
            assert g.difficult == w.difficult and g.truncated == w.truncated, key
        if provenance:
            assert g.provenance == w.provenance, key
        assert g.is_negative == w.is_negative


# -- round trips ---------------------------------------------------------------------------------

def test_voc_round_trip_is_exact(tmp_path: Path, images: Path) -> None:
    want = _annotations()
    written = dump_voc(want.values(), tmp_path / "ann", images)
    assert sorted(p.relative_to(tmp_path / "ann").as_posix() for p in written) == ["a.xml", "neg.xml", "sub/b.xml"]
    got = load_voc(tmp_path / "ann", images, classes=CLASSES)
    assert got.warnings == []
    assert got.classes == CLASSES
    _same(got.annotations, want)
    assert "unlabelled.jpg" not in got.annotations  # no file: unlabelled, not negative
    # Without the images folder the keys come from <filename> (+ the XML's folder), sizes from <size>.
    _same(load_voc(tmp_path / "ann").annotations, want)


def test_voc_xml_looks_like_voc(tmp_path: Path) -> None:
    want = _annotations()
    dump_voc(want.values(), tmp_path / "ann")
    a = (tmp_path / "ann" / "a.xml").read_text()
    assert "<xmin>10</xmin>" in a and "<xmin>50.5</xmin>" in a and "<ymax>64</ymax>" in a
    assert "<depth>3</depth>" in a and "<difficult>1</difficult>" in a and "<pose>Unspecified</pose>" in a
    assert "<confidence>" not in a  # human boxes carry no score
    assert '<provenance source="human" round="3"' in a  # ... but a human box of round 3 keeps its round
    b = (tmp_path / "ann" / "sub" / "b.xml").read_text()
    assert "<confidence>87.3</confidence>" in b  # percent, as LocAwareAL Figure 6.3
    assert 'source="pseudo"' in b and 'model="m-r2"' in b and "<loc_quality>0.61</loc_quality>" in b
    assert "<path>sub/b.png</path>" in b and "<filename>b.png</filename>" in b
    assert "<object>" not in (tmp_path / "ann" / "neg.xml").read_text()


def test_voc_reads_seed_003_detector_output(tmp_path: Path, images: Path) -> None:
    """Figure 6.3 of LocAwareAL: <confidence> in percent, no provenance element -> a predicted box."""
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><analysis_time>2021-11-27T13:41:49.897255</analysis_time>"
        "<size><width>96</width><height>64</height><depth>3</depth></size>"
        "<object><name>dog</name><confidence>85.2</confidence>"
        "<bndbox><xmin>12</xmin><ymin>8</ymin><xmax>42</xmax><ymax>35</ymax></bndbox></object>"
        "</annotation>"
    )
    got = load_voc(ann, images).annotations["a.jpg"]
    assert got.provenance[0].source is Source.PREDICTED
    assert got.provenance[0].score == pytest.approx(0.852)
    assert got.boxes.xyxy.tolist() == [[12, 8, 42, 35]]


def test_coco_round_trip_and_pycocotools(tmp_path: Path, images: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    want = _annotations()
    path = dump_coco(want.values(), CLASSES, tmp_path / "coco" / "ann.json")
    got = load_coco(path, images, classes=CLASSES)
    assert got.warnings == [] and got.classes == CLASSES
    _same(got.annotations, want, atol=1e-9)

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
    assert len(gt.getImgIds()) == 3 and len(gt.getAnnIds()) == 4
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == CLASSES
    neg_id = next(i for i, im in gt.imgs.items() if im["file_name"] == "neg.jpg")
    assert gt.getAnnIds(imgIds=[neg_id]) == []  # the negative is listed, with no annotation
    b_id = next(i for i, im in gt.imgs.items() if im["file_name"] == "sub/b.png")
    bird = gt.loadAnns(gt.getAnnIds(imgIds=[b_id], catIds=[3]))[0]
    assert bird["bbox"] == [0, 0, 80, 80] and bird["area"] == 6400 and bird["score"] == 0.8734

    # Results: the ground truth itself, scored, loads in loadRes and scores AP 1.0 in COCOeval.
    res = dump_coco_results(want.values(), CLASSES, tmp_path / "res.json", coco_gt_path=path)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(str(res))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(dt.getAnnIds()) == 4
    assert ev.stats[1] == pytest.approx(1.0)  # AP50

    back = load_coco_results(res, coco_gt_path=path, round=5, model="m5")
    assert sorted(back) == ["a.jpg", "sub/b.png"]  # images with results only
    assert back["sub/b.png"].provenance[0] == Provenance(source=Source.PREDICTED, round=5, model="m5", score=0.8734)
    assert back["a.jpg"].scores.tolist() == [1.0, 1.0]  # human boxes carry score 1
    np.testing.assert_allclose(back["sub/b.png"].boxes.xyxy, want["sub/b.png"].boxes.xyxy, atol=1e-9)
    with_empty = load_coco_results(res, coco_gt_path=path, include_empty=True)
    assert with_empty["neg.jpg"].is_negative

    # Without the dataset file: ids and sizes given, category id = class index + 1.
    ids = {im["id"]: im["file_name"] for im in gt.imgs.values()}
    sizes = {a.image: a.image_size for a in want.values()}
    same = load_coco_results(res, ids, image_sizes=sizes, classes=CLASSES)
    assert same["a.jpg"].labels == ("cat", "dog") and same["a.jpg"].image_size == (96, 64)


def test_yolo_round_trip_to_rounding(tmp_path: Path, images: Path) -> None:
    want = _annotations()
    out = dump_yolo(want.values(), CLASSES, tmp_path / "yolo")
    assert (out / "labels" / "neg.txt").read_text() == ""  # the negative is an empty file
    assert (out / "classes.txt").read_text().split() == CLASSES
    line = (out / "labels" / "sub" / "b.txt").read_text().splitlines()[0]
    assert line == "2 0.500000 0.500000 1.000000 1.000000"
    got = load_yolo(out, images)
    assert got.classes == CLASSES and got.warnings == []
    _same(got.annotations, want, atol=1e-3, provenance=False, flags=False)
    assert "unlabelled.jpg" not in got.annotations

    # data.yaml alone (names as a mapping) gives the same classes
    (out / "classes.txt").unlink()
    assert load_yolo(out / "labels", images).classes == CLASSES
    # names as a list, and a save_conf 6th column loads as a predicted score
    (out / "data.yaml").write_text("names: [cat, dog, bird]\n")
    (out / "labels" / "a.txt").write_text("1 0.5 0.5 0.25 0.5 0.9\n")
    a = load_yolo(out / "labels", images).annotations["a.jpg"]
    assert a.boxes.xyxy.tolist() == [[36, 16, 60, 48]] and a.provenance[0].score == pytest.approx(0.9)


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_voc_to_every_format_and_back_keeps_every_box_and_negative(tmp_path: Path, images: Path, fmt: str) -> None:
    dump_voc(_annotations().values(), tmp_path / "voc", images)
    start = load("voc", tmp_path / "voc", images, CLASSES)
    written = dump(fmt, start.annotations.values(), start.classes, tmp_path / fmt)
    source = written if fmt == "coco" else tmp_path / fmt
    assert detect_format(source) == fmt
    back = load(None, source, images)
    exact = fmt != "yolo"
    _same(back.annotations, start.annotations, atol=0 if fmt == "voc" else (1e-9 if exact else 1e-3),
          provenance=exact, flags=exact)
    assert sum(a.is_negative for a in back.annotations.values()) == 1


def test_voc_root_layout_and_image_sets(tmp_path: Path) -> None:
    root = tmp_path / "VOC"
    _image(root / "JPEGImages" / "x1.jpg", 64, 64)
    _image(root / "JPEGImages" / "x2.jpg", 64, 64)
    dump_voc([Annotation("x1.jpg", Boxes([[1, 2, 30, 40]], (64, 64)), ("cat",))], root / "Annotations")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("x2\n x1 \n\n")
    assert find_voc_layout(root) == (root / "JPEGImages", root / "Annotations")
    assert detect_format(root) == "voc"
    got = load_voc(root)
    assert list(got.annotations) == ["x1.jpg"] and got.classes == ["cat"]
    assert read_image_set(root / "ImageSets" / "Main" / "test.txt") == ["x2", "x1"]
    # an images folder with an annotations folder beside it
    assert find_voc_layout(root / "JPEGImages") == (root / "JPEGImages", root / "Annotations")


# -- bad input -----------------------------------------------------------------------------------

def _voc(path: Path, filename: str, objects: list[tuple[str, list[float]]], size=(96, 64), extra: str = "",
         path_text: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects
    )
    p = f"<path>{path_text}</path>" if path_text is not None else ""
    path.write_text(f"{extra}<annotation><filename>{filename}</filename>{p}<size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def test_malformed_and_truncated_files(tmp_path: Path, images: Path) -> None:
    ann = tmp_path / "ann"
    _voc(ann / "a.xml", "a.jpg", [("cat", [1, 1, 9, 9])])
    text = (ann / "a.xml").read_text()
    (ann / "a.xml").write_text(text[: len(text) // 2])
    with pytest.raises(FormatError, match=r"a\.xml.*malformed or truncated XML"):
        load_voc(ann, images)
    j = tmp_path / "bad.json"
    dump_coco(_annotations().values(), CLASSES, j)
    j.write_text(j.read_text()[:-20])
    with pytest.raises(FormatError, match=r"bad\.json.*malformed or truncated JSON at line 1"):
        load_coco(j, images)
    with pytest.raises(FormatError, match="detection-results file"):
        j.write_text("[]")
        load_coco(j)


def test_dtd_and_entities_are_refused(tmp_path: Path, images: Path) -> None:
    ann = tmp_path / "ann"
    lol = '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
    _voc(ann / "a.xml", "a.jpg", [("&lol2;", [1, 1, 9, 9])], extra=lol)
    with pytest.raises(FormatError, match=r"a\.xml.*DTD or entities"):
        load_voc(ann, images)
    xxe = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    _voc(ann / "a.xml", "a.jpg", [("&x;", [1, 1, 9, 9])], extra=xxe)
    with pytest.raises(FormatError, match="DTD or entities"):
        load_voc(ann, images)


def test_unknown_class_names_are_all_listed(tmp_path: Path, images: Path) -> None:
    ann = tmp_path / "ann"
    _voc(ann / "a.xml", "a.jpg", [("cat", [1, 1, 9, 9]), ("zebra", [2, 2, 9, 9])])
    _voc(ann / "neg.xml", "neg.jpg", [("yak", [1, 1, 9, 9])], size=(64, 48))
    with pytest.raises(FormatError) as e:
        load_voc(ann, images, classes=CLASSES)
    msg = str(e.value)
    assert "'yak' in neg.xml" in msg and "'zebra' in a.xml" in msg and "--classes" in msg
    # COCO and YOLO check the same way
    coco = dump_coco(load_voc(ann, images).annotations.values(), ["cat", "zebra", "yak"], tmp_path / "c.json")
    with pytest.raises(FormatError, match="'yak'.*'zebra'"):
        load_coco(coco, images, classes=CLASSES)
    yolo = dump_yolo(load_voc(ann, images).annotations.values(), ["cat", "zebra", "yak"], tmp_path / "y")
    with pytest.raises(FormatError, match="'yak'.*'zebra'"):
        load_yolo(yolo, images, classes=CLASSES)
    # and so does every writer that numbers classes
    with pytest.raises(FormatError, match="'zebra'"):
        dump_coco(load_voc(ann, images).annotations.values(), CLASSES, tmp_path / "d.json")


def test_degenerate_boxes_dropped_and_outside_boxes_clipped_with_warnings(tmp_path: Path, images: Path) -> None:
    ann = tmp_path / "ann"
    _voc(ann / "a.xml", "a.jpg", [
        ("cat", [10, 10, 20, 20]),
        ("cat", [30, 30, 30, 40]),  # zero width
        ("dog", [50, 40, 45, 50]),  # negative width
        ("dog", ["nan", 1, 5, 5]),  # NaN
        ("dog", [1, 1, "inf", 5]),  # inf
        ("bird", [-5, 50, 40, 70]),  # leaves the 96x64 image: clipped
        ("bird", [100, 1, 120, 9]),  # wholly outside: dropped
    ])
    got = load_voc(ann, images)
    a = got.annotations["a.jpg"]
    assert a.boxes.xyxy.tolist() == [[10, 10, 20, 20], [0, 50, 40, 64]]
    assert a.labels == ("cat", "bird")
    assert len(got.warnings) == 6
    assert sum(w.endswith("; dropped") for w in got.warnings) == 5
    assert sum("; clipped to [0, 50, 40, 64]" in w for w in got.warnings) == 1
    assert all("a.xml" in w for w in got.warnings)
    # a file whose only boxes are all dropped leaves its image unlabelled, not negative
    _voc(ann / "neg.xml", "neg.jpg", [("cat", [3, 3, 3, 3])], size=(64, 48))
    got = load_voc(ann, images)
    assert "neg.jpg" not in got.annotations and any("unlabelled" in w for w in got.warnings)


def test_missing_images_are_listed(tmp_path: Path, images: Path) -> None:
    ann = tmp_path / "ann"
    _voc(ann / "a.xml", "a.jpg", [])
    _voc(ann / "ghost1.xml", "ghost1.jpg", [])
    _voc(ann / "ghost2.xml", "ghost2.jpg", [])
    with pytest.raises(FormatError, match=r"2 annotation\(s\) name images that are not in .*ghost1.*ghost2"):
        load_voc(ann, images)
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "ghost.jpg", "width": 4, "height": 4}],
                                "annotations": [], "categories": []}))
    with pytest.raises(FormatError, match="ghost.jpg"):
        load_coco(coco, images)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("cat\n")
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FormatError, match="ghost.txt"):
        load_yolo(labels, images)


def test_same_stem_twice_is_an_error_when_matching_by_stem(tmp_path: Path, images: Path) -> None:
    _image(images / "a.png", 96, 64)  # beside a.jpg
    ann = tmp_path / "ann"
    _voc(ann / "a.xml", "a.jpg", [("cat", [1, 1, 9, 9])])
    with pytest.raises(FormatError, match="a.jpg, a.png"):
        load_voc(ann, images)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("cat\n")
    (labels / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FormatError, match="same name"):
        load_yolo(labels, images)
    # ... and a.jpg + a.png cannot both be written as a.xml
    with pytest.raises(FormatError, match="share"):
        dump_voc([Annotation("a.jpg", Boxes.empty((96, 64))), Annotation("a.png", Boxes.empty((96, 64)))],
                 tmp_path / "out")


@pytest.mark.parametrize("filename", ["../a.jpg", "/etc/a.jpg", "sub/../../a.jpg", "C:\\data\\a.jpg"])
def test_paths_escaping_the_images_folder_are_refused(tmp_path: Path, images: Path, filename: str) -> None:
    ann = tmp_path / "ann"
    _voc(ann / "other.xml", filename, [])
    with pytest.raises(FormatError, match="other.xml.*(outside|absolute)"):
        load_voc(ann, images)
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": filename, "width": 4, "height": 4}],
                                "annotations": [], "categories": []}))
    with pytest.raises(FormatError, match="c.json.*(outside|absolute)"):
        load_coco(coco)


def test_relative_path_escape_refused_but_labelimg_absolute_path_ignored(tmp_path: Path, images: Path) -> None:
    ann = tmp_path / "ann"
    _voc(ann / "x.xml", "a.jpg", [], path_text="../../secret/a.jpg")
    with pytest.raises(FormatError, match="<path>.*outside"):
        load_voc(ann, images)
    # LabelImg writes the labeller's own absolute path; BCCD has /home/pi/...: matched by name instead.
    _voc(ann / "x.xml", "a.jpg", [], path_text="/home/pi/detection_dataset/JPEGImages/a.jpg")
    assert list(load_voc(ann, images).annotations) == ["a.jpg"]


def test_yolo_bad_lines_and_missing_names(tmp_path: Path, images: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FormatError, match="classes.txt"):
        load_yolo(labels, images)
    assert load_yolo(labels, images, classes=["cat"]).annotations["a.jpg"].labels == ("cat",)
    (labels / "classes.txt").write_text("cat\n")
    (labels / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FormatError, match=r"a\.txt:2.*class id 3"):
        load_yolo(labels, images)
    (labels / "a.txt").write_text("0 0.5 zero 0.1 0.1\n")
    with pytest.raises(FormatError, match=r"a\.txt:1.*not numbers"):
        load_yolo(labels, images)


def test_detect_format(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    assert detect_format(tmp_path / "x.json") == "coco"
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.xml").write_text("<annotation/>")
    assert detect_format(tmp_path / "v") == "voc"
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "a.txt").write_text("")
    (tmp_path / "y" / "classes.txt").write_text("cat\n")
    assert detect_format(tmp_path / "y") == "yolo"
    (tmp_path / "e").mkdir()
    with pytest.raises(FormatError, match="no .xml"):
        detect_format(tmp_path / "e")


# -- the real dataset -----------------------------------------------------------------------------

@pytest.mark.bccd
@pytest.mark.skipif(not (BCCD / "Annotations").is_dir(), reason="../shared/datasets/bccd is absent")
def test_bccd_loads_with_two_degenerate_boxes_dropped() -> None:
    got = load_voc(BCCD / "Annotations", BCCD / "JPEGImages")
    assert len(got.annotations) == 364
    assert set(got.classes) == {"RBC", "WBC", "Platelets"}
    counts: dict[str, int] = {}
    for a in got.annotations.values():
        assert a.image_size == (640, 480)
        for name in a.labels:
            counts[name] = counts.get(name, 0) + 1
    assert counts == {"RBC": 4153, "WBC": 372, "Platelets": 361}
    assert sum(counts.values()) == 4886
    assert len(got.warnings) == 2
    assert "BloodImage_00338" in got.warnings[0] and "BloodImage_00343" in got.warnings[1]
    # the VOC root works as well, and gives the same
    assert load_voc(BCCD).annotations.keys() == got.annotations.keys()
    assert len(read_image_set(BCCD / "ImageSets" / "Main" / "test.txt")) == 72


# -- property: any valid boxes survive every format -----------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _random_annotation(draw: st.DrawFn) -> Annotation:
    w, h = draw(st.integers(8, 2000)), draw(st.integers(8, 2000))
    n = draw(st.integers(0, 6))
    rows, labels, prov = [], [], []
    for _ in range(n):
        whole = draw(st.booleans())
        coord = st.integers if whole else (lambda lo, hi: st.floats(lo, hi, allow_nan=False, width=64))
        x1, y1 = draw(coord(0, w - 2)), draw(coord(0, h - 2))
        x2, y2 = draw(coord(int(x1) + 1, w)), draw(coord(int(y1) + 1, h))
        rows.append([x1, y1, x2, y2])
        labels.append(draw(st.sampled_from(CLASSES)))
        score = draw(st.none() | st.floats(0, 1, allow_nan=False))
        prov.append(Provenance() if score is None else Provenance(source=Source.PSEUDO, round=1, score=score))
    return Annotation("img.png", Boxes(np.array(rows, dtype=np.float64).reshape(-1, 4), (w, h)),
                      tuple(labels), provenance=tuple(prov))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ann=_random_annotation())
def test_any_annotation_round_trips(tmp_path_factory: pytest.TempPathFactory, ann: Annotation) -> None:
    d = tmp_path_factory.mktemp("rt")
    want = {ann.image: ann}
    dump_voc([ann], d / "voc")
    _same(load_voc(d / "voc", classes=CLASSES).annotations, want)
    _same(load_coco(dump_coco([ann], CLASSES, d / "c.json")).annotations, want, atol=1e-9)
    _image(d / "images" / "img.png", *ann.image_size)
    yolo = load_yolo(dump_yolo([ann], CLASSES, d / "yolo"), d / "images")
    # 6 decimals: centre and size each within 5e-7 of the side, so a corner within 7.5e-7 of it
    _same(yolo.annotations, want, atol=7.5e-7 * max(ann.image_size) + 1e-9, provenance=False)
