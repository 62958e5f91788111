"""The `boxloop` command line: typer commands (main), shared options, consoles and tables, user errors, demo.

Owns: main (the commands, one thin function each), options, output, errors, demo; `app`, the one
object it exports, is what the `boxloop` script and `python -m boxloop.cli` run.
May import: every other package; nothing imports cli/.
"""

from boxloop.cli.main import app

__all__ = ["app"]
