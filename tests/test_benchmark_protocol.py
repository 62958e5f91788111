"""benchmarks/protocol.py without training: datasets in any format with their own fixed test split,
the Aquarium preset's split, the missing-class warning, the undetectable-format error, shard balance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import protocol  # noqa: E402

AQUARIUM = protocol.shared_datasets() / "aquarium"


def _image(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)


def yolo_splits(root: Path, test_classes: tuple[int, ...] = (0, 1)) -> Path:
    """train/ (3 images: cat, cat, dog) and valid/ (one image per class in test_classes), data.yaml."""
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['cat', 'dog']\n")
    for split, classes in (("train", (0, 0, 1)), ("valid", test_classes)):
        for i, c in enumerate(classes):
            _image(root / split / "images" / f"{split}{i}.jpg")
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            (root / split / "labels" / f"{split}{i}.txt").write_text(f"{c} 0.5 0.5 0.4 0.4\n")
    return root


def test_yolo_split_layout_is_detected_and_merged(tmp_path):
    spec = protocol.prepare_dataset(str(yolo_splits(tmp_path / "pets")), tmp_path / "work")
    assert spec.name == "pets" and spec.fmt == "coco" and spec.images == tmp_path / "pets"
    assert (spec.pool_images, spec.test_images) == (3, 2)
    assert dict(spec.pool_images_per_class) == {"cat": 2, "dog": 1}
    assert spec.rare_classes == ("dog", "cat") and spec.warnings == ()
    assert sorted(spec.test_list.read_text().split()) == ["valid/images/valid0", "valid/images/valid1"]
    coco = json.loads(spec.annotations.read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]  # data.yaml's order
    assert {i["file_name"] for i in coco["images"]} >= {"train/images/train0.jpg", "valid/images/valid1.jpg"}


def test_coco_split_layout_is_detected(tmp_path):
    root = tmp_path / "coco"
    for split in ("train", "test"):
        _image(root / split / f"{split}.jpg")
        (root / split / "_annotations.coco.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": f"{split}.jpg", "width": 40, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]}],
            "categories": [{"id": 1, "name": "cell"}]}))
    spec = protocol.prepare_dataset(str(root), tmp_path / "work")
    assert (spec.pool_images, spec.test_images) == (1, 1) and spec.test_list.read_text().split() == ["test/test"]


def test_a_test_split_without_a_class_is_named_in_a_warning(tmp_path):
    spec = protocol.prepare_dataset(str(yolo_splits(tmp_path / "pets", test_classes=(0,))), tmp_path / "work")
    assert len(spec.warnings) == 1
    w = spec.warnings[0]
    assert "'dog'" in w and "left out of mAP50" in w and "not counted as 0" in w
    # a class data.yaml declares and no image holds is named too
    (tmp_path / "pets" / "data.yaml").write_text("names: ['cat', 'dog', 'bird']\n")
    spec = protocol.prepare_dataset(str(tmp_path / "pets"), tmp_path / "work")
    assert ["'dog'" in w for w in spec.warnings] == [True, False] and "'bird'" in spec.warnings[1]


def test_an_undetectable_format_lists_the_formats_and_how_to_name_one(tmp_path):
    root = tmp_path / "photos"
    for split in ("train", "valid"):
        _image(root / split / "a.jpg")  # images, no labels in any format
    with pytest.raises(protocol.DatasetError) as e:
        protocol.prepare_dataset(str(root), tmp_path / "work")
    msg = str(e.value)
    assert "cannot tell the label format" in msg and "--dataset-format" in msg
    assert all(f in msg for f in ("voc", "coco", "yolo"))
    with pytest.raises(protocol.DatasetError, match="--dataset-format 'cvat'"):
        protocol.prepare_dataset(str(root), tmp_path / "work", fmt="cvat")


def test_labels_without_a_test_split_are_refused(tmp_path):
    root = tmp_path / "flat"
    _image(root / "images" / "a.jpg")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "classes.txt").write_text("cat\n")
    with pytest.raises(protocol.DatasetError, match="no fixed test split"):
        protocol.prepare_dataset(str(root), tmp_path / "work")


def test_a_missing_preset_is_skipped_and_a_missing_path_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "shared_datasets", lambda: tmp_path / "no_shared")
    assert protocol.prepare_dataset("aquarium", tmp_path / "work") is None
    with pytest.raises(protocol.DatasetError, match="no such folder"):
        protocol.prepare_dataset(str(tmp_path / "absent"), tmp_path / "work")


@pytest.mark.skipif(not AQUARIUM.is_dir(), reason="shared/datasets/aquarium is absent")
def test_aquarium_preset_pool_is_train_and_test_is_valid_plus_test(tmp_path):
    spec = protocol.prepare_dataset("aquarium", tmp_path)
    assert (spec.pool_images, spec.test_images) == (448, 190)
    assert spec.pool_images_per_class["jellyfish"] == 32 and spec.pool_images_per_class["starfish"] == 37
    assert spec.rare_classes == ("jellyfish", "starfish") and spec.warnings == ()
    tests = spec.test_list.read_text().split()
    assert sum(t.startswith("valid/") for t in tests) == 127 and sum(t.startswith("test/") for t in tests) == 63


def test_presets_choose_dataset_and_settings():
    import argparse

    presets = {"cpu": {}, "gpu": {}, "aquarium": {}, "synthetic": {}}
    for dataset, preset, want in ((None, None, ("bccd", "cpu")), ("aquarium", None, ("aquarium", "aquarium")),
                                  (None, "aquarium", ("aquarium", "aquarium")), (None, "bccd", ("bccd", "cpu")),
                                  ("synthetic", None, ("synthetic", "synthetic")), ("/x/y", "gpu", ("/x/y", "gpu"))):
        a = argparse.Namespace(dataset=dataset, preset=preset)
        assert (lambda p: (a.dataset, p))(protocol.choose_preset(a, presets)) == want


def test_balance_pins_and_spreads_longest_first():
    cost = {"a": 5, "b": 4, "c": 3, "d": 3, "e": 1}
    shards = protocol.balance(list(cost), cost.__getitem__, 2, fixed={"e": 1})
    # e pinned to shard 1 (load 0 | 1); a -> 0 (5 | 1), b -> 1 (5 | 5), c -> 0 on the tie (8 | 5), d -> 1
    assert shards == [["a", "c"], ["b", "d", "e"]]
    assert sorted(x for s in shards for x in s) == sorted(cost)
