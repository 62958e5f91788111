"""The project store: one SQLite database, PROJECT/boxloop.db, holding images, classes, boxes with
their provenance, the fixed test set and train/val membership, rounds, queries, metrics, stored
predictions and the answers a labelling tool sent live (`tool`).

Written by hand here: the schema and its migrations, the conversion between `Annotation` /
`Detections` and rows, transaction and locking policy, and the aggregate queries behind `status()`.
The standard library does the rest: `sqlite3` (WAL journal, foreign keys, busy timeout,
`BEGIN IMMEDIATE` transactions), `fcntl` (an advisory lock for long-running writers) and numpy
(prediction blobs: raw arrays behind a small header; older stores' `.npz` blobs are still read).
Opening checks (a file not boxloop's is refused before a write) and read-only access: `boxloop.store.dbfile`.

Concurrency policy: every change to labels runs in one `BEGIN IMMEDIATE` transaction, so a reader
never sees half an import and a second writer waits up to `timeout` seconds, then gets
`ProjectBusy` instead of corrupting anything. Long-running writers (a training loop) additionally
hold PROJECT/.lock through `writer_lock()`, so a second loop on the same project fails fast.

Modules by concern: schema (migrations, constants, subsets), dbfile (opening checks, read-only
access), core (connection, transactions, locks, meta), images (and the named image sets: the
pool defined once), files (file records, skipped images), labels, rounds (with metrics and
queries), predictions (with the blob format), tool (live answers from Label Studio, with
provenance). `Project` joins them; only they touch SQL.

Owns: the database and every SQL statement. May import: the root modules (structures) and
strategies.table (stored predictions come back as a DetectionTable).
"""

from __future__ import annotations

from typing import Any

from boxloop.store.dbfile import NotAProject, database_error, remove_database, retire_database
from boxloop.store.core import ProjectBusy, ProjectExists
from boxloop.store.files import Files
from boxloop.store.images import ImageRecord
from boxloop.store.predictions import (Predictions, detection_table_from_blobs, detections_from_bytes,
                                       detections_to_bytes)
from boxloop.store.rounds import Query, QueryState, Round, Rounds
from boxloop.store.schema import DB_NAME, IMPORT_LOCK, LOCK_NAME, SCHEMA_VERSION, SOURCES, SPLITS, STATUSES, SUBSETS
from boxloop.store.tool import ToolAnnotations

__all__ = [
    "DB_NAME",
    "IMPORT_LOCK",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "SPLITS",
    "STATUSES",
    "SUBSETS",
    "ImageRecord",
    "NotAProject",
    "database_error",
    "Project",
    "ProjectBusy",
    "ProjectExists",
    "Query",
    "QueryState",
    "Round",
    "detection_table_from_blobs",
    "detections_from_bytes",
    "detections_to_bytes",
    "remove_database",
    "retire_database",
]


class Project(ToolAnnotations, Predictions, Files, Rounds):
    """A boxloop project directory and its SQLite database.

    Use `Project.create(...)` for a new project and `Project.open(path)` for an existing one; both
    return an open connection (close it, or use the project as a context manager).
    """

    def status(self) -> dict[str, Any]:
        """Counts for `boxloop status`, one aggregate SQL query each (fast at 200k images), one snapshot."""
        with self.snapshot():
            return self._status()

    def _status(self) -> dict[str, Any]:
        q = self._conn.execute
        by_split = {"train": 0, "val": 0, "test": 0, "pool": 0}
        by_status = {st: 0 for st in STATUSES}
        for split, st, n in q("SELECT split, status, COUNT(*) FROM images GROUP BY split, status"):
            by_split["pool" if split is None else split] += n
            by_status[st] += n
        images = sum(by_split.values())
        negatives = q(
            "SELECT COUNT(*) FROM images i WHERE i.status = 'labelled' AND NOT EXISTS "
            "(SELECT 1 FROM boxes b WHERE b.image_id = i.id AND b.active = 1 AND b.source = 'human')"
        ).fetchone()[0]
        names = self.classes
        per_class = {n: 0 for n in names}
        per_source = {s: 0 for s in SOURCES}
        # one pass over the (active, source, class_id) index gives both tallies
        for src, cid, n in q("SELECT source, class_id, COUNT(*) FROM boxes WHERE active = 1 GROUP BY source, class_id"):
            per_source[src] += n
            if src == "human" and cid is not None:
                per_class[names[cid]] = n
        pseudo_images = self.pseudo_image_count()
        rounds = q("SELECT COUNT(*) FROM rounds").fetchone()[0]
        last = q("SELECT id, step, status FROM rounds ORDER BY id DESC LIMIT 1").fetchone()
        return {
            "project": str(self.dir),
            "image_root": str(self.image_root),
            "classes": names,
            "images": images,
            "test_images": by_split["test"],
            "train_images": by_split["train"],
            "val_images": by_split["val"],
            "pool_images": by_split["pool"],
            "labelled_images": by_status["labelled"],
            "partial_images": by_status["partial"],
            "unlabelled_images": by_status["unlabelled"],
            "negative_images": negatives,
            "pseudo_images": pseudo_images,
            "boxes": per_source["human"],
            "boxes_per_class": per_class,
            "boxes_per_source": per_source,
            "rounds": rounds,
            "last_round": None if last is None else {"id": last[0], "step": last[1], "status": last[2]},
            "open_queries": q("SELECT COUNT(*) FROM queries WHERE state = 'open'").fetchone()[0],
            "warnings": len(self.warnings),
            "skipped_images": [{"path": p, "reason": r, "stage": s} for p, r, s in self.skipped_rows()],
            "schema_version": self.schema_version,
            "input_size": self.get_meta("input_size"),  # chosen from the labelled boxes (boxloop.loop.input_size)
        }
