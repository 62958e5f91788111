"""The project's connection, transactions, locks and meta: what every other part of the store builds on.

The connection is private to the store package: other modules ask a `Project` method, never SQL.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from boxloop.store.dbfile import (NotAProject, ReadOnlyConnection, check_file, check_schema, connect_read_only,
                                  remove_database, retire_database)
from boxloop.store.schema import DB_NAME, LOCK_NAME, SCHEMA_VERSION, MIGRATIONS, now, split_sql


class ProjectBusy(RuntimeError):
    """Another process holds the project's write lock."""

    def __init__(self, project_dir: str | Path) -> None:
        super().__init__(
            f"another boxloop process is writing {project_dir}; wait for it or stop it"
        )


class ProjectExists(ValueError):
    """`create` on a directory that already holds a project (pass force=True to replace it)."""


class Core:
    """A boxloop project directory and its SQLite connection (see `boxloop.store.Project`)."""

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
        self._locks: dict[str, list[int]] = {}  # writer lock file name -> [fd, depth]
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
                for stmt in split_sql(MIGRATIONS[i]):
                    self._conn.execute(stmt)
            # PRAGMA user_version takes a literal; it is transactional inside BEGIN..COMMIT.
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for tests and benchmarks that look inside the database. boxloop's own
        modules never use it: they call a named method (tests/test_structure.py checks)."""
        return self._conn

    def backup_to(self, path: str | Path, before: Callable[[], None] | None = None) -> None:
        """Copy the database to `path` with SQLite's backup API (consistent even with WAL).
        `before` runs once the target file exists, before any page is copied."""
        target = sqlite3.connect(Path(path))
        try:
            if before is not None:
                before()
            with target:
                self._conn.backup(target)
        finally:
            target.close()

    # -- create / open / close ------------------------------------------------------------------
    @classmethod
    def open(cls, project_dir: str | Path, timeout: float = 5.0) -> Any:
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
    ) -> Any:
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
                proj.set_path_meta("image_root", image_root)
                proj.set_meta("created", now())
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
        for fd, _ in self._locks.values():
            os.close(fd)
        self._locks = {}

    def __enter__(self) -> Any:
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
    def writer_lock(self, name: str = LOCK_NAME) -> Iterator[None]:
        """Hold PROJECT/`name` (advisory, fcntl) for a writer; re-entrant in-process.

        LOCK_NAME is the long-running writers' (train, query, autolabel: one at a time); IMPORT_LOCK
        is import's (it may run beside training, its transaction is short, but two imports at once
        would both take the same batch's answers). Raises ProjectBusy at once if another process
        holds it. The lock dies with its process, so a killed command never leaves a stale lock.
        """
        if name in self._locks:
            self._locks[name][1] += 1
            try:
                yield
            finally:
                self._locks[name][1] -= 1
            return
        fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ProjectBusy(self.dir) from e
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._locks[name] = [fd, 1]
        try:
            yield
        finally:
            del self._locks[name]
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

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

    # -- meta -----------------------------------------------------------------------------------
    def table_sizes(self) -> dict[str, int] | None:
        """Bytes per table and index (SQLite's dbstat), largest first; None where SQLite was built
        without dbstat."""
        try:
            rows = self._conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
        except sqlite3.OperationalError:
            return None
        return {str(n): int(b) for n, b in rows}

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

    def set_path_meta(self, key: str, path: str | Path) -> None:
        """Store a path relative to the project folder when it lies inside (a moved project keeps its
        model, a `cp -a` backup uses its own), else absolute (any working directory finds it)."""
        path = Path(path).resolve()
        try:
            self.set_meta(key, path.relative_to(self.dir.resolve()).as_posix())
        except ValueError:
            self.set_meta(key, str(path))

    def get_path_meta(self, key: str) -> Path | None:
        """A path stored by `set_path_meta` (or an absolute one stored before), None if unset."""
        value = self.get_meta(key)
        if not value:
            return None
        path = Path(value)
        return path if path.is_absolute() else self.dir / path

    @property
    def image_root(self) -> Path:
        return self.get_path_meta("image_root")  # type: ignore[return-value]  # set by create

    @property
    def seed(self) -> int:
        return int(self.get_meta("seed", 0))

    @property
    def warnings(self) -> list[str]:
        """Warnings recorded at init (dropped or clipped boxes, duplicate images, ...)."""
        return list(self.get_meta("init_warnings", []))
