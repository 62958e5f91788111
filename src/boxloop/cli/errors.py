"""How a `boxloop` command fails: a user's mistake or the machine's state is one red line and exit
code 1, not a traceback.

Written by hand here: which exceptions are the user's (bad labels, broken images, a busy or missing
project, invalid values), what Ctrl-C says (exit code 130: what is kept, and that a rerun resumes),
the reading of a full disk, a read-only file system or a denied write out of an exception chain
(`storage_problem`), and the `user_errors` decorator every command wears, which also turns logged
and Python warnings into yellow lines. Usage errors (exit code 2) are click's;
BOXLOOP_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.markup import escape

from boxloop.cli.output import err, warn

F = TypeVar("F", bound=Callable[..., Any])

def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean 'your input is wrong', not 'boxloop is broken' (no traceback)."""
    from boxloop.formats import FormatError
    from boxloop.images import ImageError
    from boxloop.store import ProjectBusy

    return (FormatError, ImageError, ProjectBusy, ValueError, FileNotFoundError, NotADirectoryError, KeyError)


# What a rerun of an interrupted command does, by command function name (the others start over).
_RESUMES = {name: "it resumes from the last checkpoint or step" for name in ("train", "query", "simulate", "autolabel")}


class _EchoWarnings(logging.Handler):
    """boxloop's logged warnings (an image left out, a strategy with nothing to rank) as warning lines."""

    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


def user_errors(fn: F) -> F:
    """Decorator: a user error becomes one red line on stderr and exit code 1; logged warnings and
    Python warnings (a truncated image loaded) become yellow warning lines while the command runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logger, echo = logging.getLogger("boxloop"), _EchoWarnings(logging.WARNING)
        logger.addHandler(echo)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = lambda message, *_a, **_k: warn(str(message))
                return fn(*args, **kwargs)
        except KeyboardInterrupt:  # Ctrl-C: say what is kept and how to go on, instead of click's "Aborted!"
            if os.environ.get("BOXLOOP_DEBUG"):
                raise
            err.print(f"[bold red]interrupted:[/bold red] what was saved before is kept; run the same command "
                      f"again to go on ({escape(_RESUMES.get(fn.__name__, 'it starts over'))})")
            raise typer.Exit(130) from None
        except _user_errors() as e:
            if os.environ.get("BOXLOOP_DEBUG"):
                raise  # the full traceback, for bug reports
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            err.print(f"[bold red]error:[/bold red] [red]{escape(str(msg))}[/red]")
            raise typer.Exit(1) from None
        except Exception as e:  # a full disk or a read-only folder is the machine's state, not a bug
            msg = storage_problem(e, kwargs.get("project"))
            if msg is None or os.environ.get("BOXLOOP_DEBUG"):
                raise
            err.print(f"[bold red]error:[/bold red] [red]{escape(msg)}[/red]")
            raise typer.Exit(1) from None
        finally:
            logger.removeHandler(echo)

    return wrapper  # type: ignore[return-value]


def storage_problem(e: BaseException, project: Path | None = None) -> str | None:
    """What to tell the user when `e` (or an exception it was raised from: torch wraps a failed write
    in a RuntimeError) is a full disk, a read-only file system or a denied write; None otherwise."""
    import errno
    import sqlite3

    def readonly(folder: Path) -> bool:
        try:
            return bool(os.statvfs(folder).f_flag & os.ST_RDONLY) or not os.access(folder, os.W_OK)
        except OSError:
            return False

    def full(folder: Path) -> bool:
        try:
            st = os.statvfs(folder)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 1 << 20

    again = "run the same command again (the project keeps everything saved before this failure)"
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        # a failed copy names (source, destination): the destination is what could not be written
        name = (getattr(x, "filename2", None) or getattr(x, "filename", None) or project or "a file")
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"cannot write {name}: no space left on the device; free some disk space and {again}"
        if isinstance(x, OSError) and x.errno == errno.EROFS:
            return (f"cannot write {name}: read-only file system; make it writable "
                    f"(or copy the project to a writable folder) and {again}")
        if isinstance(x, OSError) and x.errno in (errno.EACCES, errno.EPERM) and x.filename:
            return f"permission denied: {name}; give this user access to it and {again}"
        if isinstance(x, sqlite3.OperationalError) and project is not None:
            text, where = str(x), Path(project)
            db = where / "boxloop.db"
            if "full" in text or ("disk I/O" in text and full(where)):
                return f"cannot write {db}: no space left on the device ({text}); free some disk space and {again}"
            if "readonly" in text or "read-only" in text or ("unable to open" in text and readonly(where)):
                return (f"cannot write {db}: the project folder is read-only ({text}); make it writable "
                        f"(or copy the project to a writable folder) and {again}")
            if "disk I/O" in text or "unable to open" in text:
                return f"cannot use {db}: {text}; check the disk and the folder's permissions, then {again}"
        x = x.__cause__ or x.__context__
    return None

