"""Creating a project from a folder of images (and labels), and exporting its labels again.

Written by hand: the init pipeline (scan -> check every image decodes -> hash -> load labels ->
validate -> choose the fixed test set -> split train/val -> one transaction), the class-stratified
split, the test-list resolution (VOC ImageSets names without extension) and the atomic
build-then-rename of the database, so a failed import leaves an existing project as it was.
Init keeps going over a real dataset: a truncated image is loaded as far as its data goes, with a
warning naming it; an image that does not decode at all is left out and recorded with the reason
(`boxloop status --json` lists it as `skipped_images`); `strict` makes either an error. `--force`
also removes what the old project trained (models/, autolabel.json), so nothing of it can pass for
the new project's. The formats package reads and writes the label files, `boxloop.images`
measures, verifies and hashes the images, `boxloop.outputs` writes an export beside a user's files
without overwriting them, boxloop.outputs.progress_bar the progress (a bar, or lines in a log) and `boxloop.store.Project` holds the result.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings as _warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping, Sequence

import numpy as np

from boxloop import formats
from boxloop.images import ImageError, check_image, check_truncated, file_sha256, list_images, truncated_note
from boxloop.integrity import SkippedImage, record_skipped
from boxloop.store import (
    DB_NAME,
    SUBSETS,
    ImageRecord,
    Project,
    ProjectExists,
    remove_database,
    retire_database,
)
from boxloop.structures import Annotation, Source, check_class_name

__all__ = ["export_project", "init_project", "resolve_test_list", "stratified_sample"]

_NEGATIVE = "\x00negative"  # stratum of images without boxes (no class name can be this)
_PROGRESS_MIN = 200  # show a progress bar from this many images on


def stratified_sample(labels: Mapping[str, Sequence[str]], fraction: float, rng: np.random.Generator) -> set[str]:
    """Pick round(fraction * N) of the keys so every class keeps about its share.

    Each image joins the stratum of its rarest class (by how many images hold it), negatives form
    their own stratum; each stratum gives floor(fraction * n) images at random, and the images still
    owed go to the strata with the largest remainders (rarest first on ties). An image holding a
    rare class is thus never left out of the count, so a class seen in 5 images still gets about
    5 * fraction of them in the sample, which a plain random draw often misses.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    keys = sorted(labels)
    freq = Counter(c for k in keys for c in set(labels[k]))
    strata: dict[str, list[str]] = {}
    for k in keys:
        classes = set(labels[k])
        key = min(classes, key=lambda c: (freq[c], c)) if classes else _NEGATIVE
        strata.setdefault(key, []).append(k)
    order = sorted(strata, key=lambda s: (freq.get(s, 0), s))  # rarest stratum first
    total = int(round(fraction * len(keys)))
    exact = {s: fraction * len(strata[s]) for s in order}
    quota = {s: int(np.floor(exact[s])) for s in order}
    owed = total - sum(quota.values())
    for s in sorted(order, key=lambda s: -(exact[s] - quota[s]))[: max(owed, 0)]:
        quota[s] += 1
    chosen: set[str] = set()
    for s in order:
        members = strata[s]
        picked = rng.permutation(len(members))[: quota[s]]
        chosen.update(members[i] for i in picked)
    return chosen


def resolve_test_list(path: str | Path, images: Sequence[str]) -> list[str]:
    """Map a VOC-style list (names without extension, one per line) to image paths.

    A name may be the path relative to the images folder without extension ('sub/a'), with it
    ('sub/a.jpg'), or a bare file stem ('a') when that is unique. Unknown or ambiguous names are an
    error naming them, so a typo never silently shrinks the test set.
    """
    from boxloop.formats.voc import read_image_set

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: test list not found (pass a text file with one image name per line)")
    names = read_image_set(path)
    exact = set(images)
    by_stem = formats.stem_index(images)
    by_base: dict[str, list[str]] = {}
    for stem, rels in by_stem.items():
        by_base.setdefault(stem.rsplit("/", 1)[-1], []).extend(rels)
    out: list[str] = []
    unknown: list[str] = []
    ambiguous: list[str] = []
    for name in names:
        name = name.strip().replace("\\", "/")
        if name in exact:
            hit = [name]
        else:
            hit = by_stem.get(name) or by_base.get(name) or []
        if not hit:
            unknown.append(name)
        elif len(hit) > 1:
            ambiguous.append(f"{name} ({', '.join(hit)})")
        elif hit[0] not in out:
            out.append(hit[0])
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} name(s) match no image in the images folder: {formats.listing(unknown)} "
            "(list image names without extension, one per line, as in VOC ImageSets/Main/test.txt)"
        )
    if ambiguous:
        raise ValueError(f"{path}: name(s) match several images: {formats.listing(ambiguous)} (use the path "
                         "relative to the images folder, without extension)")
    return out


@dataclass(frozen=True)
class _Checked:
    """What init learnt of the image files."""

    files: dict[str, tuple[int, int, str, int, int]]  # usable: (width, height, sha256, bytes, mtime_ns)
    truncated: dict[str, str]  # usable, but truncated: the decoder's complaint
    broken: dict[str, ImageError]  # unusable


def _check_images(root: Path, rels: Sequence[str], progress: bool) -> _Checked:
    """Decode-check, measure, stat and hash every image. Strict decoding runs in threads; the few
    that fail it get the lenient second try one at a time afterwards (Pillow's switch for it is
    process-wide, and a strict check running beside it would miss a truncation)."""
    from boxloop.outputs import progress_bar

    def one(rel: str) -> tuple[str, tuple[int, int, str, int, int] | ImageError]:
        p = root / rel
        try:
            st = os.stat(p)
            w, h = check_image(p)
            return rel, (w, h, file_sha256(p), st.st_size, st.st_mtime_ns)
        except FileNotFoundError as e:  # deleted while init ran
            return rel, ImageError(p, "image file not found", kind="missing")
        except ImageError as e:
            return rel, e

    files: dict[str, tuple[int, int, str, int, int]] = {}
    failed: dict[str, ImageError] = {}
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, progress_bar(
        total=len(rels), desc="checking images", unit="img", disable=not progress or len(rels) < _PROGRESS_MIN,
        leave=False,
    ) as bar:
        for rel, res in pool.map(one, rels, chunksize=64):
            if isinstance(res, ImageError):
                failed[rel] = res
            else:
                files[rel] = res
            bar.update()
    truncated: dict[str, str] = {}
    broken: dict[str, ImageError] = {}
    for rel, e in failed.items():
        p = root / rel
        if e.kind == "decode":
            try:
                st = os.stat(p)
                w, h = check_truncated(p)
                files[rel] = (w, h, file_sha256(p), st.st_size, st.st_mtime_ns)
                truncated[rel] = e.problem
                continue
            except (ImageError, FileNotFoundError):
                pass
        broken[rel] = e
    return _Checked({r: files[r] for r in rels if r in files}, truncated, broken)


def _refuse_images(root: Path, checked: _Checked) -> None:
    """--strict: every truncated or broken image is an error, named in one message."""
    bad = [(rel, e.problem) for rel, e in checked.broken.items()]
    bad += [(rel, f"truncated: {problem}") for rel, problem in checked.truncated.items()]
    hint = ("replace or remove them, or run without --strict to load truncated images and skip broken ones"
            if checked.files else "replace them, or pass the right --images folder")
    if len(bad) == 1:
        raise ImageError(root / bad[0][0], bad[0][1], hint)
    if bad:
        listed = formats.listing([f"{rel} ({why})" for rel, why in bad], 10)
        raise ImageError(root, f"{len(bad)} images cannot be decoded completely: {listed}", hint)


def _duplicates(rels: Sequence[str], checked: Mapping[str, tuple], root: Path) -> list[str]:
    """Same name with different extensions is an error (labels and test lists match by name);
    identical content under two names only a warning (it may leak the test set into training)."""
    clashes = [", ".join(v) for v in formats.stem_index(rels).values() if len(v) > 1]
    if clashes:
        raise ValueError(f"{root}: images share a name and differ only in extension: {formats.listing(clashes, 10)} "
                         "(rename or remove all but one; labels and test lists name images without extension)")
    by_hash: dict[str, list[str]] = {}
    for rel in (r for r in rels if r in checked):
        by_hash.setdefault(checked[rel][2], []).append(rel)
    same = [" = ".join(v) for v in by_hash.values() if len(v) > 1]
    if same:
        return [f"{root}: {len(same)} group(s) of images have identical content: {formats.listing(same, 10)} "
                "(remove the copies, or they may sit in both the test and the training set)"]
    return []


def init_project(
    project_dir: str | Path,
    images: str | Path,
    annotations: str | Path | None = None,
    fmt: str | None = None,
    classes: Sequence[str] | None = None,
    test_list: str | Path | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    force: bool = False,
    val_fraction: float = 0.2,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    strict: bool = False,
) -> Project:
    """Create a project from an images folder and (optionally) its labels; returns it open.

    Images with an annotation become 'labelled' (zero boxes: a negative); the rest form the
    unlabelled pool. The fixed test set comes from `test_list` or a class-stratified
    `test_fraction` of the labelled images; the other labelled images are split train/val by
    `val_fraction`, stratified by class, both by `seed`. Warnings go to `log` as they happen and
    are stored (`project.warnings`). Truncated images are loaded with a warning; images that do not
    decode are left out and recorded (`skipped_images`), their labels unread; `strict` refuses both.
    Everything is validated before anything is written, and the database is built aside and
    renamed into place: an import completes or changes nothing.
    """
    project_dir = Path(project_dir)
    notes: list[str] = []

    def warn(msg: str) -> None:
        notes.append(msg)
        if log is not None:
            log(msg)

    if test_list is not None and test_fraction is not None:
        raise ValueError("pass either a test list or a test fraction, not both")
    if test_fraction is not None and not 0 <= test_fraction < 1:
        raise ValueError(f"test fraction must lie in [0, 1), got {test_fraction}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"validation fraction must lie in [0, 1), got {val_fraction}")
    if (project_dir / DB_NAME).exists() and not force:
        raise ProjectExists(f"{project_dir} already holds a boxloop project; pass --force to replace it")
    if project_dir.exists() and not project_dir.is_dir():
        raise ValueError(f"{project_dir} is a file; pass a folder for the project")
    stale = [p.relative_to(project_dir).as_posix() for p in _trained_files(project_dir)] if project_dir.is_dir() else []
    if stale and not force:
        raise ProjectExists(f"{project_dir} holds what an earlier boxloop project trained ({', '.join(stale)}); "
                            "pass --force to replace it, or choose another folder")
    if classes is not None:
        classes = [c.strip() for c in classes if c.strip()]
        dup = [c for c, n in Counter(classes).items() if n > 1]
        if dup:
            raise ValueError(f"--classes lists {', '.join(dup)} more than once")
        for c in classes:
            check_class_name(c, "--classes")

    # 1. images: list, verify, measure, hash
    root = Path(images).resolve()
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        rels = list_images(root)
    for w in caught:
        warn(str(w.message))
    if not rels:
        raise ValueError(f"{root}: no images found (looked for .jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp)")
    found = _check_images(root, rels, progress)
    if strict:
        _refuse_images(root, found)
    if not found.files:
        _refuse_images(root, found)  # nothing usable: say why, for all of them
    for rel, problem in found.truncated.items():
        warn(truncated_note(root / rel, problem))
    checked = found.files
    for msg in _duplicates(rels, checked, root):
        warn(msg)
    skipped = {rel: e.problem for rel, e in found.broken.items()}

    # 2. labels
    anns: dict[str, Annotation] = {}
    class_names = list(classes) if classes is not None else []
    if annotations is None and classes is None:
        _refuse_unread_labels(root, rels)
    if annotations is not None:
        sizes = {**{rel: v[:2] for rel, v in checked.items()}, **{rel: None for rel in skipped}}
        res = formats.load(fmt, annotations, root, classes, sizes=sizes)
        for msg in res.warnings:
            warn(msg)
        for rel in res.ignored:
            skipped[rel] += f"; its labels in {annotations} were not imported"
        anns = res.annotations
        outside = sorted(set(anns) - set(checked))
        if outside:
            raise ValueError(f"{annotations}: annotations for images not in {root}: {formats.listing(outside)} "
                             "(add the images or pass the right --images folder)")
        used = [lab for a in anns.values() for lab in a.labels if lab]
        if classes is None:
            class_names = list(dict.fromkeys([*res.classes, *used]))
            for c in class_names:
                check_class_name(c, str(annotations))
        else:
            unknown = sorted(set(used) - set(class_names))
            if unknown:
                raise formats.FormatError(annotations, f"class name(s) not in --classes: {', '.join(unknown)}",
                                          "add them to --classes, or fix the labels")
        for rel, a in anns.items():
            w, h = checked[rel][:2]
            if a.image_size != (w, h):
                warn(f"{rel}: the labels give the image size {a.image_size[0]}x{a.image_size[1]}, "
                     f"the file is {w}x{h}; boxes are kept as written")
    elif fmt is not None:
        raise ValueError("--format needs --annotations")

    # 3. the fixed test set, then train/val among the other labelled images
    labels_of = {rel: list(a.labels) for rel, a in anns.items()
                 if all(p.source == Source.HUMAN for p in a.provenance)}
    if test_list is not None:
        test = set(resolve_test_list(test_list, rels)) - set(skipped)
        unlabelled_test = sorted(test - set(labels_of))
        if unlabelled_test:
            warn(f"{test_list}: {len(unlabelled_test)} test image(s) have no labels and cannot be scored: "
                 f"{formats.listing(unlabelled_test, 10)}")
    elif test_fraction:
        test = stratified_sample(labels_of, test_fraction, np.random.default_rng([seed, 1]))
    else:
        test = set()
        if labels_of:
            warn("no fixed test set chosen (pass --test-list or --test-fraction); "
                 "results will be measured on the validation split only")
    rest = {k: v for k, v in labels_of.items() if k not in test}
    val = stratified_sample(rest, val_fraction, np.random.default_rng([seed, 2]))
    if rest and len(val) >= len(rest):
        warn(f"--val-fraction {val_fraction} puts all {len(rest)} labelled non-test image(s) in validation: none is left to train on")
    learnable = {c for v in rest.values() for c in v}
    only_test = Counter(c for k, v in labels_of.items() if k in test for c in v if c not in learnable)
    if only_test:
        warn(f"class(es) with boxes only in the fixed test set: {', '.join(f'{c!r} ({n} boxes)' for c, n in sorted(only_test.items()))}; "
             "no training image shows them, so the model cannot learn them and their test AP will be 0: label "
             "training images of them, or choose a test set that leaves some for training")
    if skipped:
        warn(f"{len(skipped)} image(s) cannot be decoded and were left out (listed by `boxloop status --json`; "
             f"--strict makes this an error): {formats.listing([f'{rel} ({why})' for rel, why in skipped.items()], 10)}")

    def split_of(rel: str) -> str | None:
        if rel in test:
            return "test"
        if rel in rest:
            return "val" if rel in val else "train"
        return None

    records = [ImageRecord(rel, *checked[rel][:2], sha256=checked[rel][2], split=split_of(rel),
                           file_size=checked[rel][3], mtime_ns=checked[rel][4]) for rel in checked]

    # 4. build the database aside, in one transaction, then rename it into place
    project_dir.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(project_dir)
    tmp = project_dir / f"{_BUILDING}{os.getpid()}"
    try:
        proj = Project.create(project_dir, root, class_names, seed=seed, db_path=tmp)
        try:
            with proj.transaction():
                proj.add_images(records)
                for rel, a in anns.items():
                    human = np.array([p.source == Source.HUMAN for p in a.provenance], dtype=bool)
                    if human.all():  # the usual case: a labelled image (or a negative)
                        proj.set_annotation(rel, a, round=0)
                    else:  # labels exported with provenance (pseudo/predicted) keep it
                        if human.any():
                            proj.set_annotation(rel, a.select(human), round=0)
                            proj.set_status([rel], "partial")
                        proj.add_boxes(rel, a.select(~human))
                proj.set_meta("init_warnings", notes)
                record_skipped(proj, [SkippedImage(rel, why, "init") for rel, why in skipped.items()])
                proj.set_meta("init", {
                    "images": str(root), "annotations": None if annotations is None else str(Path(annotations).resolve()),
                    "format": fmt, "classes": None if classes is None else list(classes),
                    "test_list": None if test_list is None else str(test_list), "test_fraction": test_fraction,
                    "val_fraction": val_fraction, "seed": seed, "strict": strict,
                })
        finally:
            proj.close()
        _replace_database(project_dir, tmp)
    finally:
        remove_database(tmp)
    return Project.open(project_dir)


# What a project's commands write beside its database: models/<these folders>, autolabel.json.
_MODEL_DIRS = re.compile(r"(round|autolabel)_\d{3}|train_.+|semi")
_RETIRED = ".retired-"


_BUILDING = f".{DB_NAME}.building-"  # + the pid of the init building it


def _remove_dead_builds(project_dir: Path) -> None:
    """Databases an init killed mid-build left behind (their process is gone); a live one's stays."""
    for pid in {p.name[len(_BUILDING):].split("-")[0] for p in project_dir.glob(_BUILDING + "*")}:
        try:
            os.kill(int(pid), 0)  # PermissionError: alive, another user's
        except ProcessLookupError:
            remove_database(project_dir / f"{_BUILDING}{pid}")
        except (OSError, ValueError):
            pass


def _refuse_unread_labels(root: Path, rels: Sequence[str]) -> None:
    """Labels beside the images (LabelImg saves a.xml next to a.jpg) with neither --annotations nor
    --classes would make a project with no class, whose every import then fails: say so instead."""
    stems = {PurePosixPath(r).with_suffix("").as_posix() for r in rels}
    beside = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.xml")
                    if p.relative_to(root).with_suffix("").as_posix() in stems)
    if beside:
        raise ValueError(f"{root} holds {len(beside)} label file(s) beside its images ({formats.listing(beside, 3)}) "
                         f"but no --annotations was given: pass --annotations {root} to use them, or --classes "
                         "NAME,... to start without labels")


def _trained_files(project_dir: Path) -> list[Path]:
    """The old project's models and results (only names boxloop writes: a user's own files stay)."""
    models = project_dir / "models"
    found = sorted(p for p in models.iterdir() if p.is_dir() and _MODEL_DIRS.fullmatch(p.name)) if models.is_dir() else []
    return found + [p for p in (project_dir / "autolabel.json",) if p.is_file()]


def _replace_database(project_dir: Path, tmp: Path) -> None:
    """Move a finished database into place, retiring an old one only while nobody writes it, and with
    it everything the old project trained: a model left behind would pass for the new project's
    (a round's best.pt is reused by name, a finished last.pt is not trained again)."""
    final = project_dir / DB_NAME
    if final.exists():
        retire_database(project_dir)
    for old in [*_trained_files(project_dir), *project_dir.glob(_RETIRED + "*"), *project_dir.glob(f"models/{_RETIRED}*")]:
        aside = old if old.name.startswith(_RETIRED) else old.with_name(f"{_RETIRED}{os.getpid()}-{old.name}")
        if aside != old:
            os.replace(old, aside)  # out of the way at once; deleted below, or by the next init if killed
        if aside.is_dir():
            shutil.rmtree(aside)
        else:
            aside.unlink(missing_ok=True)
    if (project_dir / "models").is_dir() and not any((project_dir / "models").iterdir()):
        (project_dir / "models").rmdir()
    os.replace(tmp, final)


def export_project(project: Project, fmt: str, out: str | Path, subset: str = "labelled", overwrite: bool = False,
                   log: Callable[[str], None] | None = None, add: Callable[[Path], None] | None = None) -> Path:
    """Write a subset's labels in `fmt` under `out`; returns `out`.

    Negatives stay negatives (VOC file without <object>, COCO image without annotations, empty YOLO
    file); pseudo/predicted boxes carry their scores and provenance where the format can. A VOC
    export also writes ImageSets/Main/{train,val,test}.txt so `init --test-list` can restore the
    split. COCO and Label Studio write one file when `out` ends in .json (CVAT: .xml), else a file in
    the folder `out`. Nothing is overwritten unless `overwrite` (see `boxloop.outputs`). Images are
    not copied: they stay in the project's image root; one whose file changed since it was labelled
    is named through `log`. `add(folder)` writes more files beside the labels, under the same rule
    (a folder target only: loop.review's batch.json).
    """
    from boxloop.integrity import check_images
    from boxloop.outputs import staged_output

    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    fmt = fmt.lower()
    if fmt not in formats.FORMATS:
        raise ValueError(f"format must be one of {', '.join(formats.FORMATS)}, got {fmt!r}")
    out = Path(out)
    file_target = out.suffix.lower() == (".xml" if fmt == "cvat" else ".json") and fmt in ("coco", "labelstudio", "cvat")
    anns = project.annotations(subset)
    changed = check_images(project, list(anns), "export").problems
    if changed and log is not None:
        log(f"{len(changed)} exported image(s) cannot be checked against their labels: "
            f"{formats.listing([str(c) for c in changed], 10)}")
    with staged_output(out, overwrite, file_target) as stage:
        formats.dump(fmt, list(anns.values()), project.classes, stage, images_root=project.image_root)
        if add is not None and not file_target:
            add(stage)
        if fmt == "voc":
            sets: dict[str, list[str]] = {"train": [], "val": [], "test": []}
            for rec in project.images():
                if rec.path in anns and rec.split in sets:
                    sets[rec.split].append(str(PurePosixPath(rec.path).with_suffix("")))
            main = stage / "ImageSets" / "Main"
            main.mkdir(parents=True, exist_ok=True)
            for name, stems in sets.items():
                (main / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems), encoding="utf-8")
    return out
