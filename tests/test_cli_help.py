"""--help says what the commands accept and reads as sentences (issue 30)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from boxloop.cli import app
from boxloop.cli.output import help_as_sentences
from boxloop.defaults import BATCH_SIZE, CPU, GPU
from boxloop.formats import FORMATS
from boxloop.strategies import BOX_STRATEGIES, IMAGE_STRATEGIES


def _help(*args: str) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return re.sub(r"[\s│]+", " ", res.output)  # one line: the table borders and wrapping gone


@pytest.mark.parametrize("command", ["init", "export", "import", "simulate", "query"])
def test_the_format_option_names_every_format(command: str) -> None:
    text = _help(command)
    assert f"{', '.join(FORMATS[:-1])} or {FORMATS[-1]}" in text


def test_defaults_in_the_help_are_the_ones_that_run() -> None:
    text = _help("train")
    assert f"default: {CPU.image_size} on a CPU, {GPU.image_size} on a GPU" in text
    assert f"default {BATCH_SIZE})" in text and f"at least {CPU.min_steps} steps" in text
    assert f"{', '.join(IMAGE_STRATEGIES)} (boxes: {', '.join(BOX_STRATEGIES)})" in _help("query")


def test_docstring_line_breaks_are_joined_inside_paragraphs() -> None:
    doc = """First line
    goes on.

    Second paragraph
    also goes on.
    - a list item
    - another
    """
    assert help_as_sentences(doc) == "First line goes on.\n\nSecond paragraph also goes on.\n- a list item\n- another"


def test_a_command_help_is_one_line_per_paragraph() -> None:
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000", "NO_COLOR": "1"})
    lines = [ln.strip() for ln in res.output.splitlines()]
    assert any(ln.startswith("With --semi, a teacher") and ln.endswith("from the last checkpoint.") for ln in lines)
