"""Progress of long work on stderr, never stdout (`--json` prints one JSON document there).

On a terminal: rich bars, one per task, with elapsed time and ETA. Elsewhere (a log file, CI), where rich would
print the bars only once at the end: one plain line per task every few seconds and when it completes,
e.g. `validate: 12/40 subnet timings, 35 s, ETA 82 s`.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Task:
    done: int
    total: int
    printed: float  # when its last plain line was printed


class StderrProgress:
    """Progress bars for named tasks (devices, steps); silent when not `enabled`. Thread-safe: profile workers
    update it from their own threads. `live`: rich bars (default: when stderr is a terminal)."""

    def __init__(self, enabled: bool = True, unit: str = "", every_s: float = 5.0, live: bool | None = None):
        self.enabled = enabled
        self.unit = unit
        self.every_s = every_s
        self.live = live
        self._lock = threading.Lock()
        self._progress = None
        self._start = time.monotonic()
        self._state: dict[str, _Task] = {}
        self._rich_ids: dict[str, int] = {}

    def __enter__(self) -> "StderrProgress":
        self._start = time.monotonic()  # elapsed times count from here
        if not self.enabled:
            return self
        from rich.console import Console

        console = Console(stderr=True)
        if self.live is None:
            self.live = console.is_terminal and not console.is_dumb_terminal
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn(self.unit), TimeElapsedColumn(), TextColumn("ETA"),
                                      TimeRemainingColumn(), console=console, transient=False,
                                      redirect_stdout=False)
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def update(self, task: str, advance: int, total: int) -> None:
        """`advance` more of `total` units done for `task` (the `progress(device, advanced, total)` of profile)."""
        with self._lock:
            done = (self._state[task].done if task in self._state else 0) + advance
            self._set(task, done, total)

    def set(self, task: str, done: int, total: int) -> None:
        """`done` of `total` units done for `task`."""
        with self._lock:
            self._set(task, done, total)

    def callback(self, task: str) -> Callable[[int, int], None]:
        """A plain `progress(done, total)` callable for `task`, for code that knows nothing of this class."""
        return lambda done, total: self.set(task, done, total)

    def _set(self, task: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        state = self._state.setdefault(task, _Task(0, total, self._start))
        finished_before = state.done >= state.total
        state.done, state.total = done, total
        if self._progress is not None:
            if task not in self._rich_ids:
                self._rich_ids[task] = self._progress.add_task(task, total=total)
            self._progress.update(self._rich_ids[task], completed=done, total=total)
            return
        now = time.monotonic()
        finished = done >= total
        if (finished and not finished_before) or (not finished and now - state.printed >= self.every_s):
            state.printed = now
            print(self._line(task, state, now - self._start), file=sys.stderr, flush=True)

    def _line(self, task: str, state: _Task, elapsed: float) -> str:
        line = f"{task}: {state.done}/{state.total}{' ' + self.unit if self.unit else ''}, {elapsed:.0f} s"
        if 0 < state.done < state.total:
            line += f", ETA {elapsed * (state.total - state.done) / state.done:.0f} s"
        return line
