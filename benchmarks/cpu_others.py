"""How much CPU other people's processes took while a benchmark repetition ran (Linux /proc).

A speed-up measured on a shared machine is only worth something if the cores were idle; this says,
per repetition, how many CPU-seconds went to processes that are not this one or its descendants
(Ray's raylet and workers, torchrun's ranks are descendants). Sampled every `interval` seconds, so a
process that starts and ends between two samples is missed: a lower bound.

    with OthersCPU() as others:
        run()
    print(others.seconds)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _snapshot() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds)} of every process readable now."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(proc.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def _mine(snap: dict[int, tuple[int, float]], root: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in snap.items():
        kids.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(kids.get(p, []))
    return seen


class OthersCPU:
    """Context manager: `.seconds` = CPU-seconds of processes outside this process tree meanwhile."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.seconds = interval, 0.0
        self._stop = threading.Event()
        self._last: dict[int, float] = {}
        self._mine: set[int] = set()
        self._started = False

    def _sample(self) -> None:
        snap = _snapshot()
        self._mine |= _mine(snap, os.getpid())
        for pid, (_, cpu) in snap.items():
            if pid in self._mine:
                continue
            if pid in self._last:
                self.seconds += max(0.0, cpu - self._last[pid])
            elif self._started:  # began during the repetition: all its CPU counts
                self.seconds += cpu
            self._last[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> OthersCPU:
        self._sample()
        self._started = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def busy_share(seconds: float = 5.0) -> float:
    """Share of all cores busy over `seconds` (from /proc/stat)."""
    import time

    def read() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)

    b0, t0 = read()
    time.sleep(seconds)
    b1, t1 = read()
    return (b1 - b0) / max(1, t1 - t0)


def wait_idle(max_seconds: float, threshold: float = 0.1, quiet_file: str = "/tmp/boxloop_quiet") -> bool:
    """Wait (up to max_seconds) until the cores are idle (< threshold busy over 5 s) and nobody asked
    for quiet (quiet_file absent); True if they are."""
    import time

    end = time.time() + max_seconds
    while True:
        if not os.path.exists(quiet_file) and busy_share() < threshold:
            return True
        if time.time() >= end:
            return False
        time.sleep(15)
