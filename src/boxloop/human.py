"""The human oracle: write a query batch for a labelling tool, and take the answers back.

A batch folder holds the queried images with the model's boxes as pre-annotations (seed 003 §5.3:
checking a box costs 21.9 s, drawing one 50.8 s), in the format the annotator's tool opens
(VOC XML beside each image for LabelImg/CVAT, a COCO file, YOLO txt, Label Studio tasks, CVAT XML),
plus `batch.json`, which names the project, round and queried images so that answers map back.

Importing checks everything before writing anything: every answered image must be in the open
batch (not a stale one, not never queried), every class known; then the answers go through the
same oracle step as the simulated annotator (`loop.step_oracle`), so labels, cost and the round's
progress land in one transaction. Written by hand: the batch layout and the validation; file
formats are `boxloop.formats`, costs `boxloop.oracle`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from boxloop.formats import FormatError
from boxloop.store import Project
from boxloop.structures import Annotation, Boxes, Detections, Provenance, Source

BATCH_FILE = "batch.json"
QUERY_FORMATS = ("voc", "coco", "yolo", "labelstudio", "cvat")


def open_round(project: Project) -> dict[str, Any] | None:
    """The round waiting for answers (the last one, at step 'oracle' with open queries), if any."""
    last = project.last_round()
    if last is None or last["step"] != "oracle":
        return None
    return last if project.queries(round=last["id"], state="open") else None


def _batch_name(key: str) -> str:
    """File name of a queried image inside the batch folder (subfolders flattened, stable)."""
    return key.replace("/", "__")


def write_batch(project: Project, round_id: int, out: Path, fmt: str = "voc", display_threshold: float | None = None,
                copy_images: bool = True) -> Path:
    """The open queries of `round_id` as a folder a labelling tool opens, pre-annotated."""
    from boxloop import formats

    if fmt not in QUERY_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(QUERY_FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / BATCH_FILE).exists():
        raise ValueError(f"{out} is not empty and holds no earlier batch; choose an empty folder for the batch")
    out.mkdir(parents=True, exist_ok=True)
    queries = project.queries(round=round_id, state="open")
    if not queries:
        raise ValueError(f"round {round_id} has no open queries to write")
    preds = project.load_predictions(round_id)
    names = project.classes
    if display_threshold is None:
        rnd = {r["id"]: r for r in project.rounds()}.get(round_id, {})
        display_threshold = float(rnd.get("config", {}).get("display_threshold", 0.3))
    unit = "boxes" if any(q["box_index"] is not None for q in queries) else "images"
    by_image: dict[str, list[int]] = {}
    for q in queries:
        by_image.setdefault(q["path"], [])
        if q["box_index"] is not None:
            by_image[q["path"]].append(int(q["box_index"]))
    root = project.image_root
    pre: dict[str, Annotation] = {}
    for key, box_idx in by_image.items():
        det = preds.get(key)
        if det is None:  # chosen without a model (`typical` at the cold start): nothing to pre-annotate
            det = Detections.empty(len(names), project.image(key).size)
        if unit == "boxes":
            keep = np.array(sorted(set(box_idx)), dtype=np.int64)
        else:
            keep = np.flatnonzero(det.scores >= display_threshold)
        ann = det[keep].to_annotation(key, names, source=Source.PREDICTED, round=round_id)
        name = _batch_name(key)
        pre[name] = replace(ann, image=name)
        if copy_images:
            shutil.copy2(root / key, out / name)
    items = list(pre.values())
    formats.dump(fmt, items, names, out, images_root=out)
    if fmt == "labelstudio":
        from urllib.parse import quote

        from boxloop.formats.labelstudio import LOCAL_FILES_PREFIX, dump_labelstudio_tasks, labeling_config

        # the model's boxes go in as predictions (pre-annotations), not as finished annotations. Label
        # Studio serves local files only from a storage in a subfolder of LOCAL_FILES_DOCUMENT_ROOT, so
        # the URLs name the batch folder: document root = the batch's parent, storage path = the batch.
        prefix = LOCAL_FILES_PREFIX + quote(out.resolve().name) + "/"
        dump_labelstudio_tasks([(a.image, None, a) for a in items], names, out / "tasks.json", image_url_prefix=prefix)
        (out / "labeling_config.xml").write_text(labeling_config(names))
    manifest = {
        "project": str(project.dir), "round": round_id, "unit": unit, "format": fmt,
        "images": {_batch_name(k): k for k in by_image},
        "queries": [q["id"] for q in queries],
        "note": "Correct the boxes (move, relabel, delete, add) and save; then run boxloop import.",
    }
    tmp = out / (BATCH_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / BATCH_FILE)
    return out


def _load_answers(project: Project, source: Path, fmt: str | None, known: dict[str, str]) -> tuple[dict, list[str]]:
    """Answers keyed by the batch's image names (plus the loader's warnings)."""
    from boxloop import formats

    source = Path(source)
    names = project.classes
    folder = source if source.is_dir() else source.parent
    if fmt is None:
        fmt = formats.detect_format(source)
    if fmt in ("labelstudio", "cvat"):
        sizes = {n: project.image(k).size for n, k in known.items()}
        if fmt == "labelstudio":
            from boxloop.formats.labelstudio import load_labelstudio

            res = load_labelstudio(source, known_images=sizes, classes=names)
        else:
            from boxloop.formats.cvat import load_cvat

            src = source / "annotations.xml" if source.is_dir() else source
            res = load_cvat(src, known_images=sizes, classes=names, reviewed=True)
        return res.annotations, res.warnings
    root = folder if any((folder / n).exists() for n in known) else None
    if fmt == "coco" and source.is_dir():
        source = source / "annotations.json"
    res = formats.load(fmt, source, images_root=root, classes=names)
    return res.annotations, res.warnings


def import_answers(project: Project, source: Path, fmt: str | None = None, config=None) -> dict[str, Any]:
    """Take an annotator's answers for the open batch. All or nothing; returns what happened."""
    from boxloop.loop import LoopConfig, step_oracle

    rnd = open_round(project)
    source = Path(source)
    manifest_path = (source if source.is_dir() else source.parent) / BATCH_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if rnd is None:
        stale = manifest is not None and manifest.get("round") is not None
        raise ValueError(f"{project.dir} has no open query batch to answer"
                         + (f" (the batch in {source} is for round {manifest['round']}, which is closed)" if stale else "")
                         + "; run `boxloop query` first")
    round_id = rnd["id"]
    if manifest is not None and int(manifest.get("round", -1)) != round_id:
        raise ValueError(f"stale batch: {source} answers round {manifest.get('round')}, but the open batch is round "
                         f"{round_id}; export it again with `boxloop query` and label that one")
    open_q = project.queries(round=round_id, state="open")
    queried = {q["path"] for q in open_q}
    known = dict(manifest["images"]) if manifest is not None else {}
    known.update({_batch_name(k): k for k in queried})
    if fmt is None and manifest is not None and source.is_dir():
        fmt = manifest.get("format")
    answers, warnings = _load_answers(project, source, fmt, known)
    mapped: dict[str, Annotation] = {}
    unknown: list[str] = []
    by_stem = {PurePosixPath(k).stem: k for k in queried}
    for key, ann in answers.items():
        target = known.get(key) or (key if key in queried else None) or by_stem.get(PurePosixPath(key).stem)
        if target is None or target not in queried:
            unknown.append(key)
            continue
        mapped[target] = ann
    if unknown:
        raise FormatError(source, f"answers for {len(unknown)} image(s) that are not in the open batch of round "
                          f"{round_id}: {', '.join(sorted(unknown)[:10])}" + (" ..." if len(unknown) > 10 else ""),
                          "import only the files of the batch `boxloop query` wrote; nothing was imported")
    if not mapped:
        raise FormatError(source, "no answer for any queried image", "save the corrected labels in the batch folder")
    # What the annotator saved is now human-checked, whatever provenance the pre-annotation had.
    truth = {}
    for key, ann in mapped.items():
        img = project.image(key)
        boxes = Boxes(ann.boxes.xyxy, img.size)
        truth[key] = Annotation(image=key, boxes=boxes, labels=ann.labels, difficult=ann.difficult,
                                truncated=ann.truncated,
                                provenance=tuple(Provenance(source=Source.HUMAN, round=round_id) for _ in ann.labels))
    cfg = config or LoopConfig(**{k: v for k, v in rnd["config"].items() if k in LoopConfig.__dataclass_fields__})
    cost = step_oracle(project, round_id, cfg, truth, only=set(truth))
    return {"round": round_id, "images": len(truth), "boxes": sum(len(a) for a in truth.values()),
            "cost": cost.as_dict(), "warnings": warnings,
            "left_open": len(project.queries(round=round_id, state="open"))}
