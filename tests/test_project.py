"""init_project / export_project: status against the generator's counts, splits, refusal and
atomicity, bad input, and VOC -> project -> VOC/COCO/YOLO -> project round trips."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from boxloop.formats import FormatError
from boxloop.images import ImageError
from boxloop.project import export_project, init_project, resolve_test_list, stratified_sample
from boxloop.store import Project, ProjectExists
from boxloop.structures import Annotation, Boxes, Provenance, Source


def test_status_matches_the_generator(synthetic_project: Project, synthetic_dataset) -> None:
    s = synthetic_project.status()
    c = synthetic_dataset.counts
    assert s["images"] == c["images"] == 40
    assert s["labelled_images"] == 40 and s["unlabelled_images"] == 0
    assert s["negative_images"] == c["negative_images"] == 4
    assert s["boxes"] == c["boxes"] and s["boxes_per_class"] == c["boxes_per_class"]
    assert s["boxes_per_source"] == {"human": c["boxes"], "pseudo": 0, "predicted": 0, "background": 0}
    assert s["test_images"] == 8  # round(0.2 * 40)
    assert s["val_images"] == 6 and s["train_images"] == 26  # round(0.2 * 32) of the rest
    assert s["rounds"] == 0 and synthetic_project.warnings == []
    # the stored labels are the generator's, to the pixel
    got = synthetic_project.annotations("labelled")
    assert set(got) == set(synthetic_dataset.annotations)
    for rel, truth in synthetic_dataset.annotations.items():
        np.testing.assert_array_equal(got[rel].boxes.xyxy, truth.boxes.xyxy)
        assert got[rel].labels == truth.labels and got[rel].image_size == truth.image_size


def test_splits_are_stratified_and_seeded(synthetic_dataset, tmp_path: Path) -> None:
    def splits(seed: int, name: str) -> dict[str, str]:
        with init_project(tmp_path / name, synthetic_dataset.images, synthetic_dataset.annotations_dir,
                          test_fraction=0.25, seed=seed, progress=False) as p:
            return {r.path: r.split for r in p.images()}

    a, b, c = splits(0, "a"), splits(0, "b"), splits(1, "c")
    assert a == b and a != c
    for sp in (a, c):
        test = [k for k, v in sp.items() if v == "test"]
        assert len(test) == 10
        classes_in_test = {lab for k in test for lab in synthetic_dataset.annotations[k].labels}
        assert "triangle" in classes_in_test  # the rare class is represented
        assert any(synthetic_dataset.annotations[k].is_negative for k in test)


def test_stratified_sample_hand_case() -> None:
    # 'rare' in 2 images, 'common' in 8, 10 negatives: fraction 0.5 takes 1 + 4 + 5 = 10
    labels = {f"r{i}": ["rare", "common"] for i in range(2)}
    labels |= {f"c{i}": ["common"] for i in range(6)}
    labels |= {f"n{i}": [] for i in range(10)}
    got = stratified_sample(labels, 0.5, np.random.default_rng(0))
    assert len(got) == 9  # round(0.5 * 18)
    strata = Counter(k[0] for k in got)
    assert strata["r"] == 1 and strata["n"] == 5 and strata["c"] == 3
    assert stratified_sample(labels, 0.0, np.random.default_rng(0)) == set()
    assert stratified_sample(labels, 1.0, np.random.default_rng(0)) == set(labels)


def test_init_refuses_existing_and_force_is_atomic(synthetic_dataset, tmp_path: Path) -> None:
    proj_dir = tmp_path / "p"
    init_project(proj_dir, synthetic_dataset.images, synthetic_dataset.annotations_dir, progress=False).close()
    with pytest.raises(ProjectExists, match="--force"):
        init_project(proj_dir, synthetic_dataset.images, progress=False)
    # a failing forced init (unknown class) leaves the old project as it was
    with pytest.raises(FormatError, match="circle"):
        init_project(proj_dir, synthetic_dataset.images, synthetic_dataset.annotations_dir,
                     classes=["square", "triangle"], force=True, progress=False)
    with Project.open(proj_dir) as p:
        assert p.status()["boxes"] == synthetic_dataset.counts["boxes"]
    assert sorted(f.name for f in proj_dir.iterdir() if not f.name.startswith(".lock")) == ["boxloop.db"]
    # forced init replaces it: no labels now, everything in the pool
    with init_project(proj_dir, synthetic_dataset.images, force=True, progress=False) as p:
        s = p.status()
        assert s["labelled_images"] == 0 and s["pool_images"] == 40 and s["boxes"] == 0


def _copy_images(src: Path, dst: Path, names: list[str] | None = None) -> Path:
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if names is None or f.name in names:
            shutil.copy(f, dst / f.name)
    return dst


def test_bad_input_gets_clear_errors_and_writes_nothing(synthetic_dataset, tmp_path: Path) -> None:
    ds = synthetic_dataset
    # an annotation whose image is missing
    some = _copy_images(ds.images, tmp_path / "some", sorted(ds.annotations)[:5])
    with pytest.raises(FormatError, match="img_0005"):
        init_project(tmp_path / "p1", some, ds.annotations_dir, progress=False)
    assert not (tmp_path / "p1" / "boxloop.db").exists()
    # an image that cannot be decoded completely: an error with strict (issue 12: else loaded with a warning)
    broken = _copy_images(ds.images, tmp_path / "broken", sorted(ds.annotations)[:3])
    data = (broken / "img_0001.png").read_bytes()
    (broken / "img_0001.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="img_0001.png"):
        init_project(tmp_path / "p2", broken, strict=True)
    # two images with the same name
    shutil.copy(ds.images / "img_0000.png", some / "img_0000.jpg")
    with pytest.raises(ValueError, match="img_0000.jpg, img_0000.png"):
        init_project(tmp_path / "p3", some, progress=False)
    # a test list naming an unknown image
    tl = tmp_path / "test.txt"
    tl.write_text("img_0000\nimg_9999\n")
    with pytest.raises(ValueError, match="img_9999.*ImageSets"):
        init_project(tmp_path / "p4", ds.images, ds.annotations_dir, test_list=tl, progress=False)
    with pytest.raises(ValueError, match="either"):
        init_project(tmp_path / "p5", ds.images, test_list=tl, test_fraction=0.1)
    assert not any((tmp_path / p / "boxloop.db").exists() for p in ("p2", "p3", "p4", "p5"))


def test_test_list_resolution(tmp_path: Path) -> None:
    tl = tmp_path / "t.txt"
    tl.write_text("# comment\na\nsub/b 1\nc.png\n\na\n")
    assert resolve_test_list(tl, ["a.jpg", "sub/b.png", "c.png", "d.png"]) == ["a.jpg", "sub/b.png", "c.png"]
    tl.write_text("x\n")
    with pytest.raises(ValueError, match="several"):
        resolve_test_list(tl, ["one/x.png", "two/x.png"])


def test_partly_labelled_folder_and_warnings(synthetic_dataset, tmp_path: Path) -> None:
    ds = synthetic_dataset
    ann_dir = tmp_path / "ann"
    ann_dir.mkdir()
    labelled = sorted(ds.annotations)[:10]
    for rel in labelled:
        shutil.copy(ds.annotations_dir / rel.replace(".png", ".xml"), ann_dir)
    seen: list[str] = []
    with init_project(tmp_path / "p", ds.images, ann_dir, progress=False, log=seen.append) as p:
        s = p.status()
        assert s["images"] == 40 and s["labelled_images"] == 10 and s["unlabelled_images"] == 30
        assert s["pool_images"] == 30 and s["train_images"] + s["val_images"] == 10 and s["test_images"] == 0
        assert s["negative_images"] == sum(ds.annotations[r].is_negative for r in labelled)
        assert p.warnings == seen and len(seen) == 1 and "no fixed test set" in seen[0]
        assert set(p.annotations("labelled")) == set(labelled)


def _assert_same(a: dict[str, Annotation], b: dict[str, Annotation], atol: float = 0.0) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].labels == b[k].labels, k
        assert a[k].is_negative == b[k].is_negative
        np.testing.assert_allclose(a[k].boxes.xyxy, b[k].boxes.xyxy, atol=atol, rtol=0)


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_round_trip_keeps_every_box_and_negative(synthetic_project: Project, synthetic_dataset, fmt: str,
                                                 tmp_path: Path) -> None:
    src = synthetic_project.annotations("labelled")
    assert sum(a.is_negative for a in src.values()) == 4
    out = export_project(synthetic_project, fmt, tmp_path / "export")
    ann_src = out / "annotations.json" if fmt == "coco" else out
    test_list = out / "ImageSets" / "Main" / "test.txt" if fmt == "voc" else None
    with init_project(tmp_path / "again", synthetic_dataset.images, ann_src, fmt=fmt, test_list=test_list,
                      classes=synthetic_project.classes, progress=False) as p2:
        _assert_same(src, p2.annotations("labelled"), atol=1e-3 if fmt == "yolo" else 0.0)
        assert p2.status()["negative_images"] == 4
        if fmt == "voc":  # the fixed test set travels with the VOC export
            assert set(p2.annotations("test")) == set(synthetic_project.annotations("test"))
    if fmt == "coco":
        from pycocotools.coco import COCO

        coco = COCO(str(out / "annotations.json"))
        assert len(coco.getImgIds()) == 40 and len(coco.getAnnIds()) == synthetic_dataset.counts["boxes"]
        assert sum(not coco.getAnnIds(imgIds=[i]) for i in coco.getImgIds()) == 4


def test_pseudo_boxes_export_and_reimport_keep_provenance(synthetic_project: Project, synthetic_dataset,
                                                          tmp_path: Path) -> None:
    p = synthetic_project
    rel = sorted(synthetic_dataset.annotations)[0]
    p.set_status([rel], "unlabelled")
    p.deactivate_boxes(rel)
    pseudo = Annotation(rel, Boxes(np.array([[3.0, 4, 30, 40]]), (96, 96)), labels=("square",),
                        provenance=(Provenance(Source.PSEUDO, round=2, model="m", score=0.875),))
    p.add_boxes(rel, pseudo)
    out = export_project(p, "voc", tmp_path / "pseudo", subset="pseudo")
    assert [f.name for f in out.glob("*.xml")] == [rel.replace(".png", ".xml")]
    out_all = export_project(p, "voc", tmp_path / "all", subset="all")
    with init_project(tmp_path / "p2", synthetic_dataset.images, out_all, progress=False) as p2:
        s = p2.status()
        assert s["boxes_per_source"]["pseudo"] == 1 and s["pseudo_images"] == 1 and s["labelled_images"] == 39
        back = p2.annotations("pseudo")[rel]
        assert back.provenance[0].source == Source.PSEUDO and back.provenance[0].score == pytest.approx(0.875)
        np.testing.assert_array_equal(back.boxes.xyxy, pseudo.boxes.xyxy)
