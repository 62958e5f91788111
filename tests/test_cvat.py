"""CVAT for images 1.1: the documented example loads, dump -> load keeps boxes, classes, negatives
and scores, and every kind of bad input is refused or clipped with a message."""

from __future__ import annotations

from pathlib import Path

import defusedxml.ElementTree as SafeET
import numpy as np
import pytest

from boxloop.formats import FormatError
from boxloop.formats.cvat import dump_cvat, load_cvat
from boxloop.formats.labelstudio import FlaggedLoadResult
from boxloop.structures import Annotation, Boxes, Provenance, Source

FIXTURES = Path(__file__).parent / "fixtures" / "cvat"
CLASSES = ["cat", "dog", "bird"]


def _xml(path: Path, images: str, labels: tuple[str, ...] = ("cat", "dog")) -> Path:
    meta = "".join(f"<label><name>{n}</name><type>rectangle</type><attributes/></label>" for n in labels)
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta><task>'
                    f"<labels>{meta}</labels></task></meta>{images}</annotations>", encoding="utf-8")
    return path


def test_documented_example_loads() -> None:
    """docs.cvat.ai XML annotation format, 'CVAT for images' example: one plate box, the car polygon
    as its bounding box (issue 31: one rule for outlines in every format), other shapes ignored with
    a warning, the tag kept as a flag, classes from <meta>."""
    res = load_cvat(FIXTURES / "xml_format_example.xml")
    assert isinstance(res, FlaggedLoadResult)
    ann = res.annotations["filename000.jpg"]
    assert ann.image_size == (1600, 1200)
    assert ann.labels == ("plate", "car")
    np.testing.assert_allclose(ann.boxes.xyxy, [[797.33, 870.92, 965.52, 928.94], [528.40, 506.14, 582.13, 916.23]])
    assert all(p.source == Source.HUMAN for p in ann.provenance)  # no source attribute: a person's box
    assert res.classes == ["car", "traffic_line", "wheel", "plate"]
    assert res.flags == {"filename000.jpg": ("good_frame",)}
    text = " ".join(res.warnings)
    assert "1 polygon(s) read as their bounding boxes" in text and "2 <polyline>" in text and "1 <points>" in text


def _annotations() -> list[Annotation]:
    a = Annotation(image="a.jpg", boxes=Boxes(np.array([[10.125, 5.5, 40.0, 30.75], [50.5, 20.25, 95.75, 64.0]]), (96, 64)),
                   labels=("cat", "dog"))
    b = Annotation(image="sub/b.png", boxes=Boxes(np.array([[1.0, 2.0, 30.333333333, 40.1], [3, 3, 9, 9], [0, 0, 80, 80]]), (80, 80)),
                   labels=("bird", "cat", "dog"),
                   provenance=(Provenance(source=Source.PREDICTED, round=2, model="fcos-r2", score=0.8734, loc_quality=0.61),
                               Provenance(source=Source.PSEUDO, round=1, score=0.95),
                               Provenance(source=Source.HUMAN, round=3)))
    neg = Annotation(image="neg.jpg", boxes=Boxes.empty((64, 48)))
    return [a, b, neg]


def test_dump_writes_documented_layout(tmp_path: Path) -> None:
    out = dump_cvat(_annotations(), CLASSES, tmp_path / "annotations.xml")
    root = SafeET.parse(out).getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    assert [lab.findtext("name") for lab in root.find("meta/task/labels")] == CLASSES
    images = root.findall("image")
    assert [(i.get("id"), i.get("name"), i.get("width"), i.get("height")) for i in images] == [
        ("0", "a.jpg", "96", "64"), ("1", "sub/b.png", "80", "80"), ("2", "neg.jpg", "64", "48")]
    boxes = images[1].findall("box")
    assert [b.get("source") for b in boxes] == ["auto", "auto", "manual"]
    assert boxes[0].get("label") == "bird" and float(boxes[0].get("xbr")) == 30.333333333
    attrs = {a.get("name"): a.text for a in boxes[0].findall("attribute")}
    assert float(attrs["score"]) == 0.8734 and attrs["provenance"] == "predicted" and attrs["model"] == "fcos-r2"
    assert [(a.get("name"), a.text) for a in boxes[2].findall("attribute")] == [("round", "3")]  # human box: round only
    assert images[2].findall("box") == []
    for b in root.iter("box"):
        assert b.get("occluded") == "0" and b.get("z_order") == "0"


def test_round_trip_keeps_boxes_classes_negatives_scores(tmp_path: Path) -> None:
    anns = _annotations()
    out = dump_cvat(anns, CLASSES, tmp_path / "annotations.xml")
    res = load_cvat(out, known_images={a.image: a.image_size for a in anns}, classes=CLASSES)
    assert res.warnings == [] and res.classes == CLASSES
    assert set(res.annotations) == {"a.jpg", "sub/b.png", "neg.jpg"}
    assert res.annotations["neg.jpg"].is_negative
    for orig in anns:
        got = res.annotations[orig.image]
        np.testing.assert_allclose(got.boxes.xyxy, orig.boxes.xyxy.reshape(-1, 4), rtol=1e-12)
        assert got.labels == orig.labels and got.image_size == orig.image_size
        assert got.provenance == orig.provenance  # source, round, model, score, loc_quality
    # without known images, sizes and classes come from the file
    res2 = load_cvat(out)
    assert res2.classes == CLASSES and res2.annotations["neg.jpg"].image_size == (64, 48)
    # an annotator's answer: every box counts as a person's
    reviewed = load_cvat(out, reviewed=True)
    assert all(p == Provenance() for ann in reviewed.annotations.values() for p in ann.provenance)


def test_semi_auto_and_manual_are_human(tmp_path: Path) -> None:
    path = _xml(tmp_path / "x.xml", '<image id="0" name="a.jpg" width="10" height="10">'
                '<box label="cat" source="semi-auto" xtl="1" ytl="1" xbr="5" ybr="5" occluded="0"/>'
                '<box label="cat" source="auto" xtl="1" ytl="1" xbr="5" ybr="5" occluded="0"/></image>')
    ann = load_cvat(path).annotations["a.jpg"]
    assert [p.source for p in ann.provenance] == [Source.HUMAN, Source.PREDICTED]
    assert ann.provenance[1].score is None  # CVAT's own auto-annotation carries no boxloop score


def test_image_names_match_by_path_suffix_and_sizes_rescale(tmp_path: Path) -> None:
    path = _xml(tmp_path / "x.xml",
                '<image id="0" name="b.jpg" width="100" height="50">'
                '<box label="cat" xtl="10" ytl="10" xbr="20" ybr="20" occluded="0"/></image>'
                '<image id="1" name="export/imgs/c.jpg" width="10" height="10"/>')
    res = load_cvat(path, known_images={"sub/b.jpg": (200, 100), "imgs/c.jpg": (10, 10)})
    np.testing.assert_allclose(res.annotations["sub/b.jpg"].boxes.xyxy, [[20, 20, 40, 40]])
    assert res.annotations["imgs/c.jpg"].is_negative
    assert any("scaled" in w for w in res.warnings)


def test_skip_and_negative_tags(tmp_path: Path) -> None:
    path = _xml(tmp_path / "x.xml",
                '<image id="0" name="a.jpg" width="10" height="10"><tag label="skip" source="manual"/>'
                '<box label="cat" xtl="1" ytl="1" xbr="5" ybr="5" occluded="0"/></image>'
                '<image id="1" name="b.jpg" width="10" height="10"><tag label="negative" source="manual"/></image>',
                labels=("cat", "negative", "skip"))
    res = load_cvat(path)
    assert set(res.annotations) == {"b.jpg"} and res.annotations["b.jpg"].is_negative
    assert res.flags == {"a.jpg": ("skip",), "b.jpg": ("negative",)}
    assert res.classes == ["cat"]  # tag labels are not box classes


def test_rotated_box_becomes_envelope(tmp_path: Path) -> None:
    # 20x10 box centred at (20, 15), rotated 90 degrees about its centre: 10x20, x 15..25, y 5..25
    path = _xml(tmp_path / "x.xml", '<image id="0" name="a.jpg" width="100" height="100">'
                '<box label="cat" xtl="10" ytl="10" xbr="30" ybr="20" rotation="90" occluded="0"/></image>')
    res = load_cvat(path)
    np.testing.assert_allclose(res.annotations["a.jpg"].boxes.xyxy, [[15, 5, 25, 25]], atol=1e-9)
    assert any("rotated by 90" in w for w in res.warnings)


# -- bad input ---------------------------------------------------------------------------------

def test_other_project_lists_every_mismatch(tmp_path: Path) -> None:
    path = _xml(tmp_path / "other.xml",
                '<image id="0" name="a.jpg" width="10" height="10"><box label="zebra" xtl="1" ytl="1" xbr="5" ybr="5"/></image>'
                '<image id="1" name="unknown.jpg" width="10" height="10"/>', labels=("zebra",))
    with pytest.raises(FormatError) as err:
        load_cvat(path, known_images={"a.jpg": (10, 10)}, classes=CLASSES)
    msg = str(err.value)
    assert str(path) in msg and "unknown.jpg" in msg and "zebra" in msg and "nothing was imported" in msg


def test_dump_refuses_unknown_class_and_writes_nothing(tmp_path: Path) -> None:
    ann = Annotation(image="a.jpg", boxes=Boxes(np.array([[0, 0, 5, 5]]), (10, 10)), labels=("zebra",))
    with pytest.raises(FormatError, match="zebra"):
        dump_cvat([ann], CLASSES, tmp_path / "x.xml")
    assert not (tmp_path / "x.xml").exists()


def test_outside_the_image_is_clipped_with_warning(tmp_path: Path) -> None:
    path = _xml(tmp_path / "x.xml", '<image id="0" name="a.jpg" width="100" height="50">'
                '<box label="cat" xtl="-4" ytl="10" xbr="30" ybr="60" occluded="0"/>'
                '<box label="dog" xtl="120" ytl="10" xbr="130" ybr="20" occluded="0"/></image>')
    res = load_cvat(path)
    np.testing.assert_allclose(res.annotations["a.jpg"].boxes.xyxy, [[0, 10, 30, 50]])
    assert any("clipped" in w for w in res.warnings) and any("dropped" in w for w in res.warnings)


@pytest.mark.parametrize("text, match", [
    ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "boom">]><annotations>&x;</annotations>', "DTD or entities"),
    ("<annotations><image id='0' name='a.jpg'", "malformed"),
    ("<annotation><filename>a.jpg</filename></annotation>", "not <annotations>"),
    ("<annotations><track id='0' label='cat'/></annotations>", "CVAT for video"),
    ("<annotations><image id='0' name='a.jpg' width='9' height='9'><box label='cat' xtl='x' ytl='1' xbr='2' ybr='2'/>"
     "</image></annotations>", "xtl='x' is not a number"),
    ("<annotations><image id='0' name='a.jpg'/></annotations>", "no valid width and height"),
    ("<annotations><image id='0' name='../../etc/a.jpg' width='9' height='9'/></annotations>", "outside the images folder"),
])
def test_bad_files_are_refused_naming_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FormatError, match=match) as err:
        load_cvat(path)
    assert "bad.xml" in str(err.value)
