"""The project store: one SQLite database, PROJECT/boxloop.db, holding images, classes, boxes with
their provenance, the fixed test set and train/val membership, rounds, queries, metrics and stored
predictions.

Written by hand here: the schema and its migrations, the conversion between `Annotation` /
`Detections` and rows, transaction and locking policy, and the aggregate queries behind `status()`.
The standard library does the rest: `sqlite3` (WAL journal, foreign keys, busy timeout,
`BEGIN IMMEDIATE` transactions), `fcntl` (an advisory lock for long-running writers) and numpy
(prediction blobs: raw arrays behind a small header; older stores' `.npz` blobs are still read).
Opening checks (a file not boxloop's is refused before a write) and read-only access: `boxloop.dbfile`.

Concurrency policy: every change to labels runs in one `BEGIN IMMEDIATE` transaction, so a reader
never sees half an import and a second writer waits up to `timeout` seconds, then gets
`ProjectBusy` instead of corrupting anything. Long-running writers (a training loop) additionally
hold PROJECT/.lock through `writer_lock()`, so a second loop on the same project fails fast.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import io
import json
import os
import sqlite3
import struct
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import EllipsisType
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from boxloop.dbfile import (NotAProject, ReadOnlyConnection, check_file, check_schema, connect_read_only,
                            remove_database, retire_database)
from boxloop.structures import Annotation, Boxes, Detections, Provenance, Source, check_class_name

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "SPLITS",
    "STATUSES",
    "SUBSETS",
    "ImageRecord",
    "NotAProject",
    "Project",
    "ProjectBusy",
    "ProjectExists",
    "detection_table_from_blobs",
    "remove_database",
    "retire_database",
]

DB_NAME = "boxloop.db"
LOCK_NAME = ".lock"
SPLITS = ("test", "train", "val")  # NULL split = the unlabelled pool
STATUSES = ("unlabelled", "labelled", "partial")
SOURCES = tuple(s.value for s in Source)

# Each migration takes the schema from version i to i+1. Append; never edit a released one.
_MIGRATIONS: list[str] = [
    # 0 -> 1: the initial schema.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT
    );
    CREATE TABLE classes (
        id   INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE images (
        id             INTEGER PRIMARY KEY,
        path           TEXT NOT NULL UNIQUE,
        sha256         TEXT,
        width          INTEGER NOT NULL CHECK (width > 0),
        height         INTEGER NOT NULL CHECK (height > 0),
        split          TEXT CHECK (split IN ('test', 'train', 'val')),
        status         TEXT NOT NULL DEFAULT 'unlabelled'
                       CHECK (status IN ('unlabelled', 'labelled', 'partial')),
        round_labelled INTEGER
    );
    CREATE TABLE boxes (
        id          INTEGER PRIMARY KEY,
        image_id    INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        class_id    INTEGER REFERENCES classes(id),
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        difficult   INTEGER NOT NULL DEFAULT 0,
        truncated   INTEGER NOT NULL DEFAULT 0,
        source      TEXT NOT NULL CHECK (source IN ('human', 'pseudo', 'predicted', 'background')),
        round       INTEGER NOT NULL DEFAULT 0,
        model       TEXT,
        score       REAL,
        loc_quality REAL,
        weight      REAL NOT NULL DEFAULT 1.0,
        active      INTEGER NOT NULL DEFAULT 1,
        CHECK (class_id IS NOT NULL OR source = 'background')
    );
    CREATE TABLE rounds (
        id          INTEGER PRIMARY KEY,
        step        TEXT,
        status      TEXT NOT NULL DEFAULT 'running',
        started     TEXT,
        finished    TEXT,
        config_json TEXT
    );
    CREATE TABLE queries (
        id       INTEGER PRIMARY KEY,
        round    INTEGER NOT NULL,
        batch    INTEGER NOT NULL DEFAULT 0,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        box_id   INTEGER REFERENCES boxes(id) ON DELETE SET NULL,
        box_index INTEGER,  -- a box query: index into the round's stored Detections of the image
        strategy TEXT,
        score    REAL,
        state    TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'answered', 'stale'))
    );
    CREATE TABLE metrics (
        round      INTEGER NOT NULL,
        key        TEXT NOT NULL,
        value_json TEXT NOT NULL,
        PRIMARY KEY (round, key)
    );
    CREATE TABLE predictions (
        round    INTEGER NOT NULL,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        model    TEXT NOT NULL DEFAULT '',
        blob     BLOB NOT NULL,
        PRIMARY KEY (round, image_id, model)
    );
    CREATE INDEX boxes_image ON boxes(image_id, active, source);
    CREATE INDEX boxes_class ON boxes(active, source, class_id);
    CREATE INDEX boxes_source_image ON boxes(active, source, image_id);
    CREATE INDEX images_split_status ON images(split, status);
    CREATE INDEX queries_round ON queries(round, state);
    """,
    # 1 -> 2: each image file's size and mtime (a cheap first check that it is still the file its
    # labels were made on; sha256 decides), and the images left out because they could not be used.
    """
    ALTER TABLE images ADD COLUMN file_size INTEGER;
    ALTER TABLE images ADD COLUMN mtime_ns INTEGER;
    CREATE TABLE skipped_images (
        path   TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        stage  TEXT NOT NULL,
        at     TEXT NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)

# Which boxes and images each `annotations(subset)` returns. Images: an SQL condition on `i`.
SUBSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    # every image a human labelled completely (negatives included), human boxes only
    "labelled": ("i.status = 'labelled'", ("human",)),
    "train": ("i.status = 'labelled' AND i.split = 'train'", ("human",)),
    "val": ("i.status = 'labelled' AND i.split = 'val'", ("human",)),
    "test": ("i.status = 'labelled' AND i.split = 'test'", ("human",)),
    # auto-labelled images that no human has labelled yet, their pseudo boxes
    "pseudo": (
        "i.status != 'labelled' AND EXISTS (SELECT 1 FROM boxes p WHERE p.image_id = i.id "
        "AND p.active = 1 AND p.source = 'pseudo')",
        ("pseudo",),
    ),
    # images with box-level answers: checked boxes plus the unchecked predictions beside them
    "partial": ("i.status = 'partial'", ("human", "predicted")),
    # images holding predictions not yet checked
    "predicted": (
        "EXISTS (SELECT 1 FROM boxes p WHERE p.image_id = i.id AND p.active = 1 "
        "AND p.source = 'predicted')",
        ("predicted",),
    ),
    # everything that counts as a label: human-labelled images plus auto-labelled ones
    "all": (
        "i.status = 'labelled' OR EXISTS (SELECT 1 FROM boxes p WHERE p.image_id = i.id "
        "AND p.active = 1 AND p.source IN ('human', 'pseudo'))",
        ("human", "pseudo"),
    ),
}


class ProjectBusy(RuntimeError):
    """Another process holds the project's write lock."""

    def __init__(self, project_dir: str | Path) -> None:
        super().__init__(
            f"another boxloop process is writing {project_dir}; wait for it or stop it"
        )


class ProjectExists(ValueError):
    """`create` on a directory that already holds a project (pass force=True to replace it)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image row. `path` is relative to the project's image root, '/'-separated."""

    path: str
    width: int
    height: int
    sha256: str | None = None
    split: str | None = None
    status: str = "unlabelled"
    round_labelled: int | None = None
    id: int | None = None
    # written by init (`add_images`); rows read back leave them None (see boxloop.integrity)
    file_size: int | None = None
    mtime_ns: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _opt_float(v: float | None) -> float | None:
    return None if v is None else float(v)


class Project:
    """A boxloop project directory and its SQLite database.

    Use `Project.create(...)` for a new project and `Project.open(path)` for an existing one; both
    return an open connection (close it, or use the project as a context manager).
    """

    def __init__(
        self, project_dir: str | Path, timeout: float = 5.0, db_path: str | Path | None = None,
        create: bool = False,
    ) -> None:
        """Open an existing project; prefer `Project.open` / `Project.create`."""
        self.dir = Path(project_dir)
        self.db_path = Path(db_path) if db_path is not None else self.dir / DB_NAME
        self.timeout = float(timeout)
        if not create and not self.db_path.is_file():
            if self.dir.is_file():
                raise NotAProject(f"{self.dir} is a file; pass the project folder")
            if self.dir.is_dir():
                raise NotAProject(
                    f"{self.dir} is not a boxloop project (no {DB_NAME}); "
                    f"create one with `boxloop init {self.dir} --images DIR`"
                )
            raise NotAProject(
                f"{self.dir} does not exist; create a project with `boxloop init {self.dir} --images DIR`"
            )
        self._conn = self._connect(self.db_path, self.timeout, check=not create)
        self._tx_depth = 0
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._class_cache: list[str] | None = None
        try:
            self._migrate()
        except BaseException:
            self.close()  # a failed open (full disk, ...) must not keep the file open
            raise

    # -- connection, schema ---------------------------------------------------------------------
    @staticmethod
    def _connect(path: Path, timeout: float, check: bool = True) -> sqlite3.Connection:
        """A connection to `path`; with `check`, only after proving it is boxloop's (nothing written before)."""
        if check:
            check_file(path)
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if check:
                check_schema(conn, path)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except NotAProject:
            conn.close()
            raise
        except sqlite3.OperationalError as e:
            conn.close()
            if "locked" in str(e) or "busy" in str(e):
                raise ProjectBusy(path.parent) from e
            ro = connect_read_only(path, timeout)
            if ro is None:
                raise
            return ro
        except sqlite3.DatabaseError as e:
            conn.close()
            raise NotAProject(f"{path} is not a boxloop database ({e}); restore it or run init again") from e
        return conn

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise NotAProject(
                f"{self.db_path} has schema version {version}, newer than this boxloop "
                f"({SCHEMA_VERSION}); upgrade boxloop"
            )
        if version == SCHEMA_VERSION or isinstance(self._conn, ReadOnlyConnection):
            return  # a read-only project of an older schema is read as it is
        with self.transaction():
            for i in range(version, SCHEMA_VERSION):
                for stmt in _split_sql(_MIGRATIONS[i]):
                    self._conn.execute(stmt)
            # PRAGMA user_version takes a literal; it is transactional inside BEGIN..COMMIT.
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for read queries other modules need and this class lacks."""
        return self._conn

    # -- create / open / close ------------------------------------------------------------------
    @classmethod
    def open(cls, project_dir: str | Path, timeout: float = 5.0) -> Project:
        return cls(project_dir, timeout=timeout)

    @classmethod
    def create(
        cls,
        project_dir: str | Path,
        image_root: str | Path,
        classes: Sequence[str] = (),
        seed: int = 0,
        force: bool = False,
        timeout: float = 5.0,
        db_path: str | Path | None = None,
    ) -> Project:
        """Create an empty project. Refuses an existing project unless `force` (which replaces its
        database). `db_path` builds the database elsewhere (init builds in a temporary file and
        renames it into place, so a failed import leaves an old project as it was)."""
        project_dir = Path(project_dir)
        target = Path(db_path) if db_path is not None else project_dir / DB_NAME
        if db_path is None and (project_dir / DB_NAME).exists():
            if not force:
                raise ProjectExists(
                    f"{project_dir} already holds a boxloop project; pass --force to replace it"
                )
            retire_database(project_dir)
        project_dir.mkdir(parents=True, exist_ok=True)
        if db_path is not None:
            remove_database(target)
        proj = cls(project_dir, timeout=timeout, db_path=target, create=True)
        try:
            with proj.transaction():
                proj.set_meta("image_root", str(Path(image_root).resolve()))
                proj.set_meta("created", _now())
                proj.set_meta("seed", int(seed))
                proj.add_classes(classes)
        except BaseException:
            proj.close()
            raise
        return proj

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Project({str(self.dir)!r})"

    # -- transactions and locks -----------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception.

        Nested uses join the outer transaction. A writer that cannot take the database lock within
        `timeout` seconds gets `ProjectBusy`; nothing is written.
        """
        if self._tx_depth:
            self._tx_depth += 1
            try:
                yield self._conn
            finally:
                self._tx_depth -= 1
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise ProjectBusy(self.dir) from e
            raise
        self._tx_depth = 1
        try:
            yield self._conn
        except BaseException:
            self._tx_depth = 0
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._class_cache = None
            raise
        else:
            self._tx_depth = 0
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._class_cache = None
                if "locked" in str(e) or "busy" in str(e):
                    raise ProjectBusy(self.dir) from e
                raise

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold PROJECT/.lock (advisory, fcntl) for a long-running writer; re-entrant in-process.

        Raises ProjectBusy at once if another process holds it. The lock dies with its process,
        so a killed loop never leaves a stale lock behind.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ProjectBusy(self.dir) from e
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd, self._lock_depth = fd, 1
        try:
            yield
        finally:
            self._lock_depth = 0
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- meta -----------------------------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        """Store any JSON-serialisable value."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    @property
    def image_root(self) -> Path:
        return Path(self.get_meta("image_root"))

    @property
    def seed(self) -> int:
        return int(self.get_meta("seed", 0))

    @property
    def warnings(self) -> list[str]:
        """Warnings recorded at init (dropped or clipped boxes, duplicate images, ...)."""
        return list(self.get_meta("init_warnings", []))

    # -- classes --------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """Class names in id order (ids are 0..C-1)."""
        if self._class_cache is None:
            rows = self._conn.execute("SELECT id, name FROM classes ORDER BY id").fetchall()
            self._class_cache = [name for _, name in rows]
        return list(self._class_cache)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def add_classes(self, names: Iterable[str]) -> list[int]:
        """Add new class names (existing ones keep their id); returns the ids of `names`."""
        names = list(names)
        with self.transaction():
            known = {n: i for i, n in enumerate(self.classes)}
            for name in names:
                check_class_name(name)
                if name not in known:
                    known[name] = len(known)
                    self._conn.execute("INSERT INTO classes(id, name) VALUES (?, ?)", (known[name], name))
            self._class_cache = None
        return [known[n] for n in names]

    def class_id(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise ValueError(
                f"unknown class {name!r}; the project's classes are {', '.join(self.classes)}"
            ) from None

    def class_name(self, class_id: int) -> str:
        return self.classes[class_id]

    # -- images ---------------------------------------------------------------------------------
    def add_images(self, records: Iterable[ImageRecord]) -> dict[str, int]:
        """Insert images; returns {path: id}. A path already present raises ValueError."""
        rows = [
            (r.path, r.sha256, int(r.width), int(r.height), r.split, r.status, r.round_labelled, r.file_size,
             r.mtime_ns)
            for r in records
        ]
        with self.transaction():
            try:
                self._conn.executemany(
                    "INSERT INTO images(path, sha256, width, height, split, status, round_labelled, file_size, "
                    "mtime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except sqlite3.IntegrityError as e:
                raise ValueError(f"cannot add images: {e} (an image path already in the project?)") from e
            return self.image_ids([r[0] for r in rows])

    def image_ids(self, paths: Iterable[str] | None = None) -> dict[str, int]:
        """{path: id} for the given paths (all images when None); unknown paths raise KeyError."""
        all_ids = dict(self._conn.execute("SELECT path, id FROM images"))
        if paths is None:
            return all_ids
        out = {}
        for p in paths:
            if p not in all_ids:
                raise KeyError(f"image {p!r} is not in project {self.dir}")
            out[p] = all_ids[p]
        return out

    def image_id(self, image: int | str) -> int:
        """Accepts an id or a relative path."""
        if isinstance(image, (int, np.integer)):
            return int(image)
        row = self._conn.execute("SELECT id FROM images WHERE path = ?", (image,)).fetchone()
        if row is None:
            raise KeyError(f"image {image!r} is not in project {self.dir}")
        return int(row[0])

    def images(self, split: str | None | EllipsisType = ..., status: str | None = None) -> list[ImageRecord]:
        """Image rows, ordered by id. `split=None` selects the pool (no split); `...` any split."""
        sql = "SELECT path, width, height, sha256, split, status, round_labelled, id FROM images"
        cond, args = [], []
        if split is None:
            cond.append("split IS NULL")
        elif split is not ...:
            cond.append("split = ?")
            args.append(split)
        if status is not None:
            cond.append("status = ?")
            args.append(status)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        return [ImageRecord(*row) for row in self._conn.execute(sql + " ORDER BY id", args)]

    def image(self, image: int | str) -> ImageRecord:
        iid = self.image_id(image)
        row = self._conn.execute(
            "SELECT path, width, height, sha256, split, status, round_labelled, id FROM images WHERE id = ?",
            (iid,),
        ).fetchone()
        if row is None:
            raise KeyError(f"image id {iid} is not in project {self.dir}")
        return ImageRecord(*row)

    def set_split(self, images: Iterable[int | str], split: str | None) -> None:
        """Move images to 'train', 'val', 'test' or the pool (None)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        with self.transaction():
            ids = [(split, self.image_id(i)) for i in images]
            self._conn.executemany("UPDATE images SET split = ? WHERE id = ?", ids)

    def set_status(self, images: Iterable[int | str], status: str, round: int | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        with self.transaction():
            ids = [(status, round, self.image_id(i)) for i in images]
            self._conn.executemany(
                "UPDATE images SET status = ?, round_labelled = COALESCE(?, round_labelled) WHERE id = ?", ids
            )

    # -- boxes ----------------------------------------------------------------------------------
    def _box_rows(
        self,
        image_id: int,
        ann: Annotation,
        force_source: Source | None,
        round: int | None,
        weights: Sequence[float] | None,
    ) -> list[tuple]:
        classes = {n: i for i, n in enumerate(self.classes)}
        xyxy = ann.boxes.xyxy
        if len(ann) and not np.isfinite(xyxy).all():
            raise ValueError(f"{ann.image}: box coordinates must be finite numbers")
        if weights is not None and len(weights) != len(ann):
            raise ValueError(f"{ann.image}: {len(weights)} weights for {len(ann)} boxes")
        rows = []
        for k in range(len(ann)):
            prov: Provenance = ann.provenance[k]
            source = force_source or prov.source
            label = ann.labels[k]
            if source == Source.BACKGROUND and not label:
                cid = None
            elif label in classes:
                cid = classes[label]
            else:
                raise ValueError(
                    f"{ann.image}: unknown class {label!r}; the project's classes are "
                    f"{', '.join(classes) or '(none)'}"
                )
            x1, y1, x2, y2 = (float(v) for v in xyxy[k])
            rows.append((
                image_id, cid, x1, y1, x2, y2, int(ann.difficult[k]), int(ann.truncated[k]),
                str(source), int(prov.round if round is None else round), prov.model,
                _opt_float(prov.score), _opt_float(prov.loc_quality),
                1.0 if weights is None else float(weights[k]),
            ))
        return rows

    def _insert_boxes(self, rows: list[tuple]) -> list[int]:
        ids = []
        for row in rows:
            cur = self._conn.execute(
                "INSERT INTO boxes(image_id, class_id, x1, y1, x2, y2, difficult, truncated, source, "
                "round, model, score, loc_quality, weight) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )
            ids.append(int(cur.lastrowid))
        return ids

    def set_annotation(self, image: int | str, annotation: Annotation, round: int = 0) -> list[int]:
        """A human's complete answer for one image: it becomes 'labelled' with exactly these boxes.

        Every active box it held before (human, pseudo, predicted, background) is deactivated (kept
        for history, `active = 0`); the new boxes are stored as human boxes of `round`. An
        annotation with no boxes makes the image a negative. Returns the new box ids.
        """
        with self.transaction():
            iid = self.image_id(image)
            rows = self._box_rows(iid, annotation, Source.HUMAN, round, None)
            self._conn.execute("UPDATE boxes SET active = 0 WHERE image_id = ? AND active = 1", (iid,))
            ids = self._insert_boxes(rows)
            self._conn.execute(
                "UPDATE images SET status = 'labelled', round_labelled = ? WHERE id = ?", (round, iid)
            )
        return ids

    def set_annotations(self, annotations: Mapping[str, Annotation], round: int = 0) -> None:
        """`set_annotation` for many images (keys are relative paths), in one transaction."""
        with self.transaction():
            for path, ann in annotations.items():
                self.set_annotation(path, ann, round)

    def add_boxes(
        self,
        image: int | str,
        annotation: Annotation,
        round: int | None = None,
        weights: Sequence[float] | None = None,
        status: str | None = None,
    ) -> list[int]:
        """Append boxes with the provenance the annotation carries (pseudo, predicted, ...).

        `round` overrides each box's provenance round; `status` optionally updates the image's
        status (e.g. 'partial' after a box-level answer). Returns the new box ids.
        """
        with self.transaction():
            iid = self.image_id(image)
            ids = self._insert_boxes(self._box_rows(iid, annotation, None, round, weights))
            if status is not None:
                self.set_status([iid], status, round)
        return ids

    def deactivate_boxes(
        self, image: int | str | None = None, sources: Sequence[str] | None = None,
        box_ids: Sequence[int] | None = None,
    ) -> int:
        """Retire boxes (kept for history): of one image and/or some sources, or by id. Returns count."""
        cond, args = ["active = 1"], []
        if image is not None:
            cond.append("image_id = ?")
            args.append(self.image_id(image))
        if sources is not None:
            cond.append(f"source IN ({','.join('?' * len(sources))})")
            args.extend(str(Source(s)) for s in sources)
        with self.transaction():
            if box_ids is not None:
                cur = self._conn.executemany(
                    f"UPDATE boxes SET active = 0 WHERE {' AND '.join(cond)} AND id = ?",
                    [(*args, int(b)) for b in box_ids],
                )
            else:
                cur = self._conn.execute(f"UPDATE boxes SET active = 0 WHERE {' AND '.join(cond)}", args)
            return cur.rowcount

    def box_table(self, subset: str = "all", split: str | None | EllipsisType = ...) -> dict[str, np.ndarray]:
        """Active boxes of a subset as columns (id, image_id, class_id, xyxy, source, weight, ...),
        for code that needs the per-box weights the `Annotation` type does not carry."""
        img_cond, sources = self._subset(subset)
        sql, args = self._box_sql(img_cond, sources, split)
        rows = [r for r in self._conn.execute(sql, args) if r[0] is not None]  # skip negatives
        cols = ["id", "image_id", "path", "width", "height", "class_id", "x1", "y1", "x2", "y2",
                "difficult", "truncated", "source", "round", "model", "score", "loc_quality", "weight"]
        table = {c: np.asarray([r[i] for r in rows], dtype=object) for i, c in enumerate(cols)}
        for c in ("id", "image_id", "width", "height", "difficult", "truncated", "round"):
            table[c] = table[c].astype(np.int64)
        table["class_id"] = np.asarray([-1 if r[5] is None else r[5] for r in rows], dtype=np.int64)
        for c in ("score", "loc_quality"):
            table[c] = np.asarray([np.nan if v is None else v for v in table[c]], dtype=np.float64)
        table["weight"] = table["weight"].astype(np.float64)
        table["xyxy"] = np.asarray([r[6:10] for r in rows], dtype=np.float64).reshape(-1, 4)
        for c in ("x1", "y1", "x2", "y2"):
            del table[c]
        return table

    # -- annotations ----------------------------------------------------------------------------
    @staticmethod
    def _subset(subset: str) -> tuple[str, tuple[str, ...]]:
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        return SUBSETS[subset]

    @staticmethod
    def _box_sql(img_cond: str, sources: Sequence[str], split: Any) -> tuple[str, list]:
        args: list = list(sources)
        cond = f"({img_cond})"
        if split is None:
            cond += " AND i.split IS NULL"
        elif split is not ...:
            cond += " AND i.split = ?"
            args.append(split)
        src = ",".join("?" * len(sources))
        sql = (
            "SELECT b.id, i.id, i.path, i.width, i.height, b.class_id, b.x1, b.y1, b.x2, b.y2, "
            "b.difficult, b.truncated, b.source, b.round, b.model, b.score, b.loc_quality, b.weight "
            "FROM images i LEFT JOIN boxes b ON b.image_id = i.id AND b.active = 1 "
            f"AND b.source IN ({src}) WHERE {cond} ORDER BY i.id, b.id"
        )
        return sql, args

    def annotations(
        self,
        subset: str = "labelled",
        split: str | None | EllipsisType = ...,
        sources: Sequence[str] | None = None,
    ) -> dict[str, Annotation]:
        """{relative path: Annotation} for a subset (see `SUBSETS`), provenance rebuilt from columns.

        Negatives come back as empty Annotations; images outside the subset are absent. `split`
        narrows to 'train'/'val'/'test' or the pool (None); `sources` overrides the box sources.
        """
        img_cond, default_sources = self._subset(subset)
        srcs = tuple(str(Source(s)) for s in (sources or default_sources))
        sql, args = self._box_sql(img_cond, srcs, split)
        names = self.classes
        out: dict[str, Annotation] = {}
        current: tuple | None = None
        acc: list[tuple] = []

        def flush() -> None:
            if current is None:
                return
            path, w, h = current
            boxes = Boxes(np.array([r[6:10] for r in acc], dtype=np.float64).reshape(-1, 4), (w, h))
            out[path] = Annotation(
                image=path,
                boxes=boxes,
                labels=tuple("" if r[5] is None else names[r[5]] for r in acc),
                difficult=tuple(bool(r[10]) for r in acc),
                truncated=tuple(bool(r[11]) for r in acc),
                provenance=tuple(
                    Provenance(source=Source(r[12]), round=int(r[13]), model=r[14], score=r[15],
                               loc_quality=r[16])
                    for r in acc
                ),
            )

        last_id = None
        for row in self._conn.execute(sql, args):
            if row[1] != last_id:
                flush()
                last_id, current, acc = row[1], (row[2], row[3], row[4]), []
            if row[0] is not None:
                acc.append(row)
        flush()
        return out

    # -- status ---------------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads that see one state: a read transaction (WAL snapshot), so no commit lands between them."""
        if self._tx_depth or self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN")
        self._tx_depth = 1
        try:
            yield
        finally:
            self._tx_depth = 0
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")

    def status(self) -> dict[str, Any]:
        """Counts for `boxloop status`, one aggregate SQL query each (fast at 200k images), one snapshot."""
        with self.snapshot():
            return self._status()

    def _status(self) -> dict[str, Any]:
        from boxloop.integrity import skipped_images

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
        pseudo_images = q(
            "SELECT COUNT(*) FROM (SELECT DISTINCT image_id FROM boxes WHERE active = 1 AND source = 'pseudo')"
        ).fetchone()[0]
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
            "skipped_images": [s.as_dict() for s in skipped_images(self)],
            "schema_version": self.schema_version,
        }

    # -- rounds ---------------------------------------------------------------------------------
    def start_round(self, config: Mapping[str, Any] | None = None, step: str = "start",
                    round_id: int | None = None) -> int:
        """Open a round (id 1, 2, ... unless given); its resolved config is saved with it."""
        with self.transaction():
            if round_id is None:
                round_id = int(self._conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM rounds").fetchone()[0])
            self._conn.execute(
                "INSERT INTO rounds(id, step, status, started, config_json) VALUES (?, ?, 'running', ?, ?)",
                (round_id, step, _now(), json.dumps(dict(config or {}), default=str)),
            )
        return round_id

    def update_round(self, round_id: int, step: str | None = None, status: str | None = None) -> None:
        """Record progress; status 'done' (or 'failed') also stamps the finish time."""
        with self.transaction():
            if step is not None:
                self._conn.execute("UPDATE rounds SET step = ? WHERE id = ?", (step, round_id))
            if status is not None:
                finished = _now() if status in ("done", "failed") else None
                self._conn.execute(
                    "UPDATE rounds SET status = ?, finished = COALESCE(?, finished) WHERE id = ?",
                    (status, finished, round_id),
                )

    def rounds(self) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT id, step, status, started, finished, config_json FROM rounds ORDER BY id"
        ).fetchall()
        return [
            {"id": r[0], "step": r[1], "status": r[2], "started": r[3], "finished": r[4],
             "config": json.loads(r[5]) if r[5] else {}}
            for r in rows
        ]

    def last_round(self) -> dict[str, Any] | None:
        r = self.rounds()
        return r[-1] if r else None

    # -- metrics --------------------------------------------------------------------------------
    def set_metric(self, round: int, key: str, value: Any) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO metrics(round, key, value_json) VALUES (?, ?, ?) "
                "ON CONFLICT(round, key) DO UPDATE SET value_json = excluded.value_json",
                (int(round), key, json.dumps(value)),
            )

    def set_metrics(self, round: int, values: Mapping[str, Any]) -> None:
        with self.transaction():
            for k, v in values.items():
                self.set_metric(round, k, v)

    def metrics(self, round: int | None = None) -> dict[int, dict[str, Any]]:
        """{round: {key: value}}, all rounds or one."""
        sql, args = "SELECT round, key, value_json FROM metrics", []
        if round is not None:
            sql += " WHERE round = ?"
            args.append(int(round))
        out: dict[int, dict[str, Any]] = {}
        for r, k, v in self._conn.execute(sql + " ORDER BY round, key", args):
            out.setdefault(r, {})[k] = json.loads(v)
        return out

    # -- queries --------------------------------------------------------------------------------
    def add_queries(
        self, round: int, items: Iterable[tuple], strategy: str, batch: int = 0,
    ) -> list[int]:
        """Record what was asked: (image, box id or None, score[, box index]) per item. Returns query ids.

        A box query names its box by `box_index`, the index into that round's stored Detections."""
        ids = []
        with self.transaction():
            for item in items:
                image, box_id, score = item[:3]
                box_index = item[3] if len(item) > 3 else None
                cur = self._conn.execute(
                    "INSERT INTO queries(round, batch, image_id, box_id, box_index, strategy, score) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (int(round), int(batch), self.image_id(image), box_id,
                     None if box_index is None else int(box_index), strategy, _opt_float(score)),
                )
                ids.append(int(cur.lastrowid))
        return ids

    def queries(self, round: int | None = None, state: str | None = None) -> list[dict[str, Any]]:
        cond, args = [], []
        if round is not None:
            cond.append("q.round = ?")
            args.append(int(round))
        if state is not None:
            cond.append("q.state = ?")
            args.append(state)
        where = (" WHERE " + " AND ".join(cond)) if cond else ""
        rows = self._conn.execute(
            "SELECT q.id, q.round, q.batch, q.image_id, i.path, q.box_id, q.box_index, q.strategy, q.score, q.state "
            f"FROM queries q JOIN images i ON i.id = q.image_id{where} ORDER BY q.id",
            args,
        ).fetchall()
        keys = ("id", "round", "batch", "image_id", "path", "box_id", "box_index", "strategy", "score", "state")
        return [dict(zip(keys, r)) for r in rows]

    def set_query_state(self, query_ids: Iterable[int], state: str) -> None:
        with self.transaction():
            self._conn.executemany("UPDATE queries SET state = ? WHERE id = ?", [(state, int(i)) for i in query_ids])

    # -- predictions ----------------------------------------------------------------------------
    def save_predictions(self, round: int, predictions: Mapping[int | str, Detections], model: str = "") -> None:
        """Store each image's Detections (a raw-array blob), replacing earlier ones of the same round/model."""
        with self.transaction():
            rows = [(int(round), self.image_id(k), model, detections_to_bytes(d)) for k, d in predictions.items()]
            self._conn.executemany(
                "INSERT OR REPLACE INTO predictions(round, image_id, model, blob) VALUES (?, ?, ?, ?)", rows
            )

    def _prediction_rows(self, round: int, model: str | None) -> sqlite3.Cursor:
        """(path, model, blob) of one round's stored predictions, in image-id order."""
        sql = ("SELECT i.path, p.model, p.blob FROM predictions p JOIN images i ON i.id = p.image_id "
               "WHERE p.round = ?")
        args: list = [int(round)]
        if model is not None:
            sql += " AND p.model = ?"
            args.append(model)
        # p.image_id (= i.id) walks the primary key in order; "ORDER BY i.id" sorted every blob in a temp b-tree
        return self._conn.execute(sql + " ORDER BY p.image_id", args)

    def load_predictions(self, round: int, model: str | None = None) -> dict[str, Detections]:
        """{relative path: Detections} of one round (one model, or all if there is only one)."""
        out: dict[str, Detections] = {}
        models = set()
        for path, m, blob in self._prediction_rows(round, model):
            models.add(m)
            out[path] = detections_from_bytes(blob)
        if len(models) > 1:
            raise ValueError(f"round {round} holds predictions of models {sorted(models)}; pass model=")
        return out


    def prediction_table(self, round: int, keys: Iterable[str] | None = None, model: str | None = None,
                         features: bool = True):
        """One round's stored predictions as a `DetectionTable` (images in id order), decoded in bulk
        without a `Detections` per image: ~1-2 s for 100,000 images x 10 boxes, where
        `load_predictions` + `DetectionTable.from_detections` take ~6 s (benchmarks/scale.py).
        `keys` keeps only those images (relative paths; images without stored predictions are left
        out); `features=False` skips the per-box features (only coreset needs them)."""
        wanted = None if keys is None else set(keys)
        paths, blobs, models = [], [], set()
        for path, m, blob in self._prediction_rows(round, model):
            models.add(m)
            if wanted is None or path in wanted:
                paths.append(path)
                blobs.append(blob)
        if len(models) > 1:
            raise ValueError(f"round {round} holds predictions of models {sorted(models)}; pass model=")
        return detection_table_from_blobs(paths, blobs, features=features)

# A stored prediction blob: this header, then the arrays as raw little-endian bytes in this order:
# xyxy f8 (n, 4), labels i8 (n), scores f4 (n), class_probs f4 (n, c), [loc_quality f4 (n)],
# [features f4 (n, d)]. Decoding is a few `np.frombuffer` views (~13 us an image), so a selection
# can load 100,000 images' predictions in about a second; the .npz blobs of older stores (~0.9 ms
# an image to open) are still read.
_BLOB_MAGIC = b"BXLDET1\n"
_BLOB_HEADER = struct.Struct("<8s6q")  # magic, n, c, d (-1: no features), has loc_quality, width, height


def detections_to_bytes(d: Detections) -> bytes:
    """A Detections as a blob (see `_BLOB_HEADER`)."""
    n, c = len(d), d.num_classes
    w, h = d.image_size
    f, lq = d.features, d.loc_quality
    parts = [
        _BLOB_HEADER.pack(_BLOB_MAGIC, n, c, -1 if f is None else f.shape[1], lq is not None, w, h),
        np.ascontiguousarray(d.boxes.xyxy, "<f8").tobytes(),
        np.ascontiguousarray(d.labels, "<i8").tobytes(),
        np.ascontiguousarray(d.scores, "<f4").tobytes(),
        np.ascontiguousarray(d.class_probs, "<f4").tobytes(),
    ]
    if lq is not None:
        parts.append(np.ascontiguousarray(lq, "<f4").tobytes())
    if f is not None:
        parts.append(np.ascontiguousarray(f, "<f4").tobytes())
    return b"".join(parts)


def detections_from_bytes(blob: bytes) -> Detections:
    """A stored blob back as Detections (the raw format, or an older store's .npz)."""
    if not blob.startswith(_BLOB_MAGIC):
        return _detections_from_npz(blob)
    buf = bytearray(blob)  # writable arrays, as the .npz ones were
    offset = _BLOB_HEADER.size

    def take(dtype: str, rows: int, cols: int | None = None) -> np.ndarray:
        nonlocal offset
        a = np.frombuffer(buf, dtype, rows if cols is None else rows * cols, offset)
        offset += a.nbytes
        return a if cols is None else a.reshape(rows, cols)

    try:
        _, n, c, dim, has_lq, w, h = _BLOB_HEADER.unpack_from(blob)
        xyxy, labels, scores, probs = take("<f8", n, 4), take("<i8", n), take("<f4", n), take("<f4", n, c)
        lq = take("<f4", n) if has_lq else None
        feats = take("<f4", n, dim) if dim >= 0 else None
    except (ValueError, struct.error) as e:
        raise ValueError(f"a stored prediction blob is truncated or corrupt ({e}); run `predict` again") from e
    return Detections(boxes=Boxes(xyxy, (w, h)), labels=labels, scores=scores, class_probs=probs,
                      loc_quality=lq, features=feats)


def detection_table_from_blobs(keys: Sequence[str], blobs: Sequence[bytes], features: bool = True):
    """The `DetectionTable` of per-image blobs, with the same rows and columns as
    `DetectionTable.from_detections({k: detections_from_bytes(b)})`, but decoded in bulk: one
    slice per image, then one vectorised gather per column. `features=False` leaves the
    features out (90% of the bytes at D=128; only coreset reads them). Anything unusual (an .npz
    blob, images disagreeing on the classes or the fields, no detection at all) takes that
    per-image path, errors included."""
    from boxloop.strategies.table import DetectionTable

    def per_image() -> DetectionTable:
        table = DetectionTable.from_detections({k: detections_from_bytes(b) for k, b in zip(keys, blobs)})
        return table if features else replace(table, features=None)

    if not blobs or not all(b.startswith(_BLOB_MAGIC) for b in blobs):
        return per_image()
    try:
        heads = np.array([_BLOB_HEADER.unpack_from(b)[1:5] for b in blobs], dtype=np.int64)  # n, c, d, has_lq
    except struct.error:
        return per_image()  # raises the clear error
    n = heads[:, 0]
    full = heads[n > 0]
    if full.shape[0] == 0 or (full[:, 1:] != full[0, 1:]).any() or (n < 0).any():
        return per_image()
    c, dim, has_lq = (int(v) for v in full[0, 1:])
    # per row, in 4-byte words: xyxy 8, labels 2, scores 1, class_probs c, loc_quality 0/1; then features
    fields = [("xyxy", 8), ("labels", 2), ("scores", 1), ("class_probs", c), ("loc_quality", has_lq)]
    small_w = sum(w for _, w in fields)
    head = _BLOB_HEADER.size
    lengths = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
    if ((lengths != head + 4 * n * (small_w + max(dim, 0))) & (n > 0)).any():
        return per_image()  # a blob shorter or longer than its header says: the per-image error
    ns = n.tolist()
    # every image's small fields, one after another: image i holds n_i*small_w words, field by field
    small = np.frombuffer(b"".join([b[head:head + 4 * small_w * k] for b, k in zip(blobs, ns) if k]), "<i4")
    total = int(n.sum())
    image_index = np.repeat(np.arange(len(blobs), dtype=np.int64), n)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    row_start = starts[image_index]  # rows before this row's image
    row_n = n[image_index]
    box_index = np.arange(total, dtype=np.int64) - row_start
    cols: dict[str, np.ndarray] = {}
    before = 0
    for name, width in fields:
        if width:  # word of row r's field: image start + n_i * (words of earlier fields) + box index * width
            pos = small_w * row_start + row_n * before + box_index * width
            cols[name] = small[pos[:, None] + np.arange(width)]
        before += width
    labels = cols["labels"].view("<i8").reshape(total).astype(np.int64)
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"stored predictions hold labels outside [0, {c}); run `predict` again")
    feats = None
    if features and dim >= 0:  # image after image, each a row-major (n_i, dim) block: the column as it is
        rest = [memoryview(b)[head + 4 * small_w * k:] for b, k in zip(blobs, ns) if k]
        feats = np.frombuffer(bytearray().join(rest), "<f4").reshape(total, dim)  # bytearray: writable
    return DetectionTable(
        keys=tuple(keys),
        image_index=image_index,
        box_index=box_index,
        boxes=cols["xyxy"].view("<f8").reshape(total, 4).astype(np.float32),
        labels=labels,
        scores=cols["scores"].view("<f4").reshape(total).astype(np.float32),
        class_probs=cols["class_probs"].view("<f4").reshape(total, c).astype(np.float32),
        loc_quality=cols["loc_quality"].view("<f4").reshape(total).astype(np.float32) if has_lq else None,
        features=None if feats is None else feats.astype(np.float32, copy=False),
    )


def _detections_from_npz(blob: bytes) -> Detections:
    """The .npz blobs that stores written before the raw format hold."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        w, h = (int(v) for v in z["image_size"])
        return Detections(
            boxes=Boxes(z["xyxy"], (w, h)),
            labels=z["labels"],
            scores=z["scores"],
            class_probs=z["class_probs"],
            loc_quality=z["loc_quality"] if "loc_quality" in z.files else None,
            features=z["features"] if "features" in z.files else None,
        )


def _split_sql(script: str) -> list[str]:
    """Statements of a migration (none holds a ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]
