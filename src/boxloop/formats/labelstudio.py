"""Label Studio: task import JSON with model predictions as pre-annotations, and the JSON export back.

Built against Label Studio's documented formats (labelstud.io/guide/predictions, /guide/task_format,
/guide/export): a task is `{"data": {"image": URL, ...}, "predictions": [{"model_version", "score",
"result": [...]}]}`; each box result is `{"id", "type": "rectanglelabels", "from_name": "label",
"to_name": "image", "original_width", "original_height", "image_rotation", "value": {"x", "y",
"width", "height", "rotation", "rectanglelabels": [name]}, "score"}` with x, y, width and height in
percent of the image. The export is a list of such tasks with `annotations` (each with `result`
and `was_cancelled`).

The stdlib `json` module reads and writes; ElementTree writes the labeling config; numpy does the
box arithmetic. Written by hand: the percent <-> pixel conversion, the choice of the answer per task
(last annotation that was not cancelled), image-level flags from `choices` results, matching tasks to
boxloop's image keys (`data.boxloop_key` first, then the image URL), rotated rectangles (their
axis-aligned envelope, with a warning) and the bad-input checks: a file for another project (unknown
images or classes) is refused as a whole with the list of what did not match.

Tasks and images: a task whose chosen annotation marks no region is a negative image; a task with no
annotation, or only cancelled (skipped) ones, is unanswered and absent from the result; a task whose
annotation carries the flag "skip", or marks only regions that give no box (keypoints, brushes), is
also left unanswered. No torch import here.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as StdET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse

import numpy as np

from boxloop.formats import (FormatError, LoadResult, check_classes, clean_boxes, ellipse_box, only_other_shapes,
                             outlines_note, polygon_box, read_json, rotated_envelope, safe_relative)
from boxloop.formats.names import check_project, match_image_key
from boxloop.structures import Annotation, Boxes, Provenance, Source

__all__ = [
    "FlaggedLoadResult",
    "box_results",
    "config_labels",
    "load_tasks",
    "task_key",
    "LOCAL_FILES_PREFIX",
    "labeling_config",
    "dump_labelstudio_tasks",
    "load_labelstudio",
]

LOCAL_FILES_PREFIX = "/data/local-files/?d="  # Label Studio's local-files storage URL
FROM_NAME = "label"  # RectangleLabels name in labeling_config()
TO_NAME = "image"  # Image name in labeling_config()
FLAGS_NAME = "flags"  # Choices name in labeling_config()
DEFAULT_FLAGS = ("negative", "skip")
SKIP_FLAG = "skip"
NEGATIVE_FLAG = "negative"
KEY_FIELD = "boxloop_key"  # data field holding boxloop's image key, so answers map back exactly

# Label Studio prefixes uploaded files with 8 hex characters: /data/upload/3/5a1b2c3d-a.jpg
_UPLOAD_HASH = re.compile(r"^[0-9a-f]{8}-")


@dataclass
class FlaggedLoadResult(LoadResult):
    """A LoadResult plus the image-level flags an annotator set (Label Studio `choices`, CVAT tags).

    `flags` maps an image key to the flag names chosen for it, for every answered or skipped image
    that has any (e.g. {"a.jpg": ("negative",)}).
    """

    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _number(value: object, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FormatError(where, f"{what} is {value!r}, not a number", "fix or re-export the file")
    try:
        out = float(value)
    except ValueError as e:
        raise FormatError(where, f"{what} is {value!r}, not a number", "fix or re-export the file") from e
    if not math.isfinite(out):
        raise FormatError(where, f"{what} is {value!r}", "coordinates must be finite numbers")
    return out


# -- writing ------------------------------------------------------------------------------------

def labeling_config(classes: Sequence[str], flags: Sequence[str] = DEFAULT_FLAGS) -> str:
    """The Label Studio labeling config (XML) matching the tasks dump_labelstudio_tasks writes.

    Paste it into Settings > Labeling Interface > Code. `flags` become optional image-level choices
    ("negative": nothing to label here; "skip": leave the image unanswered); pass () for none.
    """
    view = StdET.Element("View")
    StdET.SubElement(view, "Image", {"name": TO_NAME, "value": "$image"})
    rect = StdET.SubElement(view, "RectangleLabels", {"name": FROM_NAME, "toName": TO_NAME})
    for name in classes:
        StdET.SubElement(rect, "Label", {"value": str(name)})
    if flags:
        choices = StdET.SubElement(view, "Choices", {"name": FLAGS_NAME, "toName": TO_NAME,
                                                     "choice": "multiple", "showInline": "true"})
        for name in flags:
            StdET.SubElement(choices, "Choice", {"value": str(name)})
    StdET.indent(view, space="  ")
    return StdET.tostring(view, encoding="unicode")


def config_labels(config: str, where: str = "label config") -> tuple[str, str, str, list[str]]:
    """(from_name, to_name, image data field, label names) of a Label Studio labeling config: its one
    RectangleLabels and the Image it points at, so predictions name both as the project does."""
    try:
        root = StdET.fromstring(config)
    except StdET.ParseError as e:
        raise FormatError(where, f"is not XML: {e}", "pass the project's labeling config") from None
    rects = [el for el in root.iter() if el.tag in ("RectangleLabels", "Labels") and el.get("toName")]
    if len(rects) != 1:
        raise FormatError(where, f"has {len(rects)} RectangleLabels tags", "boxes need exactly one RectangleLabels")
    image = next((el for el in root.iter("Image") if el.get("name") == rects[0].get("toName")), None)
    if image is None or not (image.get("value") or "").startswith("$"):
        raise FormatError(where, "RectangleLabels points at no Image with a $field", "use <Image value=\"$image\">")
    return (str(rects[0].get("name")), str(image.get("name")), image.get("value", "")[1:],
            [str(el.get("value")) for el in rects[0].iter("Label")])


def box_results(ann: Annotation, prefix: str, with_scores: bool) -> list[dict]:
    """One rectanglelabels result per box, in percent of the image (task files and `boxloop serve` alike)."""
    w, h = ann.image_size
    if len(ann) and (w <= 0 or h <= 0):
        raise FormatError(ann.image, f"image size {w}x{h} is unknown",
                          "Label Studio boxes are in percent of the image; boxloop needs its size")
    out = []
    for i in range(len(ann)):
        x0, y0, x1, y1 = (float(v) for v in ann.boxes.xyxy[i])
        result: dict = {
            "id": f"{prefix}{i}",
            "type": "rectanglelabels",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "original_width": int(w),
            "original_height": int(h),
            "image_rotation": 0,
            "value": {
                "x": 100.0 * x0 / w,
                "y": 100.0 * y0 / h,
                "width": 100.0 * (x1 - x0) / w,
                "height": 100.0 * (y1 - y0) / h,
                "rotation": 0,
                "rectanglelabels": [ann.labels[i]],
            },
        }
        score = ann.provenance[i].score
        if with_scores and score is not None:
            result["score"] = float(score)
        out.append(result)
    return out


def _image_url(key: str, prefix: str) -> str:
    return prefix + quote(key, safe="/") if prefix else key


def dump_labelstudio_tasks(
    items: Iterable[tuple[str, Annotation | None, Annotation | None]],
    classes: Sequence[str],
    out_path: str | Path,
    image_url_prefix: str = LOCAL_FILES_PREFIX,
    model_version: str = "boxloop",
    task_scores: Mapping[str, float] | None = None,
) -> Path:
    """Write Label Studio's task import JSON: one task per image, predictions as pre-annotations.

    `items` are (image key, labels, predictions): labels (human or pseudo boxes already known)
    become an `annotations` entry; predictions (e.g. `Detections.to_annotation(...)`) become one
    `predictions` entry whose boxes keep their scores and whose overall `score` is the mean box score
    (Label Studio sorts tasks by it), or `task_scores[key]` when given (e.g. the strategy's
    informativeness). A prediction with zero boxes is written as an empty prediction.

    The image URL is `image_url_prefix` + the URL-quoted key (the default serves files from Label
    Studio's local-files storage, where `?d=` is relative to LOCAL_FILES_DOCUMENT_ROOT; Label Studio
    serves only files inside a local storage, whose path must be a subfolder of that root, so the keys
    should start with that subfolder: `boxloop query` passes LOCAL_FILES_PREFIX + "<batch folder>/");
    pass "" to write the plain relative key. `data.boxloop_key`, `data.width` and `data.height` carry
    the key and size so the export maps back exactly. Every label must be in `classes`; nothing is written otherwise.
    """
    out_path = Path(out_path)
    known = set(classes)
    tasks: list[dict] = []
    unknown: dict[str, list[str]] = {}
    seen: set[str] = set()
    for n, item in enumerate(items):
        try:
            key, labels, preds = item
        except (TypeError, ValueError) as e:
            raise FormatError(out_path, f"item {n + 1} is not an (image key, labels, predictions) triple: {item!r}",
                              "pass tuples of (str, Annotation | None, Annotation | None)") from e
        key = safe_relative(key, out_path, "image key")
        if key in seen:
            raise FormatError(out_path, f"image {key} is listed twice", "pass each image once")
        seen.add(key)
        for ann in (labels, preds):
            if ann is None:
                continue
            if ann.image != key:
                raise FormatError(out_path, f"item {n + 1}: key {key!r} but its Annotation is for {ann.image!r}",
                                  "pair each image key with its own labels and predictions")
            for name in ann.labels:
                if name not in known:
                    unknown.setdefault(name, []).append(key)
        size = next((a.image_size for a in (labels, preds) if a is not None), None)
        data: dict = {"image": _image_url(key, image_url_prefix), KEY_FIELD: key}
        if size is not None and size[0] > 0 and size[1] > 0:
            data["width"], data["height"] = int(size[0]), int(size[1])
        task: dict = {"data": data}
        if labels is not None:
            task["annotations"] = [{"result": box_results(labels, f"t{n}a", with_scores=True),
                                    "was_cancelled": False, "ground_truth": False}]
        if preds is not None:
            result = box_results(preds, f"t{n}p", with_scores=True)
            scores = [r["score"] for r in result if "score" in r]
            prediction: dict = {"model_version": model_version, "result": result}
            if task_scores is not None and key in task_scores:
                prediction["score"] = float(task_scores[key])
            elif scores:
                prediction["score"] = float(np.mean(scores))
            task["predictions"] = [prediction]
        tasks.append(task)
    if unknown:
        check_classes(unknown, classes, out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(tasks, indent=2, ensure_ascii=False), encoding="utf-8")
    return out_path


# -- reading ------------------------------------------------------------------------------------

def _read_tasks(path: Path) -> list[dict]:
    doc = read_json(path, "export again from Label Studio with Export > JSON")
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list) or not all(isinstance(t, dict) for t in doc):
        raise FormatError(path, "is not a list of Label Studio tasks", "export with Export > JSON")
    for i, task in enumerate(doc):
        if not isinstance(task.get("data"), dict):
            hint = ("this looks like the JSON-MIN export; export with Export > JSON instead"
                    if "image" in task else "export with Export > JSON")
            raise FormatError(path, f"task {i + 1} has no 'data' object", hint)
    return doc


def _task_name(task: dict, i: int) -> str:
    return f"task {task.get('id', i + 1)}"


def task_key(task: dict, i: int, path: str | Path, known: Mapping[str, object] | None,
             field: str = TO_NAME) -> tuple[str | None, str]:
    """(key or None, the name the task used): data.boxloop_key first, else the image URL in data[field]."""
    data = task["data"]
    where = f"{path} {_task_name(task, i)}"
    if isinstance(data.get(KEY_FIELD), str) and data[KEY_FIELD].strip():
        name = data[KEY_FIELD]
        return match_image_key(name, known, where), name
    url = data.get(field)
    if not isinstance(url, str) or not url.strip():
        raise FormatError(where, f"has no data.{field} (image URL) and no data.{KEY_FIELD}",
                          "the tasks must come from a project whose Image tag reads $image")
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    if "d" in query:  # /data/local-files/?d=path relative to the document root
        name = query["d"][0]
    else:
        name = unquote(parsed.path)
        if name.startswith("/data/upload/"):  # /data/upload/<project>/<8 hex>-<file name>
            name = _UPLOAD_HASH.sub("", name.rsplit("/", 1)[-1])
        name = name.lstrip("/")
    return match_image_key(name, known, where), name


def _pick_annotation(task: dict) -> dict | None:
    """The answer: the last annotation not cancelled (by updated_at, else creation, else list order)."""
    anns = task.get("annotations")
    if anns is None:
        anns = task.get("completions")  # Label Studio < 1.0 exports
    if not isinstance(anns, list):
        return None
    valid = [(i, a) for i, a in enumerate(anns) if isinstance(a, dict) and not a.get("was_cancelled", False)]
    if not valid:
        return None
    if all(isinstance(a.get("updated_at") or a.get("created_at"), str) for _, a in valid):
        valid.sort(key=lambda ia: (ia[1].get("updated_at") or ia[1].get("created_at"), ia[0]))
    return valid[-1][1]


# result types read as boxes -> the outline they are (None: a rectangle)
_SHAPES = {"rectanglelabels": None, "polygonlabels": "polygon", "ellipselabels": "ellipse"}
# results that mark no region of the image (a comment, a rating, a relation between two regions)
_NOT_REGIONS = {"textarea", "rating", "taxonomy", "relation", "number", "datetime", "pairwise", "ranker"}


def _result_box(value: dict, rtype: str, size: tuple[float, float], where: str, what: str, name: str,
                warnings: list[str]) -> tuple[float, float, float, float]:
    """xyxy in pixels of a rectangle (its envelope when rotated, with a warning), a polygon or an
    ellipse result, from Label Studio's percent of the image."""
    W, H = size
    if rtype == "polygonlabels":
        pts = value.get("points")
        if not isinstance(pts, list) or not pts or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pts):
            raise FormatError(where, f"{what} is a polygon without points [[x, y], ...]",
                              "export again with Export > JSON")
        return polygon_box([(_number(x, where, f"{what} point") * W / 100.0,
                             _number(y, where, f"{what} point") * H / 100.0) for x, y in pts])
    if rtype == "ellipselabels":
        cx, cy, rx, ry = (_number(value.get(k), where, f"{what} {k}") for k in ("x", "y", "radiusX", "radiusY"))
        rotation = _number(value.get("rotation", 0) or 0, where, f"{what} rotation")
        return ellipse_box(cx * W / 100.0, cy * H / 100.0, rx * W / 100.0, ry * H / 100.0, rotation)
    px, py, pw, ph = (_number(value.get(k), where, f"{what} {k}") for k in ("x", "y", "width", "height"))
    x, y, w, h = px * W / 100.0, py * H / 100.0, pw * W / 100.0, ph * H / 100.0
    rotation = _number(value.get("rotation", 0) or 0, where, f"{what} rotation")
    if rotation % 360 != 0:
        warnings.append(f"{where}: {what} ({name!r}) is rotated by {rotation:g} degrees; replaced by its axis-aligned "
                        "envelope")
        return rotated_envelope(x, y, w, h, rotation, about_centre=False)
    return x, y, x + w, y + h


def _result_size(r: dict) -> tuple[float, float] | None:
    w, h = r.get("original_width"), r.get("original_height")
    if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
        return float(w), float(h)
    return None


def load_labelstudio(
    json_path: str | Path,
    known_images: Mapping[str, tuple[int, int]] | None = None,
    classes: Sequence[str] | None = None,
) -> FlaggedLoadResult:
    """Read Label Studio's JSON export (a list of tasks) into Annotations keyed by image.

    With `known_images` ({key: (width, height)}), every task must name a known image and boxes are
    scaled to the known size; without, keys come from the tasks and sizes from `original_width` /
    `original_height` (or `data.width` / `data.height`). With `classes`, every box label must be one
    of them. Either mismatch raises FormatError listing everything that did not match, and nothing
    is returned. Boxes leaving the image (outside 0-100 %) are clipped with a warning; rotated boxes
    become their axis-aligned envelope with a warning; polygons and ellipses their bounding boxes (one
    warning per file); other regions (keypoints, brushes ...) are ignored with a warning, and a task
    with only such regions is left unanswered and named, never called a negative. Image-level
    `choices` go to `flags`. Boxes are Source.HUMAN (the annotator submitted them); a score a box
    carried over from a prediction is kept in its provenance.
    """
    path = Path(json_path)
    return load_tasks(_read_tasks(path), path, known_images, classes)


def load_tasks(tasks: list[dict], path: str | Path, known_images: Mapping[str, tuple[int, int]] | None = None,
               classes: Sequence[str] | None = None) -> FlaggedLoadResult:
    """`load_labelstudio` on tasks already parsed (an export file's, or a webhook's task with its
    annotation); `path` names their source in messages."""
    warnings: list[str] = []
    out: dict[str, Annotation] = {}
    flags: dict[str, tuple[str, ...]] = {}
    used: dict[str, list[str]] = {}
    order: list[str] = []
    unmatched: list[str] = []
    claimed: dict[str, str] = {}
    unusable: list[str] = []
    ignored_types: dict[str, int] = {}
    outlines: dict[str, int] = {}
    for i, task in enumerate(tasks):
        tname = _task_name(task, i)
        where = f"{path} {tname}"
        key, asked = task_key(task, i, path, known_images)
        if key is None:
            unmatched.append(f"{tname} -> {asked}")
            continue
        if key in claimed:
            raise FormatError(path, f"{claimed[key]} and {tname} both describe image {key}",
                              "keep one task per image")
        claimed[key] = tname
        if known_images is not None and known_images[key] is None:
            unusable.append(key)  # an image the caller cannot use (init skips it): its labels are not read
            continue
        ann = _pick_annotation(task)
        if ann is None:
            continue  # unanswered (no annotation, or skipped/cancelled)
        results = ann.get("result", [])
        if not isinstance(results, list):
            raise FormatError(where, "annotation 'result' is not a list", "export again with Export > JSON")
        data = task["data"]
        size: tuple[float, float] | None = None
        if known_images is not None:
            kw, kh = known_images[key]
            size = (float(kw), float(kh))
        xyxy: list[tuple[float, float, float, float]] = []
        labels: list[str] = []
        prov: list[Provenance] = []
        task_flags: list[str] = []
        unread: list[str] = []
        for j, r in enumerate(results):
            if not isinstance(r, dict):
                raise FormatError(where, f"result {j + 1} is not an object", "export again with Export > JSON")
            rtype = r.get("type")
            value = r.get("value") if isinstance(r.get("value"), dict) else {}
            if rtype == "choices":
                task_flags.extend(str(c) for c in value.get("choices", []))
                continue
            if rtype not in _SHAPES:
                ignored_types[str(rtype)] = ignored_types.get(str(rtype), 0) + 1
                if rtype not in _NOT_REGIONS:
                    unread.append(str(rtype))
                continue
            names = value.get(rtype)
            if not isinstance(names, list) or not names:
                warnings.append(f"{where}: box {j + 1} has no label; dropped")
                continue
            if len(names) > 1:
                warnings.append(f"{where}: box {j + 1} has several labels {names}; kept the first")
            name = str(names[0])
            rsize = _result_size(r)
            if size is None:
                size = rsize
            elif rsize is not None and (abs(rsize[0] - size[0]) > 0.5 or abs(rsize[1] - size[1]) > 0.5):
                warnings.append(f"{where}: box {j + 1} says the image is {rsize[0]:g}x{rsize[1]:g} but {key} "
                                f"is {size[0]:g}x{size[1]:g}; percentages applied to the real size")
            if size is None:
                raise FormatError(where, f"box {j + 1} has no original_width/original_height",
                                  "pass the project's images so boxes can be converted from percent")
            box = _result_box(value, rtype, size, where, f"box {j + 1}", name, warnings)
            if _SHAPES[rtype]:
                outlines[_SHAPES[rtype]] = outlines.get(_SHAPES[rtype], 0) + 1
            xyxy.append(box)
            labels.append(name)
            score = r.get("score")
            score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None
            prov.append(Provenance(source=Source.HUMAN, score=score))
            if name not in used:
                order.append(name)
            used.setdefault(name, []).append(key)
        if task_flags:
            flags[key] = tuple(dict.fromkeys(task_flags))
        if any(f.lower() == SKIP_FLAG for f in task_flags):
            warnings.append(f"{where}: flagged {SKIP_FLAG!r}; {key} left unanswered")
            continue
        if unread and not xyxy:
            warnings.append(only_other_shapes(where, key, unread))
            continue
        if size is None:
            if isinstance(data.get("width"), (int, float)) and isinstance(data.get("height"), (int, float)):
                size = (float(data["width"]), float(data["height"]))
            else:
                size = (0.0, 0.0)  # a negative whose size nobody wrote down: unknown, nothing to clip
        if xyxy and any(f.lower() == NEGATIVE_FLAG for f in task_flags):
            warnings.append(f"{where}: flagged {NEGATIVE_FLAG!r} but has {len(xyxy)} box(es); boxes kept")
        image_size = (int(round(size[0])), int(round(size[1])))
        annotation = Annotation(image=key, boxes=Boxes(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4), image_size),
                                labels=tuple(labels), provenance=tuple(prov))
        cleaned = clean_boxes(annotation, where, warnings)
        if len(annotation) and not len(cleaned):
            warnings.append(f"{where}: every box was dropped; {key} is left unanswered, not called a negative")
            continue
        out[key] = cleaned
    check_project(path, unmatched, used, classes, "task(s)")
    note = outlines_note(path, outlines)
    if note:
        warnings.append(note)
    for rtype, count in sorted(ignored_types.items()):
        warnings.append(f"{path}: {count} result(s) of type {rtype!r} ignored (boxloop reads rectanglelabels, "
                        "polygonlabels and ellipselabels as boxes, and choices)")
    return FlaggedLoadResult(annotations=out, classes=list(classes) if classes is not None else order,
                             warnings=warnings, flags=flags, ignored=unusable)
