"""Issue 12: ingestion that keeps going, and image files checked against their labels later.

Real images generated in code (tests/hostile), real SQLite projects, the real CLI (typer's CliRunner):
- init loads a truncated image with a warning naming it, leaves out an undecodable one and records
  (file, reason) in the project, says so at the end and in `status --json` (`skipped_images`), in
  every annotation format; `--strict` makes them errors and creates nothing;
- BCCD (the dataset that showed the problem) with one JPEG 20 bytes short initialises;
- the stored sha256 is checked wherever labels meet pixels, size and mtime first (no hashing when
  nothing moved): a labelled image replaced later is left out of training and recorded, the fixed
  test set refuses to be evaluated, an unlabelled one is measured again; restoring the file clears it.
Predict, query and train over images that went bad later: tests/test_breaking.py (they need a model).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hostile as H
from boxloop import formats, integrity
from boxloop.cli import app
from boxloop.images import TruncatedImageWarning, load_rgb
from boxloop.store import Project
from boxloop.structures import Annotation, Boxes

runner = CliRunner()


def cli(*args: object):
    res = runner.invoke(app, [str(a) for a in args])
    text = " ".join((res.output + (res.stderr if res.stderr_bytes is not None else "")).split())
    assert "Traceback" not in text, text
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"boxloop crashed: {res.exception!r}\n{text}")
    res.text = text  # type: ignore[attr-defined]
    return res


def status_json(project: Path) -> dict:
    res = cli("status", project, "--json")
    assert res.exit_code == 0, res.text
    return json.loads(res.stdout)


def broken_dataset(root: Path) -> tuple[Path, dict[str, Annotation]]:
    """6 images: 2 good, 1 JPEG 20 bytes short and 1 PNG cut in half (both decodable as far as they go),
    1 text file named .jpg and 1 empty .png (undecodable). Every image but the empty one has labels."""
    images = root / "images"
    H.write_image(images / "good0.png", color=(10, 200, 10))
    H.write_image(images / "sub" / "good1.jpg", color=(200, 10, 10))
    H.write_short(images / "short.jpg", missing=20)
    H.write_truncated(images / "half.png")
    (images / "text.jpg").write_text("not an image")
    (images / "empty.png").write_bytes(b"")
    sizes = {"good0.png": (32, 32), "sub/good1.jpg": (32, 32), "short.jpg": (64, 48), "half.png": (64, 48),
             "text.jpg": (32, 32)}
    anns = {k: Annotation(image=k, boxes=Boxes([[2, 3, 20, 25]], s), labels=("cat",)) for k, s in sizes.items()}
    anns["half.png"] = Annotation(image="half.png", boxes=Boxes.empty((64, 48)))  # a negative
    return images, anns


def write_labels(fmt: str, anns: dict[str, Annotation], out: Path) -> Path:
    """The labels in `fmt`, written by boxloop's own dumpers; returns what to pass as --annotations."""
    written = formats.dump(fmt, list(anns.values()), ["cat"], out)
    if fmt == "voc":
        return out
    return written if isinstance(written, Path) and written.is_file() else out


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo", "labelstudio", "cvat"])
def test_init_keeps_going_over_broken_images(fmt: str, tmp_path: Path) -> None:
    images, anns = broken_dataset(tmp_path)
    labels = write_labels(fmt, anns, tmp_path / f"labels_{fmt}")
    project = tmp_path / "p"
    res = cli("init", project, "--images", images, "--annotations", labels, "--format", fmt)
    assert res.exit_code == 0, res.text
    # truncated: loaded, named in a warning; undecodable: left out, named at the end with the reason
    assert "short.jpg: cannot decode the image" in res.text and "loaded the part that is there" in res.text
    assert "half.png" in res.text
    assert "skipped 2 image(s) that cannot be decoded" in res.text
    assert "text.jpg (not an image Pillow can read" in res.text and "empty.png (not an image" in res.text
    s = status_json(project)
    assert s["images"] == 4 and s["labelled_images"] == 4 and s["negative_images"] == 1 and s["boxes"] == 3
    skipped = {x["path"]: x for x in s["skipped_images"]}
    assert set(skipped) == {"text.jpg", "empty.png"} and all(x["stage"] == "init" for x in skipped.values())
    assert "its labels in" in skipped["text.jpg"]["reason"] and "were not imported" in skipped["text.jpg"]["reason"]
    assert "its labels" not in skipped["empty.png"]["reason"]  # it had none
    with Project.open(project) as p:
        kept = p.annotations("labelled")
        assert sorted(kept) == ["good0.png", "half.png", "short.jpg", "sub/good1.jpg"]
        assert kept["short.jpg"].boxes.xyxy[0].tolist() == pytest.approx([2, 3, 20, 25], abs=1e-3)  # YOLO: 6 decimals
        assert kept["short.jpg"].image_size == (64, 48)
        assert any("short.jpg" in w for w in p.warnings)
    with pytest.warns(TruncatedImageWarning, match="short.jpg"):  # training-time decoding, too
        assert load_rgb(images / "short.jpg").size == (64, 48)
    # --strict: the same data is refused as a whole, and no project is made
    res = cli("init", tmp_path / "strict", "--images", images, "--annotations", labels, "--format", fmt, "--strict")
    assert res.exit_code == 1 and "4 images cannot be decoded completely" in res.text, res.text
    assert all(n in res.text for n in ("short.jpg", "half.png", "text.jpg", "empty.png"))
    assert not (tmp_path / "strict").exists()


def test_init_with_no_usable_image_says_why(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_text("no")
    (images / "b.png").write_bytes(b"")
    res = cli("init", tmp_path / "p", "--images", images)
    assert res.exit_code == 1 and "2 images cannot be decoded" in res.text and "a.jpg" in res.text, res.text
    assert "replace them" in res.text and not (tmp_path / "p").exists()


def test_bccd_with_an_image_20_bytes_short(bccd_dir: Path, tmp_path: Path) -> None:
    """The report that opened issue 12: one BCCD JPEG 20 bytes short stopped init and made no project."""
    names = sorted(p.stem for p in (bccd_dir / "JPEGImages").glob("*.jpg"))[:12]
    root = tmp_path / "bccd"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for n in names:
        shutil.copy(bccd_dir / "JPEGImages" / f"{n}.jpg", root / "JPEGImages")
        shutil.copy(bccd_dir / "Annotations" / f"{n}.xml", root / "Annotations")
    cut = root / "JPEGImages" / f"{names[3]}.jpg"
    cut.write_bytes(cut.read_bytes()[:-20])
    res = cli("init", tmp_path / "p", "--images", root / "JPEGImages", "--annotations", root / "Annotations")
    assert res.exit_code == 0, res.text
    assert f"{names[3]}.jpg" in res.text and "truncated" in res.text
    s = status_json(tmp_path / "p")
    assert s["images"] == 12 and s["labelled_images"] == 12 and s["skipped_images"] == []
    res = cli("init", tmp_path / "q", "--images", root / "JPEGImages", "--annotations", root / "Annotations", "--strict")
    assert res.exit_code == 1 and f"{names[3]}.jpg" in res.text and "truncated" in res.text


def small_project(tmp_path: Path) -> tuple[Path, Path]:
    """4 labelled images (2 train/val, 1 test via the list) and 2 unlabelled ones; VOC labels."""
    images, ann = tmp_path / "images", tmp_path / "ann"
    ann.mkdir(parents=True)
    for i in range(6):
        H.write_image(images / f"img{i}.png", color=(30 * i, 90, 150))
    for i in range(4):
        (ann / f"img{i}.xml").write_text(H.voc_xml(f"img{i}.png", [("cat", 2, 2, 20 + i, 20)]))
    (tmp_path / "test.txt").write_text("img3\n")
    project = tmp_path / "p"
    res = cli("init", project, "--images", images, "--annotations", ann, "--test-list", tmp_path / "test.txt")
    assert res.exit_code == 0, res.text
    return project, images


def test_image_hash_checked_cheaply_wherever_labels_are_used(tmp_path: Path, monkeypatch) -> None:
    """An image replaced after init (other content and size) is never used with the old boxes."""
    from boxloop.loop.model import test_metrics, training_samples

    project, images = small_project(tmp_path)
    hashed: list[Path] = []
    real_hash = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: hashed.append(Path(p)) or real_hash(p))
    with Project.open(project) as p:
        train, val = training_samples(p)
        assert len(train) + len(val) == 3 and hashed == []  # nothing moved: stat only, no hashing
        # the same bytes, touched: hashed once, the new mtime stored, then never again
        (images / "img0.png").touch()
        training_samples(p)
        training_samples(p)
        assert hashed == [images / "img0.png"]
        # a labelled training image replaced by another picture of another size: left out and recorded
        original = (images / "img1.png").read_bytes()
        H.write_image(images / "img1.png", size=(40, 30), color=(1, 2, 3))
        train, val = training_samples(p)
        assert "img1.png" not in {s.name for s in train + val} and len(train) + len(val) == 2
        (rec,) = integrity.skipped_images(p)
        assert rec.path == "img1.png" and rec.stage == "train" and "changed after it was labelled" in rec.reason
        assert "32x32" in rec.reason
        with pytest.raises(ValueError, match="img1.png.*changed after it was labelled"):
            training_samples(p, strict=True)
        # the fixed test set refuses to be scored on a changed image
        H.write_image(images / "img3.png", size=(40, 30))
        with pytest.raises(ValueError, match="img3.png.*changed after it was labelled.*put the original"):
            test_metrics(p, detector=None, image_size=64)
        # an unlabelled pool image may change: measured again and kept
        H.write_image(images / "img5.png", size=(50, 20))
        check = integrity.check_images(p, ["img5.png"], "predict")
        assert check.ok == ("img5.png",) and p.image("img5.png").size == (50, 20)
        # the original back: usable again, and the record is gone
        (images / "img1.png").write_bytes(original)
        train, val = training_samples(p)
        assert len(train) + len(val) == 3 and integrity.skipped_images(p) == []
    # status shows what is left out; export names a changed image but still writes the labels
    with Project.open(project) as p:
        integrity.record_skipped(p, [integrity.SkippedImage("img1.png", "because", "train")])
    out = cli("status", project).text
    assert "1 image(s) left out" in out
    res = cli("export", project, "--format", "voc", "--out", tmp_path / "exported")
    assert res.exit_code == 0 and "img3.png" in res.text and "changed after it was labelled" in res.text, res.text


def test_class_only_in_the_test_set_is_warned(tmp_path: Path) -> None:
    images, ann = tmp_path / "images", tmp_path / "ann"
    ann.mkdir(parents=True)
    for i in range(5):
        H.write_image(images / f"img{i}.png")
        boxes = [("cat", 1, 1, 9, 9)] + ([("okapi", 10, 10, 20, 20)] if i == 4 else [])
        (ann / f"img{i}.xml").write_text(H.voc_xml(f"img{i}.png", boxes))
    (tmp_path / "test.txt").write_text("img4\n")
    res = cli("init", tmp_path / "p", "--images", images, "--annotations", ann, "--test-list", tmp_path / "test.txt")
    assert res.exit_code == 0 and "boxes only in the fixed test set: 'okapi' (1 boxes)" in res.text, res.text
    assert "cannot learn them" in res.text
    (tmp_path / "test.txt").write_text("img3\n")  # okapi trains now: no warning
    res = cli("init", tmp_path / "q", "--images", images, "--annotations", ann, "--test-list", tmp_path / "test.txt")
    assert res.exit_code == 0 and "only in the fixed test set" not in res.text
