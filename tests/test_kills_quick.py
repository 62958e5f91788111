"""A quick subset of the crash-safety harness (tests/reliability/harness.py) in `make test`:
`train` and `import` SIGKILLed at random moments, the store checked after every kill, each command
re-run to the end and compared with an uninterrupted run. The full harness: `make test-reliability`."""

from __future__ import annotations

from pathlib import Path

from reliability.harness import QUICK_PLAN, run_harness


def test_quick_kill_harness(tmp_path: Path) -> None:
    report = run_harness(tmp_path, dict(QUICK_PLAN), seed=1, echo=lambda m: None)
    table = report.table()
    print(table)
    assert report.kills >= 4, table
    assert report.ok, table
