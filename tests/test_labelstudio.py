"""Label Studio tasks and exports: the documented examples load to hand-computed pixel boxes, a
dump -> (annotator accepts) -> load round trip keeps boxes, classes, negatives and scores, and every
kind of bad input is refused or clipped with a message."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from boxloop.formats import FormatError, rotated_envelope
from boxloop.formats.labelstudio import (
    LOCAL_FILES_PREFIX,
    FlaggedLoadResult,
    dump_labelstudio_tasks,
    labeling_config,
    load_labelstudio,
)
from boxloop.structures import Annotation, Boxes, Provenance, Source

FIXTURES = Path(__file__).parent / "fixtures" / "labelstudio"
CLASSES = ["cat", "dog", "bird"]


def _write(path: Path, tasks: object) -> Path:
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


def _box(x: float, y: float, w: float, h: float, label: str, ow: int = 200, oh: int = 100, **extra) -> dict:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": extra.pop("rotation", 0), "rectanglelabels": [label]}
    return {"id": f"r{x}{y}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": ow, "original_height": oh, "image_rotation": 0, "value": value, **extra}


def _task(key: str | None, *annotations: list[dict], cancelled: tuple[bool, ...] = (), url: str | None = None) -> dict:
    data: dict = {"image": url if url is not None else f"/data/local-files/?d={key}"}
    if key is not None:
        data["boxloop_key"] = key
    anns = [{"result": r, "was_cancelled": (cancelled[i] if i < len(cancelled) else False)}
            for i, r in enumerate(annotations)]
    return {"id": abs(hash(key)) % 1000, "data": data, "annotations": anns}


# -- the documented examples -------------------------------------------------------------------

def test_task_format_doc_example_loads_to_pixels() -> None:
    """labelstud.io/guide/task_format: x=50.8 %, y=5.8698 %, w=12.4 %, h=10.4589 % of a 1000x500 image."""
    res = load_labelstudio(FIXTURES / "task_format_example.json", known_images={"1.jpg": (1000, 500)})
    assert isinstance(res, FlaggedLoadResult)
    ann = res.annotations["1.jpg"]  # URL .../opensource/label-studio/1.jpg matched by path suffix
    assert ann.labels == ("Moonwalker",)
    expected = [508.0, 29.34898612593383, 632.0, 81.6435432230523]  # 50.8*10, 5.8698*5, +124, +52.2946
    np.testing.assert_allclose(ann.boxes.xyxy[0], expected, rtol=1e-12)
    assert ann.image_size == (1000, 500)
    assert ann.provenance[0].source == Source.HUMAN
    assert res.classes == ["Moonwalker"]  # the prediction (model 1) is not an answer and is not read


def test_task_format_example_without_sizes_is_refused() -> None:
    """That example has no original_width/height; without known images there is no pixel size."""
    with pytest.raises(FormatError, match="original_width"):
        load_labelstudio(FIXTURES / "task_format_example.json")


def test_predictions_doc_example_loads_to_pixels_and_flags() -> None:
    """labelstud.io/guide/predictions bbox + choices example (600x403), accepted by an annotator."""
    res = load_labelstudio(FIXTURES / "airplanes_export.json")
    ann = res.annotations["static/samples/sample.jpg"]
    assert ann.labels == ("Airplane", "Car")
    assert ann.image_size == (600, 403)
    expected = np.array([
        [4.98 * 6, 12.82 * 4.03, (4.98 + 32.52) * 6, (12.82 + 44.91) * 4.03],  # 29.88, 51.6646, 225, 232.6519
        [75.47 * 6, 82.33 * 4.03, (75.47 + 5.74) * 6, (82.33 + 7.40) * 4.03],  # 452.82, 331.7899, 487.26, 361.6119
    ])
    np.testing.assert_allclose(ann.boxes.xyxy, expected, rtol=1e-9)
    np.testing.assert_allclose(ann.boxes.xyxy[0], [29.88, 51.6646, 225.0, 232.6519], rtol=1e-9)
    assert res.flags == {"static/samples/sample.jpg": ("Airbus",)}
    assert res.classes == ["Airplane", "Car"]
    assert res.warnings == []


# -- writing -----------------------------------------------------------------------------------

def _pred(key: str, xyxy: list[list[float]], labels: tuple[str, ...], scores: list[float], size=(200, 100)) -> Annotation:
    return Annotation(image=key, boxes=Boxes(np.array(xyxy, dtype=float).reshape(-1, 4), size), labels=labels,
                      provenance=tuple(Provenance(source=Source.PREDICTED, round=2, model="m", score=s) for s in scores))


def test_dump_writes_documented_task_layout(tmp_path: Path) -> None:
    pred = _pred("sub/a b.jpg", [[20, 10, 60, 50], [100, 0, 200, 100]], ("cat", "dog"), [0.9, 0.5])
    out = dump_labelstudio_tasks([("sub/a b.jpg", None, pred)], CLASSES, tmp_path / "tasks.json")
    tasks = json.loads(out.read_text())
    assert len(tasks) == 1
    task = tasks[0]
    assert task["data"] == {"image": LOCAL_FILES_PREFIX + "sub/a%20b.jpg", "boxloop_key": "sub/a b.jpg",
                            "width": 200, "height": 100}
    assert "annotations" not in task
    (p,) = task["predictions"]
    assert p["model_version"] == "boxloop"
    assert p["score"] == pytest.approx(0.7)  # mean box score
    r0, r1 = p["result"]
    assert r0["id"] != r1["id"]
    for r in (r0, r1):
        assert r["type"] == "rectanglelabels" and r["from_name"] == "label" and r["to_name"] == "image"
        assert (r["original_width"], r["original_height"], r["image_rotation"]) == (200, 100, 0)
        assert r["value"]["rotation"] == 0
    # 20/200 = 10 %, 10/100 = 10 %, width 40/200 = 20 %, height 40/100 = 40 %
    assert r0["value"] == {"x": 10.0, "y": 10.0, "width": 20.0, "height": 40.0, "rotation": 0, "rectanglelabels": ["cat"]}
    assert r0["score"] == pytest.approx(0.9)
    assert r1["value"]["x"] == 50.0 and r1["value"]["width"] == 50.0 and r1["value"]["height"] == 100.0


def test_labeling_config_matches_the_tasks() -> None:
    root = ET.fromstring(labeling_config(["cat", "dog & co"]))
    assert root.tag == "View"
    image = root.find("Image")
    assert image is not None and image.get("name") == "image" and image.get("value") == "$image"
    rect = root.find("RectangleLabels")
    assert rect is not None and rect.get("name") == "label" and rect.get("toName") == "image"
    assert [lab.get("value") for lab in rect.findall("Label")] == ["cat", "dog & co"]
    choices = root.find("Choices")
    assert choices is not None and [c.get("value") for c in choices.findall("Choice")] == ["negative", "skip"]
    assert ET.fromstring(labeling_config(["cat"], flags=())).find("Choices") is None


def test_dump_plain_prefix_task_scores_labels_and_empty_prediction(tmp_path: Path) -> None:
    human = Annotation(image="h.jpg", boxes=Boxes(np.array([[0, 0, 10, 10]]), (100, 50)), labels=("bird",))
    empty = _pred("e.jpg", [], (), [], size=(64, 64))
    out = dump_labelstudio_tasks([("h.jpg", human, None), ("e.jpg", None, empty), ("n.jpg", None, None)], CLASSES,
                                 tmp_path / "t.json", image_url_prefix="", model_version="r3",
                                 task_scores={"e.jpg": 0.25})
    h, e, n = json.loads(out.read_text())
    assert h["data"]["image"] == "h.jpg"
    assert h["annotations"][0]["result"][0]["value"]["rectanglelabels"] == ["bird"]
    assert "score" not in h["annotations"][0]["result"][0]
    assert e["predictions"] == [{"model_version": "r3", "result": [], "score": 0.25}]
    assert n == {"data": {"image": "n.jpg", "boxloop_key": "n.jpg"}}


def test_dump_refuses_unknown_class_and_writes_nothing(tmp_path: Path) -> None:
    pred = _pred("a.jpg", [[0, 0, 5, 5]], ("zebra",), [0.5])
    with pytest.raises(FormatError, match="zebra"):
        dump_labelstudio_tasks([("a.jpg", None, pred)], CLASSES, tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


# -- round trip --------------------------------------------------------------------------------

def _accept_predictions(tasks: list[dict]) -> list[dict]:
    """What Label Studio exports after an annotator submits each pre-annotation unchanged."""
    out = []
    for i, t in enumerate(tasks):
        t = dict(t, id=i + 1)
        preds = t.pop("predictions", [])
        if preds:
            t["annotations"] = [{"id": 100 + i, "result": preds[0]["result"], "was_cancelled": False}]
        out.append(t)
    return out


def test_round_trip_keeps_boxes_classes_negatives_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = {"a.jpg": (97, 61), "sub/b.png": (128, 80), "neg.jpg": (64, 48), "unanswered.jpg": (70, 70)}
    xy = rng.uniform(0, 40, (3, 2))
    wh = rng.uniform(5, 20, (3, 2))
    a = _pred("a.jpg", np.concatenate([xy, xy + wh], 1).tolist(), ("cat", "dog", "cat"), [0.91, 0.42, 0.77], sizes["a.jpg"])
    b = _pred("sub/b.png", [[0.5, 1.25, 127.5, 79.75]], ("bird",), [0.66], sizes["sub/b.png"])
    neg = _pred("neg.jpg", [], (), [], sizes["neg.jpg"])
    path = dump_labelstudio_tasks([(p.image, None, p) for p in (a, b, neg)] + [("unanswered.jpg", None, None)],
                                  CLASSES, tmp_path / "tasks.json")
    export = _write(tmp_path / "export.json", _accept_predictions(json.loads(path.read_text())))
    res = load_labelstudio(export, known_images=sizes, classes=CLASSES)
    assert set(res.annotations) == {"a.jpg", "sub/b.png", "neg.jpg"}  # unanswered stays absent
    assert res.annotations["neg.jpg"].is_negative and res.annotations["neg.jpg"].image_size == (64, 48)
    for orig in (a, b):
        got = res.annotations[orig.image]
        np.testing.assert_allclose(got.boxes.xyxy, orig.boxes.xyxy, rtol=1e-6)
        assert got.labels == orig.labels and got.image_size == orig.image_size
        np.testing.assert_allclose(got.scores, orig.scores, rtol=1e-12)
        assert all(p.source == Source.HUMAN for p in got.provenance)
    assert res.classes == CLASSES and res.warnings == []
    # without known images: keys and sizes come from the file itself
    res2 = load_labelstudio(export)
    np.testing.assert_allclose(res2.annotations["a.jpg"].boxes.xyxy, a.boxes.xyxy, rtol=1e-6)
    assert res2.annotations["neg.jpg"].image_size == (64, 48)  # from data.width/height
    assert res2.classes == ["cat", "dog", "bird"]


def test_last_non_cancelled_annotation_wins(tmp_path: Path) -> None:
    first = [_box(10, 10, 10, 10, "cat")]
    second = [_box(20, 20, 10, 10, "dog")]
    tasks = [
        _task("a.jpg", first, second),  # two answers: the later one counts
        _task("b.jpg", first, second, cancelled=(False, True)),  # the later was skipped
        _task("c.jpg", first, cancelled=(True,)),  # only skipped: unanswered
        _task("d.jpg", []),  # submitted with no box: negative
    ]
    tasks[0]["annotations"][0]["updated_at"] = "2024-01-02T00:00:00Z"
    tasks[0]["annotations"][1]["updated_at"] = "2024-01-03T00:00:00Z"
    res = load_labelstudio(_write(tmp_path / "e.json", tasks), known_images={f"{k}.jpg": (200, 100) for k in "abcd"})
    assert res.annotations["a.jpg"].labels == ("dog",)
    np.testing.assert_allclose(res.annotations["a.jpg"].boxes.xyxy, [[40, 20, 60, 30]])
    assert res.annotations["b.jpg"].labels == ("cat",)
    assert "c.jpg" not in res.annotations
    assert res.annotations["d.jpg"].is_negative


def test_image_urls_map_back_without_key(tmp_path: Path) -> None:
    known = {"imgs/x.jpg": (200, 100), "y.jpg": (200, 100), "z w.jpg": (200, 100)}
    tasks = [
        _task(None, [_box(0, 0, 10, 10, "cat")], url="/data/local-files/?d=project/imgs/x.jpg"),
        _task(None, [], url="/data/upload/3/5a1b2c3d-y.jpg"),
        _task(None, [], url="http://host:8080/files/z%20w.jpg?token=1"),
    ]
    res = load_labelstudio(_write(tmp_path / "e.json", tasks), known_images=known)
    assert set(res.annotations) == set(known)


def test_flags_skip_and_negative(tmp_path: Path) -> None:
    flag = lambda *c: {"id": "f", "type": "choices", "from_name": "flags", "to_name": "image", "value": {"choices": list(c)}}  # noqa: E731
    tasks = [
        _task("a.jpg", [flag("negative")]),
        _task("b.jpg", [flag("skip"), _box(0, 0, 10, 10, "cat")]),
        _task("c.jpg", [flag("negative"), _box(0, 0, 10, 10, "cat")]),
    ]
    res = load_labelstudio(_write(tmp_path / "e.json", tasks), known_images={k: (200, 100) for k in ("a.jpg", "b.jpg", "c.jpg")})
    assert res.annotations["a.jpg"].is_negative
    assert "b.jpg" not in res.annotations
    assert len(res.annotations["c.jpg"]) == 1
    assert res.flags == {"a.jpg": ("negative",), "b.jpg": ("skip",), "c.jpg": ("negative",)}
    assert any("b.jpg" in w and "unanswered" in w for w in res.warnings)
    assert any("flagged 'negative' but has 1 box" in w for w in res.warnings)


# -- bad input ---------------------------------------------------------------------------------

def test_other_project_lists_every_mismatch(tmp_path: Path) -> None:
    tasks = [_task("a.jpg", [_box(0, 0, 10, 10, "cat")]), _task("elsewhere.jpg", [_box(0, 0, 10, 10, "horse")]),
             _task("b.jpg", [_box(0, 0, 10, 10, "zebra")])]
    path = _write(tmp_path / "other.json", tasks)
    with pytest.raises(FormatError) as err:
        load_labelstudio(path, known_images={"a.jpg": (200, 100), "b.jpg": (200, 100)}, classes=CLASSES)
    msg = str(err.value)
    assert str(path) in msg and "elsewhere.jpg" in msg and "zebra" in msg and "nothing was imported" in msg
    assert "horse" not in msg  # its task matched no image, so its class is not counted


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"data": {"image": "a.jpg"}, ', encoding="utf-8")
    with pytest.raises(FormatError, match="broken.json.*malformed or truncated JSON"):
        load_labelstudio(path)
    mini = _write(tmp_path / "min.json", [{"image": "a.jpg", "label": []}])
    with pytest.raises(FormatError, match="JSON-MIN"):
        load_labelstudio(mini)
    with pytest.raises(FormatError, match="not a list"):
        load_labelstudio(_write(tmp_path / "n.json", 42))


def test_coordinates_outside_0_100_are_clipped_with_warning(tmp_path: Path) -> None:
    tasks = [_task("a.jpg", [_box(-5, 90, 20, 20, "cat"), _box(101, 0, 5, 5, "dog")])]
    res = load_labelstudio(_write(tmp_path / "e.json", tasks), known_images={"a.jpg": (200, 100)})
    ann = res.annotations["a.jpg"]
    np.testing.assert_allclose(ann.boxes.xyxy, [[0, 90, 30, 100]])  # -10..30 x, 90..110 y clipped
    assert any("clipped" in w for w in res.warnings)
    assert any("outside" in w and "dropped" in w for w in res.warnings)


def test_rotated_box_becomes_envelope_with_warning(tmp_path: Path) -> None:
    # 100x100 image, x=10 y=10 w=20 h=10 rotated 90 degrees clockwise about its top-left corner:
    # offsets (20,0)->(0,20), (0,10)->(-10,0): x 0..10, y 10..30
    tasks = [_task("a.jpg", [_box(10, 10, 20, 10, "cat", rotation=90)])]
    res = load_labelstudio(_write(tmp_path / "e.json", tasks), known_images={"a.jpg": (100, 100)})
    np.testing.assert_allclose(res.annotations["a.jpg"].boxes.xyxy, [[0, 10, 10, 30]], atol=1e-9)
    assert any("rotated" in w for w in res.warnings)
    np.testing.assert_allclose(rotated_envelope(10, 10, 20, 10, 0, about_centre=False), (10, 10, 30, 20))


def test_outlines_are_boxes_and_other_regions_leave_the_image_unlabelled(tmp_path: Path) -> None:
    """Issue 31: a polygon is its bounding box; an image with only keypoints is unlabelled, not a negative."""
    poly = {"id": "p", "type": "polygonlabels", "from_name": "poly", "to_name": "image",
            "value": {"points": [[10, 10], [50, 50], [10, 50]], "polygonlabels": ["cat"]}}
    point = {"id": "k", "type": "keypointlabels", "from_name": "kp", "to_name": "image",
             "value": {"x": 10, "y": 10, "width": 1, "keypointlabels": ["cat"]}}
    res = load_labelstudio(_write(tmp_path / "e.json", [_task("a.jpg", [poly]), _task("b.jpg", [point])]),
                           known_images={"a.jpg": (10, 10), "b.jpg": (10, 10)})
    np.testing.assert_allclose(res.annotations["a.jpg"].boxes.xyxy, [[1, 1, 5, 5]])
    assert "b.jpg" not in res.annotations
    text = " ".join(res.warnings)
    assert "1 polygon(s) read as their bounding boxes" in text and "b.jpg holds only shapes that are not boxes" in text


def test_non_numeric_coordinate_is_refused(tmp_path: Path) -> None:
    bad = _box(10, 10, 10, 10, "cat")
    bad["value"]["x"] = "left"
    with pytest.raises(FormatError, match="box 1 x"):
        load_labelstudio(_write(tmp_path / "e.json", [_task("a.jpg", [bad])]), known_images={"a.jpg": (10, 10)})


def test_path_escape_in_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="outside the images folder"):
        load_labelstudio(_write(tmp_path / "e.json", [_task("../etc/passwd", [])]))
