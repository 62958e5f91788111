"""Opening a project's SQLite file: refuse a file that is not boxloop's before a byte is written to
it, and read a project that lies on a read-only file system.

Written by hand: the checks made before a connection may write (a 0-byte file, a file that is not
SQLite, another program's SQLite database: `PRAGMA journal_mode = WAL` alone would rewrite its
header, and a migration would add boxloop's tables to it), and the two read-only ways in. A project
whose last writer closed cleanly is opened `immutable`; one whose WAL still holds committed changes
(its writer was killed, or the disk was remounted read-only under it) is read with SQLite's
read-only WAL support when the `-shm` file is there, else from a private copy of the database and
its WAL in a temporary folder, checkpointed there, so the labels read are the committed ones.
Also the deleting of a project's database (with its WAL and SHM) for `init --force`. `sqlite3` does
the rest. `boxloop.store` calls these and re-exports the last two.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

__all__ = ["NotAProject", "ReadOnlyConnection", "check_file", "check_schema", "connect_read_only", "remove_database",
           "retire_database"]

SQLITE_MAGIC = b"SQLite format 3\x00"
BOXLOOP_TABLES = frozenset({"meta", "classes", "images", "boxes"})


def database_error(e: BaseException) -> str | None:
    """SQLite's text when `e` is its operational error (disk full, read-only, I/O), else None: how
    the command line tells storage problems apart without importing sqlite3."""
    return str(e) if isinstance(e, sqlite3.OperationalError) else None


class NotAProject(ValueError):
    """A directory without a boxloop database, or a database file that is not boxloop's."""


class ReadOnlyConnection(sqlite3.Connection):
    """A connection that can only read (the store skips migrations on it). `copy_dir`, when set, is
    the temporary folder holding the private copy it reads; closing the connection deletes it."""

    copy_dir: str | None = None

    def close(self) -> None:
        super().close()
        if self.copy_dir is not None:
            shutil.rmtree(self.copy_dir, ignore_errors=True)
            self.copy_dir = None


def _foreign(path: Path, what: str) -> NotAProject:
    return NotAProject(f"{path} is not a boxloop database ({what}); boxloop did not change it. Pass the folder "
                       "`boxloop init` made, or move the file away and run `boxloop init` again")


def check_file(path: Path) -> None:
    """Before connecting to an existing database file: it must be a non-empty SQLite file."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except IsADirectoryError:
        raise NotAProject(f"{path} is a folder, not a boxloop database") from None
    if not head:
        raise _foreign(path, "an empty file, 0 bytes")
    if head != SQLITE_MAGIC:
        raise _foreign(path, "not an SQLite file")


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """A connected database must carry a boxloop schema version and boxloop's tables. Reads only."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version < 1 or not BOXLOOP_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:8]) or "none"
        raise _foreign(path, f"an SQLite database of another program: schema version {version}, tables {shown}")


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _open(uri: str, timeout: float) -> ReadOnlyConnection:
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                           factory=ReadOnlyConnection)  # type: ignore[return-value]


def _probe(conn: ReadOnlyConnection, path: Path) -> ReadOnlyConnection:
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        check_schema(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_read_only(path: Path, timeout: float) -> ReadOnlyConnection | None:
    """A read-only connection to a project on a read-only file system; None when the file system is
    writable (the failure that led here is then another one) or the file cannot be read at all.
    Writes through it fail with SQLite's 'attempt to write a readonly database'."""
    if not _read_only_fs(path.parent):
        return None
    wal = Path(str(path) + "-wal")
    uri = path.resolve().as_uri()
    try:
        if not (wal.exists() and wal.stat().st_size > 0):
            return _probe(_open(f"{uri}?mode=ro&immutable=1", timeout), path)
        try:  # committed changes live in the WAL: read them with it, never without
            return _probe(_open(f"{uri}?mode=ro", timeout), path)
        except sqlite3.OperationalError:
            pass  # no -shm file and none can be made here: read a private, checkpointed copy
        copy_dir = tempfile.mkdtemp(prefix="boxloop-readonly-")
        try:
            copy = Path(copy_dir) / path.name
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, Path(str(copy) + "-wal"))
            rw = sqlite3.connect(copy, isolation_level=None)
            try:
                rw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                rw.close()
            conn = _open(f"{copy.resolve().as_uri()}?mode=ro&immutable=1", timeout)
        except BaseException:
            shutil.rmtree(copy_dir, ignore_errors=True)
            raise
        conn.copy_dir = copy_dir
        return _probe(conn, path)
    except (sqlite3.DatabaseError, OSError):
        return None


def remove_database(db: Path) -> None:
    """Delete a database file and its WAL/SHM companions (a stale WAL must never meet a new db)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(db) + suffix)
        if p.exists():
            p.unlink()


def retire_database(project_dir: Path) -> None:
    """Delete a project's database, but only while no other process writes it: its writer lock and
    its database lock are both taken first (ProjectBusy otherwise)."""
    from boxloop.store import DB_NAME, Project

    try:
        old = Project.open(project_dir)
    except NotAProject:
        old = None  # a broken database: nothing to protect
    if old is not None:
        with old, old.writer_lock(), old.transaction():
            pass  # proves nobody else is writing
    remove_database(Path(project_dir) / DB_NAME)
