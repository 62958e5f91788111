"""Pascal VOC XML: one file per image, as LabelImg, CVAT and the VOC devkit write it.

defusedxml parses (DTDs and entity declarations are refused: billion-laughs and external-entity
files never expand); the standard library's ElementTree writes. Written by hand: matching each XML
to its image (by relative stem, then `<path>`, then `<filename>`), the path-escape checks, reading
and writing the boxloop extras (LocAwareAL Figure 6.3's `<confidence>`, a `<provenance>` element and
`<loc_quality>` for boxes a model made) and the VOC-root layout (JPEGImages/, Annotations/,
ImageSets/Main/*.txt).

Coordinates are kept as written (no VOC 1-based shift), so a load/dump round trip is exact.
No torch import here.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as StdET
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import defusedxml
import defusedxml.ElementTree as SafeET
import numpy as np

from boxloop.formats import (
    FormatError,
    LoadResult,
    Sizes,
    check_classes,
    clean_boxes,
    missing_images_error,
    safe_relative,
    stem_index,
    unique_image,
)
from boxloop.images import image_size, list_images
from boxloop.structures import Annotation, Boxes, Provenance, Source

_ANNOTATION_DIR_NAMES = ("Annotations", "annotations", "xml", "labels")
_IMAGE_DIR_NAMES = ("JPEGImages", "images", "Images", "imgs")


# -- layout -------------------------------------------------------------------------------------

def _has_xml(folder: Path) -> bool:
    return folder.is_dir() and next(folder.rglob("*.xml"), None) is not None


def find_voc_layout(root: str | Path) -> tuple[Path, Path] | None:
    """(images_dir, annotations_dir) for a VOC root (JPEGImages/ + Annotations/), a dataset folder
    holding images/ + annotations/, or an images folder with an annotations folder beside it."""
    root = Path(root)
    if not root.is_dir():
        return None
    for img_name in _IMAGE_DIR_NAMES:
        for ann_name in _ANNOTATION_DIR_NAMES:
            if (root / img_name).is_dir() and _has_xml(root / ann_name):
                return root / img_name, root / ann_name
    for ann_name in _ANNOTATION_DIR_NAMES:
        beside = root.parent / ann_name
        if beside != root and _has_xml(beside):
            return root, beside
    return None


def read_image_set(path: str | Path) -> list[str]:
    """Image ids (names without extension) of a VOC ImageSets/Main/*.txt file, in file order.

    Lines may carry a second column (VOC's per-class '-1/0/1' flags); only the first is kept.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(path, f"cannot read the image list: {e}", "pass a text file, one image name per line") from e
    return [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]


def voc_image_sets(root: str | Path) -> dict[str, list[str]]:
    """{'train': [...], 'test': [...]} from a VOC root's ImageSets/Main (empty when there is none)."""
    main = Path(root) / "ImageSets" / "Main"
    if not main.is_dir():
        return {}
    return {p.stem: read_image_set(p) for p in sorted(main.glob("*.txt")) if "_" not in p.stem}


# -- parsing ------------------------------------------------------------------------------------

def _parse(path: Path) -> StdET.Element:
    try:
        return SafeET.parse(path, forbid_dtd=True).getroot()
    except defusedxml.DefusedXmlException as e:
        raise FormatError(path, f"XML declares a DTD or entities ({type(e).__name__}), refused for safety",
                          "remove the <!DOCTYPE ...> block; VOC files need none") from e
    except StdET.ParseError as e:
        raise FormatError(path, f"malformed or truncated XML: {e}",
                          "fix or re-export the file, or delete it to leave the image unlabelled") from e
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(path, f"cannot read the file: {e}") from e


def _text(el: StdET.Element | None, tag: str) -> str | None:
    if el is None:
        return None
    found = el.find(tag)
    if found is None or found.text is None:
        return None
    text = found.text.strip()
    return text or None


def _float(text: str | None, where: Path, what: str) -> float:
    if text is None:
        raise FormatError(where, f"{what} is missing", "every <bndbox> needs xmin, ymin, xmax and ymax")
    try:
        return float(text)
    except ValueError as e:
        raise FormatError(where, f"{what} is not a number: {text!r}", "fix the coordinate") from e


def _flag(text: str | None) -> bool:
    if text is None:
        return False
    t = text.strip().lower()
    if t in ("true", "yes"):
        return True
    try:
        return float(t) != 0
    except ValueError:
        return False


def _opt_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _provenance(obj: StdET.Element) -> Provenance:
    """Provenance of one <object>: the <provenance> element, else a bare <confidence> (LocAwareAL's
    detector output, in percent) marks a predicted box; else the box is human-drawn."""
    el = obj.find("provenance")
    confidence = _opt_float(_text(obj, "confidence"))
    if confidence is not None and confidence > 1:
        confidence /= 100.0  # LocAwareAL Figure 6.3 writes 85.2 for 0.852
    loc_quality = _opt_float(_text(obj, "loc_quality"))
    if el is None:
        if confidence is None:
            return Provenance(loc_quality=loc_quality) if loc_quality is not None else Provenance()
        return Provenance(source=Source.PREDICTED, score=confidence, loc_quality=loc_quality)
    source = el.get("source", Source.PREDICTED.value if confidence is not None else Source.HUMAN.value)
    try:
        src = Source(source)
    except ValueError:
        src = Source.PREDICTED
    score = _opt_float(el.get("score"))
    round_text = el.get("round", "0")
    try:
        rnd = int(round_text)
    except ValueError:
        rnd = 0
    return Provenance(source=src, round=rnd, model=el.get("model") or None,
                      score=score if score is not None else confidence, loc_quality=loc_quality)


def _parse_objects(root: StdET.Element, where: Path) -> tuple[np.ndarray, list[str], list[bool], list[bool], list[Provenance]]:
    xyxy: list[list[float]] = []
    labels: list[str] = []
    difficult: list[bool] = []
    truncated: list[bool] = []
    prov: list[Provenance] = []
    for i, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        if name is None:
            raise FormatError(where, f"<object> number {i + 1} has no <name>", "give every object a class name")
        bb = obj.find("bndbox")
        if bb is None:
            raise FormatError(where, f"<object> number {i + 1} ({name}) has no <bndbox>", "give every object a box")
        xyxy.append([_float(_text(bb, k), where, f"<object> {i + 1} ({name}) {k}") for k in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(name)
        difficult.append(_flag(_text(obj, "difficult")))
        truncated.append(_flag(_text(obj, "truncated")))
        prov.append(_provenance(obj))
    return np.asarray(xyxy, dtype=np.float64).reshape(-1, 4), labels, difficult, truncated, prov


def _xml_size(root: StdET.Element) -> tuple[int, int] | None:
    size = root.find("size")
    w, h = _opt_float(_text(size, "width")), _opt_float(_text(size, "height"))
    if w is None or h is None or not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        return None
    return int(round(w)), int(round(h))


def _match_image(root: StdET.Element, xml: Path, rel_stem: str, index: dict[str, list[str]],
                 image_set: set[str]) -> tuple[str | None, str]:
    """The image an XML describes, relative to the images root, and the name it asked for.

    Order: same relative stem as the XML (VOC's rule); a relative `<path>`; `<filename>` beside the
    XML's relative folder, then from the root. An absolute `<path>` is ignored: LabelImg and CVAT
    write the labeller's own absolute path there (BCCD has /home/pi/...), which says nothing here.
    """
    filename = _text(root, "filename")
    path_text = _text(root, "path")
    fn = safe_relative(filename, xml, "<filename>") if filename is not None else None
    rel_path = None
    if path_text is not None and not (path_text.startswith("/") or path_text.replace("\\", "/").startswith("//")
                                      or (len(path_text) > 1 and path_text[1] == ":")):
        rel_path = safe_relative(path_text, xml, "<path>")
    found = unique_image(index, rel_stem, xml)
    if found is not None:
        return found, rel_stem
    subdir = rel_stem.rsplit("/", 1)[0] + "/" if "/" in rel_stem else ""
    candidates = [c for c in (rel_path, subdir + fn if fn else None, fn) if c]
    for c in candidates:
        if c in image_set:
            return c, c
    if fn:
        stem = fn.rsplit(".", 1)[0] if "." in fn.rsplit("/", 1)[-1] else fn
        for c in (subdir + stem, stem):
            found = unique_image(index, c, xml)
            if found is not None:
                return found, c
    return None, fn or rel_stem


def _resolve_dirs(annotations_dir: Path, images_root: Path | None) -> tuple[Path, Path | None]:
    if not annotations_dir.exists():
        raise FormatError(annotations_dir, "annotation folder does not exist", "pass the folder of VOC .xml files")
    if annotations_dir.is_dir() and not (annotations_dir / "Annotations").is_dir():
        return annotations_dir, images_root
    layout = find_voc_layout(annotations_dir)
    if layout is not None:
        return layout[1], images_root if images_root is not None else layout[0]
    return annotations_dir, images_root


def load_voc(annotations_dir: str | Path, images_root: str | Path | None = None,
             classes: Sequence[str] | None = None, sizes: Sizes | None = None) -> LoadResult:
    """Read every .xml under `annotations_dir` (or a VOC root's Annotations/).

    With `images_root`, keys are image paths relative to it, sizes come from the image headers and
    missing images are an error; without, keys are `<filename>` (under the XML's relative folder)
    and sizes come from `<size>`. A file without `<object>` is a negative image. `sizes` stands in
    for the images folder's listing and headers (see `formats.Sizes`).
    """
    annotations_dir, images_root = _resolve_dirs(Path(annotations_dir), None if images_root is None else Path(images_root))
    if annotations_dir.is_file():
        xml_files, base = [annotations_dir], annotations_dir.parent
    else:
        base = annotations_dir
        xml_files = sorted(p for p in annotations_dir.rglob("*") if p.suffix.lower() == ".xml"
                           and not any(part.startswith(".") for part in p.relative_to(base).parts))
    if not xml_files:
        raise FormatError(annotations_dir, "holds no .xml files", "pass the folder of VOC annotation files")
    images = list(sizes) if sizes is not None else list_images(images_root) if images_root is not None else []
    ignored: list[str] = []
    index, image_set = stem_index(images), set(images)

    warnings: list[str] = []
    out: dict[str, Annotation] = {}
    used: dict[str, list[str]] = {}
    order: list[str] = []
    missing: list[tuple[str, str]] = []
    claimed: dict[str, Path] = {}
    for xml in xml_files:
        root = _parse(xml)
        if root.tag != "annotation":
            raise FormatError(xml, f"root element is <{root.tag}>, not <annotation>", "is this a VOC file?")
        rel_stem = xml.relative_to(base).with_suffix("").as_posix()
        xyxy, labels, difficult, truncated, prov = _parse_objects(root, xml)
        for name in labels:
            if name not in used:
                order.append(name)
            used.setdefault(name, []).append(xml.name)
        xml_size = _xml_size(root)
        if images_root is not None:
            key, asked = _match_image(root, xml, rel_stem, index, image_set)
            if key is None:
                missing.append((xml.name, asked))
                continue
            if sizes is not None and sizes[key] is None:
                ignored.append(key)
                continue
            size = sizes[key] if sizes is not None else image_size(images_root / key)
            if xml_size is not None and xml_size != size:
                warnings.append(f"{xml}: <size> says {xml_size[0]}x{xml_size[1]} but {key} is "
                                f"{size[0]}x{size[1]}; using the image's size")
        else:
            filename = _text(root, "filename")
            fn = safe_relative(filename, xml, "<filename>") if filename else None
            subdir = rel_stem.rsplit("/", 1)[0] + "/" if "/" in rel_stem else ""
            key = subdir + fn if fn else None
            if key is None:
                raise FormatError(xml, "has no <filename>", "add it, or pass the images folder to match by name")
            if xml_size is None:
                raise FormatError(xml, "has no valid <size> (width and height)",
                                  "pass the images folder so sizes are read from the images")
            size = xml_size
        if key in claimed:
            raise FormatError(xml, f"describes the same image as {claimed[key]}: {key}",
                              "keep one annotation file per image")
        claimed[key] = xml
        ann = Annotation(image=key, boxes=Boxes(xyxy, size), labels=tuple(labels), difficult=tuple(difficult),
                         truncated=tuple(truncated), provenance=tuple(prov))
        cleaned = clean_boxes(ann, str(xml), warnings)
        if len(ann) and not len(cleaned):
            warnings.append(f"{xml}: every box was dropped; {key} is left unlabelled, not called a negative")
            continue
        out[key] = cleaned
    if missing:
        raise missing_images_error(annotations_dir, missing, images_root)
    check_classes(used, classes, annotations_dir)
    return LoadResult(annotations=out, classes=list(classes) if classes is not None else order, warnings=warnings,
                      ignored=ignored)


# -- writing ------------------------------------------------------------------------------------

def _num(x: float) -> str:
    """Whole coordinates as ints (what VOC tools expect), others with every digit repr keeps."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _sub(parent: StdET.Element, tag: str, text: str | None = None) -> StdET.Element:
    el = StdET.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def annotation_to_xml(ann: Annotation, folder: str = "") -> StdET.Element:
    """One Annotation as a VOC <annotation> element."""
    rel = PurePosixPath(ann.image)
    root = StdET.Element("annotation")
    _sub(root, "folder", folder or (rel.parent.name if rel.parent.name else ""))
    _sub(root, "filename", rel.name)
    _sub(root, "path", rel.as_posix())
    _sub(_sub(root, "source"), "database", "boxloop")
    size = _sub(root, "size")
    w, h = ann.image_size
    _sub(size, "width", str(w))
    _sub(size, "height", str(h))
    _sub(size, "depth", "3")
    _sub(root, "segmented", "0")
    for i in range(len(ann)):
        obj = _sub(root, "object")
        _sub(obj, "name", ann.labels[i])
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", str(int(ann.truncated[i])))
        _sub(obj, "difficult", str(int(ann.difficult[i])))
        p = ann.provenance[i]
        if p.score is not None:
            _sub(obj, "confidence", f"{100.0 * p.score:.1f}")  # percent, as LocAwareAL Figure 6.3
        if p != Provenance():
            attrs = {"source": p.source.value, "round": str(p.round)}
            if p.model is not None:
                attrs["model"] = p.model
            if p.score is not None:
                attrs["score"] = repr(float(p.score))
            StdET.SubElement(obj, "provenance", attrs)
        if p.loc_quality is not None:
            _sub(obj, "loc_quality", repr(float(p.loc_quality)))
        bb = _sub(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), ann.boxes.xyxy[i]):
            _sub(bb, k, _num(v))
    StdET.indent(root, space="\t")
    return root


def voc_label_file(out_dir: Path, image: str) -> Path:
    """Where `dump_voc` writes the XML of `image` (a path relative to out_dir)."""
    return out_dir / PurePosixPath(safe_relative(image, out_dir, "image path")).with_suffix(".xml")


def dump_voc(annotations: Iterable[Annotation], out_dir: str | Path,
             images_root: str | Path | None = None) -> list[Path]:
    """Write one XML per image, at the image's relative path with .xml (sub/a.jpg -> out/sub/a.xml).

    Negatives get a file without <object>. `images_root` only names `<folder>` for top-level images.
    Two images whose names differ only in extension would share one XML: FormatError.
    """
    out_dir = Path(out_dir)
    folder = Path(images_root).name if images_root is not None else ""
    written: dict[Path, str] = {}
    plan: list[tuple[Path, Annotation]] = []
    for ann in annotations:
        target = voc_label_file(out_dir, ann.image)
        if target in written:
            raise FormatError(target, f"{written[target]} and {ann.image} would share this file",
                              "rename one of the images; VOC names annotation files after the image stem")
        written[target] = ann.image
        plan.append((target, ann))
    for target, ann in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        top = "/" not in ann.image
        tree = StdET.ElementTree(annotation_to_xml(ann, folder if top else ""))
        tree.write(target, encoding="utf-8", xml_declaration=False)
    return [t for t, _ in plan]
