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
warning. What boxloop wrote and nobody changed is not an answer, in every format, empty or not (a
tool never opened on an image, or a batch labelled half-way, must not turn the model's guesses into
ground truth nor objects into background). How each format tells is `formats.ANSWER_EVIDENCE`: a
VOC or YOLO label file still holding the bytes and modification time boxloop wrote was never saved,
and its image stays open, with a warning; one with other bytes was saved by a tool and answers it;
Label Studio keeps a person's submissions apart from the predictions. Where nothing tells (a COCO
or CVAT file holds every image, so an image whose labels are still exactly boxloop's, within half a
pixel, may be one nobody opened; a file with boxloop's bytes under a new modification time was
saved unchanged, or only copied), import stops and names the images unless `unchanged` says
"answered" (a person checked them) or "open" (leave them for a later import); an image a person
tagged in the tool (CVAT's "negative") is answered. What was never saved answers nothing, whatever
`unchanged` says: a whole file as boxloop wrote it, a VOC or YOLO file untouched. Then the answers go
through the same oracle step as the simulated annotator (`loop.round.step_oracle`), so labels, cost
and the round's progress land in one transaction.

A batch goes into a new or empty folder only, written whole or not at all (`boxloop.outputs`): a
folder holding a batch may hold an annotator's saved work, and a new batch over it would replace
those files or mix two rounds. Written by hand: the batch layout and names, what counts as an
answer, and the validation; file formats are `boxloop.formats`, costs `boxloop.loop.oracle`.
"""

from __future__ import annotations

import hashlib
import json
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
UNCHANGED = ("open", "answered")  # import's choices for labels still exactly boxloop's where a format cannot tell


def fingerprint(path: Path) -> list:
    """[sha256, mtime_ns]: a file saved again by a tool changes at least its modification time."""
    return [hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns]


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The batch.json in `folder` (None when there is none), checked: a hand-edited or foreign one is
    a FormatError naming what is wrong, never a KeyError or AttributeError."""
    from boxloop.formats import read_json

    path, hint = folder / BATCH_FILE, "it is boxloop's record of the batch: run `boxloop query` again for a new one"
    data = read_json(path, hint) if path.exists() else None
    if data is not None and not isinstance(data, dict):
        raise FormatError(path, f"is not a batch record (a JSON {type(data).__name__}, not an object)", hint)
    if data is not None and (not isinstance(data.get("images"), dict)
                             or not all(isinstance(v, str) for v in data["images"].values())):
        raise FormatError(path, "has no 'images' object mapping batch file names to image keys", hint)
    if data is not None and (isinstance(data.get("round"), bool) or not isinstance(data.get("round"), int)):
        raise FormatError(path, f"has no round number (round: {data.get('round')!r})", hint)
    return data


def same_labels(a: Annotation, b: Annotation, tol: float = 0.5) -> bool:
    """The same classes and boxes in any order, each coordinate within `tol` pixels: a file a tool
    exported again without a change (its coordinates rounded) is still what boxloop wrote."""
    if len(a) != len(b) or sorted(a.labels) != sorted(b.labels):
        return False
    left = list(range(len(b)))
    for i in range(len(a)):
        hit = next((j for j in left if b.labels[j] == a.labels[i]
                    and float(np.abs(a.boxes.xyxy[i] - b.boxes.xyxy[j]).max()) <= tol), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


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
    """Refuse a format or a folder `write_batch` would refuse, before a round spends any work: the
    batch goes into a new or empty folder (one holding a batch may hold an annotator's work)."""
    if fmt not in QUERY_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(QUERY_FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; pass a folder for the batch")
    if not out.exists() or not any(out.iterdir()):
        return
    if (out / BATCH_FILE).exists():
        try:
            held = json.loads((out / BATCH_FILE).read_text(encoding="utf-8")).get("round")
        except (OSError, ValueError, AttributeError):
            held = None
        raise ValueError(f"{out} holds a query batch already ({BATCH_FILE}" + (f", round {held}" if held else "")
                         + "): its label files may hold an annotator's work, and a new batch never goes over one; "
                         "choose a new folder for --out (remove the old one yourself once its answers are imported)")
    raise ValueError(f"{out} is not empty; choose a new or empty folder for the batch")


def pre_annotations(project: Project, round_id: int, display_threshold: float | None = None) -> dict[str, Annotation]:
    """{image key: the boxes the batch of `round_id` shows for it}: for each image with open queries,
    the model's boxes scoring >= the display threshold (unit images) or the queried boxes (unit boxes)."""
    queries = project.queries(round=round_id, state="open")
    preds = project.load_predictions(round_id)
    names = project.classes
    if display_threshold is None:  # the round's own, from its saved config (nested, or flat in older projects)
        from boxloop.loop.config import LoopConfig

        rnd = project.round(round_id)
        display_threshold = LoopConfig.from_dict(rnd.config if rnd else {}).selection.display_threshold
    by_image: dict[str, list[int]] = {}
    for q in queries:
        by_image.setdefault(q.path, [])
        if q.box_index is not None:
            by_image[q.path].append(int(q.box_index))
    unit_boxes = any(q.box_index is not None for q in queries)
    out: dict[str, Annotation] = {}
    for key, box_idx in by_image.items():
        det = preds.get(key)
        if det is None:  # chosen without a model (`typical` at the cold start): nothing to pre-annotate
            det = Detections.empty(len(names), project.image(key).size)
        if unit_boxes:
            keep = np.array(sorted(set(box_idx)), dtype=np.int64)
        else:
            keep = np.flatnonzero(det.scores >= display_threshold)
        out[key] = det[keep].to_annotation(key, names, source=Source.PREDICTED, round=round_id)
    return out


def query_round(project: Project, config: LoopConfig, checkpoint: Path | None = None, force: bool = False,
                strict: bool = False, scoring: RayScoring | None = None) -> tuple[int, dict[str, Any], bool]:
    """Run `boxloop query`'s round up to its open batch; (round id, its metrics, whether it was a cold start).

    An unanswered batch is replaced only with `force` (its queries go stale); a round waiting in its
    semi step finishes first. `checkpoint`: the round's model, instead of training one. A project
    with no model and no label gets its first batch by typicality (coldstart). Hold the writer lock."""
    from boxloop.loop.coldstart import needs_cold_start, open_select_round
    from boxloop.loop.model import model_dir
    from boxloop.loop.round import pool_paths, run_round

    pending = open_round(project)
    if pending is not None and not force:
        n = len(project.queries(round=pending.id, state="open"))
        raise ValueError(f"round {pending.id} still has {n} open queries: answer them with `boxloop import` "
                         "or pass --force to replace the batch")
    last = project.last_round()
    if last is not None and last.step == "semi":
        run_round(project, config, None, last.id)
    if pending is None and not pool_paths(project):  # before a round, a model copy or any training starts
        raise ValueError(f"{project.dir}: the pool is empty: every image is labelled; nothing left to ask")
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
    """The open queries of `round_id` as a folder a labelling tool opens, pre-annotated: a new or
    empty folder, written whole or not at all."""
    from boxloop import formats
    from boxloop.outputs import staged_output

    check_batch_target(out, fmt)
    out = Path(out)
    queries = project.queries(round=round_id, state="open")
    if not queries:
        raise ValueError(f"round {round_id} has no open queries to write")
    unit = "boxes" if any(q.box_index is not None for q in queries) else "images"
    pre = pre_annotations(project, round_id, display_threshold)
    names = project.classes
    names_of = {key: name for name, key in batch_names(pre).items()}
    items = [replace(ann, image=names_of[key]) for key, ann in pre.items()]
    with staged_output(out) as stage:
        if fmt == "labelstudio":
            from urllib.parse import quote

            from boxloop.formats.labelstudio import LOCAL_FILES_PREFIX, dump_labelstudio_tasks, labeling_config

            # the model's boxes go in as predictions (pre-annotations), not as finished annotations. Label
            # Studio serves local files only from a storage in a subfolder of LOCAL_FILES_DOCUMENT_ROOT, so
            # the URLs name the batch folder: document root = the batch's parent, storage path = the batch.
            prefix = LOCAL_FILES_PREFIX + quote(out.resolve().name) + "/"
            dump_labelstudio_tasks([(a.image, None, a) for a in items], names, stage / "tasks.json",
                                   image_url_prefix=prefix)
            (stage / "labeling_config.xml").write_text(labeling_config(names))
        else:
            formats.dump(fmt, items, names, stage, images_root=out)
        # what nobody saves again is no answer (see the module docstring): every file as written
        label_files = {f.relative_to(stage).as_posix(): fingerprint(f)
                       for f in sorted(stage.rglob("*")) if f.is_file()}
        if copy_images:
            root = project.image_root
            for key, name in names_of.items():
                shutil.copy2(root / key, stage / name)
        manifest = {
            "project": str(project.dir), "round": round_id, "unit": unit, "format": fmt,
            "images": {names_of[k]: k for k in pre},
            "queries": [q.id for q in queries],
            "note": "Correct the boxes (move, relabel, delete, add) and save each image; then run boxloop import. "
                    "A label file never saved since boxloop wrote it is no answer; for one saved with the same "
                    "bytes, import asks (--unchanged answered|open).",
            "label_files": label_files,
        }
        (stage / BATCH_FILE).write_text(json.dumps(manifest, indent=1))
    return out


def load_answers(project: Project, source: Path, fmt: str, known: dict[str, str]) -> tuple[dict, list[str], dict]:
    """Answers keyed by the batch's image names or the project's keys, the loader's warnings and the
    image-level flags a person set (Label Studio choices, CVAT tags: {name: flags}).

    Sizes come from the project, never from the files in the folder: an answer names an image of the
    batch, or of the project (which `import_answers` then refuses with what that image is)."""
    from boxloop import formats

    source = Path(source)
    names = project.classes
    folder = source if source.is_dir() else source.parent
    records = {r.path: r.size for r in project.images()}
    sizes = {**records, **{n: records[k] for n, k in known.items()}}
    if source.is_dir() and formats.ANSWER_EVIDENCE.get(fmt) != "file":  # the one file of a batch folder
        source = formats.label_file(fmt, source, "")
    if fmt in ("labelstudio", "cvat"):
        if fmt == "labelstudio":
            from boxloop.formats.labelstudio import load_labelstudio

            res = load_labelstudio(source, known_images=sizes, classes=names)
        else:
            from boxloop.formats.cvat import load_cvat

            res = load_cvat(source, known_images=sizes, classes=names, reviewed=True)
        return res.annotations, res.warnings, res.flags
    try:
        res = formats.load(fmt, source, images_root=folder, classes=names, sizes=sizes)
    except formats.MissingImages as e:
        raise _not_in_batch(project, source, known, e.names) from None
    return res.annotations, res.warnings, {}


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


def _unchanged(project: Project, round_id: int, fmt: str, source: Path, manifest: dict | None,
               mapped: dict[str, Annotation], known: dict[str, str]) -> tuple[list[str], list[str], set[str]]:
    """(keys whose label file is still the one boxloop wrote, bytes and time: never saved, no answer;
    keys whose labels are still boxloop's where nothing tells whether a person checked them; why
    not): see the module docstring and `formats.ANSWER_EVIDENCE`."""
    from boxloop import formats

    evidence = formats.ANSWER_EVIDENCE.get(fmt, "none")
    if evidence == "submitted":
        return [], [], set()
    folder = source if source.is_dir() else source.parent
    written = dict((manifest or {}).get("label_files") or {})
    for rel, digest, mtime in ((manifest or {}).get("empty_files") or {}).values():  # batches written before
        written[rel] = [digest, mtime]
    name_of = {key: name for name, key in known.items()}
    prints: dict[Path, list] = {}
    pre: dict[str, Annotation] | None = None
    unsaved, unsure, why = [], [], set()
    for key in sorted(mapped):
        if evidence == "file":
            path = formats.label_file(fmt, folder, name_of.get(key, key))
        else:
            path = source if source.is_file() else formats.label_file(fmt, source, key)
        rel = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else None
        if rel in written and path.is_file():
            if path not in prints:
                prints[path] = fingerprint(path)
            digest, mtime = prints[path]
            if digest == written[rel][0] and mtime == written[rel][1]:
                unsaved.append(key)
                continue
            if digest == written[rel][0]:  # saved again unchanged, or only copied (zip, cp, sync)
                unsure.append(key)
                why.add("their files hold the bytes boxloop wrote under a new modification time (saved unchanged, "
                        "or copied)")
                continue
            if evidence == "file":
                continue  # other bytes: a tool saved it, an answer
        elif evidence == "file" and (manifest is None or "label_files" in manifest):
            continue  # a file boxloop did not write (no batch of boxloop's around it, or one it made after)
        if pre is None:  # one file saved for every image, or a batch written before files were fingerprinted
            pre = pre_annotations(project, round_id)
        if key in pre and same_labels(mapped[key], pre[key]):
            unsure.append(key)
            why.add(f"{fmt} keeps every image in one file" if evidence != "file"
                    else f"the {BATCH_FILE} of this older batch does not record what boxloop wrote")
    return unsaved, unsure, why


def import_answers(project: Project, source: Path, fmt: str | None = None, config=None,
                   unchanged: str | None = None) -> dict[str, Any]:
    """Take an annotator's answers for the open batch. All or nothing; returns what happened.

    `unchanged`: what an image whose labels are still exactly boxloop's is where nothing tells whether
    a person checked it: "answered" or "open"; None stops the import and names them. A label file
    never saved since boxloop wrote it leaves its image open whatever `unchanged` says."""
    from boxloop import formats
    from boxloop.loop.round import step_oracle
    from boxloop.loop.config import LoopConfig

    if unchanged not in (None, *UNCHANGED):
        raise ValueError(f"--unchanged must be one of {', '.join(UNCHANGED)}, got {unchanged!r}")

    rnd = open_round(project)
    source = Path(source)
    if source.is_dir() and source.name == "labels" and (source.parent / BATCH_FILE).exists():
        source = source.parent  # a YOLO batch's labels/ folder: the batch it belongs to, with its record
    manifest = read_manifest(source if source.is_dir() else source.parent)
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
    fmt = formats.detect_format(source) if fmt is None else fmt.lower()
    answers, warnings, flags = load_answers(project, source, fmt, known)
    mapped: dict[str, Annotation] = {}
    unknown: list[str] = []
    before: list[str] = []
    tagged: set[str] = set()
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
            if flags.get(name):
                tagged.add(target)  # a person tagged it ("negative", ...): answered, whatever its boxes
    if unknown:
        raise _not_in_batch(project, source, known, unknown, round_id)
    unsaved, unsure, why = _unchanged(project, round_id, fmt, source, manifest,
                                      {k: a for k, a in mapped.items() if k not in tagged}, known)
    name_of = {key: name for name, key in known.items()}
    said = lambda keys: formats.listing([name_of.get(k, k) for k in keys], 10)  # noqa: E731
    if unsure and unchanged is None:
        raise FormatError(source, f"{len(unsure)} image(s) still hold exactly the boxes boxloop wrote, and "
                          f"{'; '.join(sorted(why))}, so "
                          f"nothing says whether a person checked them: {said(unsure)}",
                          "pass --unchanged answered if a person checked each of them and they are right, or "
                          "--unchanged open to leave them open for a later import; an image tagged in the tool "
                          "(CVAT's 'negative') counts as checked; nothing was imported")
    for key in unsaved + (unsure if unchanged == "open" else []):  # never saved: open, whatever `unchanged` says
        del mapped[key]
    if unsaved:
        warnings = [*warnings, f"{source}: {len(unsaved)} image(s) still have the label file boxloop wrote, never "
                    f"saved since, so they stay open instead of counting as answered: {said(unsaved)}; correct "
                    "and save them in your labelling tool, then import again"]
    if unsure and unchanged == "open":
        warnings = [*warnings, f"{source}: {len(unsure)} image(s) still hold exactly the boxes boxloop wrote and "
                    f"stay open (--unchanged open): {said(unsure)}"]
    if before:
        warnings = [*warnings, f"{source}: {len(before)} answer(s) for images imported before in round {round_id} "
                    f"were left as imported: {', '.join(sorted(before)[:10])}" + (" ..." if len(before) > 10 else "")]
    if not mapped:
        if unsaved or (unsure and unchanged == "open"):
            n = len(unsaved) + (len(unsure) if unchanged == "open" else 0)
            raise FormatError(source, ("nothing new to import" if before else "no answer yet")
                              + f": the {n} image(s) still open hold what boxloop wrote"
                              + (", never saved" if unsaved else ""),
                              "correct the boxes in your labelling tool and save each image, then import again")
        if before:
            raise FormatError(source, f"every answer in it was imported before (round {round_id}); nothing new to "
                              "import", "label the images still open, export again and import that")
        raise FormatError(source, "no answer for any queried image",
                          "label in Label Studio, then Export > JSON and import that file" if fmt == "labelstudio"
                          else "save the corrected labels in the batch folder")
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
