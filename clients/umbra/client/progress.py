"""Progress for a person and for a log: a tqdm bar on a terminal; written to a file or a pipe (a benchmark's log,
a service under `umbra up`, CI), one plain line at most every few seconds, and the last state when it closes.

    with Progress("uploading", total=n, unit="images") as progress:
        progress.show(done=k)                   # or progress.advance(1)
        progress.show(stage="committing", note="3 shards")
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_SECONDS = 5.0  # off a terminal: at most one line this often, plus the final line


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """One task's progress: the stage, done of total (total None when unknown), a unit and a short note."""

    def __init__(self, stage: str = "", *, total: int | None = None, unit: str = "", file: TextIO | None = None,
                 interval: float = LOG_INTERVAL_SECONDS, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.file = file if file is not None else sys.stderr
        self.stage, self.total, self.unit, self.note, self.done = stage, total, unit, "", 0
        self.interval, self.clock = interval, clock
        self._bar: tqdm | None = None
        self._last_time: float | None = None  # when the last line was written (log mode)
        self._last_line = ""  # what it said
        self._shown = False  # show() was called: close() has a state to write
        if terminal if terminal is not None else is_terminal(self.file):
            self._bar = tqdm(total=total, desc=stage or None, unit=f" {unit}" if unit else "it", file=self.file,
                             dynamic_ncols=True)

    def show(self, *, done: int | None = None, total: int | None = None, stage: str | None = None,
             unit: str | None = None, note: str | None = None) -> None:
        """Sets what changed (done is absolute) and draws it: on a terminal as tqdm does; in a log, a line when the
        state differs from the last line written and `interval` seconds have passed since it (the first at once)."""
        labels = (self.total, self.stage, self.unit, self.note)
        self._shown = True
        self.done = self.done if done is None else done
        self.total = self.total if total is None else (total or None)
        self.stage = self.stage if stage is None else stage
        self.unit = self.unit if unit is None else unit
        self.note = self.note if note is None else note
        if self._bar is not None:
            bar = self._bar
            if labels == (self.total, self.stage, self.unit, self.note) and self.done >= bar.n:
                bar.update(self.done - bar.n)  # redraws at most every 0.1 s
                return
            bar.total, bar.n = self.total, self.done
            bar.unit = f" {self.unit}" if self.unit else "it"
            bar.set_description(self.stage or None, refresh=False)
            bar.set_postfix_str(self.note, refresh=False)
            bar.refresh()
            return
        now = self.clock()
        if self._last_time is None or now - self._last_time >= self.interval:
            self._write(now)

    def advance(self, n: int = 1) -> None:
        self.show(done=self.done + n)

    def close(self) -> None:
        """Ends the bar; in a log, writes the last state unless the last line already showed it."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._shown:
            self._write(self.clock())

    def line(self) -> str:
        """The state as one line: 'stage: 40/100 images (40%) note'."""
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            count = f"{self.done}/{self.total}{unit} ({100 * self.done / self.total:.0f}%)"
        else:
            count = f"{self.done}{unit}" if self.done else ""
        parts = [p for p in (count, self.note) if p]
        return f"{self.stage or 'running'}: {' '.join(parts)}" if parts else (self.stage or "running")

    def _write(self, now: float) -> None:
        line = self.line()
        if line != self._last_line:
            self.file.write(line + "\n")
            self.file.flush()
            self._last_time, self._last_line = now, line

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
