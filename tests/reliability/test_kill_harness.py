"""The full crash-safety harness (issue 7 item 1): at least 50 SIGKILLs over simulate, autolabel,
train and import, each followed by integrity, label and resume checks, and a comparison of the final
results with an uninterrupted run. Slow (tens of minutes on 2 CPU cores): `make test-reliability`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reliability.harness import run_harness

pytestmark = pytest.mark.skipif(os.environ.get("BOXLOOP_RELIABILITY") != "1",
                                reason="the full kill harness runs with `make test-reliability`")


def test_full_kill_harness(tmp_path: Path) -> None:
    report = run_harness(tmp_path, seed=0)
    table = report.table()
    print(table)
    out = Path(os.environ.get("BOXLOOP_RELIABILITY_REPORT", "reliability_report.md"))
    out.write_text(table + "\n")
    (out.with_suffix(".json")).write_text(json.dumps([o.__dict__ for o in report.outcomes], indent=1))
    assert report.kills >= 50, table
    assert {"simulate", "autolabel", "train", "import"} <= set(report.kills_by()), table
    assert report.ok, table
