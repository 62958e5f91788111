"""CVAT for images 1.1: one annotations.xml for a whole task, boxes in pixels.

Layout as documented by CVAT (docs.cvat.ai, "XML annotation format", version 1.1):
`<annotations><version>1.1</version><meta><task>...<labels><label><name>cat</name>...</label>
</labels></task></meta><image id="0" name="a.jpg" width="640" height="480"><box label="cat"
source="manual" occluded="0" xtl=".." ytl=".." xbr=".." ybr=".." z_order="0"><attribute
name="..">..</attribute></box><tag label=".." source="manual"/></image></annotations>`.

defusedxml parses (DTDs and entity declarations are refused); the standard library's ElementTree
writes; numpy does the box arithmetic. Written by hand: provenance in CVAT's terms (a model's box is
source="auto" with boxloop's scores as attributes "score", "loc_quality", "provenance", "round",
"model", declared in the meta so CVAT accepts them; every other source is a person's box), tags as
image-level flags, rotated boxes (their axis-aligned envelope, with a warning), matching image names
to boxloop's keys and the bad-input checks: a file for another project (unknown images or classes)
is refused as a whole, listing what did not match.

Every `<image>` in the file counts as labelled: zero shapes make it a negative (CVAT lists every
image of a task, so export only the images that were labelled, as boxloop's query batches are),
except an image carrying the tag "skip", which is left unanswered, and an image whose only shapes
give no box (points, lines, masks ...), which is left unlabelled. `boxloop import` also tells an
image whose boxes are still exactly boxloop's pre-annotations (see `boxloop.loop.human`). No torch
import here.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as StdET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET
import numpy as np

from boxloop.formats import (FormatError, check_classes, clean_boxes, ellipse_box, only_other_shapes, outlines_note,
                             polygon_box, rotated_envelope, safe_relative)
from boxloop.formats.labelstudio import NEGATIVE_FLAG, SKIP_FLAG, FlaggedLoadResult
from boxloop.formats.names import check_project, match_image_key
from boxloop.structures import Annotation, Boxes, Provenance, Source

__all__ = ["dump_cvat", "load_cvat", "BOXLOOP_ATTRIBUTES"]

# Attributes boxloop writes on boxes a model made (source="auto"); declared as text in the meta.
BOXLOOP_ATTRIBUTES = ("score", "loc_quality", "provenance", "round", "model")
_OUTLINES = ("polygon", "ellipse")  # read as their bounding boxes (formats: one rule for shapes)
_SHAPES = ("polyline", "points", "cuboid", "skeleton", "mask")  # no box: ignored


# -- writing ------------------------------------------------------------------------------------

def _sub(parent: StdET.Element, tag: str, text: str | None = None,
         attrib: dict[str, str] | None = None) -> StdET.Element:
    el = StdET.SubElement(parent, tag, attrib or {})
    if text is not None:
        el.text = text
    return el


def _num(x: float) -> str:
    """Every digit repr keeps, so a round trip is exact (CVAT itself writes two decimals)."""
    return repr(float(x))


def _box_attributes(p: Provenance) -> dict[str, str]:
    if p.source == Source.HUMAN:
        return {"round": str(int(p.round))} if p.round else {}
    out: dict[str, str] = {"provenance": p.source.value}
    if p.score is not None:
        out["score"] = _num(p.score)
    if p.loc_quality is not None:
        out["loc_quality"] = _num(p.loc_quality)
    if p.round:
        out["round"] = str(int(p.round))
    if p.model is not None:
        out["model"] = p.model
    return out


def dump_cvat(annotations: Iterable[Annotation], classes: Sequence[str], out_path: str | Path,
              task_name: str = "boxloop") -> Path:
    """Write one CVAT for images 1.1 XML holding every given image (negatives without boxes).

    Human boxes get source="manual"; boxes a model made (pseudo, predicted, background) get
    source="auto" and their provenance as attributes, so the scores survive a round trip and show in
    CVAT's attribute panel. Every label must be in `classes` (FormatError listing the others,
    nothing written); image names are the keys, relative to the images folder.
    """
    out_path = Path(out_path)
    anns = list(annotations)
    used: dict[str, list[str]] = {}
    seen: set[str] = set()
    for ann in anns:
        key = safe_relative(ann.image, out_path, "image path")
        if key in seen:
            raise FormatError(out_path, f"image {key} is listed twice", "pass each image once")
        seen.add(key)
        w, h = ann.image_size
        if w <= 0 or h <= 0:
            raise FormatError(out_path, f"image {key} has unknown size {w}x{h}",
                              "CVAT needs every image's width and height")
        for name in ann.labels:
            used.setdefault(name, []).append(key)
    check_classes(used, classes, out_path)

    root = StdET.Element("annotations")
    _sub(root, "version", "1.1")
    task = _sub(_sub(root, "meta"), "task")
    _sub(task, "name", task_name)
    _sub(task, "size", str(len(anns)))
    _sub(task, "mode", "annotation")
    _sub(task, "overlap", "0")
    _sub(task, "flipped", "False")
    labels = _sub(task, "labels")
    for name in classes:
        label = _sub(labels, "label")
        _sub(label, "name", str(name))
        _sub(label, "type", "rectangle")
        attrs = _sub(label, "attributes")
        for attr in BOXLOOP_ATTRIBUTES:
            a = _sub(attrs, "attribute")
            _sub(a, "name", attr)
            _sub(a, "mutable", "False")
            _sub(a, "input_type", "text")
            _sub(a, "default_value", "")
            _sub(a, "values", "")
    for i, ann in enumerate(anns):
        w, h = ann.image_size
        image = _sub(root, "image", attrib={"id": str(i), "name": safe_relative(ann.image, out_path, "image path"),
                                            "width": str(int(w)), "height": str(int(h))})
        for j in range(len(ann)):
            p = ann.provenance[j]
            x0, y0, x1, y1 = ann.boxes.xyxy[j]
            box = _sub(image, "box", attrib={
                "label": ann.labels[j], "source": "manual" if p.source == Source.HUMAN else "auto",
                "occluded": "0", "xtl": _num(x0), "ytl": _num(y0), "xbr": _num(x1), "ybr": _num(y1),
                "z_order": "0"})
            for name, value in _box_attributes(p).items():
                _sub(box, "attribute", value, {"name": name})
    StdET.indent(root, space="  ")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    StdET.ElementTree(root).write(out_path, encoding="utf-8", xml_declaration=True)
    return out_path


# -- reading ------------------------------------------------------------------------------------

def _parse(path: Path) -> StdET.Element:
    try:
        return SafeET.parse(path, forbid_dtd=True).getroot()
    except defusedxml.DefusedXmlException as e:
        raise FormatError(path, f"XML declares a DTD or entities ({type(e).__name__}), refused for safety",
                          "remove the <!DOCTYPE ...> block; CVAT files need none") from e
    except StdET.ParseError as e:
        raise FormatError(path, f"malformed or truncated XML: {e}", "export again from CVAT") from e
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(path, f"cannot read the file: {e}") from e


def _declared_labels(root: StdET.Element) -> list[tuple[str, str]]:
    """(name, type) of the labels in <meta> (task, job or project export)."""
    meta = root.find("meta")
    if meta is None:
        return []
    labels = next(meta.iter("labels"), None)
    if labels is None:
        return []
    out = []
    for label in labels.findall("label"):
        name = (label.findtext("name") or "").strip()
        if name and label.find("parent") is None:  # skeleton points have a parent; not classes
            out.append((name, (label.findtext("type") or "any").strip()))
    return out


def _float_attr(el: StdET.Element, name: str, where: str) -> float:
    text = el.get(name)
    if text is None:
        raise FormatError(where, f"has no {name} attribute", "every <box> needs xtl, ytl, xbr and ybr")
    try:
        value = float(text)
    except ValueError as e:
        raise FormatError(where, f"{name}={text!r} is not a number", "fix or re-export the file") from e
    if not math.isfinite(value):
        raise FormatError(where, f"{name}={text!r}", "coordinates must be finite numbers")
    return value


def _opt_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _outline_box(shape: StdET.Element, where: str) -> tuple[float, float, float, float]:
    """xyxy of a <polygon points="x,y;x,y;..."> or an <ellipse cx cy rx ry rotation>."""
    if shape.tag == "ellipse":
        cx, cy, rx, ry = (_float_attr(shape, k, where) for k in ("cx", "cy", "rx", "ry"))
        return ellipse_box(cx, cy, rx, ry, _opt_float(shape.get("rotation")) or 0.0)
    try:
        pairs = (shape.get("points") or "").split(";")
        pts = [tuple(float(v) for v in pair.split(",")) for pair in pairs if pair.strip()]
    except ValueError:
        pts = []
    if not pts or any(len(p) != 2 or not all(math.isfinite(v) for v in p) for p in pts):
        raise FormatError(where, f"points {shape.get('points')!r} are not 'x,y;x,y;...'", "export the task again")
    return polygon_box(pts)


def _provenance(box: StdET.Element, reviewed: bool) -> Provenance:
    """source="auto" is a model's box (boxloop's attributes give the details); anything else
    (manual, semi-auto, file, consensus, none) is a person's. With `reviewed`, every box is a
    person's, entered now (round 0: the caller sets the round of the answer)."""
    if reviewed:
        return Provenance()
    attrs = {a.get("name"): (a.text or "").strip() for a in box.findall("attribute")}
    if box.get("source", "manual") != "auto":
        return Provenance(round=_int(attrs.get("round")))
    try:
        source = Source(attrs.get("provenance") or Source.PREDICTED.value)
    except ValueError:
        source = Source.PREDICTED
    if source == Source.HUMAN:
        source = Source.PREDICTED  # CVAT says a model made it; trust that over a stale attribute
    return Provenance(source=source, round=_int(attrs.get("round")), model=attrs.get("model") or None,
                      score=_opt_float(attrs.get("score")), loc_quality=_opt_float(attrs.get("loc_quality")))


def load_cvat(xml_path: str | Path, known_images: Mapping[str, tuple[int, int]] | None = None,
              classes: Sequence[str] | None = None, reviewed: bool = False) -> FlaggedLoadResult:
    """Read a CVAT for images 1.1 XML (task, job or project export) into Annotations keyed by image.

    With `known_images` ({key: (width, height)}) every `<image>` must match a known image (exact
    path, else a unique path suffix) and boxes are scaled to the known size when CVAT's differs;
    with `classes` every box label must be one of them. A mismatch raises one FormatError listing
    every unknown image and class; nothing is returned. Boxes leaving the image are clipped with a
    warning; rotated boxes become their envelope with a warning; polygons and ellipses their
    bounding boxes (one warning per file); other shapes are ignored with a warning, and an image with
    only such shapes is left unlabelled and named (see `boxloop.formats`), never called a negative;
    `<tag>` labels become `flags`. `reviewed=True` marks every box as a person's answer (Source.HUMAN)
    whatever CVAT's source says, which is what importing an annotator's answers wants.
    """
    path = Path(xml_path)
    root = _parse(path)
    if root.tag != "annotations":
        raise FormatError(path, f"root element is <{root.tag}>, not <annotations>", "export as 'CVAT for images 1.1'")
    if root.find("track") is not None:
        raise FormatError(path, "holds <track> elements (the 'CVAT for video' format)",
                          "export the task as 'CVAT for images 1.1'")
    warnings: list[str] = []
    version = (root.findtext("version") or "").strip()
    if version and version != "1.1":
        warnings.append(f"{path}: format version {version}, read as 1.1")
    declared = _declared_labels(root)
    out: dict[str, Annotation] = {}
    flags: dict[str, tuple[str, ...]] = {}
    used: dict[str, list[str]] = {}
    tag_names: set[str] = set()
    unmatched: list[str] = []
    claimed: dict[str, str] = {}
    ignored: dict[str, int] = {}
    outlines: dict[str, int] = {}
    unusable: list[str] = []
    for n, image in enumerate(root.findall("image")):
        name = image.get("name")
        where = f"{path} <image id={image.get('id', n)!r}>"
        if not name:
            raise FormatError(where, "has no name", "every <image> needs its file name")
        key = match_image_key(name, known_images, where)
        if key is None:
            unmatched.append(name)
            continue
        if key in claimed:
            raise FormatError(path, f"images {claimed[key]!r} and {name!r} both describe {key}",
                              "keep one <image> per file")
        claimed[key] = name
        if known_images is not None and known_images[key] is None:
            unusable.append(key)  # an image the caller cannot use (init skips it): its labels are not read
            continue
        cw, ch = _opt_float(image.get("width")), _opt_float(image.get("height"))
        cvat_size = (cw, ch) if cw and ch and cw > 0 and ch > 0 else None
        if known_images is not None:
            size = tuple(float(v) for v in known_images[key])
        elif cvat_size is not None:
            size = cvat_size
        else:
            raise FormatError(where, "has no valid width and height", "pass the project's images to read sizes")
        scale = np.ones(4)
        if cvat_size is not None and (abs(cvat_size[0] - size[0]) > 0.5 or abs(cvat_size[1] - size[1]) > 0.5):
            scale = np.array([size[0] / cvat_size[0], size[1] / cvat_size[1]] * 2)
            warnings.append(f"{where}: CVAT says {cvat_size[0]:g}x{cvat_size[1]:g} but {key} is "
                            f"{size[0]:g}x{size[1]:g}; boxes scaled to the real size")
        xyxy: list[tuple[float, float, float, float]] = []
        labels: list[str] = []
        prov: list[Provenance] = []
        for j, box in enumerate(image.findall("box")):
            bwhere = f"{where} box {j + 1}"
            label = (box.get("label") or "").strip()
            if not label:
                raise FormatError(bwhere, "has no label", "give every box a label")
            x0, y0, x1, y1 = (_float_attr(box, k, bwhere) for k in ("xtl", "ytl", "xbr", "ybr"))
            rotation = _opt_float(box.get("rotation")) or 0.0
            if rotation % 360 != 0:
                x0, y0, x1, y1 = rotated_envelope(x0, y0, x1 - x0, y1 - y0, rotation, about_centre=True)
                warnings.append(f"{bwhere} ({label!r}) is rotated by {rotation:g} degrees; replaced by its "
                                "axis-aligned envelope")
            xyxy.append(tuple(np.array([x0, y0, x1, y1]) * scale))
            labels.append(label)
            prov.append(_provenance(box, reviewed))
            used.setdefault(label, []).append(key)
        unread: list[str] = []
        for j, shape in enumerate(el for el in image if el.tag in _OUTLINES):
            swhere = f"{where} <{shape.tag}> {j + 1}"
            label = (shape.get("label") or "").strip()
            if not label:
                raise FormatError(swhere, "has no label", "give every shape a label")
            xyxy.append(tuple(np.array(_outline_box(shape, swhere)) * scale))
            labels.append(label)
            prov.append(_provenance(shape, reviewed))
            used.setdefault(label, []).append(key)
            outlines[shape.tag] = outlines.get(shape.tag, 0) + 1
        for child in image:
            if child.tag in _SHAPES:
                ignored[child.tag] = ignored.get(child.tag, 0) + 1
                unread.append(child.tag)
        image_flags = tuple(dict.fromkeys((t.get("label") or "").strip() for t in image.findall("tag")))
        image_flags = tuple(f for f in image_flags if f)
        tag_names.update(image_flags)
        if image_flags:
            flags[key] = image_flags
        if any(f.lower() == SKIP_FLAG for f in image_flags):
            warnings.append(f"{where}: tagged {SKIP_FLAG!r}; {key} left unanswered")
            continue
        if unread and not xyxy:
            warnings.append(only_other_shapes(where, key, unread))
            continue
        if xyxy and any(f.lower() == NEGATIVE_FLAG for f in image_flags):
            warnings.append(f"{where}: tagged {NEGATIVE_FLAG!r} but has {len(xyxy)} box(es); boxes kept")
        image_size = (int(round(size[0])), int(round(size[1])))
        ann = Annotation(image=key, boxes=Boxes(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4), image_size),
                         labels=tuple(labels), provenance=tuple(prov))
        cleaned = clean_boxes(ann, where, warnings)
        if len(ann) and not len(cleaned):
            warnings.append(f"{where}: every box was dropped; {key} is left unanswered, not called a negative")
            continue
        out[key] = cleaned
    check_project(path, unmatched, used, classes, "<image> element(s)")
    note = outlines_note(path, outlines)
    if note:
        warnings.append(note)
    for tag, count in sorted(ignored.items()):
        warnings.append(f"{path}: {count} <{tag}> shape(s) ignored (boxloop reads boxes)")
    if classes is not None:
        found = list(classes)
    else:  # declared box labels in file order, then any used but not declared
        found = [n for n, t in declared if t not in ("tag", "points", "skeleton") and (n in used or n not in tag_names)]
        found += [n for n in used if n not in found]
    return FlaggedLoadResult(annotations=out, classes=found, warnings=warnings, flags=flags, ignored=unusable)
