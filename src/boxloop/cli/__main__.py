"""`python -m boxloop.cli`: the same command line as the `boxloop` script."""

from boxloop.cli import app

app()
