"""The `boxloop` command line: typer commands (main), shared options, consoles and tables, user errors, demo.

Owns: main (the commands, one thin function each), serve (`boxloop serve`, registered on main's app), options, output, errors, demo; `app`, the one
object it exports, is what the `boxloop` script and `python -m boxloop.cli` run.
May import: every other package; nothing imports cli/.
"""

from boxloop.cli import serve as _serve  # noqa: F401 - registers `boxloop serve` on app
from boxloop.cli.main import app

__all__ = ["app"]
