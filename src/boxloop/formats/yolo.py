"""YOLO txt: one labels/<image stem>.txt per image, a line `class cx cy w h` in fractions of the
image, and the class names in classes.txt (darknet, LabelImg) or data.yaml `names` (Ultralytics).

PyYAML reads data.yaml; image sizes come from `boxloop.images.image_size` (header only). Written by
hand: pairing label files with images by relative stem, the class-name lookup, line validation
with file:line messages, and the writer. A line with a 6th number (Ultralytics `save_conf`) loads
as a predicted box with that score, which must lie in [0, 1], and the loader says so once per
folder: such an image is a model's guess, not a label, and stays unlabelled. A longer line is a
segmentation polygon and loads as its bounding box. An empty .txt is a negative; an image without
.txt is unlabelled. Text files are read as UTF-8 with or without a byte-order mark (Windows editors
write one), and a blank line inside classes.txt is an error: ids count lines. A class named under two
ids is an error too (their boxes would merge), and data.yaml is read without YAML aliases
(`formats.load_yaml`: nested ones expand to gigabytes).
No torch import here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import yaml

from boxloop.formats import (
    MAX_YAML_BYTES,
    FormatError,
    LoadResult,
    MissingImages,
    Sizes,
    check_classes,
    clean_boxes,
    listing,
    load_yaml,
    outlines_note,
    safe_relative,
    stem_index,
    unique_image,
    unique_names,
)
from boxloop.images import image_size, list_images
from boxloop.structures import Annotation, Boxes, Provenance, Source, check_class_name

NAME_FILES = ("classes.txt", "data.yaml", "data.yml", "dataset.yaml", "obj.names")


def _names_from_yaml(path: Path) -> dict[int, str]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read(MAX_YAML_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(path, f"cannot read YAML: {e}", "fix the file") from e
    data = load_yaml(text, path)
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        try:
            return {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as e:
            raise FormatError(path, f"'names' keys must be class ids, got {list(names)}", "use 0: name, 1: name") from e
    raise FormatError(path, "has no 'names' list or mapping", "add names: [class0, class1, ...]")


def read_class_names(labels_dir: str | Path) -> tuple[dict[int, str], Path] | None:
    """Class id -> name from classes.txt / data.yaml / obj.names in `labels_dir` or its parent."""
    labels_dir = Path(labels_dir)
    for folder in (labels_dir, labels_dir.parent):
        for name in NAME_FILES:
            p = folder / name
            if not p.is_file():
                continue
            if p.suffix in (".yaml", ".yml"):
                names = _names_from_yaml(p)
                unique_names(names, p)
                return names, p
            try:
                lines = [line.strip() for line in p.read_text(encoding="utf-8-sig").split("\n")]
            except (OSError, UnicodeDecodeError) as e:
                raise FormatError(p, f"cannot read class names: {e}", "one class name per line") from e
            while lines and not lines[-1]:
                lines.pop()
            blank = [i + 1 for i, n in enumerate(lines) if not n]
            if blank:
                raise FormatError(f"{p}:{blank[0]}", f"line {blank[0]} is blank, but class ids count lines "
                                  f"(class {blank[0] - 1} would have no name and every later id would shift)",
                                  "remove the blank line, or write the class name on it")
            names = {i: n for i, n in enumerate(lines)}
            unique_names(names, p)
            return names, p
    return None


def _parse_lines(path: Path, names: dict[int, str], used: dict[str, list[str]], warnings: list[str]
                 ) -> tuple[np.ndarray, list[str], list[Provenance]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(path, f"cannot read the file: {e}") from e
    rows: list[list[float]] = []
    labels: list[str] = []
    prov: list[Provenance] = []
    polygons = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{path}:{lineno}"
        try:
            values = [float(v) for v in parts[1:]]
            cls_f = float(parts[0])
        except ValueError as e:
            raise FormatError(where, f"not numbers: {line.strip()!r}", "each line is 'class cx cy w h'") from e
        if not cls_f.is_integer() or int(cls_f) not in names:
            raise FormatError(where, f"class id {parts[0]} has no name (known ids 0..{max(names, default=-1)})",
                              "add the class to classes.txt / data.yaml, or fix the id")
        if len(values) == 4:
            rows.append(values)
            prov.append(Provenance())
        elif len(values) == 5:
            if not 0.0 <= values[4] <= 1.0:  # NaN fails too
                raise FormatError(where, f"the 6th number, a confidence, is {parts[5]}: it must lie in [0, 1]",
                                  "each line is 'class cx cy w h', optionally followed by a confidence in [0, 1]")
            rows.append(values[:4])
            prov.append(Provenance(source=Source.PREDICTED, score=values[4]))
        elif len(values) >= 6 and len(values) % 2 == 0:
            pts = np.asarray(values, dtype=np.float64).reshape(-1, 2)
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            rows.append([*(lo + hi) / 2, *(hi - lo)])
            prov.append(Provenance())
            polygons += 1
        else:
            raise FormatError(where, f"{len(parts)} numbers: {line.strip()!r}",
                              "each line is 'class cx cy w h' (optionally a confidence, or a polygon)")
        name = names[int(cls_f)]
        labels.append(name)
        used.setdefault(name, []).append(path.name)
    note = outlines_note(path, {"polygon": polygons})  # the rule every format shares (boxloop.formats)
    if note:
        warnings.append(note)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4), labels, prov


def load_yolo(labels_dir: str | Path, images_root: str | Path, classes: Sequence[str] | None = None,
              sizes: Sizes | None = None) -> LoadResult:
    """Read labels_dir/**/*.txt against the images under `images_root` (same relative stem).

    Class names come from a names file in `labels_dir` or its parent; without one, `classes` gives
    the names by index. A label file without an image is an error (listed). `sizes` stands in for
    the images folder's listing and headers (see `formats.Sizes`).
    """
    labels_dir, images_root = Path(labels_dir), Path(images_root)
    if not labels_dir.is_dir():
        raise FormatError(labels_dir, "label folder does not exist", "pass the folder of YOLO .txt files")
    skip = {n.lower() for n in NAME_FILES}
    if (labels_dir / "labels").is_dir() and not any(p.name.lower() not in skip for p in labels_dir.glob("*.txt")):
        labels_dir = labels_dir / "labels"  # the folder dump_yolo wrote, or an Ultralytics dataset root
    found = read_class_names(labels_dir)
    if found is not None:
        names, _ = found
    elif classes is not None:
        names = {i: n for i, n in enumerate(classes)}
    else:
        raise FormatError(labels_dir, "YOLO labels hold class ids, and no classes.txt or data.yaml was found "
                          "here or in the parent folder", "add classes.txt (one name per line) or pass --classes")
    txts = sorted(p for p in labels_dir.rglob("*.txt")
                  if p.name.lower() not in skip and not any(s.startswith(".") for s in p.relative_to(labels_dir).parts))
    real_labels = labels_dir.resolve()
    escaping = [t for t in txts if not t.resolve().is_relative_to(real_labels)]
    if escaping:  # a label file linked to /etc/passwd must not be read (its lines would be echoed)
        raise FormatError(escaping[0], f"is a symlink leading outside {labels_dir} ({escaping[0].resolve()})",
                          "copy the label file into the label folder instead of linking it")
    images = list(sizes) if sizes is not None else list_images(images_root)
    index = stem_index(images)
    ignored: list[str] = []
    predicted: list[str] = []

    warnings: list[str] = []
    used: dict[str, list[str]] = {}
    out: dict[str, Annotation] = {}
    orphans: list[str] = []
    for txt in txts:
        rel_stem = txt.relative_to(labels_dir).with_suffix("").as_posix()
        key = unique_image(index, rel_stem, txt)
        if key is None:
            orphans.append(txt.relative_to(labels_dir).as_posix())
            continue
        if sizes is not None and sizes[key] is None:
            ignored.append(key)
            continue
        cxcywh, labels, prov = _parse_lines(txt, names, used, warnings)
        if any(p.source == Source.PREDICTED for p in prov):
            predicted.append(txt.relative_to(labels_dir).as_posix())
        size = sizes[key] if sizes is not None else image_size(images_root / key)
        ann = Annotation(image=key, boxes=Boxes.from_cxcywh_normalized(cxcywh, size), labels=tuple(labels),
                         provenance=tuple(prov))
        cleaned = clean_boxes(ann, str(txt), warnings)
        if len(ann) and not len(cleaned):
            warnings.append(f"{txt}: every box was dropped; {key} is left unlabelled, not called a negative")
            continue
        out[key] = cleaned
    if orphans:
        raise MissingImages(labels_dir, f"{len(orphans)} label file(s) have no image in {images_root}: {listing(orphans)}",
                            "add the images, remove those label files, or pass the right images folder", orphans)
    check_classes(used, classes, labels_dir)
    if predicted:
        warnings.append(f"{labels_dir}: {len(predicted)} label file(s) have lines with a 6th number, a confidence: "
                        f"{listing(predicted, 10)}. Those boxes are read as a model's predictions, not labels, so "
                        "their images stay unlabelled; remove the 6th column if they are labels")
    declared = [names[i] for i in sorted(names)]
    return LoadResult(annotations=out, classes=list(classes) if classes is not None else declared, warnings=warnings,
                      ignored=ignored)


def _fmt(v: float) -> str:
    return f"{v:.6f}"


def yolo_label_file(out_dir: Path, image: str) -> Path:
    """Where `dump_yolo` writes the label file of `image` (a path relative to out_dir)."""
    return out_dir / "labels" / PurePosixPath(safe_relative(image, out_dir, "image path")).with_suffix(".txt")


def dump_yolo(annotations: Iterable[Annotation], classes: Sequence[str], out_dir: str | Path,
              scores: bool = False) -> Path:
    """Write out_dir/labels/<image stem>.txt (6 decimals), out_dir/classes.txt and out_dir/data.yaml.

    Negatives get an empty file. `scores` appends each box's provenance score (Ultralytics
    `save_conf` layout); off by default because training loaders reject the 6th column.
    """
    out_dir = Path(out_dir)
    ids = {name: i for i, name in enumerate(classes)}
    if len(ids) != len(classes):
        raise ValueError(f"class names must be unique, got {list(classes)}")
    for name in classes:  # classes.txt holds one name a line: a line break would shift every later id
        check_class_name(name, str(out_dir))
    anns = list(annotations)
    unknown: dict[str, list[str]] = {}
    for ann in anns:
        for name in ann.labels:
            if name not in ids:
                unknown.setdefault(name, []).append(ann.image)
    check_classes(unknown, classes, out_dir)
    targets: dict[Path, str] = {}
    for ann in anns:
        t = yolo_label_file(out_dir, ann.image)
        if t in targets:
            raise FormatError(t, f"{targets[t]} and {ann.image} would share this file", "rename one of the images")
        targets[t] = ann.image
    for t, ann in zip(targets, anns):
        w, h = ann.image_size
        if len(ann) and (w <= 0 or h <= 0):
            raise FormatError(t, f"{ann.image} has no image size", "YOLO stores boxes as fractions of the image size")
        rows = ann.boxes.to_cxcywh_normalized() if len(ann) else np.zeros((0, 4))
        lines = []
        for i, r in enumerate(rows):
            line = " ".join([str(ids[ann.labels[i]]), *(_fmt(float(v)) for v in r)])
            s = ann.provenance[i].score
            if scores and s is not None and math.isfinite(s):
                line += " " + _fmt(s)
            lines.append(line)
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    data = {"path": ".", "nc": len(classes), "names": {i: c for i, c in enumerate(classes)}}
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out_dir
