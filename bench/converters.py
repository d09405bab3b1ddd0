"""Worker processes that convert models to .tflite, so the host times one batch while the next converts.

litert-torch spends about a second of CPU on every call, even for a one-op graph (torch.export and three
decomposition passes, each enumerating torch's composite operators, then the lowering to MLIR), writes to file
descriptors 1 and 2 from C++, and raises FutureWarnings. In workers of their own (`python -m bench.converters`,
jobs in on stdin, results out on a duplicate of the original stdout, fd 1 and 2 sent to a temporary file) none
of that reaches the command's stdout (`--json` prints one document there) or stderr, torch's global export
state is never shared between threads, and the converter is imported once per worker, not once per call.
What a failed conversion printed comes back in its error. Workers run named jobs only (`JOBS`); the pickled
arguments travel between this process and the workers it started, nothing else.
"""
from __future__ import annotations

import atexit
import os
import pickle
import queue
import re
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future

from ofa_core.errors import OFABenchError

#: converter processes (default: one per core, at most MAX_DEFAULT_WORKERS; each holds ~0.7 GB)
WORKERS_ENV = "OFA_BENCH_CONVERT_WORKERS"
MAX_DEFAULT_WORKERS = 4
#: the end of what a failed job printed, at most this many characters, goes into its error
OUTPUT_TAIL_CHARS = 600
#: what a worker may run: name -> (module, function)
JOBS = {"tflite": ("bench.tflite", "convert")}
_FRAME = struct.Struct("<Q")


class ConverterError(OFABenchError):
    """A converter worker failed or died (its error carries the end of what the job printed)."""


def default_workers() -> int:
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise ConverterError(f"{WORKERS_ENV} must be a whole number, not {raw!r}") from None
    # Even where the device is this host (a loopback device) and timing shares the cores with converting, two
    # workers on two cores finished a LiteRT table sooner than one: conversion, not timing, is the bottleneck,
    # and the reference block catches the disturbed invocations (README, "Measured figures").
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _receive(stream):
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (n,) = _FRAME.unpack(head)
    data = stream.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)  # noqa: S301 - a frame from the process at the other end of our own pipe


# ---- in the parent ----------------------------------------------------------------------------------------
class _Worker:
    """One converter process and the thread that feeds it jobs from the pool's queue."""

    def __init__(self, pool: "ConverterPool", number: int):
        self.pool, self.number = pool, number
        self.proc: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._loop, name=f"converter-{number}", daemon=True)
        self.thread.start()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        # stderr is inherited: a worker that fails before it captures its output still says why
        return subprocess.Popen([sys.executable, "-m", "bench.converters"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, start_new_session=True)

    def _loop(self) -> None:
        while True:
            # nothing of the last job stays referenced while waiting: a daemon thread that frees a torch tensor
            # while the interpreter shuts down aborts the process ("terminate called without an active
            # exception"), after the command's output was complete
            fut = name = args = answer = None
            item = self.pool._queue.get()
            if item is None or self.pool._closed:
                return
            fut, name, args = item
            item = None
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self.proc = self._start()
                _send(self.proc.stdin, (name, args))
                args = None  # the module is sent; see above
                answer = _receive(self.proc.stdout)
            except pickle.PicklingError as exc:
                fut.set_exception(ConverterError(f"cannot send a job to a converter: {exc}"))
                continue
            except (OSError, ValueError):  # the worker is gone (killed, crashed): its pipes are closed
                answer = None
            if answer is None:
                code = self.proc.poll() if self.proc is not None else None
                self.proc = None
                if self.pool._closed:
                    fut.set_exception(ConverterError("the converters were stopped"))
                    return
                fut.set_exception(ConverterError(f"a .tflite converter process died (exit code {code}; out of "
                                                 f"memory?); run the command again"))
                continue
            ok, value, kind = answer
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(_error(kind, value))

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()  # the worker ends when its job is done and it reads end-of-file
            except OSError:
                pass


def _error(kind: str, message: str) -> OFABenchError:
    if kind == "TfliteError":
        from bench.tflite import TfliteError

        return TfliteError(message)
    return ConverterError(message)


class ConverterPool:
    """Converter workers fed from one first-in, first-out queue; `submit` returns a `Future`."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or default_workers()
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._workers = [_Worker(self, i) for i in range(self.workers)]

    def submit(self, job: str, *args) -> Future:
        if job not in JOBS:
            raise ConverterError(f"unknown converter job {job!r}")
        if self._closed:
            raise ConverterError("the converters were stopped")
        fut: Future = Future()
        self._queue.put((fut, job, args))
        return fut

    @staticmethod
    def cancel(futures) -> None:
        """Cancel `futures` that have not started (a running one finishes; its file lands in the cache)."""
        for fut in futures:
            fut.cancel()

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[0].cancel()

    def close(self, kill: bool = False) -> None:
        """Stop: queued jobs are cancelled; running ones finish (`kill`: are lost, the workers end now; the
        cache never holds half a file, every write is atomic)."""
        self._closed = True
        self._drain()
        for w in self._workers:
            self._queue.put(None)
            w.kill() if kill else w.stop()
        if kill:  # the workers are gone: let the threads end now, not halfway through the interpreter's shutdown
            for w in self._workers:
                if w.thread is not threading.current_thread():
                    w.thread.join(5)


_shared: ConverterPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> ConverterPool:
    """The process-wide converter pool, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ConverterPool()
        return _shared


def close_shared_pool(kill: bool = False) -> None:
    """Stop the shared pool (with `kill`, at once: an interrupted command must not wait for conversions)."""
    global _shared
    with _shared_lock:
        pool, _shared = _shared, None
    if pool is not None:
        pool.close(kill)


# At exit the workers go at once (idle after a finished command; mid-job after an error or Ctrl-C).
atexit.register(close_shared_pool, kill=True)


# ---- in the worker ----------------------------------------------------------------------------------------
def _capture_output() -> int:
    """Point fd 1 and 2 at an unlinked temporary file (read back for errors); returns its descriptor."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="ofa-bench-convert-", suffix=".log")
    os.close(fd)
    captured = os.open(name, os.O_RDWR | os.O_APPEND)
    try:
        os.unlink(name)
    except OSError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(captured, 1)
    os.dup2(captured, 2)
    return captured


def _tail(captured: int) -> str:
    size = os.fstat(captured).st_size
    start = max(0, size - 4 * OUTPUT_TAIL_CHARS)
    text = os.pread(captured, size - start, start).decode(errors="replace")
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)]
    # progress bars (the quantizer's calibration passes) say nothing about why a conversion failed
    return " | ".join(line for line in lines if line and not _PROGRESS_BAR.search(line))[-OUTPUT_TAIL_CHARS:]


_PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+|it/s\]|s/it\]")


def _serve() -> int:
    """The worker: read jobs from stdin, answer on the original stdout, until end-of-file."""
    import importlib
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills the workers
    answers = os.fdopen(os.dup(1), "wb")
    jobs = os.fdopen(os.dup(0), "rb")
    captured = _capture_output()
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.simplefilter("ignore")  # FutureWarning / DeprecationWarning of torch.export, jax, the converter
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)  # one core per worker: workers and a measuring runner share the host
    while True:
        item = _receive(jobs)
        if item is None:
            return 0
        name, args = item
        os.ftruncate(captured, 0)
        try:
            module, fn = JOBS[name]
            answer = (True, getattr(importlib.import_module(module), fn)(*args), "")
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent as one line
            sys.stdout.flush()
            sys.stderr.flush()
            tail = _tail(captured)
            message = str(exc) if isinstance(exc, OFABenchError) else f"{type(exc).__name__}: {exc}"
            message = " ".join(message.split())[:500] + (f" (converter output: {tail})" if tail else "")
            answer = (False, message, type(exc).__name__)
        _send(answers, answer)


if __name__ == "__main__":
    sys.exit(_serve())
