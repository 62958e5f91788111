"""Are the image files still the ones their labels were made on? And which images were left out, why.

`init` stores every image's sha256, byte size and mtime. Wherever labels meet pixels (training,
evaluation, prediction over the pool, export) `check_images` stats each file, which is cheap, and
hashes only a file whose size or mtime moved. A file with the same hash is the same image (its new
mtime is stored). A different file under a labelled image's name no longer fits its boxes: it is a
problem the caller reports or skips. An unlabelled image may change freely: it is measured again.
Images that cannot be used (missing, undecodable, changed) are recorded in the `skipped_images`
table, with the reason and the step that met them, and shown by `boxloop status`; a later check
that finds the file usable again removes the record.

Written by hand: the check order and the policy above. `boxloop.store` (store/files.py) reads and
writes the two columns and the table; `boxloop.images` hashes and decodes; `os.stat` measures.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from boxloop.formats import listing
from boxloop.images import ImageError, check_image, check_truncated, file_sha256

if TYPE_CHECKING:
    from boxloop.store import Project

__all__ = ["SkippedImage", "FileCheck", "check_images", "usable_images", "record_skipped", "skipped_images",
           "refuse_problems"]

log = logging.getLogger("boxloop")


@dataclass(frozen=True)
class SkippedImage:
    """An image left out: its path (relative to the image root), why, and at which step."""

    path: str
    reason: str
    stage: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "stage": self.stage}

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


@dataclass(frozen=True)
class FileCheck:
    """What `check_images` found: the keys that may be used, and the problems of the others."""

    ok: tuple[str, ...]
    problems: tuple[SkippedImage, ...]


def skipped_images(project: Project) -> list[SkippedImage]:
    """Every image recorded as left out, by path."""
    return [SkippedImage(*r) for r in project.skipped_rows()]


def record_skipped(project: Project, items: Iterable[SkippedImage]) -> None:
    """Record images as left out (one transaction; a path already recorded gets the new reason)."""
    project.add_skipped((s.path, s.reason, s.stage) for s in items)


def check_images(project: Project, keys: Sequence[str], stage: str) -> FileCheck:
    """Stat every image of `keys`, hash those whose size or mtime changed, and sort them out.

    Same bytes: usable (the new mtime is stored). A labelled image (human, partial or auto-labelled,
    or any active box) whose bytes changed: a problem, its boxes belong to the old picture. An
    unlabelled one: measured and hashed again and usable, if it decodes. A missing file: a problem.
    Records of earlier problems of usable keys are removed; new problems are only returned."""
    root = project.image_root
    rows = project.file_records()
    ok: list[str] = []
    problems: list[SkippedImage] = []
    stamp: list[tuple] = []
    remeasured: list[tuple] = []
    for key in keys:
        iid, sha, w, h, status, size, mtime, has_boxes = rows[key]
        path = root / key
        try:
            st = os.stat(path)
        except FileNotFoundError:
            problems.append(SkippedImage(key, "image file not found; check the image folder and put the file back",
                                         stage))
            continue
        except OSError as e:
            problems.append(SkippedImage(key, f"cannot read the file: {e.strerror or e}", stage))
            continue
        if size == st.st_size and mtime == st.st_mtime_ns:
            ok.append(key)
            continue
        now = file_sha256(path)
        if sha is None or now == sha:
            ok.append(key)
            stamp.append((now, st.st_size, st.st_mtime_ns, iid))
            continue
        if status != "unlabelled" or has_boxes:
            problems.append(SkippedImage(
                key, f"the file changed after it was labelled (sha256 {sha[:12]}... then, {now[:12]}... now; it was "
                     f"{w}x{h}); its boxes were drawn on the old picture: put the original file back, or give the "
                     "new picture another file name so it joins the pool", stage))
            continue
        try:
            try:
                nw, nh = check_image(path)
            except ImageError as e:
                if e.kind != "decode":
                    raise
                nw, nh = check_truncated(path)
        except ImageError as e:
            problems.append(SkippedImage(key, e.problem, stage))
            continue
        ok.append(key)
        remeasured.append((now, nw, nh, st.st_size, st.st_mtime_ns, iid))
        log.info("%s: unlabelled and replaced since init; measured again (%dx%d)", path, nw, nh)
    project.refresh_file_records(stamp, remeasured, ok)
    return FileCheck(tuple(ok), tuple(problems))


def refuse_problems(problems: Sequence[SkippedImage], what: str, hint: str, root: Path | None = None) -> None:
    """One ValueError naming every problem (used where skipping would change the result's meaning);
    with `root`, each image by its full path."""
    if problems:
        shown = [f"{root / p.path if root is not None else p.path} ({p.reason})" for p in problems]
        raise ValueError(f"{len(problems)} image(s) {what} cannot be used: {listing(shown, 10)} ({hint})")


def usable_images(project: Project, keys: Sequence[str], stage: str, strict: bool = False) -> list[str]:
    """`keys` without the images that cannot be used now; those are recorded and named in a warning.
    `strict`: any such image is an error instead, and nothing is recorded."""
    found = check_images(project, keys, stage)
    if found.problems:
        if strict:
            refuse_problems(found.problems, f"for {stage}",
                            "fix them, or run without --strict to leave them out and go on", project.image_root)
        record_skipped(project, found.problems)
        log.warning("%s: left out %d image(s) that cannot be used: %s (listed by `boxloop status`; --strict "
                    "makes this an error)", stage, len(found.problems),
                    listing([f"{project.image_root / p.path} ({p.reason})" for p in found.problems], 10))
    return list(found.ok)
