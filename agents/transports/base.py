"""What every transport offers: run a command on the device, push and pull files, with a timeout on each call."""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import secrets
import shlex
import signal
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ofa_core.errors import OFABenchError


class TransportError(OFABenchError):
    """The device could not be reached, dropped, or a call timed out. The message names the device."""


class Interrupted(KeyboardInterrupt):
    """A device call stopped because the user interrupted ofa-bench (Ctrl-C): its process was killed."""


# ---- stopping device calls in flight ---------------------------------------------------------------------
# A device call runs in a process of its own session (local, ssh, the adb command) or over a socket (adb-shell),
# often in a worker thread, so Ctrl-C reaches neither. Each call registers how to stop it while it runs;
# `interrupt_calls()` (on Ctrl-C) stops them all and makes every later call fail at once with `Interrupted`.
_interrupt = threading.Event()
_stoppers: dict[int, Callable[[], None]] = {}
_stoppers_lock = threading.Lock()
_stopper_ids = itertools.count()


def interrupt_calls() -> int:
    """Stop every device call in flight and refuse new ones until `clear_interrupt()`; returns how many."""
    _interrupt.set()
    with _stoppers_lock:
        stoppers = list(_stoppers.values())
    for stop in stoppers:
        with contextlib.suppress(Exception):
            stop()
    return len(stoppers)


def clear_interrupt() -> None:
    _interrupt.clear()


def calls_in_flight() -> int:
    with _stoppers_lock:
        return len(_stoppers)


@contextlib.contextmanager
def stoppable(stop: Callable[[], None]) -> Iterator[None]:
    """Run a device call with `stop` registered. Raises `Interrupted` instead of starting when an interrupt is
    pending, and instead of whatever the call ended with when an interrupt stopped it."""
    if _interrupt.is_set():
        raise Interrupted()
    key = next(_stopper_ids)
    with _stoppers_lock:
        _stoppers[key] = stop
    try:
        yield
    except Exception:
        if _interrupt.is_set():
            raise Interrupted() from None
        raise
    except KeyboardInterrupt:  # Ctrl-C in this (main) thread: stop the call's process too
        stop()
        raise
    finally:
        with _stoppers_lock:
            _stoppers.pop(key, None)
    if _interrupt.is_set():
        raise Interrupted()


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with `start_new_session=True`, and everything it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_process(argv: list[str], timeout_s: float | None, *, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, cwd: str | None = None,
                started: Callable[[subprocess.Popen], None] | None = None) -> tuple[int, bytes, bytes]:
    """Run a host process in its own session, stoppable (Ctrl-C, `interrupt_calls`) and killed with its whole
    group at the timeout (`subprocess.TimeoutExpired`). Returns (exit status, stdout or b"", stderr).
    `started(proc)` is told the process once it runs (a watcher in another thread may kill it)."""
    if _interrupt.is_set():
        raise Interrupted()
    proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=cwd)
    if started is not None:
        started(proc)
    with stoppable(lambda: kill_process_group(proc)):
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except BaseException:  # the timeout, Ctrl-C: kill, reap, and do not wait for the pipes to close (an
            kill_process_group(proc)  # ssh multiplexing master holds them until the remote command ends)
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            raise
    return proc.returncode, out or b"", err or b""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def quote_argv(argv: list[str]) -> str:
    """One shell command line with every argument quoted (device shells see no unquoted user input)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Transport(ABC):
    """A way to reach one device. `name` identifies it in error messages (e.g. `adb:127.0.0.1:5555`)."""

    name: str
    #: folder on the device where pushed files live (created on first use)
    workdir: str

    @abstractmethod
    def run(self, argv: list[str], timeout_s: float = 60.0) -> CommandResult:
        """Run `argv` on the device (each argument quoted) and return its exit status and output.

        Raises `TransportError` on timeout or when the device cannot be reached or drops.
        """

    @abstractmethod
    def push_file(self, local: Path, remote: str, timeout_s: float = 120.0) -> None:
        """Copy one file to `remote` on the device (no cache)."""

    @abstractmethod
    def pull_file(self, remote: str, local: Path, timeout_s: float = 120.0) -> None:
        """Copy one file from the device."""

    def push(self, local: Path, timeout_s: float = 120.0) -> str:
        """Push `local` into `workdir` under a name derived from its content hash; skip it if already there.

        Returns the remote path. The cache check asks the device (the file exists with that name), so it holds
        across processes and hosts.
        """
        local = Path(local)
        digest = file_sha256(local)[:16]
        remote = f"{self.workdir}/{digest}-{local.name}"
        if remote not in self._pushed_cache():
            check = self.run(["test", "-f", remote], timeout_s=timeout_s)
            if check.returncode != 0:
                self.run(["mkdir", "-p", self.workdir], timeout_s=timeout_s)
                part = f"{remote}.{secrets.token_hex(8)}.part"  # unpredictable: nothing planted there is followed
                self.push_file(local, part, timeout_s=timeout_s)
                self.run(["mv", part, remote], timeout_s=timeout_s)
            self._pushed_cache().add(remote)
        return remote

    def _pushed_cache(self) -> set[str]:
        cache = self.__dict__.get("_pushed")
        if cache is None:
            cache = self.__dict__["_pushed"] = set()
        return cache

    def close(self) -> None:
        """Release connections. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
