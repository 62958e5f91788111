"""Classes and images: their rows, splits and statuses."""

from __future__ import annotations

from dataclasses import dataclass
from types import EllipsisType
from typing import Iterable

import numpy as np
import sqlite3

from boxloop.store.core import Core
from boxloop.store.schema import IMAGE_SETS, SPLITS, STATUSES
from boxloop.structures import check_class_name

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


class Images(Core):
    """Classes and images of a project."""

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

    def image_set(self, name: str) -> list[str]:
        """Relative paths of a named set of images (`IMAGE_SETS`: the pool, autolabel's pool, ...)."""
        if name not in IMAGE_SETS:
            raise ValueError(f"image set must be one of {', '.join(IMAGE_SETS)}, got {name!r}")
        cond, order = IMAGE_SETS[name]
        return [r[0] for r in self._conn.execute(f"SELECT i.path FROM images i WHERE {cond} ORDER BY {order}")]

    def image_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])
