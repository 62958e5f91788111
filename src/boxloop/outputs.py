"""Writing outputs (an export, a folder of predictions, a report, a query batch) where a user may
already keep files: every command that writes a file the user names goes through `staged_output`;
and the progress of a long phase on the console or in a log (`progress_bar`).

Everything is first written into a hidden staging folder beside the target. Only then is each
staged file compared with what the target holds: a file already there is a conflict, and unless
`overwrite` is given the command stops, naming the files, with the target exactly as it was (the
staging folder is removed). Otherwise each file is fsynced and renamed into place: no file is ever
half-written, and nothing but the staged names is touched. A folder never replaces a file nor a
file a folder, and an output never replaces a database (a project's boxloop.db, its WAL or any
SQLite file), `overwrite` or not.

Written by hand: the staging and the conflict check; `os` and `shutil` do the moving.

Progress (checking images, training, predicting, embedding) is a tqdm bar on a terminal, and in a log
(stderr not a terminal) one plain line per tenth of the work and one at the end, instead of
thousands of carriage-return updates: `progress_bar`, whose LineProgress offers the part of tqdm's
interface boxloop uses (update, set_postfix, write, close, a context manager).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from boxloop.formats import listing

__all__ = ["OutputExists", "staged_output", "progress_bar"]


class OutputExists(ValueError):
    """Writing would replace files that are already there (pass overwrite to allow it)."""


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _is_database(path: Path) -> bool:
    """A SQLite file, or the WAL or shared-memory file beside a project's database."""
    if path.name.endswith(("-wal", "-shm", "-journal")) and (path.parent / path.name.rsplit("-", 1)[0]).is_file():
        return _is_database(path.parent / path.name.rsplit("-", 1)[0])
    if not path.is_file():  # a FIFO would block the read
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def _check_target(target: Path, file_target: bool) -> None:
    if file_target and target.is_dir():
        raise ValueError(f"{target} is a folder, not a file; pass the path of the file to write"
                         + (f" (or, to write into a folder, a folder path not ending in {target.suffix})"
                            if target.suffix else ""))
    if not file_target and target.exists() and not target.is_dir():
        raise ValueError(f"{target} is a file, not a folder; pass a folder to write into (it is created if missing)")


def _refuse_existing(exists: list[Path], base: Path, overwrite: bool) -> None:
    """Stop before replacing a database (always) or any file (unless `overwrite`)."""
    databases = [t for t in exists if _is_database(t)]
    if databases:
        raise ValueError(f"{listing([str(t) for t in databases], 5)}: a database (a boxloop project's?); an output "
                         "never replaces one, --overwrite or not; nothing was written. Choose another --out")
    if exists and not overwrite:
        raise OutputExists(f"{len(exists)} file(s) already in {base} would be overwritten: "
                           f"{listing([str(t) for t in exists], 10)}; nothing was written. Pass --overwrite to "
                           "replace them, or choose another --out")


@contextmanager
def staged_output(target: str | Path, overwrite: bool = False, file_target: bool = False) -> Iterator[Path]:
    """Yield where to write instead of `target`: a staging folder standing for the target folder, or
    for `file_target` a path named like the target file inside one. On a clean exit the staged files
    move into place (OutputExists if one would replace an existing file and not `overwrite`). A
    single file that is there already is refused before anything is written into the stage."""
    target = Path(target)
    _check_target(target, file_target)
    if file_target and (target.exists() or target.is_symlink()):
        _refuse_existing([target], target.parent, overwrite)  # before the caller's work, not after
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=parent))
    try:
        yield stage / target.name if file_target else stage
        base = target.parent if file_target else target
        files = sorted(p for p in stage.rglob("*") if p.is_file() or p.is_symlink())
        pairs = [(p, base / p.relative_to(stage)) for p in files]
        clash = [t for _, t in pairs if t.is_dir() or any(a.exists() and not a.is_dir() for a in t.parents
                                                          if a.is_relative_to(base) and a != base)]
        if clash:
            raise ValueError(f"cannot write {listing([str(t) for t in clash], 5)}: a folder stands where a file goes "
                             "(or a file where a folder goes); choose another --out")
        _refuse_existing([t for _, t in pairs if t.exists() or t.is_symlink()], base, overwrite)
        for src, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _fsync(src)
            os.replace(src, dst)
        for folder in {dst.parent for _, dst in pairs}:
            _fsync(folder, directory=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# -- progress ------------------------------------------------------------------------------------

PROGRESS_STEPS = 10  # lines per phase in a log: one per tenth of the work


class LineProgress:
    """tqdm's interface, printing `desc: n/total unit (p%)` when a new tenth is reached."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.n = int(total or 0), desc, unit, int(initial)
        self.postfix = ""
        self._shown = self._tenth()

    def _tenth(self) -> int:
        return PROGRESS_STEPS * self.n // self.total if self.total > 0 else 0

    def _line(self) -> None:
        pct = 100 * self.n // self.total if self.total > 0 else 100
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct}%){self.postfix}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tenth() > self._shown:
            self._shown = self._tenth()
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", " + ", ".join(f"{k}={v}" for k, v in values.items()) if values else ""

    @staticmethod
    def write(text: str) -> None:
        print(text, flush=True)  # where tqdm.write prints

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int, desc: str, unit: str, disable: bool = False, initial: int = 0, leave: bool = True) -> Any:
    """A tqdm bar when stderr is a terminal; else (a log file, a pipe) a LineProgress; `disable`: silent."""
    from tqdm.auto import tqdm

    if disable or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, initial=initial, leave=leave)
    return LineProgress(total, desc, unit, initial)
