"""A quick subset of the crash-safety harness (tests/reliability/harness.py) in `make test`:
`train` and `import` SIGKILLed at random moments, the store checked after every kill, each command
re-run to the end and compared with an uninterrupted run; and the checks' read-only access to a
killed writer's database (issue 17). The full harness: `make test-reliability`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reliability.harness import QUICK_PLAN, integrity_problems, read_rows, run_harness, tree_state


def test_quick_kill_harness(tmp_path: Path) -> None:
    report = run_harness(tmp_path, dict(QUICK_PLAN), seed=1, echo=lambda m: None)
    table = report.table()
    print(table)
    assert report.kills >= 4, table
    assert report.ok, table


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
