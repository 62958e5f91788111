"""The human oracle: write a query batch for a labelling tool, and take the answers back.

A batch folder holds the queried images with the model's boxes as pre-annotations (LocAwareAL §5.3:
checking a box costs 21.9 s, drawing one 50.8 s), in the format the annotator's tool opens
(VOC XML beside each image for LabelImg/CVAT, a COCO file, YOLO txt, Label Studio tasks, CVAT XML),
plus `batch.json`, which names the project, round and queried images so that answers map back.
`query_round` is `boxloop query`'s round up to that batch: which round it is, an unanswered batch
replaced only when asked, a given checkpoint as the round's model, the cold start.

Batch file names flatten subfolders ('a/b.jpg' -> 'a__b.jpg') and are made unique within the batch,
case-insensitively and by stem (a real 'a__b.jpg' keeps its name, the flattened one becomes
'a__b~2.jpg'), so no two queried images share a file or an answer; `batch.json` maps them back.

Importing checks everything before writing anything: every answered image must be in the open
batch (not a stale one, not never queried), every class known; answers for images imported before
in the same round (a labelling tool exports every task each time) are left as imported, with a
warning. An empty label file that boxloop wrote (a cold-start image, or one where the model found
nothing) and that nobody has saved since (same bytes, same modification time) is not an answer: the
image stays open, with a warning, instead of being taken as holding no object (a labelling tool
that was never opened on it, or a batch labelled half-way, must not turn objects into background).
Saving such an image in the tool, even with no box, answers it. Then the answers go through the
same oracle step as the simulated annotator (`loop.step_oracle`), so labels, cost and the round's
progress land in one transaction. Written by hand: the batch layout and names and the validation;
file formats are `boxloop.formats`, costs `boxloop.loop.oracle`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from boxloop.formats import FormatError
from boxloop.store import Project, Round
from boxloop.structures import Annotation, Boxes, Detections, Provenance, Source

if TYPE_CHECKING:
    from boxloop.loop.config import LoopConfig
    from boxloop.scale.ray_scoring import RayScoring

BATCH_FILE = "batch.json"
QUERY_FORMATS = ("voc", "coco", "yolo", "labelstudio", "cvat")


def _fingerprint(path: Path) -> list:
    """[sha256, mtime_ns]: a file saved again by a tool changes at least its modification time."""
    return [hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns]


def _unsaved_empty(folder: Path, manifest: dict | None, mapped: dict[str, Annotation],
                   known: dict[str, str]) -> list[str]:
    """Batch names whose empty label file is still the one `write_batch` wrote; drops them from `mapped`."""
    left = []
    for name, (rel, digest, mtime) in sorted(((manifest or {}).get("empty_files") or {}).items()):
        key, path = known.get(name), folder / rel
        if key in mapped and len(mapped[key]) == 0 and path.is_file() and _fingerprint(path) == [digest, mtime]:
            del mapped[key]
            left.append(name)
    return left


def open_round(project: Project) -> Round | None:
    """The round waiting for answers (the last one, at step 'oracle' with open queries), if any."""
    last = project.last_round()
    if last is None or last.step != "oracle":
        return None
    return last if project.queries(round=last.id, state="open") else None


def batch_names(keys: Iterable[str]) -> dict[str, str]:
    """{batch file name: image key}: subfolders flattened with '__', every name unique in the batch.

    A flattened name can be another image's real name ('a/b.jpg' and 'a__b.jpg'), and answer files
    are named after the stem, on file systems that may ignore case: a name whose case-folded stem is
    taken gets '~2', '~3', ... before its extension. Images without a subfolder come first, then by
    key, so the names depend only on the set of keys."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for key in sorted(set(keys), key=lambda k: ("/" in k, k)):
        flat = key.replace("/", "__")
        stem, ext = (flat.rsplit(".", 1)[0], "." + flat.rsplit(".", 1)[1]) if "." in flat else (flat, "")
        name, n = flat, 1
        while name[: len(name) - len(ext)].casefold() in taken:
            n += 1
            name = f"{stem}~{n}{ext}"
        taken.add(name[: len(name) - len(ext)].casefold())
        out[name] = key
    return out


def check_batch_target(out: Path, fmt: str) -> None:
    """Refuse a format or a folder `write_batch` would refuse, before a round spends any work."""
    if fmt not in QUERY_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(QUERY_FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; pass a folder for the batch")
    if out.exists() and any(out.iterdir()) and not (out / BATCH_FILE).exists():
        raise ValueError(f"{out} is not empty and holds no earlier batch; choose an empty folder for the batch")


def query_round(project: Project, config: LoopConfig, checkpoint: Path | None = None, force: bool = False,
                strict: bool = False, scoring: RayScoring | None = None) -> tuple[int, dict[str, Any], bool]:
    """Run `boxloop query`'s round up to its open batch; (round id, its metrics, whether it was a cold start).

    An unanswered batch is replaced only with `force` (its queries go stale); a round waiting in its
    semi step finishes first. `checkpoint`: the round's model, instead of training one. A project
    with no model and no label gets its first batch by typicality (coldstart). Hold the writer lock."""
    from boxloop.loop.coldstart import needs_cold_start, open_select_round
    from boxloop.loop.round import run_round
    from boxloop.loop.model import model_dir

    pending = open_round(project)
    if pending is not None and not force:
        n = len(project.queries(round=pending.id, state="open"))
        raise ValueError(f"round {pending.id} still has {n} open queries: answer them with `boxloop import` "
                         "or pass --force to replace the batch")
    last = project.last_round()
    if last is not None and last.step == "semi":
        run_round(project, config, None, last.id)
    if pending is not None:
        with project.transaction():
            project.mark_stale()
            project.update_round(pending.id, step="done", status="done")
    last = project.last_round()
    round_id = 1 if last is None else (last.id if last.step not in ("done", None) else last.id + 1)
    if checkpoint is not None and project.round(round_id) is None:
        # the round row decides, not the file: a copy killed before its round row is made again
        from boxloop.train.checkpoints import load_detector

        load_detector(checkpoint, expect_classes=project.classes)  # refuses another class list
        from boxloop.train.checkpoints import copy_checkpoint

        copy_checkpoint(checkpoint, model_dir(project, round_id) / "best.pt")
        project.start_round(config.to_dict(), step="evaluate", round_id=round_id)
    cold = checkpoint is None and needs_cold_start(project)
    if cold:  # nothing to train on: the first batch by typicality in the pretrained embedding
        config = open_select_round(project, config, round_id)
    return round_id, run_round(project, config, None, round_id, strict=strict, scoring=scoring), cold


def write_batch(project: Project, round_id: int, out: Path, fmt: str = "voc", display_threshold: float | None = None,
                copy_images: bool = True) -> Path:
    """The open queries of `round_id` as a folder a labelling tool opens, pre-annotated."""
    from boxloop import formats

    check_batch_target(out, fmt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    queries = project.queries(round=round_id, state="open")
    if not queries:
        raise ValueError(f"round {round_id} has no open queries to write")
    preds = project.load_predictions(round_id)
    names = project.classes
    if display_threshold is None:  # the round's own, from its saved config (nested, or flat in older projects)
        from boxloop.loop.config import LoopConfig

        rnd = project.round(round_id)
        display_threshold = LoopConfig.from_dict(rnd.config if rnd else {}).selection.display_threshold
    unit = "boxes" if any(q.box_index is not None for q in queries) else "images"
    by_image: dict[str, list[int]] = {}
    for q in queries:
        by_image.setdefault(q.path, [])
        if q.box_index is not None:
            by_image[q.path].append(int(q.box_index))
    root = project.image_root
    names_of = {key: name for name, key in batch_names(by_image).items()}
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
        name = names_of[key]
        pre[name] = replace(ann, image=name)
        if copy_images:
            shutil.copy2(root / key, out / name)
    items = list(pre.values())
    formats.dump(fmt, items, names, out, images_root=out)
    empty_files = {}  # an empty file nobody saves again is no answer (see the module docstring)
    for name, ann in pre.items():
        path = formats.label_file(fmt, out, name)
        if len(ann) == 0 and path is not None and path.is_file():
            empty_files[name] = [path.relative_to(out).as_posix(), *_fingerprint(path)]
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
        "images": {names_of[k]: k for k in by_image},
        "queries": [q.id for q in queries],
        "note": "Correct the boxes (move, relabel, delete, add) and save; then run boxloop import. An image "
                "whose label file is empty and never saved stays open: save it, even with no box, to answer it.",
        "empty_files": empty_files,
    }
    tmp = out / (BATCH_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / BATCH_FILE)
    return out


def _load_answers(project: Project, source: Path, fmt: str | None, known: dict[str, str]) -> tuple[dict, list[str]]:
    """Answers keyed by the batch's image names or the project's keys (plus the loader's warnings).

    Sizes come from the project, never from the files in the folder: an answer names an image of the
    batch, or of the project (which `import_answers` then refuses with what that image is)."""
    from boxloop import formats

    source = Path(source)
    names = project.classes
    folder = source if source.is_dir() else source.parent
    if fmt is None:
        fmt = formats.detect_format(source)
    records = {r.path: r.size for r in project.images()}
    sizes = {**records, **{n: records[k] for n, k in known.items()}}
    if fmt in ("labelstudio", "cvat"):
        if fmt == "labelstudio":
            from boxloop.formats.labelstudio import load_labelstudio

            res = load_labelstudio(source, known_images=sizes, classes=names)
        else:
            from boxloop.formats.cvat import load_cvat

            src = source / "annotations.xml" if source.is_dir() else source
            res = load_cvat(src, known_images=sizes, classes=names, reviewed=True)
        return res.annotations, res.warnings
    if fmt == "coco" and source.is_dir():
        source = source / "annotations.json"
    try:
        res = formats.load(fmt, source, images_root=folder, classes=names, sizes=sizes)
    except formats.MissingImages as e:
        raise _not_in_batch(project, source, known, e.names) from None
    return res.annotations, res.warnings


def _round_keys(project: Project, round_id: int) -> dict[str, str]:
    """{image key: query state} of the round's batch (open and answered queries)."""
    return {q.path: q.state for q in project.queries(round=round_id) if q.state in ("open", "answered")}


def _not_in_batch(project: Project, source: Path, known: dict[str, str], asked: list[str],
                  round_id: int | None = None) -> FormatError:
    """The error for answers naming images outside the open batch, each said for what it is."""
    last = project.last_round()
    round_id = round_id if round_id is not None else (last.id if last else None)
    states = _round_keys(project, round_id) if round_id is not None else {}
    keys = set(project.image_ids())
    said = []
    for name in sorted(set(asked)):
        key = known.get(name) or (name if name in keys else None)
        if key is not None and states.get(key) == "answered":
            said.append(f"{name} (imported before, in this round)")
        elif key is not None and project.image(key).status == "labelled":
            said.append(f"{name} (labelled already, in round {project.image(key).round_labelled})")
        elif key is not None:
            said.append(f"{name} (in the project, but not asked in this batch)")
        else:
            said.append(f"{name} (not an image of this project)")
    from boxloop.formats import listing

    return FormatError(source, f"answers for {len(said)} image(s) that are not in the open batch of round "
                       f"{round_id}: {listing(said, 10)}",
                       "import only the answers for the batch `boxloop query` wrote; nothing was imported")


def import_answers(project: Project, source: Path, fmt: str | None = None, config=None) -> dict[str, Any]:
    """Take an annotator's answers for the open batch. All or nothing; returns what happened."""
    from boxloop.loop.round import step_oracle
    from boxloop.loop.config import LoopConfig

    rnd = open_round(project)
    source = Path(source)
    manifest_path = (source if source.is_dir() else source.parent) / BATCH_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if rnd is None:
        last = project.last_round()
        stale = manifest is not None and manifest.get("round") is not None
        answered = last is not None and last.step != "oracle" and any(
            q.state == "answered" for q in project.queries(round=last.id))
        raise ValueError(f"{project.dir} has no open query batch to answer"
                         + (f" (the batch in {source} is for round {manifest['round']}, which is closed)" if stale
                            else f" (the batch of round {last.id} was answered and imported already)" if answered
                            else "")
                         + "; run `boxloop query` for a new batch")
    round_id = rnd.id
    if manifest is not None and int(manifest.get("round", -1)) != round_id:
        raise ValueError(f"stale batch: {source} answers round {manifest.get('round')}, but the open batch is round "
                         f"{round_id}; export it again with `boxloop query` and label that one")
    states = _round_keys(project, round_id)
    queried = {k for k, st in states.items() if st == "open"}
    known = dict(manifest["images"]) if manifest is not None else batch_names(states)
    if fmt is None and manifest is not None and source.is_dir():
        fmt = manifest.get("format")
    answers, warnings = _load_answers(project, source, fmt, known)
    mapped: dict[str, Annotation] = {}
    unknown: list[str] = []
    before: list[str] = []
    by_stem: dict[str, list[str]] = {}
    for name, key in known.items():  # a tool may keep only the file name: match by stem when unique
        for stem in {PurePosixPath(name).stem, PurePosixPath(key).stem}:
            by_stem.setdefault(stem, []).append(key)
    for name, ann in answers.items():
        stem_hit = by_stem.get(PurePosixPath(name).stem, [])
        target = known.get(name) or (name if name in states else None) or (stem_hit[0] if len(stem_hit) == 1 else None)
        if target is not None and states.get(target) == "answered":
            before.append(name)
        elif target is None or target not in queried:
            unknown.append(name)
        else:
            mapped[target] = ann
    if unknown:
        raise _not_in_batch(project, source, known, unknown, round_id)
    unsaved = _unsaved_empty(source if source.is_dir() else source.parent, manifest, mapped, known)
    if unsaved:
        warnings = [*warnings, f"{source}: {len(unsaved)} image(s) still have the empty label file boxloop wrote, "
                    f"never saved since, so they stay open instead of counting as holding no object: "
                    f"{', '.join(unsaved[:10])}" + (" ..." if len(unsaved) > 10 else "")
                    + "; draw their boxes, or save them in your tool with no box to say they hold none, "
                    "then import again"]
    if before:
        warnings = [*warnings, f"{source}: {len(before)} answer(s) for images imported before in round {round_id} "
                    f"were left as imported: {', '.join(sorted(before)[:10])}" + (" ..." if len(before) > 10 else "")]
    if not mapped:
        if before:
            raise FormatError(source, f"every answer in it was imported before (round {round_id}); nothing new to "
                              "import", "label the images still open, export again and import that")
        if unsaved:
            raise FormatError(source, f"no answer yet: the {len(unsaved)} label file(s) of the batch are still the "
                              "empty ones boxloop wrote, never saved", "draw the boxes in your labelling tool and "
                              "save each image; save an image with no box to say it holds no object")
        raise FormatError(source, "no answer for any queried image", "save the corrected labels in the batch folder")
    # What the annotator saved is now human-checked, whatever provenance the pre-annotation had.
    truth = {}
    for key, ann in mapped.items():
        img = project.image(key)
        boxes = Boxes(ann.boxes.xyxy, img.size)
        truth[key] = Annotation(image=key, boxes=boxes, labels=ann.labels, difficult=ann.difficult,
                                truncated=ann.truncated,
                                provenance=tuple(Provenance(source=Source.HUMAN, round=round_id) for _ in ann.labels))
    cfg = config or LoopConfig.from_dict(rnd.config)  # nested, or flat in older projects
    cost = step_oracle(project, round_id, cfg, truth, only=set(truth))
    return {"round": round_id, "images": len(truth), "boxes": sum(len(a) for a in truth.values()),
            "cost": cost.as_dict(), "warnings": warnings,
            "left_open": len(project.queries(round=round_id, state="open"))}
