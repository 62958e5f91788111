"""COCO JSON: one file for a whole dataset (images, categories, annotations) and the detection
results list ([{"image_id", "category_id", "bbox", "score"}]) that COCO evaluation reads.

The standard `json` module parses; the files are checked by loading them in pycocotools in the
tests. Written by hand: validation with messages that name the file and entry, the xywh <-> xyxy
conversion, the boxloop extras (`difficult`, `truncated`, `score` and a `provenance` dict on each
annotation: extra keys pycocotools ignores; a `score` without `provenance` is a model's guess, as
YOLO's 6th number) and image-id bookkeeping for results files.

An image listed in `images` with no annotation is a negative. `iscrowd` boxes load as difficult
(both mean: do not count a miss); dumped files write `iscrowd: 0` and keep `difficult` as its own key.
No torch import here.
"""

from __future__ import annotations

import json
import math
import warnings as pywarnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boxloop.formats import (
    FormatError,
    LoadResult,
    Sizes,
    check_classes,
    clean_boxes,
    listing,
    missing_images_error,
    read_json,
    safe_relative,
)
from boxloop.images import image_size
from boxloop.structures import Annotation, Boxes, Provenance, Source


def _number(value: Any, path: Path, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormatError(path, f"{what} is not a number: {value!r}", "fix the entry")
    return float(value)


def _id(value: Any, path: Path, what: str) -> int:
    """A COCO id: an integer (or a string or float holding one); null, a list or 1.5 is an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FormatError(path, f"{what} must be an integer, got {value!r}", "fix the entry")
    try:
        number = float(value)
        if number.is_integer():
            return int(number)
    except (ValueError, OverflowError):
        pass
    raise FormatError(path, f"{what} must be an integer, got {value!r}", "fix the entry")


def _size(value: Any) -> int | None:
    """A positive, finite width or height ("width": 1e999 is no size), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return int(value) if ok else None


def _hashable(value: Any) -> bool:
    """An id that can be looked up (a list as image_id is no id, not a TypeError)."""
    return isinstance(value, (int, float, str, type(None)))


def _bbox(value: Any, path: Path, what: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise FormatError(path, f"{what} bbox must be [x, y, width, height], got {value!r}", "fix the entry")
    return [_number(v, path, f"{what} bbox") for v in value]


@dataclass
class _Images:
    """The `images` and `categories` of a COCO file, checked."""

    keys: dict[int, str]  # image id -> relative path
    sizes: dict[int, tuple[int, int]]  # image id -> (w, h); (0, 0) when the file has none
    categories: dict[int, str]  # category id -> name
    classes: list[str]  # names in category-id order


def _read_images(data: Any, path: Path) -> _Images:
    if isinstance(data, list):
        raise FormatError(path, "is a list: a detection-results file, not a COCO dataset",
                          "load it with load_coco_results and the dataset's own annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FormatError(path, "has no 'images' list", "a COCO file needs 'images', 'categories' and 'annotations'")
    categories: dict[int, str] = {}
    for c in data.get("categories") or []:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise FormatError(path, f"category entry {c!r} needs 'id' and 'name'", "fix the categories list")
        cid, name = _id(c["id"], path, f"category id of {c['name']!r}"), str(c["name"])
        if cid in categories:
            raise FormatError(path, f"category id {cid} appears twice", "give each category its own id")
        if name in categories.values():
            raise FormatError(path, f"category name {name!r} appears twice", "merge the two categories")
        categories[cid] = name
    keys: dict[int, str] = {}
    sizes: dict[int, tuple[int, int]] = {}
    seen: dict[str, int] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise FormatError(path, f"image entry {im!r} needs 'id' and 'file_name'", "fix the images list")
        iid = _id(im["id"], path, f"id of image {im['file_name']!r}")
        key = safe_relative(str(im["file_name"]), path, f"file_name of image {iid}")
        if iid in keys:
            raise FormatError(path, f"image id {iid} appears twice", "give each image its own id")
        if key in seen:
            raise FormatError(path, f"images {seen[key]} and {iid} have the same file_name {key!r}",
                              "list each image once")
        seen[key] = iid
        keys[iid] = key
        w, h = _size(im.get("width")), _size(im.get("height"))
        sizes[iid] = (w, h) if w is not None and h is not None else (0, 0)
    return _Images(keys, sizes, categories, [categories[k] for k in sorted(categories)])


def _resolve_sizes(info: _Images, images_root: Path | None, path: Path, warnings: list[str],
                   sizes: Sizes | None = None) -> list[int]:
    """With an images folder: every image must exist and its header decides its size. Returns the ids
    of images `sizes` names unusable (their labels are ignored)."""
    if images_root is None:
        unknown = [info.keys[i] for i, s in info.sizes.items() if s == (0, 0)]
        if unknown:
            raise FormatError(path, f"images without width/height: {listing(unknown)}",
                              "pass the images folder so sizes are read from the images")
        return []
    exists = (lambda key: key in sizes) if sizes is not None else (lambda key: (images_root / key).is_file())
    missing = [(f"image {iid}", key) for iid, key in info.keys.items() if not exists(key)]
    if missing:
        raise missing_images_error(path, missing, images_root)
    unusable = []
    for iid, key in info.keys.items():
        if sizes is not None and sizes[key] is None:
            unusable.append(iid)
            continue
        size = sizes[key] if sizes is not None else image_size(images_root / key)
        if info.sizes[iid] not in ((0, 0), size):
            w, h = info.sizes[iid]
            warnings.append(f"{path}: image {iid} says {w}x{h} but {key} is {size[0]}x{size[1]}; using the image's size")
        info.sizes[iid] = size
    return unusable


def _provenance(a: Mapping[str, Any]) -> Provenance:
    score = a.get("score")
    score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None
    p = a.get("provenance")
    if isinstance(p, Mapping):
        try:
            source = Source(p.get("source", Source.PSEUDO.value if score is not None else Source.HUMAN.value))
        except ValueError:
            source = Source.PREDICTED
        lq = p.get("loc_quality")
        return Provenance(source=source, round=int(p.get("round", 0) or 0), model=p.get("model"),
                          score=score if score is not None else p.get("score"),
                          loc_quality=None if lq is None else float(lq))
    if score is not None:  # a confidence from an unknown model: its guess, not a label (as YOLO's 6th number)
        return Provenance(source=Source.PREDICTED, score=score)
    return Provenance()


def load_coco(json_path: str | Path, images_root: str | Path | None = None,
              classes: Sequence[str] | None = None, sizes: Sizes | None = None) -> LoadResult:
    """Read a COCO dataset file. Keys are `file_name`s; listed images without annotations are
    negatives. A `score` on an annotation without boxloop's `provenance` makes it a model's predicted
    box with that score, not a label (its image stays unlabelled), and the loader says so once."""
    path = Path(json_path)
    data = read_json(path)
    info = _read_images(data, path)
    warnings: list[str] = []
    unusable = _resolve_sizes(info, None if images_root is None else Path(images_root), path, warnings, sizes)
    per_image: dict[int, list[Mapping[str, Any]]] = {iid: [] for iid in info.keys}
    used: dict[str, list[str]] = {}
    anns = data.get("annotations") or []
    if not isinstance(anns, list):
        raise FormatError(path, "'annotations' is not a list", "fix the file")
    for n, a in enumerate(anns):
        if not isinstance(a, dict):
            raise FormatError(path, f"annotation {n} is not an object: {a!r}", "fix the entry")
        what = f"annotation {a.get('id', n)}"
        iid = a.get("image_id")
        if not _hashable(iid) or iid not in per_image:
            raise FormatError(path, f"{what} refers to image_id {iid!r}, which is not in 'images'",
                              "add the image entry or remove the annotation")
        cid = a.get("category_id")
        if not _hashable(cid) or cid not in info.categories:
            raise FormatError(path, f"{what} has category_id {cid!r}, which is not in 'categories'",
                              "add the category or fix the id")
        used.setdefault(info.categories[cid], []).append(f"{what} ({info.keys[iid]})")
        per_image[iid].append(a)
    check_classes(used, classes, path)

    guessed = sorted({info.keys[a["image_id"]] for a in anns
                      if "score" in a and not isinstance(a.get("provenance"), Mapping)})
    if guessed:
        warnings.append(f"{path}: annotations of {len(guessed)} image(s) carry a 'score' and no boxloop provenance: "
                        f"{listing(guessed, 10)}. Those boxes are read as a model's predictions, not labels, so their "
                        "images stay unlabelled; remove 'score' from them if a person drew them")
    out: dict[str, Annotation] = {}
    for iid, key in info.keys.items():
        if iid in unusable:
            continue
        items = per_image[iid]
        xywh = np.array([_bbox(a.get("bbox"), path, f"annotation {a.get('id', '?')}") for a in items],
                        dtype=np.float64).reshape(-1, 4)
        ann = Annotation(
            image=key,
            boxes=Boxes.from_xywh(xywh, info.sizes[iid]),
            labels=tuple(info.categories[a["category_id"]] for a in items),
            difficult=tuple(bool(a.get("difficult", a.get("iscrowd", 0))) for a in items),
            truncated=tuple(bool(a.get("truncated", 0)) for a in items),
            provenance=tuple(_provenance(a) for a in items),
        )
        cleaned = clean_boxes(ann, f"{path} image {iid} ({key})", warnings)
        if len(ann) and not len(cleaned):
            warnings.append(f"{path}: every box of image {iid} ({key}) was dropped; it is left unlabelled")
            continue
        out[key] = cleaned
    return LoadResult(annotations=out, classes=list(classes) if classes is not None else info.classes,
                      warnings=warnings, ignored=[info.keys[i] for i in unusable])


def _class_ids(classes: Sequence[str]) -> dict[str, int]:
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique, got {list(classes)}")
    return {name: i + 1 for i, name in enumerate(classes)}


def _check_labels(anns: Sequence[Annotation], ids: Mapping[str, int], out: Path) -> None:
    unknown: dict[str, list[str]] = {}
    for ann in anns:
        for name in ann.labels:
            if name not in ids:
                unknown.setdefault(name, []).append(ann.image)
    if unknown:
        check_classes(unknown, list(ids), out)


def dump_coco(annotations: Iterable[Annotation], classes: Sequence[str], out_path: str | Path) -> Path:
    """Write a COCO dataset file: category ids 1..C in `classes` order, image ids 1..N in sorted key
    order, negatives listed with no annotation, provenance and score kept as extra keys."""
    out = Path(out_path)
    anns = sorted(annotations, key=lambda a: a.image)
    ids = _class_ids(classes)
    _check_labels(anns, ids, out)
    images, entries = [], []
    for image_id, ann in enumerate(anns, start=1):
        w, h = ann.image_size
        images.append({"id": image_id, "file_name": ann.image, "width": w, "height": h})
        for i, (x, y, bw, bh) in enumerate(ann.boxes.to_xywh().tolist()):
            entry: dict[str, Any] = {
                "id": len(entries) + 1,
                "image_id": image_id,
                "category_id": ids[ann.labels[i]],
                "bbox": [x, y, bw, bh],
                "area": bw * bh,
                "iscrowd": 0,
                "segmentation": [],
                "difficult": int(ann.difficult[i]),
                "truncated": int(ann.truncated[i]),
            }
            p = ann.provenance[i]
            if p.score is not None:
                entry["score"] = p.score
            if p != Provenance():
                entry["provenance"] = {"source": p.source.value, "round": p.round, "model": p.model,
                                       "loc_quality": p.loc_quality}
            entries.append(entry)
    data = {
        "info": {"description": "written by boxloop"},
        "licenses": [],
        "images": images,
        "annotations": entries,
        "categories": [{"id": cid, "name": name, "supercategory": ""} for name, cid in ids.items()],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, allow_nan=False), encoding="utf-8")
    return out


# -- detection results ----------------------------------------------------------------------------

def _results_context(coco_gt_path: str | Path | None, image_ids_to_keys: Mapping[int, str] | None,
                     image_sizes: Mapping[str, tuple[int, int]] | None, classes: Sequence[str] | None,
                     what: Path) -> tuple[dict[int, str], dict[str, tuple[int, int]], dict[int, str]]:
    """(image id -> key, key -> size, category id -> name) from a COCO dataset file, or given."""
    if coco_gt_path is not None:
        gt_path = Path(coco_gt_path)
        info = _read_images(read_json(gt_path), gt_path)
        keys = dict(info.keys)
        sizes = {info.keys[i]: s for i, s in info.sizes.items()}
        cats = dict(info.categories)
        if image_ids_to_keys is not None:
            keys.update(image_ids_to_keys)
        if classes is not None:
            cats = {i + 1: n for i, n in enumerate(classes)} if not cats else cats
    else:
        if image_ids_to_keys is None or classes is None:
            raise FormatError(what, "a results file holds only image and category ids",
                              "pass coco_gt_path (the dataset file), or image_ids_to_keys and classes")
        keys = dict(image_ids_to_keys)
        sizes = {}
        cats = {i + 1: n for i, n in enumerate(classes)}
    if image_sizes is not None:
        sizes.update(image_sizes)
    return keys, sizes, cats


def load_coco_results(json_path: str | Path, image_ids_to_keys: Mapping[int, str] | None = None,
                      coco_gt_path: str | Path | None = None, *,
                      image_sizes: Mapping[str, tuple[int, int]] | None = None,
                      classes: Sequence[str] | None = None,
                      source: Source | str = Source.PREDICTED, round: int = 0, model: str | None = None,
                      include_empty: bool = False) -> dict[str, Annotation]:
    """Read a COCO detection-results list into Annotations with PREDICTED (or `source`) provenance.

    Ids and sizes come from the dataset file `coco_gt_path` (file_name, width, height, categories),
    or from `image_ids_to_keys` + `image_sizes` + `classes` (category id = index + 1, as dump_coco
    numbers them). `include_empty` adds an empty Annotation for every known image without a result.
    Boxes leaving the image are clipped and degenerate ones dropped, with one Python warning in all.
    """
    path = Path(json_path)
    data = read_json(path)
    if not isinstance(data, list):
        raise FormatError(path, "is not a list of detections",
                          "a results file is [{'image_id', 'category_id', 'bbox', 'score'}, ...]")
    keys, sizes, cats = _results_context(coco_gt_path, image_ids_to_keys, image_sizes, classes, path)
    src = Source(source)
    per_image: dict[int, list[tuple[list[float], str, float]]] = {}
    for n, r in enumerate(data):
        if not isinstance(r, dict):
            raise FormatError(path, f"result {n} is not an object: {r!r}", "fix the entry")
        iid, cid = r.get("image_id"), r.get("category_id")
        if not _hashable(iid) or iid not in keys:
            raise FormatError(path, f"result {n} has image_id {iid!r}, unknown to the dataset",
                              "pass the dataset file the results were made on")
        if not _hashable(cid) or cid not in cats:
            raise FormatError(path, f"result {n} has category_id {cid!r}, unknown to the dataset",
                              "pass the dataset file or classes the results were made with")
        score = _number(r.get("score"), path, f"result {n} score")
        per_image.setdefault(iid, []).append((_bbox(r.get("bbox"), path, f"result {n}"), cats[cid], score))
    notes: list[str] = []
    out: dict[str, Annotation] = {}
    ids = list(keys) if include_empty else list(per_image)
    for iid in ids:
        key = keys[iid]
        size = sizes.get(key, (0, 0))
        items = per_image.get(iid, [])
        ann = Annotation(
            image=key,
            boxes=Boxes.from_xywh(np.array([b for b, _, _ in items], dtype=np.float64).reshape(-1, 4), size),
            labels=tuple(name for _, name, _ in items),
            provenance=tuple(Provenance(source=src, round=round, model=model, score=s) for _, _, s in items),
        )
        out[key] = clean_boxes(ann, f"{path} image {iid}", notes, quiet=True)
    if notes:
        pywarnings.warn(f"{path}: {len(notes)} image(s) had boxes clipped or dropped: {listing(notes, 3)}",
                        stacklevel=2)
    return out


def dump_coco_results(annotations: Iterable[Annotation], classes: Sequence[str], out_path: str | Path,
                      image_ids: Mapping[str, int] | None = None,
                      coco_gt_path: str | Path | None = None) -> Path:
    """Write a COCO detection-results list (what COCO.loadRes and COCOeval read).

    Image ids come from `coco_gt_path` (by file_name), or `image_ids`, or else are 1..N in sorted key
    order over the given annotations (what dump_coco assigns to the same set of images). Scores
    are the provenance scores; a box without one (human) gets 1.0.
    """
    out = Path(out_path)
    anns = sorted(annotations, key=lambda a: a.image)
    cids = _class_ids(classes)
    _check_labels(anns, cids, out)
    if coco_gt_path is not None:
        gt_path = Path(coco_gt_path)
        info = _read_images(read_json(gt_path), gt_path)
        ids = {key: iid for iid, key in info.keys.items()}
        if image_ids is not None:
            ids.update(image_ids)
    elif image_ids is not None:
        ids = dict(image_ids)
    else:
        ids = {a.image: i for i, a in enumerate(anns, start=1)}
    unknown = [a.image for a in anns if a.image not in ids]
    if unknown:
        raise FormatError(out, f"no image id for {listing(unknown)}", "pass the dataset file or image_ids")
    results = []
    for ann in anns:
        for i, (x, y, w, h) in enumerate(ann.boxes.to_xywh().tolist()):
            s = ann.provenance[i].score
            score = 1.0 if s is None or not math.isfinite(s) else float(s)
            results.append({"image_id": ids[ann.image], "category_id": cids[ann.labels[i]],
                            "bbox": [x, y, w, h], "score": score})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, allow_nan=False), encoding="utf-8")
    return out
