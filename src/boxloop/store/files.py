"""What the store knows of each image file (size, mtime, sha256) and of the images left out: the
SQL behind `boxloop.integrity`, whose policy lives there."""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Sequence

from boxloop.store.images import Images
from boxloop.store.schema import now


class Files(Images):
    """Image files as measured, and the `skipped_images` table."""

    @property
    def has_file_records(self) -> bool:
        """Schema 2 added them; a read-only project of an older schema has neither."""
        return self.schema_version >= 2

    def file_records(self) -> dict[str, tuple[Any, ...]]:
        """{path: (id, sha256, width, height, status, file_size, mtime_ns, holds an active box)}."""
        cols = "file_size, mtime_ns" if self.has_file_records else "NULL, NULL"
        return {r[0]: r[1:] for r in self._conn.execute(
            f"SELECT path, id, sha256, width, height, status, {cols}, EXISTS (SELECT 1 FROM boxes b "
            "WHERE b.image_id = i.id AND b.active = 1) FROM images i")}

    def refresh_file_records(self, stamped: Sequence[tuple], remeasured: Sequence[tuple],
                             usable: Sequence[str]) -> None:
        """Store what a file check found: (sha256, file_size, mtime_ns, id) of files still the same
        picture, (sha256, width, height, file_size, mtime_ns, id) of unlabelled images measured
        again; forget the skip records of `usable` paths. These writes only save work next time,
        so a read-only project leaves them out."""
        forget = [(k,) for k in usable] if usable and self.skipped_paths().intersection(usable) else []
        statements = [
            ("UPDATE images SET sha256 = ?, file_size = ?, mtime_ns = ? WHERE id = ?", stamped),
            ("UPDATE images SET sha256 = ?, width = ?, height = ?, file_size = ?, mtime_ns = ? WHERE id = ?",
             remeasured),
            ("DELETE FROM skipped_images WHERE path = ?", forget),
        ]
        if not any(rows for _, rows in statements) or not self.has_file_records:
            return
        try:
            with self.transaction():
                for sql, rows in statements:
                    if rows:
                        self._conn.executemany(sql, rows)
        except sqlite3.OperationalError as e:
            if "readonly" not in str(e) and "read-only" not in str(e):
                raise

    def skipped_rows(self) -> list[tuple[str, str, str]]:
        """(path, reason, stage) of every image recorded as left out, by path."""
        if not self.has_file_records:
            return []
        return [tuple(r) for r in self._conn.execute("SELECT path, reason, stage FROM skipped_images ORDER BY path")]

    def skipped_paths(self) -> set[str]:
        if not self.has_file_records:
            return set()
        return {r[0] for r in self._conn.execute("SELECT path FROM skipped_images")}

    def add_skipped(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Record (path, reason, stage) as left out, in one transaction; a path already recorded
        gets the new reason."""
        stamped = [(path, reason, stage, now()) for path, reason, stage in rows]
        if stamped and self.has_file_records:
            with self.transaction():
                self._conn.executemany(
                    "INSERT OR REPLACE INTO skipped_images(path, reason, stage, at) VALUES (?, ?, ?, ?)", stamped)
