"""Worker threads that the main thread waits for through Ctrl-C.

On CPython 3.11 a `Thread.join()` interrupted by KeyboardInterrupt can mark a live thread as finished (the
interrupted wait releases the thread's own lock and records it stopped), after which `is_alive()` is False and
`join()` returns at once. Seen here: Ctrl-C during `profile` returned before the worker had ended its run,
which stayed "running". So workers set an event of their own when they end, and the main thread waits on that.
"""
from __future__ import annotations

import threading
from collections.abc import Callable


class Workers:
    """Daemon threads, each setting its own `done` event however it ends."""

    def __init__(self) -> None:
        self._done: list[threading.Event] = []

    def start(self, name: str, target: Callable[..., object], *args: object) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                target(*args)
            finally:
                done.set()

        self._done.append(done)
        threading.Thread(target=run, name=name, daemon=True).start()

    def wait(self, poll_s: float = 0.2) -> None:
        """Until every worker has ended; Ctrl-C raises KeyboardInterrupt here, and a second `wait` still
        waits for all of them."""
        for done in self._done:
            while not done.wait(poll_s):
                pass

    def all_done(self) -> bool:
        return all(d.is_set() for d in self._done)
