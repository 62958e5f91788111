"""Annotation file formats: each module holds a load_*/dump_* pair. No torch import here.

`load(fmt, ...)` returns a `LoadResult`: the Annotations found (keyed by image path relative to the
image root, '/'-separated), the class names the files declare or use (in file order), and the
warnings a user should read (a dropped degenerate box, a clipped box). An image with an annotation
of zero boxes is a negative; an image with no annotation at all is unlabelled and is simply absent
from `annotations`.

Written by hand here: the checks every loader shares (degenerate boxes dropped and boxes leaving the
image clipped, each with a warning; unknown class names listed with their files; image paths that
escape the images folder refused; image stems matched once) and `load`/`dump`/`detect_format`, which
dispatch to voc.py, coco.py and yolo.py. numpy does the box arithmetic.

Owns: voc, coco, yolo, labelstudio, cvat, names (tool image names -> keys).
May import: the root modules structures and images.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from boxloop.structures import Annotation

FORMATS = ("voc", "coco", "yolo", "labelstudio", "cvat")


class FormatError(ValueError):
    """A file that cannot be read as labels. The message names the file, what is wrong and what to do."""

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{path}: {problem}" + (f" ({hint})" if hint else ""))


def read_json(path: str | Path, hint: str = "fix or re-export the file") -> Any:
    """A user's JSON file (labels, a batch's batch.json), or FormatError naming it: missing, unreadable,
    malformed, or nested deeper than Python's parser goes (RecursionError); NaN and 1e999 parse as
    floats, whose use is each reader's to check. A UTF-8 byte-order mark is allowed."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as e:
        raise FormatError(path, "file does not exist", hint) from e
    except json.JSONDecodeError as e:
        raise FormatError(path, f"malformed or truncated JSON at line {e.lineno} column {e.colno}: {e.msg}", hint) from e
    except RecursionError:
        raise FormatError(path, "JSON nested too deeply to read", hint) from None
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(path, f"cannot read the file: {e}", hint) from e


@dataclass
class LoadResult:
    annotations: dict[str, Annotation]
    classes: list[str]
    warnings: list[str] = field(default_factory=list)
    # images whose labels were read past: `sizes` named them unusable (None), e.g. an image init skips
    ignored: list[str] = field(default_factory=list)


# {image key: (width, height)}, or None for an image that exists but cannot be used (its labels are
# then ignored and listed in `LoadResult.ignored`): what init measured, so loaders need not measure again
Sizes = Mapping[str, "tuple[int, int] | None"]


# -- shared checks (written by hand; every loader runs its boxes and names through these) -----------

_MAX_LISTED = 30


def listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    """'a, b, c' or 'a, b, ... and 12 more': error messages name what is wrong without a flood."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def _box_text(xyxy: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in xyxy) + "]"


# Overflow below this many pixels is clipped without a warning: YOLO's 6 decimals put a box that
# touches the border of a 640 px image up to 3e-4 px outside it.
CLIP_TOLERANCE_PX = 0.01


def clean_boxes(ann: Annotation, where: str, warnings: list[str], quiet: bool = False) -> Annotation:
    """Drop boxes with NaN/inf or zero/negative size, clip boxes that leave the image.

    Every change is reported in `warnings` (one line per box, numbered as in the file, naming
    `where`) unless `quiet`, in which case one summary line is added. A box wholly outside the image
    is dropped after clipping. An image size with a zero means unknown: nothing is clipped.
    """
    if len(ann) == 0:
        return ann
    xyxy = ann.boxes.xyxy
    keep = ann.boxes.nondegenerate()
    notes: list[str] = []
    for i in np.flatnonzero(~keep):
        notes.append(f"{where}: box {i + 1} ({ann.labels[i]!r} {_box_text(xyxy[i])}) has a non-finite "
                     "coordinate or zero/negative width or height; dropped")
    w, h = ann.image_size
    if w > 0 and h > 0:
        inside = ann.boxes.inside()
        clipped = ann.boxes.clip()
        overflow = np.abs(clipped.xyxy - xyxy).max(axis=1) if len(xyxy) else np.zeros(0)
        for i in np.flatnonzero(keep & ~inside):
            if clipped.nondegenerate()[i] and overflow[i] <= CLIP_TOLERANCE_PX:
                continue
            if clipped.nondegenerate()[i]:
                notes.append(f"{where}: box {i + 1} ({ann.labels[i]!r} {_box_text(xyxy[i])}) leaves the "
                             f"{w}x{h} image; clipped to {_box_text(clipped.xyxy[i])}")
            else:
                keep[i] = False
                notes.append(f"{where}: box {i + 1} ({ann.labels[i]!r} {_box_text(xyxy[i])}) lies wholly "
                             f"outside the {w}x{h} image; dropped")
        if not inside[keep].all():
            ann = replace(ann, boxes=clipped)
    if not keep.all():
        ann = ann.select(keep)
    if notes:
        if quiet:
            warnings.append(f"{where}: {len(notes)} box(es) dropped or clipped (degenerate or outside the image)")
        else:
            warnings.extend(notes)
    return ann


# -- shapes that are not boxes: one rule for every format --------------------------------------------
# An outline says where an object is: a polygon (YOLO segmentation lines, Label Studio, CVAT) or an
# ellipse loads as its bounding box, counted in one warning per file (a rotated rectangle as its
# axis-aligned envelope, with a warning each). Other shapes (points and
# keypoints, lines, masks, cuboids, skeletons) give no box and are ignored with a warning; an image
# whose only shapes were ignored is left unlabelled and named, never called a negative (its objects
# were marked, only not as boxes).


def polygon_box(points: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    """xyxy of the bounding box of a polygon's (x, y) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def ellipse_box(cx: float, cy: float, rx: float, ry: float, degrees: float = 0.0) -> tuple[float, float, float, float]:
    """xyxy of the bounding box of an ellipse with centre (cx, cy) and radii rx, ry, rotated about its centre."""
    t = math.radians(degrees)
    ex = math.hypot(rx * math.cos(t), ry * math.sin(t))
    ey = math.hypot(rx * math.sin(t), ry * math.cos(t))
    return cx - ex, cy - ey, cx + ex, cy + ey


def rotated_envelope(x: float, y: float, w: float, h: float, degrees: float,
                     about_centre: bool) -> tuple[float, float, float, float]:
    """xyxy of the axis-aligned box around a rectangle rotated clockwise on screen (y down).

    Label Studio rotates about the top-left corner (x, y), CVAT about the centre. boxloop's boxes
    are axis-aligned, so a rotated box becomes its envelope and the loader says so.
    """
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    ox, oy = (x + w / 2, y + h / 2) if about_centre else (x, y)
    xs, ys = [], []
    for px, py in ((x, y), (x + w, y), (x, y + h), (x + w, y + h)):
        dx, dy = px - ox, py - oy
        xs.append(ox + dx * c - dy * s)
        ys.append(oy + dx * s + dy * c)
    return min(xs), min(ys), max(xs), max(ys)


def outlines_note(where: str | Path, counts: Mapping[str, int]) -> str | None:
    """The one warning per file for the outlines read as boxes, or None."""
    said = [f"{n} {kind}(s)" for kind, n in sorted(counts.items()) if n]
    return f"{where}: {' and '.join(said)} read as their bounding boxes" if said else None


def only_other_shapes(where: str | Path, key: str, kinds: Iterable[str]) -> str:
    """The warning for an image whose only shapes give no box: unlabelled, not a negative."""
    return (f"{where}: {key} holds only shapes that are not boxes ({', '.join(sorted(set(kinds)))}); it is left "
            "unlabelled, not called a negative")


def check_classes(used: Mapping[str, list[str]], classes: Sequence[str] | None, source: str | Path) -> None:
    """Raise FormatError listing every unknown class name and the files that use it."""
    if classes is None:
        return
    known = set(classes)
    unknown = {name: files for name, files in used.items() if name not in known}
    if unknown:
        parts = [f"{name!r} in {listing(sorted(set(files)), 5)}" for name, files in sorted(unknown.items())]
        raise FormatError(
            source,
            f"{len(unknown)} class name(s) not in the given classes {list(classes)}: " + "; ".join(parts),
            "add them to --classes, or fix the names in the labels",
        )


MAX_YAML_BYTES = 1 << 20  # a data.yaml names classes: a megabyte is far more than any needs


def load_yaml(text: str, where: str | Path) -> object:
    """YAML as `yaml.safe_load` reads it, but without aliases: an anchor (&a) and nested aliases (*a)
    let a few hundred bytes expand to gigabytes (each level multiplies), and no label file needs one."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise FormatError(where, f"holds a YAML alias (*name) at line {mark.line + 1}, "
                                  f"column {mark.column + 1}",
                                  "write the values out; aliases are not read (nested ones can expand to gigabytes)")
            return super().compose_node(parent, index)

    if len(text) > MAX_YAML_BYTES:
        raise FormatError(where, f"is {len(text)} characters of YAML, more than {MAX_YAML_BYTES}",
                          "a file naming classes is far smaller; is it the right file?")
    try:
        return yaml.load(text, Loader=NoAliases)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise FormatError(where, f"cannot read YAML: {e}", "fix the file") from e


def unique_names(names: Mapping[int, str], where: str | Path) -> None:
    """Refuse a class list naming one class under two ids: its labels would merge into one class."""
    first: dict[str, int] = {}
    for i, name in sorted(names.items()):
        if name in first:
            raise FormatError(where, f"class {name!r} is named twice, as ids {first[name]} and {i}",
                              "give each class one id; relabel the boxes of the second id with the first")
        first[name] = i


# A Windows path with a drive and a root ('C:/x', 'C:\\x' once '\\' is '/'): 'c:9.jpg' (no root) is a
# legal file name on Linux and macOS, not an absolute path.
_WINDOWS_ABSOLUTE = re.compile(r"[A-Za-z]:/")


def safe_relative(value: str, where: str | Path, field_name: str) -> str:
    """A '/'-separated relative path that stays inside its folder, or FormatError.

    Annotations name their images; one naming '../x.jpg' or '/etc/x' must never make boxloop read or
    write outside the images folder.
    """
    text = value.strip().replace("\\", "/")
    if not text:
        raise FormatError(where, f"empty {field_name}", "name the image file relative to the images folder")
    if text.startswith("/") or _WINDOWS_ABSOLUTE.match(text):
        raise FormatError(where, f"{field_name} {value!r} is an absolute path",
                          "image paths in annotations must be relative to the images folder")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise FormatError(where, f"{field_name} {value!r} points outside the images folder",
                                  "image paths in annotations must stay inside the images folder")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise FormatError(where, f"{field_name} {value!r} names no file", "name the image file")
    return "/".join(parts)


def stem_index(images: Sequence[str]) -> dict[str, list[str]]:
    """'sub/a' -> ['sub/a.jpg', ...]: how annotation files (a.xml, a.txt) find their image."""
    index: dict[str, list[str]] = {}
    for rel in images:
        stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        index.setdefault(stem, []).append(rel)
    return index


def unique_image(index: Mapping[str, list[str]], stem: str, where: str | Path) -> str | None:
    """The one image with this stem, None if none, FormatError if two (a.jpg and a.png)."""
    found = index.get(stem)
    if not found:
        return None
    if len(found) > 1:
        raise FormatError(where, f"matches several images with the same name: {', '.join(found)}",
                          "rename or remove all but one, so each annotation names one image")
    return found[0]


class MissingImages(FormatError):
    """Annotations naming images that are not there; `names` lists the names they asked for (so a
    caller that knows more, such as `boxloop import`, can say what those images are)."""

    def __init__(self, path: str | Path, problem: str, hint: str, names: Sequence[str]) -> None:
        super().__init__(path, problem, hint)
        self.names = list(names)


def missing_images_error(source: str | Path, pairs: Sequence[tuple[str, str]], images_root: str | Path) -> FormatError:
    listed = [f"{where} -> {name}" for where, name in pairs]
    return MissingImages(
        source,
        f"{len(pairs)} annotation(s) name images that are not in {images_root}: {listing(listed)}",
        "add the images, remove those annotations, or pass the right --images folder",
        [name for _, name in pairs],
    )


# -- dispatch -----------------------------------------------------------------------------------

def detect_format(path: str | Path) -> str:
    """'voc', 'coco' or 'yolo' from what a path holds: a .json file is COCO; a folder (or a VOC root,
    or a YOLO export with labels/) of .xml files is VOC, of .txt files is YOLO."""
    path = Path(path)
    if not path.exists():
        raise FormatError(path, "does not exist", "pass the annotation folder or file")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "labelstudio" if _looks_like_labelstudio(path) else "coco"
        if path.suffix.lower() == ".xml":
            return "cvat" if _xml_root_tag(path) == "annotations" else "voc"
        raise FormatError(path, "is a file but not a .json (COCO) file",
                          "pass a COCO .json file, or a folder of VOC .xml or YOLO .txt files")
    from boxloop.formats.voc import find_voc_layout

    if (path / "Annotations").is_dir() and find_voc_layout(path) is not None:
        return "voc"
    n_xml = n_txt = 0
    for p in path.rglob("*"):
        suffix = p.suffix.lower()
        if suffix == ".xml":
            n_xml += 1
        elif suffix == ".txt" and p.name != "classes.txt" and "ImageSets" not in p.parts:
            n_txt += 1
    if n_xml and n_xml >= n_txt:
        return "voc"
    if n_txt:
        return "yolo"
    jsons = sorted(path.glob("*.json"))
    if len(jsons) == 1:
        return "coco"
    raise FormatError(path, "holds no .xml (VOC), .txt (YOLO) or single .json (COCO) annotation files",
                      "pass --format and the annotation folder or file")


def load(fmt: str | None, source: str | Path, images_root: str | Path | None = None,
         classes: Sequence[str] | None = None, sizes: Sizes | None = None) -> LoadResult:
    """Load annotations in any supported format (fmt None: detect it from `source`).

    `sizes` (with `images_root`) lists the images and their sizes instead of reading the folder."""
    fmt = detect_format(source) if fmt is None else fmt.lower()
    source = Path(source)
    if fmt == "voc":
        from boxloop.formats.voc import load_voc

        return load_voc(source, images_root, classes, sizes=sizes)
    if fmt == "coco":
        from boxloop.formats.coco import load_coco

        if source.is_dir():
            jsons = sorted(source.glob("*.json"))
            if len(jsons) != 1:
                raise FormatError(source, f"is a folder holding {len(jsons)} .json files",
                                  "pass the COCO annotation .json file itself")
            source = jsons[0]
        return load_coco(source, images_root, classes, sizes=sizes)
    if fmt == "yolo":
        from boxloop.formats.yolo import load_yolo

        if images_root is None:
            raise FormatError(source, "YOLO labels hold normalised boxes", "pass the images folder too")
        return load_yolo(source, images_root, classes, sizes=sizes)
    if fmt in ("labelstudio", "cvat"):
        known = None if sizes is None else dict(sizes)
        if images_root is not None and known is None:
            from boxloop.images import image_size, list_images

            root = Path(images_root)
            known = {rel: image_size(root / rel) for rel in list_images(root)}
        if fmt == "labelstudio":
            from boxloop.formats.labelstudio import load_labelstudio

            return load_labelstudio(source, known_images=known, classes=classes)
        from boxloop.formats.cvat import load_cvat

        return load_cvat(source / "annotations.xml" if source.is_dir() else source, known_images=known,
                         classes=classes)
    raise FormatError(source, f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")


# How an annotator's answer for one image is told from what boxloop wrote into a query batch (see
# boxloop.loop.human): "file": each image has its own label file, which the tool saves again when a
# person answers; "submitted": the tool keeps a person's submissions apart from the pre-annotations
# (Label Studio: annotations beside boxloop's predictions); "none": one file holds every image, so its
# saving says nothing of any one image, and an image whose labels are still exactly boxloop's cannot
# be told from one nobody looked at.
ANSWER_EVIDENCE = {"voc": "file", "yolo": "file", "labelstudio": "submitted", "coco": "none", "cvat": "none"}
_ONE_FILE = {"coco": "annotations.json", "cvat": "annotations.xml", "labelstudio": "tasks.json"}


def label_file(fmt: str, out: str | Path, image: str) -> Path:
    """The file `dump` writes the boxes of `image` to in the folder `out`: its own file for the
    formats with one file per image (VOC, YOLO), else the one file that holds every image."""
    fmt, out = fmt.lower(), Path(out)
    if fmt == "voc":
        from boxloop.formats.voc import voc_label_file

        return voc_label_file(out, image)
    if fmt == "yolo":
        from boxloop.formats.yolo import yolo_label_file

        return yolo_label_file(out, image)
    if fmt not in _ONE_FILE:
        raise FormatError(out, f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    return out / _ONE_FILE[fmt]


def dump(fmt: str, annotations: Iterable[Annotation], classes: Sequence[str], out: str | Path,
         images_root: str | Path | None = None) -> Path | list[Path]:
    """Write annotations in `fmt`. `out` is a folder (VOC, YOLO; COCO writes out/annotations.json
    unless `out` ends in .json). Returns what was written."""
    fmt = fmt.lower()
    out = Path(out)
    if fmt == "voc":
        from boxloop.formats.voc import dump_voc

        return dump_voc(annotations, out, images_root)
    if fmt == "coco":
        from boxloop.formats.coco import dump_coco

        return dump_coco(annotations, classes, out if out.suffix.lower() == ".json" else out / "annotations.json")
    if fmt == "yolo":
        from boxloop.formats.yolo import dump_yolo

        return dump_yolo(annotations, classes, out)
    if fmt == "labelstudio":
        from boxloop.formats.labelstudio import dump_labelstudio_tasks

        return dump_labelstudio_tasks([(a.image, a, None) for a in annotations], classes,
                                      out if out.suffix.lower() == ".json" else out / "tasks.json")
    if fmt == "cvat":
        from boxloop.formats.cvat import dump_cvat

        return dump_cvat(annotations, classes, out if out.suffix.lower() == ".xml" else out / "annotations.xml")
    raise FormatError(out, f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def _looks_like_labelstudio(path: Path) -> bool:
    """A Label Studio export is a list of tasks with a 'data' dict; COCO is one object."""
    try:
        data = read_json(path)
    except FormatError:
        return False
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "data" in data[0]


def _xml_root_tag(path: Path) -> str | None:
    """The root element's name (CVAT: 'annotations', VOC: 'annotation'), read without entities."""
    from defusedxml import ElementTree

    try:
        for _, elem in ElementTree.iterparse(str(path), events=("start",)):
            return elem.tag
    except Exception:  # a broken file is reported by the loader that reads it
        return None
    return None
