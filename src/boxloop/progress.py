"""Progress of a long phase (checking images, training, predicting, embedding): a tqdm bar on a
terminal, and in a log (stderr not a terminal) one plain line per tenth of the work and one at the
end, instead of thousands of carriage-return updates.

tqdm draws the bar; written by hand: the choice and the line reporter, which offers the part of
tqdm's interface boxloop uses (update, set_postfix, write, close, a context manager).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]

STEPS = 10  # lines per phase in a log: one per tenth of the work


class LineProgress:
    """tqdm's interface, printing `desc: n/total unit (p%)` when a new tenth is reached."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.n = int(total or 0), desc, unit, int(initial)
        self.postfix = ""
        self._shown = self._tenth()

    def _tenth(self) -> int:
        return STEPS * self.n // self.total if self.total > 0 else 0

    def _line(self) -> None:
        pct = 100 * self.n // self.total if self.total > 0 else 100
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct}%){self.postfix}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tenth() > self._shown:
            self._shown = self._tenth()
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", " + ", ".join(f"{k}={v}" for k, v in values.items()) if values else ""

    @staticmethod
    def write(text: str) -> None:
        print(text, flush=True)  # where tqdm.write prints

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int, desc: str, unit: str, disable: bool = False, initial: int = 0, leave: bool = True) -> Any:
    """A tqdm bar when stderr is a terminal; else (a log file, a pipe) a LineProgress; `disable`: silent."""
    from tqdm.auto import tqdm

    if disable or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=disable, initial=initial, leave=leave)
    return LineProgress(total, desc, unit, initial)
