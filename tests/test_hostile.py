"""Hostile and broken inputs through the real entry points (issue 7 item 3, issue 2 "Bad input").

Every file is generated at test time by `tests/hostile` (tiny images; the decompression bomb is a
PNG header claiming 50000x50000 pixels). For each bad input we check, through `boxloop init` /
`boxloop import` (typer's CliRunner) and the library calls behind them (`formats.load`,
`images.check_image` / `load_rgb`):
- a clear message naming the file and what is wrong, as one line, exit code 1, no traceback;
- nothing written outside the project (the whole tmp tree is snapshotted), no half-made project,
  and an existing project unchanged after a failed `init --force` or `import`;
- nothing an attacker planted gets read: no entity expansion, no /etc/passwd in any output.
Valid-but-odd images (CMYK, 16-bit, RGBA, 1x1) must load as RGB and train-time loading must work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

import hostile as H
from boxloop import formats
from boxloop.cli import app
from boxloop.images import ImageError, TruncatedImageWarning, check_image, image_size, list_images, load_rgb
from boxloop.store import DB_NAME, Project

runner = CliRunner()


# -- helpers -------------------------------------------------------------------------------------

def _cli(*args) -> "CliRunner.invoke":
    res = runner.invoke(app, [str(a) for a in args])
    out = res.output + (res.stderr if res.stderr_bytes is not None else "")
    assert "Traceback" not in out, out
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"boxloop crashed: {res.exception!r}\n{out}")
    res.text = out  # type: ignore[attr-defined]
    return res


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` (not following links) with size and mtime."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            continue
        for name in dirnames + filenames:
            p = here / name
            if skip is not None and p == skip:
                continue
            st = p.lstat()
            snap[p.relative_to(root).as_posix()] = (st.st_size if p.is_file() else 0, st.st_mtime_ns if p.is_file() else 0)
    return snap


def _status(project: Path) -> dict:
    with Project.open(project) as p:
        s = p.status()
        s["annotations"] = {k: (a.boxes.xyxy.tolist(), a.labels) for k, a in p.annotations("all").items()}
        s["open"] = [q.id for q in p.queries(state="open")]
    return s


def _dataset(root: Path, n: int = 3) -> tuple[Path, Path]:
    """A valid little VOC dataset: images/ and annotations/ (img0 holds one box, img1 is a negative)."""
    images, ann = root / "images", root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        H.write_image(images / f"img{i}.png", color=(40 * i, 80, 120))
    (ann / "img0.xml").write_text(H.voc_xml("img0.png", [("cat", 2, 3, 20, 25)]))
    (ann / "img1.xml").write_text(H.voc_xml("img1.png"))
    return images, ann


# -- bad inputs for `init` ---------------------------------------------------------------------------
# Each case builds its data under `root` and returns (init arguments, substrings the message must hold).

Case = Callable[[Path], tuple[list, list[str]]]


def _voc_case(text: str, *expect: str, name: str = "img0.xml") -> Case:
    def build(root: Path) -> tuple[list, list[str]]:
        images, ann = _dataset(root)
        (ann / name).write_text(text, encoding="utf-8")
        return ["--images", images, "--annotations", ann], [name, *expect]

    return build


def _coco_case(text_or_data, *expect: str) -> Case:
    def build(root: Path) -> tuple[list, list[str]]:
        images, _ = _dataset(root)
        path = root / "coco.json"
        data = text_or_data if isinstance(text_or_data, str) else json.dumps(text_or_data)
        path.write_text(data, encoding="utf-8")
        return ["--images", images, "--annotations", path, "--format", "coco"], ["coco.json", *expect]

    return build


def _image_case(write: Callable[[Path], Path], name: str, *expect: str) -> Case:
    """A broken image fails init only with --strict (issue 12: else init keeps going; tests/test_ingest.py)."""
    def build(root: Path) -> tuple[list, list[str]]:
        images, ann = _dataset(root)
        write(images / name)
        return ["--images", images, "--annotations", ann, "--strict"], [name, *expect]

    return build


def _valid_voc() -> str:
    return H.voc_xml("img0.png", [("cat", 2, 3, 20, 25), ("cat", 4, 4, 9, 9)])


def _yolo_case(line: str, *expect: str) -> Case:
    def build(root: Path) -> tuple[list, list[str]]:
        images, _ = _dataset(root)
        labels = root / "labels"
        labels.mkdir()
        (labels / "classes.txt").write_text("cat\n")
        (labels / "img0.txt").write_text(line + "\n")
        return ["--images", images, "--annotations", labels, "--format", "yolo"], ["img0.txt", *expect]

    return build


def _yolo_symlink_label(root: Path) -> tuple[list, list[str]]:
    images, _ = _dataset(root)
    labels = root / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("cat\n")
    (labels / "img0.txt").symlink_to("/etc/passwd")
    return ["--images", images, "--annotations", labels, "--format", "yolo"], ["img0.txt", "symlink leading outside"]


def _duplicate_names(root: Path) -> tuple[list, list[str]]:
    images, ann = _dataset(root)
    H.write_image(images / "img0.jpg")
    return ["--images", images, "--annotations", ann], ["img0.jpg", "img0.png", "share a name"]


def _missing_image(root: Path) -> tuple[list, list[str]]:
    images, ann = _dataset(root)
    (ann / "ghost.xml").write_text(H.voc_xml("ghost.png", [("cat", 1, 1, 5, 5)]))
    return ["--images", images, "--annotations", ann], ["ghost.png", "not in"]


def _unknown_class(root: Path) -> tuple[list, list[str]]:
    images, ann = _dataset(root)
    return ["--images", images, "--annotations", ann, "--classes", "dog"], ["cat", "not in"]


def _no_images(root: Path) -> tuple[list, list[str]]:
    (root / "empty").mkdir(parents=True)
    return ["--images", root / "empty"], ["empty", "no images found"]


def _binary_xml(root: Path) -> tuple[list, list[str]]:
    images, ann = _dataset(root)
    (ann / "img0.xml").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))
    return ["--images", images, "--annotations", ann], ["img0.xml", "malformed"]


TRUNCATED_XML = _valid_voc()[: len(_valid_voc()) // 2]


def _yolo_classes_case(names: list[str], *expect: str, bom: bool = False) -> Case:
    def build(root: Path) -> tuple[list, list[str]]:
        images, _ = _dataset(root)
        labels = root / "labels"
        H.write_classes_txt(labels / "classes.txt", names, bom=bom)
        (labels / "img0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        return ["--images", images, "--annotations", labels, "--format", "yolo"], list(expect)

    return build


def _classes_option(value: str, *expect: str) -> Case:
    def build(root: Path) -> tuple[list, list[str]]:
        images, _ = _dataset(root)
        return ["--images", images, "--classes", value], list(expect)

    return build

BAD_INIT: dict[str, Case] = {
    "voc-malformed": _voc_case("<annotation><object><name>cat</name></annotation>", "malformed or truncated XML"),
    "voc-truncated": _voc_case(TRUNCATED_XML, "malformed or truncated XML"),
    "voc-binary-garbage": _binary_xml,
    "voc-billion-laughs": _voc_case(H.BILLION_LAUGHS.format(filename="img0.png"), "DTD or entities", "refused"),
    "voc-xxe": _voc_case(H.XXE.format(filename="img0.png"), "DTD or entities", "refused"),
    "voc-filename-traversal": _voc_case(H.voc_xml("../../etc/passwd", [("cat", 1, 1, 5, 5)]),
                                        "<filename>", "../../etc/passwd", "outside the images folder"),
    "voc-path-traversal": _voc_case(H.voc_xml("nothere.png", [("cat", 1, 1, 5, 5)], path="../../etc/passwd"),
                                    "<path>", "outside the images folder", name="other.xml"),
    "voc-absolute-filename": _voc_case(H.voc_xml("/etc/passwd", [("cat", 1, 1, 5, 5)]), "absolute path"),
    "voc-not-a-number": _voc_case(H.voc_xml("img0.png").replace("</size>", "</size><object><name>cat</name><bndbox>"
                                  "<xmin>abc</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"),
                                  "xmin", "not a number", "'abc'"),
    "voc-wrong-root": _voc_case("<html><body/></html>", "root element is <html>"),
    "coco-malformed": _coco_case('{"images": [{"id": 1, "file_name": "img0.png"}, ', "malformed or truncated JSON"),
    "coco-truncated": _coco_case(json.dumps({"images": [{"id": 1, "file_name": "img0.png"}], "annotations": [],
                                             "categories": []})[:40], "malformed or truncated JSON"),
    "coco-not-an-object": _coco_case("42", "no 'images' list"),
    "coco-traversal": _coco_case({"images": [{"id": 1, "file_name": "../../etc/passwd"}], "annotations": [],
                                  "categories": [{"id": 1, "name": "cat"}]}, "../../etc/passwd", "outside the images folder"),
    "coco-absolute": _coco_case({"images": [{"id": 1, "file_name": "/etc/passwd"}], "annotations": [],
                                 "categories": [{"id": 1, "name": "cat"}]}, "/etc/passwd", "absolute path"),
    "coco-bad-bbox": _coco_case({"images": [{"id": 1, "file_name": "img0.png"}],
                                 "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}],
                                 "categories": [{"id": 1, "name": "cat"}]}, "annotation 7", "bbox must be"),
    "coco-string-coordinate": _coco_case({"images": [{"id": 1, "file_name": "img0.png"}],
                                          "annotations": [{"id": 7, "image_id": 1, "category_id": 1,
                                                           "bbox": [1, 2, "3", 4]}],
                                          "categories": [{"id": 1, "name": "cat"}]}, "annotation 7", "not a number"),
    "coco-unknown-image-id": _coco_case({"images": [{"id": 1, "file_name": "img0.png"}],
                                         "annotations": [{"id": 7, "image_id": 99, "category_id": 1,
                                                          "bbox": [1, 2, 3, 4]}],
                                         "categories": [{"id": 1, "name": "cat"}]}, "image_id 99"),
    "coco-missing-image": _coco_case({"images": [{"id": 1, "file_name": "nothere.png"}], "annotations": [],
                                      "categories": []}, "nothere.png", "not in"),
    "yolo-not-numbers": _yolo_case("0 a b c d", "img0.txt:1", "not numbers"),
    "yolo-unknown-class": _yolo_case("7 0.5 0.5 0.2 0.2", "class id 7"),
    "yolo-too-few-numbers": _yolo_case("0 0.5 0.5", "3 numbers"),
    "yolo-label-symlink-out": _yolo_symlink_label,
    # issue 12: class names that would shift or split label files, a confidence that is no probability
    "coco-class-name-newline": _coco_case({"images": [{"id": 1, "file_name": "img0.png"}], "annotations": [],
                                           "categories": [{"id": 1, "name": "cat\nfish"}]}, "line break"),
    "classes-option-newline": _classes_option("cat,fi\nsh", "--classes", "line break"),
    "yolo-classes-blank-line": _yolo_classes_case(["cat", "", "dog"], "classes.txt:2", "blank"),
    "yolo-confidence-7": _yolo_case("0 0.5 0.5 0.2 0.2 7", "img0.txt:1", "must lie in [0, 1]"),
    "yolo-confidence-nan": _yolo_case("0 0.5 0.5 0.2 0.2 nan", "img0.txt:1", "must lie in [0, 1]"),
    "image-short-jpeg-strict": _image_case(H.write_short, "short.jpg", "truncated"),
    "image-truncated-jpeg": _image_case(H.write_truncated, "broken.jpg", "truncated"),
    "image-truncated-png": _image_case(H.write_truncated, "broken.png", "truncated"),
    "image-decompression-bomb": _image_case(H.write_png_bomb, "bomb.png", "too large to decode safely"),
    "image-not-an-image": _image_case(lambda p: (p.write_text("hello"), p)[1], "text.jpg", "not an image"),
    "image-empty-file": _image_case(lambda p: (p.write_bytes(b""), p)[1], "empty.png", "not an image"),
    "duplicate-image-names": _duplicate_names,
    "annotation-without-image": _missing_image,
    "unknown-class": _unknown_class,
    "no-images": _no_images,
}


@pytest.mark.parametrize("case", list(BAD_INIT), ids=list(BAD_INIT))
def test_bad_input_init_fails_cleanly(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args, expect = BAD_INIT[case](tmp_path / "data")
    # an existing, valid project that a failed `init --force` must leave exactly as it was
    good_images, good_ann = _dataset(tmp_path / "good")
    existing = tmp_path / "existing"
    assert _cli("init", existing, "--images", good_images, "--annotations", good_ann).exit_code == 0
    before_status = _status(existing)
    before = _snapshot(tmp_path)

    res = _cli("init", tmp_path / "new", *args)
    assert res.exit_code == 1, res.text
    assert "error:" in res.text
    for text in expect:
        assert text in res.text, (text, res.text)
    assert "root:" not in res.text  # nothing of /etc/passwd was read into a message
    assert not (tmp_path / "new").exists(), "a failed init left a project folder behind"

    res = _cli("init", existing, *args, "--force")
    assert res.exit_code == 1, res.text
    for text in expect:
        assert text in res.text, (text, res.text)
    assert _status(existing) == before_status
    after = _snapshot(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    # SQLite may touch its own files (WAL checkpoint, lock) in the existing project; nothing else changes
    assert {k for k in changed if not k.startswith("existing/")} == set(), changed
    assert {k for k in changed if k not in ("existing/.lock", f"existing/{DB_NAME}", f"existing/{DB_NAME}-wal",
                                            f"existing/{DB_NAME}-shm")} == set(), changed
    assert not list(cwd.iterdir())


# -- inputs that load, with warnings ---------------------------------------------------------------

def test_nan_inf_huge_and_negative_boxes_are_dropped_or_clipped(tmp_path: Path) -> None:
    images, ann = _dataset(tmp_path)
    nan, inf = float("nan"), float("inf")
    (ann / "img0.xml").write_text(H.voc_xml("img0.png", [
        ("cat", nan, 1, 5, 5), ("cat", 1, 1, inf, 5), ("cat", -inf, 1, 5, 5), ("cat", -1e308, 0, 1e308, 10),
        ("cat", 5, 5, 2, 2), ("cat", 3, 3, 3, 9), ("cat", 1e300, 1e300, 1e301, 1e301), ("cat", 4, 4, 8, 8)]))
    res = formats.load("voc", ann, images)
    a = res.annotations["img0.png"]
    np.testing.assert_array_equal(a.boxes.xyxy, [[0, 0, 32, 10], [4, 4, 8, 8]])
    text = "\n".join(res.warnings)
    for n in (1, 2, 3, 5, 6):
        assert f"img0.xml: box {n} " in text and "dropped" in text
    assert "box 4 ('cat' [-1e+308, 0, 1e+308, 10]) leaves the 32x32 image; clipped to [0, 0, 32, 10]" in text
    assert "box 7" in text and "wholly outside" in text

    # COCO: Python's json reads NaN / Infinity literals; negative width and height
    coco = H.write_coco(tmp_path / "c.json", [{"id": 1, "file_name": "img0.png", "width": -5, "height": 1e309}], [],
                        raw=None)
    data = {"images": [{"id": 1, "file_name": "img0.png", "width": -5, "height": 32}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(
                [[nan, 1, 4, 4], [1, 1, inf, 4], [5, 5, -3, 4], [5, 5, 4, -1], [1e308, 1e308, 1e308, 1e308],
                 [2, 2, 4, 4]])],
            "categories": [{"id": 1, "name": "cat"}]}
    coco.write_text(json.dumps(data))  # json.dumps writes NaN and Infinity
    res = formats.load("coco", coco, images)
    np.testing.assert_array_equal(res.annotations["img0.png"].boxes.xyxy, [[2, 2, 6, 6]])
    assert res.annotations["img0.png"].image_size == (32, 32)  # the header wins over width -5
    assert sum("dropped" in w for w in res.warnings) == 5

    # through the CLI: exit 0, warnings name the file, the project holds the kept boxes only
    res = _cli("init", tmp_path / "p", "--images", images, "--annotations", coco, "--format", "coco")
    assert res.exit_code == 0, res.text
    assert "warning:" in res.text and "c.json" in res.text
    assert _status(tmp_path / "p")["boxes"] == 1


def test_every_box_dropped_leaves_image_unlabelled(tmp_path: Path) -> None:
    images, ann = _dataset(tmp_path)
    (ann / "img0.xml").write_text(H.voc_xml("img0.png", [("cat", 9, 9, 1, 1)]))
    res = _cli("init", tmp_path / "p", "--images", images, "--annotations", ann)
    assert res.exit_code == 0, res.text
    assert "left unlabelled" in res.text
    s = _status(tmp_path / "p")
    assert s["labelled_images"] == 1 and s["negative_images"] == 1 and s["boxes"] == 0


def test_unicode_file_names(tmp_path: Path) -> None:
    images, ann = tmp_path / "imágenes", tmp_path / "注释"
    ann.mkdir()
    names = ["日本語 ü.png", "emoji 😀.jpg", "ñandú (copy) [1].png"]
    for i, n in enumerate(names):
        H.write_image(images / n, color=(10 * i, 0, 0))
        stem = n.rsplit(".", 1)[0]
        (ann / f"{stem}.xml").write_text(H.voc_xml(n, [("gato ü", 1 + i, 2, 20, 20)] if i < 2 else []), encoding="utf-8")
    res = _cli("init", tmp_path / "proyecto é", "--images", images, "--annotations", ann, "--test-fraction", "0.34")
    assert res.exit_code == 0, res.text
    s = _status(tmp_path / "proyecto é")
    assert s["images"] == 3 and s["boxes"] == 2 and s["negative_images"] == 1
    assert s["boxes_per_class"] == {"gato ü": 2} and sorted(s["annotations"]) == sorted(names)
    for fmt in ("voc", "coco", "yolo"):
        out = tmp_path / f"out {fmt}"
        assert _cli("export", tmp_path / "proyecto é", "--format", fmt, "--out", out).exit_code == 0
        back = formats.load(fmt, out if fmt != "coco" else out / "annotations.json", images)
        assert sorted(back.annotations) == sorted(names), fmt
    st = _cli("status", tmp_path / "proyecto é")
    assert st.exit_code == 0 and "gato ü" in st.text


def test_symlinks_out_of_the_image_root_are_skipped(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    H.write_image(outside / "secret.png")
    images, ann = _dataset(tmp_path / "data")
    (images / "leak.png").symlink_to(outside / "secret.png")
    (images / "etc").symlink_to("/etc")
    (images / "dangling.png").symlink_to(tmp_path / "nothing.png")
    H.write_image(images / "sub" / "inside.png")
    (images / "inside_link.png").symlink_to(images / "sub" / "inside.png")  # stays inside: kept
    with pytest.warns(UserWarning) as caught:
        rels = list_images(images)
    msgs = " ".join(str(w.message) for w in caught)
    assert "leak.png" in msgs and "symlink leads outside" in msgs and "etc" in msgs
    assert rels == ["img0.png", "img1.png", "img2.png", "inside_link.png", "sub/inside.png"]

    # an annotation naming the linked-out image finds no image: an error naming it
    (ann / "leak.xml").write_text(H.voc_xml("leak.png", [("cat", 1, 1, 5, 5)]))
    res = _cli("init", tmp_path / "p", "--images", images, "--annotations", ann)
    assert res.exit_code == 1 and "leak.png" in res.text and "not in" in res.text, res.text
    (ann / "leak.xml").unlink()
    res = _cli("init", tmp_path / "p", "--images", images, "--annotations", ann)
    assert res.exit_code == 0, res.text
    assert "symlink leads outside" in res.text
    with Project.open(tmp_path / "p") as p:
        paths = [r.path for r in p.images()]
        assert "leak.png" not in paths and not any(x.startswith("etc/") for x in paths)
        assert "symlink leads outside" in " ".join(p.warnings)


# -- images: broken ones name the file, odd ones load as RGB ----------------------------------------

@pytest.mark.parametrize("kind", ["truncated-jpeg", "truncated-png", "bomb", "text", "empty"])
def test_broken_images_raise_image_error(kind: str, tmp_path: Path) -> None:
    path = {
        "truncated-jpeg": lambda: H.write_truncated(tmp_path / "t.jpg"),
        "truncated-png": lambda: H.write_truncated(tmp_path / "t.png"),
        "bomb": lambda: H.write_png_bomb(tmp_path / "bomb.png"),
        "text": lambda: (tmp_path / "x.jpg").write_text("not a jpeg") and tmp_path / "x.jpg",
        "empty": lambda: (tmp_path / "e.png").write_bytes(b"") or tmp_path / "e.png",
    }[kind]()
    assert path.stat().st_size < 10_000  # the bomb is small on disk
    for fn in (check_image, lambda p: load_rgb(p, allow_truncated=False)):
        with pytest.raises(ImageError) as info:
            fn(path)
        msg = str(info.value)
        assert str(path) in msg and info.value.path == str(path)
        assert any(w in msg for w in ("truncated", "too large", "not an image")), msg
    if kind == "bomb":
        with pytest.raises(ImageError, match="bomb.png"):
            image_size(path)  # even the header read refuses 2.5 G pixels
    if kind.startswith("truncated"):  # issue 12: loaded as far as the data goes, with a warning naming it
        with pytest.warns(TruncatedImageWarning, match=path.name):
            assert load_rgb(path).size == (64, 48)
    else:
        with pytest.raises(ImageError, match=path.name):
            load_rgb(path)


def _odd_images(folder: Path) -> dict[str, tuple[int, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    H.write_cmyk_jpeg(folder / "cmyk.jpg", (32, 24))
    H.write_16bit_png(folder / "gray16.png", (32, 24))
    H.write_rgba_png(folder / "rgba.png", (32, 24))
    H.write_image(folder / "one.png", (1, 1), (7, 8, 9))
    H.write_image(folder / "one_jpeg.jpg", (1, 1), (250, 250, 250))
    from PIL import Image

    Image.new("L", (5, 3), 77).save(folder / "gray.bmp")
    Image.new("P", (4, 4), 3).save(folder / "palette.png")
    return {"cmyk.jpg": (32, 24), "gray16.png": (32, 24), "rgba.png": (32, 24), "one.png": (1, 1), "one_jpeg.jpg": (1, 1),
            "gray.bmp": (5, 3), "palette.png": (4, 4)}


def test_odd_images_load_as_rgb(tmp_path: Path) -> None:
    sizes = _odd_images(tmp_path)
    for name, size in sizes.items():
        im = load_rgb(tmp_path / name)
        assert im.mode == "RGB" and im.size == size, name
        assert check_image(tmp_path / name) == size and image_size(tmp_path / name) == size
    px = lambda name, xy: load_rgb(tmp_path / name).getpixel(xy)  # noqa: E731
    assert all(v >= 250 for v in px("cmyk.jpg", (5, 5)))  # no ink is white
    assert px("gray16.png", (0, 0)) == (255, 255, 255) and px("gray16.png", (31, 0)) == (0, 0, 0)
    assert px("rgba.png", (0, 0)) == (255, 0, 0) and px("rgba.png", (31, 0)) == (255, 255, 255)  # on white
    assert px("one.png", (0, 0)) == (7, 8, 9) and px("gray.bmp", (0, 0)) == (77, 77, 77)


def test_odd_images_init_and_train_time_loading(tmp_path: Path) -> None:
    from boxloop.train.data import DetectionDataset, Sample, collate, train_transform

    images = tmp_path / "images"
    sizes = _odd_images(images)
    ann = tmp_path / "annotations"
    ann.mkdir()
    for name, (w, h) in sizes.items():
        boxes = [("cat", 0, 0, w, h)]  # the whole image, 1x1 included
        (ann / f"{Path(name).stem}.xml").write_text(H.voc_xml(name, boxes, size=(w, h)))
    res = _cli("init", tmp_path / "p", "--images", images, "--annotations", ann)
    assert res.exit_code == 0, res.text
    with Project.open(tmp_path / "p") as p:
        anns = p.annotations("labelled")
        recs = {r.path: r for r in p.images()}
    assert len(anns) == len(sizes) and all(len(a) == 1 for a in anns.values())
    samples = [Sample(images / k, a) for k, a in anns.items()]
    for transform in (None, train_transform(64)):
        ds = DetectionDataset(samples, ["cat"], transform=transform, seed=0)
        batch = [ds[i] for i in range(len(ds))]
        imgs, targets = collate(batch)
        for (img, tgt), s in zip(batch, samples):
            assert img.shape[0] == 3 and img.dtype.is_floating_point
            assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
            rec = recs[s.annotation.image]
            assert tgt["orig_size"] == (rec.width, rec.height)
            if transform is None:
                assert tuple(img.shape[1:]) == (rec.height, rec.width)
                assert tgt["boxes"].shape == (1, 4)


# -- bad answers for `boxloop import` ----------------------------------------------------------------

def _open_batch(tmp_path: Path) -> tuple[Path, Path]:
    """A project with an open round-1 query batch (written by `human.write_batch`, VOC layout)."""
    from boxloop.loop.human import write_batch
    from boxloop.structures import Detections

    images, ann = _dataset(tmp_path / "data", n=5)
    project = tmp_path / "proj"
    assert _cli("init", project, "--images", images, "--annotations", ann).exit_code == 0
    with Project.open(project) as p:
        p.start_round({"unit": "images", "budget": 2}, step="oracle", round_id=1)
        pool = ["img2.png", "img3.png"]
        p.save_predictions(1, {k: Detections.empty(1, (32, 32)) for k in pool})
        p.add_queries(1, [(k, None, 0.5) for k in pool], strategy="random")
        batch = write_batch(p, 1, tmp_path / "batch", "voc")
    return project, batch


BAD_ANSWERS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "billion-laughs": (lambda b: (b / "img2.xml").write_text(H.BILLION_LAUGHS.format(filename="img2.png")),
                       ["img2.xml", "DTD or entities"]),
    "xxe": (lambda b: (b / "img2.xml").write_text(H.XXE.format(filename="img2.png")), ["img2.xml", "DTD or entities"]),
    "malformed": (lambda b: (b / "img3.xml").write_text("<annotation><object>"), ["img3.xml", "malformed"]),
    "traversal": (lambda b: (b / "img2.xml").write_text(H.voc_xml("../../etc/passwd", [("cat", 1, 1, 5, 5)])),
                  ["img2.xml", "outside the images folder"]),
    "unknown-class": (lambda b: (b / "img2.xml").write_text(H.voc_xml("img2.png", [("dragon", 1, 1, 5, 5)])),
                      ["dragon"]),
    "not-in-batch": (lambda b: (H.write_image(b / "img4.png"),
                                (b / "img4.xml").write_text(H.voc_xml("img4.png", [("cat", 1, 1, 5, 5)]))),
                     ["img4", "not in the open batch"]),
    # issue 12: an answer for an image labelled at init (its file is not in the batch): said so, no --images
    "already-labelled": (lambda b: (b / "img0.xml").write_text(H.voc_xml("img0.png", [("cat", 1, 1, 5, 5)])),
                         ["img0.png (labelled already, in round 0)", "nothing was imported"]),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS), ids=list(BAD_ANSWERS))
def test_bad_answers_import_fails_cleanly(case: str, tmp_path: Path) -> None:
    project, batch = _open_batch(tmp_path)
    spoil, expect = BAD_ANSWERS[case]
    spoil(batch)
    before_status = _status(project)
    before = _snapshot(tmp_path, skip=project)
    res = _cli("import", project, "--annotations", batch)
    assert res.exit_code == 1, res.text
    for text in expect:
        assert text in res.text, (text, res.text)
    assert "root:" not in res.text
    assert _status(project) == before_status  # all or nothing: the queries are still open
    assert _snapshot(tmp_path, skip=project) == before
    # the annotator fixes the file; the same batch then imports
    for xml in batch.glob("*.xml"):
        xml.unlink()
    for extra in ("img4.png",):
        (batch / extra).unlink(missing_ok=True)
    (batch / "img2.xml").write_text(H.voc_xml("img2.png", [("cat", 1, 1, 5, 5)]))
    (batch / "img3.xml").write_text(H.voc_xml("img3.png"))
    res = _cli("import", project, "--annotations", batch)
    assert res.exit_code == 0, res.text
    s = _status(project)
    assert s["boxes"] == before_status["boxes"] + 1 and s["open"] == []


# -- Label Studio and CVAT name images too ----------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc/passwd", "/data/local-files/?d=../../etc/passwd",
                                  "http://host/data/../../../etc/passwd"])
def test_labelstudio_traversal_is_refused(name: str, tmp_path: Path) -> None:
    images, _ = _dataset(tmp_path)
    task = {"id": 1, "data": {"image": name}, "annotations": [{"result": [{
        "type": "rectanglelabels", "original_width": 32, "original_height": 32,
        "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": ["cat"]}}]}]}
    path = tmp_path / "ls.json"
    path.write_text(json.dumps([task]))
    for root in (None, images):
        with pytest.raises(formats.FormatError, match="outside the images folder") as info:
            formats.load("labelstudio", path, root)
        assert "ls.json" in str(info.value) and "task 1" in str(info.value)


@pytest.mark.parametrize("name,problem", [("../../etc/passwd", "outside the images folder"),
                                          ("/etc/passwd", "absolute path")])
def test_cvat_traversal_and_entities_are_refused(name: str, problem: str, tmp_path: Path) -> None:
    images, _ = _dataset(tmp_path)
    path = tmp_path / "cvat.xml"
    path.write_text(f'<annotations><version>1.1</version><image id="0" name="{name}" width="32" height="32">'
                    '<box label="cat" xtl="1" ytl="1" xbr="5" ybr="5"/></image></annotations>')
    for root in (None, images):
        with pytest.raises(formats.FormatError, match=problem) as info:
            formats.load("cvat", path, root)
        assert "cvat.xml" in str(info.value)
    for text in (H.XXE, H.BILLION_LAUGHS):
        path.write_text(text.format(filename="img0.png").replace("annotation>", "annotations>"))
        with pytest.raises(formats.FormatError, match="DTD or entities"):
            formats.load("cvat", path, images)
