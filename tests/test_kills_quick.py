"""A quick subset of the crash-safety harness (tests/reliability/harness.py) in `make test`:
`train` and `import` SIGKILLed at random moments, the store checked after every kill, each command
re-run to the end and compared with an uninterrupted run; and simulate killed at its copy step (issue
17). The full harness: `make test-reliability`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from reliability import harness
from reliability.harness import (QUICK_PLAN, Report, Trigger, campaign, integrity_problems, make_workspace,
                                 read_rows, run_harness, simulate_scenario, tree_state)


def test_quick_kill_harness(tmp_path: Path) -> None:
    report = run_harness(tmp_path, dict(QUICK_PLAN), seed=1, echo=lambda m: None)
    table = report.table()
    print(table)
    assert report.kills >= 4, table
    assert report.ok, table


def test_simulate_killed_at_its_copy_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: simulate killed while it copies its base to a run leaves RUN.XXXXXXXX holding an empty
    boxloop.db. The harness states that folder as in flight, never checks it as a run nor touches it,
    and the re-run removes it and finishes. The step pause holds the copy there, so the kill lands in
    it every time (1 s here: a busy machine may keep the harness from polling for a while)."""
    monkeypatch.setattr(harness, "STEP_PAUSE", 1.0)
    ws = make_workspace(tmp_path)
    out = tmp_path / "sim"
    scn = simulate_scenario(ws, out, rounds=0, steps=2, semi=None)
    report = Report()
    campaign(scn, "copy", [Trigger(step="copy")], None, report, tmp_path / "sim.log")
    table = report.table()
    print(table)
    assert [o.kill for o in report.outcomes] == [True, False], table
    kill, final = report.outcomes
    assert kill.step_at_kill.endswith(" copy"), table
    assert re.search(r"store ok; in flight: seed0/localization_aware\.[a-z0-9_]{8} \(boxloop\.db 0 bytes\)$",
                     kill.outcome), table
    assert report.ok, table
    assert scn.in_flight() == [], table
    assert (out / "seed0" / "localization_aware" / "boxloop.db").is_file()


def test_checks_change_no_file_of_a_killed_writer(tmp_path: Path) -> None:
    """A WAL database whose writer was SIGKILLed (-wal and -shm beside it), and one closed cleanly:
    the harness's read-only checks leave every file as it was (a plain sqlite3.connect, and even a
    `mode=ro` one, checkpoints the WAL or rewrites its -shm, or creates -wal and -shm)."""
    writer = ("import os, signal, sqlite3, sys\n"
              "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "c.execute('PRAGMA journal_mode = WAL'); c.execute('CREATE TABLE rounds (id INTEGER, step TEXT)')\n"
              "for i in range(20): c.execute('INSERT INTO rounds VALUES (?, ?)', (i, 'train'))\n"
              "if sys.argv[2] == 'kill': os.kill(os.getpid(), signal.SIGKILL)\n"
              "c.close()\n")
    for how in ("kill", "close"):
        d = tmp_path / how
        d.mkdir()
        subprocess.run([sys.executable, "-c", writer, str(d / "x.db"), how], check=False)
        before = tree_state(d)
        assert (d / "x.db-wal").exists() == (how == "kill"), before
        assert integrity_problems(d / "x.db") == []
        assert read_rows(d / "x.db", "SELECT COUNT(*) FROM rounds") == [(20,)]
        assert tree_state(d) == before, how
