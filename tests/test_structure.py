"""Structural rules of the source tree, checked on the source itself."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "boxloop"
STORE = SRC / "store"

# SQL as it is written in a string: a statement keyword followed by what it acts on
SQL = re.compile(r"\b(SELECT\s+\S|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|"
                 r"ALTER\s+TABLE|DROP\s+TABLE|PRAGMA\s+\w)")
# reaching the database around the store: its connection, or a connection of one's own
RAW = re.compile(r"\.connection\b|\._conn\b|sqlite3\.connect\(|\.execute(many)?\(")


def _outside_store() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if STORE not in p.parents]


def _strings(path: Path) -> list[tuple[int, str]]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return [(t.start[0], t.string) for t in tokens if t.type == tokenize.STRING]


def test_no_sql_outside_the_store_package() -> None:
    found = [f"{p.relative_to(SRC)}:{line}: {text[:70]}" for p in _outside_store() for line, text in _strings(p)
             if SQL.search(text)]
    assert not found, "SQL outside boxloop.store (add a named store method instead):\n" + "\n".join(found)


def test_no_raw_connection_outside_the_store_package() -> None:
    found = []
    for p in _outside_store():
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if RAW.search(code):
                found.append(f"{p.relative_to(SRC)}:{n}: {line.strip()[:70]}")
    assert not found, "database access outside boxloop.store:\n" + "\n".join(found)


def test_the_rules_see_what_they_forbid() -> None:
    """The patterns catch the SQL that once lived outside the store, and pass ordinary prose."""
    assert SQL.search("UPDATE queries SET state = 'stale' WHERE state = 'open'")
    assert SQL.search("SELECT path FROM images WHERE status != 'labelled'")
    assert SQL.search("INSERT OR REPLACE INTO skipped_images(path) VALUES (?)")
    assert RAW.search("rows = project.connection.execute(sql)")
    assert not SQL.search("Select the images a person labels; update the model; delete nothing.")
    assert not RAW.search("project.image_set('pool')")


MAX_LINES = 500


def test_no_module_is_over_500_lines() -> None:
    """A module past 500 lines holds more than one thing: split it by what its parts do (issue 11)."""
    long = [f"{p.relative_to(SRC)}: {n} lines" for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(long)
