"""The review of auto-labels: `export --subset pseudo --out DIR` then `import --annotations DIR`.

An export of the pseudo subset to a folder is a review batch: beside the label files it writes
`batch.json` (kind "review") naming the exported images and, for formats with a file per image,
each file's fingerprint. Importing that folder makes each reviewed image a human-labelled one with
exactly the boxes the reviewer left (pseudo boxes retired, the image's split kept). The rule for
"reviewed" is the query batch's (loop.human): a label file never saved since the export is no
answer; an image whose boxes are still the auto-labels (human.same_labels) where nothing tells
whether a person checked them (saved unchanged, or a one-file format) stays auto-labelled unless
`--unchanged answered`. What stays auto-labelled is named; it still trains as auto-labels.

Written by hand: the manifest and the rule's use; reading the files is `human.load_answers`' (the
same loaders and checks as a query batch), the cost `oracle.ImageOracle`'s, storing `Project.set_annotation`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from boxloop.formats import FormatError, listing
from boxloop.store import Project
from boxloop.structures import Annotation, Boxes, Provenance, Source

REVIEW = "review"


def export_subset(project: Project, fmt: str, out: Path, subset: str = "labelled", overwrite: bool = False,
                  log: Callable[[str], None] | None = None) -> Path:
    """`boxloop export`: a subset's labels in `fmt` under `out` (project.export_project); the pseudo
    subset written to a folder is a review batch, with its batch.json beside the labels."""
    from boxloop.project import export_project

    keys = list(project.annotations("pseudo")) if subset == "pseudo" else []
    return export_project(project, fmt, out, subset=subset, overwrite=overwrite, log=log,
                          add=lambda stage: write_review_manifest(project, stage, fmt, keys) if keys else None)


def import_batch(project: Project, source: Path, fmt: str | None = None, unchanged: str | None = None) -> dict[str, Any]:
    """`boxloop import`: a review batch (its batch.json says so) or the open query batch
    (human.import_answers); `unchanged` as there."""
    from boxloop.loop.human import import_answers, read_manifest

    source = Path(source)
    manifest = read_manifest(source if source.is_dir() else source.parent)
    if manifest is not None and manifest.get("kind") == REVIEW:
        return import_review(project, source, fmt, manifest, unchanged)
    return import_answers(project, source, fmt, unchanged=unchanged)


def write_review_manifest(project: Project, stage: Path, fmt: str, keys: Iterable[str]) -> None:
    """batch.json of a review batch in `stage` (the export's folder before it moves into place): the
    exported images and the fingerprint of every file written."""
    from boxloop.loop.human import BATCH_FILE, fingerprint

    last = project.last_round()
    manifest = {"kind": REVIEW, "project": str(project.dir), "round": last.id if last else 0, "format": fmt,
                "images": {k: k for k in keys},
                "label_files": {f.relative_to(stage).as_posix(): fingerprint(f) for f in sorted(stage.rglob("*"))
                                if f.is_file()},
                "note": "Correct the auto-labels (move, relabel, delete, add) and save; then run boxloop import. "
                        "An image left as exported stays auto-labelled."}
    (stage / BATCH_FILE).write_text(json.dumps(manifest, indent=1))


def import_review(project: Project, source: Path, fmt: str | None, manifest: dict[str, Any],
                  unchanged: str | None = None) -> dict[str, Any]:
    """The reviewed images of a review batch as human labels, all or nothing; returns what happened
    (as `human.import_answers` does)."""
    from boxloop import formats
    from boxloop.loop.human import UNCHANGED, fingerprint, load_answers, same_labels
    from boxloop.loop.oracle import ImageOracle

    if unchanged not in (None, *UNCHANGED):
        raise ValueError(f"--unchanged must be one of {', '.join(UNCHANGED)}, got {unchanged!r}")
    folder = source if source.is_dir() else source.parent
    known: dict[str, str] = manifest["images"]
    written = manifest.get("label_files") or {}
    fmt = (manifest.get("format") if source.is_dir() else None) if fmt is None else fmt.lower()
    fmt = fmt or formats.detect_format(source)
    if fmt == "labelstudio" and source.is_dir():  # tasks.json holds the model's boxes, not the reviewer's
        raise FormatError(source, "is the review folder; Label Studio's answers are in its JSON export",
                          f"export the project from Label Studio (Export > JSON) into {source} and import that file")
    answers, warnings, flags = load_answers(project, source, fmt, known)
    pseudo = project.annotations("pseudo")
    reviewed: dict[str, Annotation] = {}
    unsaved, unsure, gone, unknown = [], [], [], []
    for name, ann in answers.items():
        key = known.get(name, name)
        if key not in known.values():
            unknown.append(name)
            continue
        if key not in pseudo:  # labelled since the export, or its auto-labels were retired
            gone.append(key)
            continue
        path = formats.label_file(fmt, folder, key) if source.is_dir() else source
        rel = path.relative_to(folder).as_posix() if path is not None and path.is_relative_to(folder) else None
        now = fingerprint(path) if rel in written and path.is_file() else None
        per_file = formats.ANSWER_EVIDENCE.get(fmt) == "file"
        if per_file and now is not None and now == written[rel]:
            unsaved.append(key)  # never saved since the export
        elif (per_file and now is not None and now[0] != written[rel][0]) or flags.get(name) \
                or not same_labels(ann, pseudo[key]) or unchanged == "answered":  # saved other bytes, tagged, changed
            reviewed[key] = ann
        else:
            unsure.append(key)
    if unknown:
        raise FormatError(source, f"labels for {len(unknown)} image(s) that this review batch did not export: "
                          f"{listing(sorted(unknown), 10)}", "import only the review batch's own images")
    if gone:
        warnings = [*warnings, f"{source}: {len(gone)} image(s) are no longer auto-labelled (labelled since the "
                    f"export); left as they are: {listing(sorted(gone), 10)}"]
    if unsaved or unsure:
        warnings = [*warnings, f"{source}: {len(unsaved) + len(unsure)} image(s) still hold the auto-labels as "
                    f"exported and stay auto-labelled: {listing(sorted(unsaved + unsure), 10)}; correct them, "
                    "then import again" + ("; --unchanged answered takes the saved ones as checked" if unsure else "")]
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
            "cost": cost.as_dict(), "warnings": warnings, "left_open": len(unsaved) + len(unsure)}
