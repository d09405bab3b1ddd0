"""The farm's worker: on each host, a `Worker` measures the queued jobs (`bench.farm.queue`) of the devices
plugged into it and writes their measurements to the shared store.

A worker runs one thread per device (so a device never measures two things at once), plus a heartbeat thread
that renews the leases of the jobs its device threads are working on (only those: a job a thread lost track of,
say when its connection dropped, must be let expire, or the device's queue would wait on it forever). Every
database call is bounded in time (`db_timeout_s`), and a device gives up reconnecting after `max_reconnect_s`.
Measuring a job is delegated to a `DeviceSession` made by an injectable factory: `AgentSession` exports the
entry and measures it through `agents.connect(profile)`; `NullSession` measures an empty call in-process
(simulated, for testing the queue and its throughput).
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.transports.base import clear_interrupt, interrupt_calls
from bench.farm.errors import FarmError
from bench.farm.queue import LostJob, active_count, claim, complete, fail, release, renew
from bench.farm.sessions import DeviceSession, SessionFactory
from bench.farm.status import register_worker, stop_worker, worker_name
from bench.store import Store, StoreError, measurement_row, open_store
from bench.workers import Workers


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker serves its devices. `heartbeat_s` defaults to a third of the lease."""

    devices: tuple[str, ...]
    lease_s: float = 60.0
    poll_s: float = 1.0
    exit_when_idle: bool = False
    heartbeat_s: float | None = None
    max_jobs: int | None = None      # per device; stop after that many (tests, benchmarks)
    max_backoff_s: float = 30.0      # longest pause after consecutive failures on one device
    db_timeout_s: float = 60.0       # PostgreSQL: longest statement, lock wait or idle transaction of the worker
    max_reconnect_s: float | None = 600.0  # a device stops (with an error) after trying to reconnect this long

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else max(0.05, self.lease_s / 3)


@dataclass
class WorkerDeviceReport:
    device: str
    fingerprint_id: str | None = None
    done: int = 0
    failed_attempts: int = 0
    lost: int = 0
    error: str | None = None


@dataclass
class WorkerReport:
    name: str
    devices: dict[str, WorkerDeviceReport] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return {"worker": self.name, "wall_s": round(self.wall_s, 3),
                "devices": [vars(d) for d in self.devices.values()]}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Worker:
    """Claims and measures the jobs of its devices until stopped (or idle, with `exit_when_idle`)."""

    def __init__(self, store_target: str, settings: WorkerSettings, session_factory: SessionFactory,
                 name: str | None = None, log: Callable[[str], None] = _log, label: str = ""):
        if not settings.devices:
            raise FarmError("a worker needs at least one device")
        for field_name in ("lease_s", "poll_s"):
            value = getattr(settings, field_name)
            if not (math.isfinite(value) and value > 0):
                raise FarmError(f"--{field_name.replace('_', '-')} must be a finite number > 0, got {value}")
        self.store_target = store_target
        self.settings = settings
        self.session_factory = session_factory
        self.name = name or worker_name(os.getpid())
        self.stop_event = threading.Event()
        self._startup = threading.Lock()  # devices connect one at a time (heavy imports are not thread-friendly)
        self._held: dict[str, int] = {}   # device -> id of the job its thread is working on (heartbeat renews these)
        self._held_lock = threading.Lock()
        self._log = log
        self._label = label

    def _open(self) -> Store:
        """A new connection whose every statement is bounded by `db_timeout_s` (PostgreSQL)."""
        # a worker serves the queue of an existing store: a mistyped path must not become a new, empty one
        return open_store(self.store_target, statement_timeout_s=self.settings.db_timeout_s, create=False)

    def _hold(self, device: str, job_id: int | None) -> None:
        with self._held_lock:
            if job_id is None:
                self._held.pop(device, None)
            else:
                self._held[device] = job_id

    def _held_ids(self) -> list[int]:
        with self._held_lock:
            return sorted(self._held.values())

    def stop(self) -> None:
        """Finish the measurements in progress, then return from `run`."""
        self.stop_event.set()

    def run(self) -> WorkerReport:
        t0 = time.monotonic()
        report = WorkerReport(self.name, {d: WorkerDeviceReport(d) for d in self.settings.devices})
        with self._open() as store:
            register_worker(store, self.name, os.getpid(), self.settings.devices)
            self._log(f"farm worker {self.name}: serving {', '.join(self.settings.devices)} from {store.target}"
                      f"{self._label}")
            heartbeat_done = threading.Event()
            heartbeat = threading.Thread(target=self._heartbeat, args=(store.reopen(), heartbeat_done),
                                         name=f"heartbeat-{self.name}", daemon=True)
            heartbeat.start()
            workers = Workers()
            try:
                for d in self.settings.devices:
                    workers.start(f"device-{d}", self._serve_device, store.reopen(), report.devices[d])
                workers.wait()
            except KeyboardInterrupt:
                # Stop the measurements in flight too (runner processes are out of Ctrl-C's reach).
                self.stop_event.set()
                interrupt_calls()
                try:
                    workers.wait()
                finally:
                    clear_interrupt()
            finally:
                heartbeat_done.set()
                heartbeat.join()
                self._mark_stopped(store)
        report.wall_s = time.monotonic() - t0
        if all(d.error for d in report.devices.values()):
            first = next(iter(report.devices.values()))
            raise FarmError(f"worker could not serve any device ({first.device}: {first.error})")
        return report

    def _mark_stopped(self, store: Store) -> None:
        try:
            stop_worker(store, self.name)
        except StoreError:  # this connection may have dropped while the devices were served: try a new one
            try:
                with self._open() as fresh:
                    stop_worker(fresh, self.name)
            except StoreError as exc:
                self._log(f"farm worker {self.name}: could not record that it stopped: {exc}")

    def _heartbeat(self, store: Store, done: threading.Event) -> None:
        try:
            while not done.wait(self.settings.heartbeat_interval_s):
                try:
                    renew(store, self.name, self.settings.lease_s, job_ids=self._held_ids())
                except StoreError as exc:  # keep trying on a new connection: the lease has slack for a missed beat
                    self._log(f"farm worker {self.name}: heartbeat failed: {exc}")
                    store.close()
                    try:
                        store = self._open()
                    except StoreError:
                        pass
        finally:
            store.close()

    def _reconnect(self, store: Store, device: str, exc: Exception) -> Store | None:
        """After a database error, open a new connection (retrying with backoff); None if the worker stops first.
        Raises StoreError once it has tried for `max_reconnect_s`.

        A job held meanwhile is safe: its completion is atomic, and the heartbeat no longer renews it, so if it
        is not handed back here its lease expires and the device's next claim requeues it."""
        self._log(f"farm worker {self.name}: {device}: {exc}; reconnecting")
        store.close()
        delay, start, limit = self.settings.poll_s, time.monotonic(), self.settings.max_reconnect_s
        while not self.stop_event.wait(delay):
            fresh = None
            try:
                fresh = self._open()
                # a job held when the connection dropped was not completed (completion is atomic): hand it
                # back now rather than wait for its lease to expire
                release(fresh, self.name, device, f"worker {self.name} lost its database connection: {exc}")
                return fresh
            except StoreError as again:
                if fresh is not None:
                    fresh.close()
                self._log(f"farm worker {self.name}: {device}: {again}")
                if limit is not None and time.monotonic() - start >= limit:
                    waited_s = time.monotonic() - start
                    raise StoreError(f"gave up reconnecting after {waited_s:.0f} s: {again}") from None
                delay = min(self.settings.max_backoff_s, delay * 2)
        return None

    def _serve_device(self, store: Store, rep: WorkerDeviceReport) -> None:
        device, s = rep.device, self.settings
        session = None
        runs: dict[tuple[str, int], int] = {}  # (space, batch) -> the worker's run of that table
        status = "done"
        try:
            with self._startup:
                session = self.session_factory(device)
                fingerprint = session.fingerprint()
            rep.fingerprint_id = store.register_fingerprint(device, fingerprint)
            failures = [0]
            while not self.stop_event.is_set():
                if s.max_jobs is not None and rep.done >= s.max_jobs:
                    break
                try:
                    if not self._one_job(store, session, rep, runs, failures):
                        break
                except LostJob as exc:
                    rep.lost += 1
                    self._log(f"farm worker {self.name}: {exc}")
                except StoreError as exc:  # the database went away: reconnect and carry on
                    fresh = self._reconnect(store, device, exc)
                    if fresh is None:
                        break
                    store = fresh
            if self.stop_event.is_set():
                status = "interrupted"
        except Exception as exc:  # the device could not be served at all; others go on
            rep.error = " ".join(f"{exc}".split()) or type(exc).__name__
            status = "failed"
            self._log(f"farm worker {self.name}: {device}: {rep.error}")
        finally:
            for run_id in runs.values():
                try:
                    store.finish_run(run_id, status)
                except StoreError:
                    pass
            if session is not None:
                try:
                    session.close()
                except Exception:
                    pass
            store.close()

    def _one_job(self, store: Store, session: DeviceSession, rep: WorkerDeviceReport,
                 runs: dict[tuple[str, int], int], failures: list[int]) -> bool:
        """Claim, measure and complete one job (or wait a poll interval); False once idle with exit_when_idle."""
        device, s = rep.device, self.settings
        job = claim(store, self.name, device, s.lease_s)
        if job is None:
            if s.exit_when_idle and active_count(store, [device]) == 0:
                return False
            self.stop_event.wait(s.poll_s)
            return True
        self._hold(device, job.id)
        try:
            table = (job.space, job.batch)
            if table not in runs:
                runs[table] = store.start_run(device, rep.fingerprint_id, job.space, "farm",
                                              {"lease_s": s.lease_s, "batch": job.batch}, {"worker": self.name})
            try:
                record = session.measure_job(job)
                check_record(record)
                if record.get("noisy"):  # kept for the record, but not good enough for the table: not done
                    store.add_measurements(runs[table], [{**record, "resolution": job.resolution, "key": job.key,
                                                          "kind": job.kind, "batch": job.batch}])
                    raise NoisyMeasurement(f"too noisy for the table (spread {_spread(record)}); measured again "
                                           f"while attempts remain")
            except Exception as exc:  # a failed attempt: recorded on the job, the worker carries on
                rep.failed_attempts += 1
                failures[0] += 1
                msg = f"{type(exc).__name__}: {exc}"
                state = fail(store, job, self.name, msg)
                self._log(f"farm worker {self.name}: {device} {job.resolution} {job.key}: "
                          f"{' '.join(msg.split())} -> {state}")
                self.stop_event.wait(min(s.max_backoff_s, s.poll_s * 2 ** min(failures[0] - 1, 10)))
                return True
            failures[0] = 0
            take = getattr(session, "take_reference_records", None)
            references = take() if take is not None else []
            if references:  # the device's speed during this job, as profile records it
                store.add_measurements(runs[table], references)
            complete(store, job, self.name, runs[table], record)
            rep.done += 1
            return True
        finally:  # done, failed, lost or abandoned after an error: the heartbeat stops renewing it either way
            self._hold(device, None)


class NoisyMeasurement(FarmError):
    """A job's measurement whose spread stayed above the device's threshold: a failed attempt, not a result."""


def _spread(record: dict) -> str:
    value = record.get("robust_cv") if record.get("robust_cv") is not None else record.get("cv")
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "unknown"


def check_record(record: dict) -> None:
    """Raise StoreError if the store would refuse this measurement (so it counts as a failed attempt)."""
    measurement_row(0, {"fingerprint_id": "", "device": "", "space": ""},
                    {**record, "resolution": 0, "key": "check"}, 0)
