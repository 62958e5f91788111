"""The review of auto-labels: `export --subset pseudo --out DIR` then `import --annotations DIR`.

An export of the pseudo subset to a folder is a review batch: beside the label files it writes
`batch.json` (kind "review"), which names the exported images and records, per image, what the
export wrote (the boxes as the format reads them back, and for formats with a file per image that
file's fingerprint). Importing that folder makes each reviewed image a human-labelled one with
exactly the boxes the reviewer left (pseudo boxes retired, the image's split kept). An image whose
boxes read back as exported and whose own label file was not saved again is not reviewed: it stays
auto-labelled, with a warning naming it (what boxloop wrote and nobody changed is no answer). In a
one-file format (COCO, Label Studio, CVAT) only changed boxes tell; to accept such an image as it
is, review it in VOC or YOLO and save it.

Written by hand: the manifest and the rule; reading the files is `human.load_answers`' (the same
loaders and checks as a query batch), the cost `oracle.ImageOracle`'s, storing `Project.set_annotation`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from boxloop.formats import FormatError, label_file, listing
from boxloop.store import Project
from boxloop.structures import Annotation, Boxes, Provenance, Source

REVIEW = "review"


def _content(ann: Annotation) -> str:
    """The boxes and labels of an answer, as a digest (tenths of a pixel: what a format keeps)."""
    rows = sorted([lab, *(round(float(v), 1) for v in box)] for lab, box in zip(ann.labels, ann.boxes.xyxy))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def export_review(project: Project, fmt: str, out: Path, overwrite: bool = False,
                  log: Callable[[str], None] | None = None) -> Path:
    """`export --subset pseudo`: the auto-labels in `fmt` under `out` (project.export_project), and
    when `out` is a folder, the review batch's batch.json beside them."""
    from boxloop.project import export_project

    keys = list(project.annotations("pseudo"))
    return export_project(project, fmt, out, subset="pseudo", overwrite=overwrite, log=log,
                          add=lambda stage: write_review_manifest(project, stage, fmt, keys) if keys else None)


def import_batch(project: Project, source: Path, fmt: str | None = None) -> dict[str, Any]:
    """`boxloop import`: a review batch (its batch.json says so) or the open query batch
    (human.import_answers)."""
    from boxloop.loop.human import import_answers, read_manifest

    source = Path(source)
    manifest = read_manifest(source if source.is_dir() else source.parent)
    if manifest is not None and manifest.get("kind") == REVIEW:
        return import_review(project, source, fmt, manifest)
    return import_answers(project, source, fmt)


def write_review_manifest(project: Project, stage: Path, fmt: str, keys: Iterable[str]) -> None:
    """batch.json of a review batch in `stage` (the export's folder before it moves into place): the
    exported images and what was written for each, as read back by the import's own loader."""
    from boxloop.loop.human import BATCH_FILE, fingerprint, load_answers

    known = {k: k for k in keys}
    written, _ = load_answers(project, stage / "tasks.json" if fmt == "labelstudio" else stage, fmt, known)
    exported = {}
    for key in known:
        path = label_file(fmt, stage, key)
        exported[key] = {"content": _content(written[key]) if key in written else None,
                         "file": [path.relative_to(stage).as_posix(), *fingerprint(path)]
                         if path is not None and path.is_file() else None}
    last = project.last_round()
    manifest = {"kind": REVIEW, "project": str(project.dir), "round": last.id if last else 0, "format": fmt,
                "images": known, "exported": exported,
                "note": "Correct the auto-labels (move, relabel, delete, add) and save; then run boxloop import. "
                        "An image left as exported stays auto-labelled."}
    (stage / BATCH_FILE).write_text(json.dumps(manifest, indent=1))


def import_review(project: Project, source: Path, fmt: str | None, manifest: dict[str, Any]) -> dict[str, Any]:
    """The reviewed images of a review batch as human labels, all or nothing; returns what happened
    (as `human.import_answers` does)."""
    from boxloop.loop.human import fingerprint, load_answers
    from boxloop.loop.oracle import ImageOracle

    folder = source if source.is_dir() else source.parent
    known: dict[str, str] = manifest["images"]
    exported = manifest.get("exported") or {}
    if fmt is None and source.is_dir():
        fmt = manifest.get("format")
    if fmt == "labelstudio" and source.is_dir():  # tasks.json holds the model's boxes, not the reviewer's
        raise FormatError(source, "is the review folder; Label Studio's answers are in its JSON export",
                          f"export the project from Label Studio (Export > JSON) into {source} and import that file")
    answers, warnings = load_answers(project, source, fmt, known)
    pseudo = project.annotations("pseudo")
    reviewed: dict[str, Annotation] = {}
    unchanged, gone, unknown = [], [], []
    for name, ann in answers.items():
        key = known.get(name, name)
        if key not in known.values():
            unknown.append(name)
            continue
        if key not in pseudo:  # labelled since the export, or its auto-labels were retired
            gone.append(key)
            continue
        was = exported.get(key) or {}
        file = was.get("file")
        saved = bool(file) and (folder / file[0]).is_file() and fingerprint(folder / file[0]) != file[1:]
        if saved or _content(ann) != was.get("content"):
            reviewed[key] = ann
        else:
            unchanged.append(key)
    if unknown:
        raise FormatError(source, f"labels for {len(unknown)} image(s) that this review batch did not export: "
                          f"{listing(sorted(unknown), 10)}", "import only the review batch's own images")
    if gone:
        warnings = [*warnings, f"{source}: {len(gone)} image(s) are no longer auto-labelled (labelled since the "
                    f"export); left as they are: {listing(sorted(gone), 10)}"]
    if unchanged:
        warnings = [*warnings, f"{source}: {len(unchanged)} image(s) are as the export wrote them and stay "
                    f"auto-labelled: {listing(sorted(unchanged), 10)}; correct them (or save them in VOC or YOLO "
                    "to accept them as they are), then import again"]
    if not reviewed:
        raise FormatError(source, "no reviewed image: every image is as the export wrote it, or labelled since",
                          "correct the auto-labels in your labelling tool and save them, then import again")
    round_id = int(manifest["round"])
    truth = {k: Annotation(image=k, boxes=Boxes(a.boxes.xyxy, project.image(k).size), labels=a.labels,
                           difficult=a.difficult, truncated=a.truncated,
                           provenance=tuple(Provenance(source=Source.HUMAN, round=round_id) for _ in a.labels))
             for k, a in reviewed.items()}
    _, cost = ImageOracle(truth, class_names=project.classes).answer(list(truth), pre_annotations=pseudo)
    with project.transaction():
        for key, ann in truth.items():
            split = project.image(key).split
            project.set_annotation(key, ann, round=round_id)
            if split is None:  # auto-labelled in the loop's pool: it joins training like any new label
                project.set_split([key], "train")
    return {"round": round_id, "images": len(truth), "boxes": sum(len(a) for a in truth.values()),
            "cost": cost.as_dict(), "warnings": warnings, "left_open": len(unchanged), "review": True}
