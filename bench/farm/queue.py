"""The farm's job queue, kept in the store: one job per table entry to measure on one device.

`submit` and `nightly` put jobs in (`enqueue`); a worker takes them (`claim`), keeps them (`renew`) and
finishes them (`complete` writes the measurement, `fail` records an attempt); `release` and `requeue_expired`
hand back what a worker lost or abandoned.

A job is `queued`, then `running` under a worker's lease (renewed while it measures), then `done` (its
measurement written in the same transaction) or back to `queued` after an error or an expired lease, and
`failed` once it has used all its attempts. Two unique indexes do the bookkeeping races would break: an entry
is active (queued or running) at most once per device, and a device runs at most one job at a time.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.store import MEASUREMENT_COLUMNS, Store, StoreConflict, StoreError, measurement_row
from bench.store.postgres import name_lock_key

JOB_STATUSES = ("queued", "running", "done", "failed")
DEFAULT_MAX_ATTEMPTS = 3
_JOB_COLUMNS = ("id, uuid, device, fingerprint_id, space, kind, resolution, key, status, attempts, max_attempts, "
                "worker, lease_until, last_error, batch")


@dataclass(frozen=True)
class Job:
    """One entry to measure on one device, as claimed by a worker."""

    id: int
    uuid: str
    device: str
    fingerprint_id: str | None
    space: str
    kind: str
    resolution: int
    key: str
    status: str
    attempts: int
    max_attempts: int
    worker: str | None
    lease_until: float | None
    last_error: str | None
    batch: int = 1  # the batch size the entry is measured at (its model takes `batch` images)

    @classmethod
    def from_row(cls, row: dict) -> "Job":
        return cls(id=int(row["id"]), uuid=row["uuid"], device=row["device"], fingerprint_id=row["fingerprint_id"],
                   space=row["space"], kind=row["kind"], resolution=int(row["resolution"]), key=row["key"],
                   status=row["status"], attempts=int(row["attempts"]), max_attempts=int(row["max_attempts"]),
                   worker=row["worker"], lease_until=row["lease_until"], last_error=row["last_error"],
                   batch=int(row.get("batch") or 1))


@dataclass(frozen=True)
class EnqueueResult:
    """What `enqueue` did: ids of the new jobs, and how many entries were already queued or running."""

    job_ids: tuple[int, ...]
    already_active: int

    @property
    def queued(self) -> int:
        return len(self.job_ids)


def _entry_pairs(entries: Iterable) -> list[tuple[int, str]]:
    """(resolution, key) from tuples or from objects with `.resolution` and `.key` (bench.table.Entry)."""
    out: list[tuple[int, str]] = []
    seen: set[tuple[int, str]] = set()
    for e in entries:
        pair = (int(e.resolution), str(e.key)) if hasattr(e, "key") else (int(e[0]), str(e[1]))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def enqueue(store: Store, device: str, space, entries: Iterable, *, fingerprint_id: str | None = None,
            kind: str = "block", max_attempts: int = DEFAULT_MAX_ATTEMPTS, in_transaction: bool = False,
            batch: int = 1) -> EnqueueResult:
    """Queue one job per entry of `space` (a name or a `SearchSpace`) for `device` at batch size `batch`;
    entries already queued or running for it at that batch size are skipped. Used by `submit` and `nightly`.

    Entries are `(resolution, key)` pairs or `bench.table.Entry` objects. Everything is queued in one
    transaction (or inside the caller's, with `in_transaction=True`)."""
    space = str(getattr(space, "name", space))
    if not device:
        raise StoreError("device name is empty")
    if max_attempts < 1:
        raise StoreError(f"max_attempts must be at least 1, got {max_attempts}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise StoreError(f"batch must be an integer >= 1, got {batch!r}")
    pairs = _entry_pairs(entries)

    def body() -> EnqueueResult:
        now = time.time()
        ids: list[int] = []
        for resolution, key in pairs:
            rows = store.query(
                "INSERT INTO jobs (uuid, device, fingerprint_id, space, kind, resolution, key, status, attempts, "
                "max_attempts, created_at, updated_at, batch) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING RETURNING id",
                (str(uuid.uuid4()), device, fingerprint_id, space, kind, resolution, key, max_attempts, now, now,
                 int(batch)))
            if rows:
                ids.append(int(rows[0]["id"]))
        return EnqueueResult(tuple(ids), len(pairs) - len(ids))

    if in_transaction:
        return body()
    with store.transaction():
        return body()


def requeue_expired(store: Store, now: float | None = None, device: str | None = None) -> int:
    """Jobs whose lease ran out (their worker died or hung) go back to the queue, or fail if out of attempts."""
    now = time.time() if now is None else now
    sql = ("UPDATE jobs SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END, "
           "last_error = 'lease expired (worker ' || COALESCE(worker, 'unknown') || ' stopped renewing it)', "
           "worker = NULL, lease_until = NULL, updated_at = ? WHERE status = 'running' AND lease_until < ?")
    params: list = [now, now]
    if device is not None:
        sql += " AND device = ?"
        params.append(device)
    return len(store.run_one(sql + " RETURNING id", params))


def _claim_once(store: Store, worker: str, device: str, lease_s: float, now: float) -> Job | None:
    try:
        rows = store.run_one(
            f"UPDATE jobs SET status = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, "
            f"updated_at = ? WHERE id = (SELECT id FROM jobs WHERE device = ? AND status = 'queued' "
            f"ORDER BY id LIMIT 1{store.claim_lock}) RETURNING {_JOB_COLUMNS}",
            (worker, now + lease_s, now, device))
    except StoreConflict:
        return None  # the device is running a job already (maybe one whose lease has expired)
    return Job.from_row(rows[0]) if rows else None


def claim(store: Store, worker: str, device: str, lease_s: float, now: float | None = None) -> Job | None:
    """Take the oldest queued job of `device` under a lease, or None (queue empty, or the device is busy).

    One statement, so one round trip on PostgreSQL; expired leases of the device are swept only when that
    finds nothing (an expired running job also blocks the device, which makes the claim find nothing)."""
    now = time.time() if now is None else now
    job = _claim_once(store, worker, device, lease_s, now)
    if job is None and requeue_expired(store, now, device):
        job = _claim_once(store, worker, device, lease_s, now)
    return job


def release(store: Store, worker: str, device: str, reason: str) -> int:
    """Give back the jobs `worker` holds on `device` (it lost track of them, e.g. its connection dropped
    mid-completion): each counts as an attempt and goes back to the queue, or fails if out of attempts."""
    rows = store.run_one(
        "UPDATE jobs SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END, "
        "last_error = ?, worker = NULL, lease_until = NULL, updated_at = ? "
        "WHERE worker = ? AND device = ? AND status = 'running' RETURNING id",
        (" ".join(reason.split())[:2000], time.time(), worker, device))
    return len(rows)


def renew(store: Store, worker: str, lease_s: float, now: float | None = None,
          job_ids: Sequence[int] | None = None) -> int:
    """Extend the lease of every job `worker` holds (or only of `job_ids`, the ones it is still working on);
    returns how many leases it extended."""
    now = time.time() if now is None else now
    sql = "UPDATE jobs SET lease_until = ?, updated_at = ? WHERE worker = ? AND status = 'running'"
    params: list = [now + lease_s, now, worker]
    if job_ids is not None:
        sql += f" AND id IN ({', '.join('?' for _ in job_ids)})"
        params += [int(i) for i in job_ids]
    with store.transaction():
        n = store.execute(sql, params) if job_ids is None or job_ids else 0
        store.execute("UPDATE workers SET last_heartbeat = ? WHERE name = ?", (now, worker))
    return n


class LostJob(StoreError):
    """The worker no longer holds this job (its lease expired and it was handed on)."""


def _lost(job: Job, worker: str) -> LostJob:
    at = f" batch {job.batch}" if job.batch != 1 else ""
    return LostJob(f"job {job.id} ({job.device} {job.resolution} {job.key}{at}) is no longer held by {worker}")


def complete(store: Store, job: Job, worker: str, run_id: int, record: dict) -> int:
    """Write the job's measurement (at the job's batch size) and mark it done, atomically; returns the
    measurement id.

    Raises `LostJob` (and writes nothing) if the worker lost the job meanwhile, so an entry is never
    recorded twice by a worker that was presumed dead. The device's lock makes a concurrent submit see the
    entry either still active or already measured, never neither."""
    measurement_uuid = str(uuid.uuid4())
    rec = {**record, "uuid": measurement_uuid, "resolution": job.resolution, "key": job.key, "kind": job.kind,
           "batch": job.batch}
    now = time.time()
    if store.backend == "postgresql":
        return _complete_one_statement(store, job, worker, run_id, rec, now)
    with store.transaction():
        store.lock_name(f"device:{job.device}")
        n = store.execute("UPDATE jobs SET status = 'done', measurement_uuid = ?, lease_until = NULL, "
                          "last_error = NULL, updated_at = ? WHERE id = ? AND worker = ? AND status = 'running'",
                          (measurement_uuid, now, job.id, worker))
        if n != 1:
            raise _lost(job, worker)
        (measurement_id,) = store.insert_measurements(run_id, [rec])
    return measurement_id


def _complete_one_statement(store: Store, job: Job, worker: str, run_id: int, rec: dict, now: float) -> int:
    """PostgreSQL: lock, mark done and insert in one statement (one round trip); nothing happens unless the
    worker still holds the job and its run exists."""
    row = measurement_row(run_id, {"fingerprint_id": None, "device": None, "space": None}, rec, 0)
    values = [v for c, v in zip(MEASUREMENT_COLUMNS, row) if c not in ("fingerprint_id", "device", "space")]
    select = ", ".join(f"r.{c}" if c in ("fingerprint_id", "device", "space") else "?" for c in MEASUREMENT_COLUMNS)
    sql = (f"WITH lock AS (SELECT pg_advisory_xact_lock(?) AS held), "
           f"r AS (SELECT device, fingerprint_id, space FROM runs WHERE id = ?), "
           f"done AS (UPDATE jobs SET status = 'done', measurement_uuid = ?, lease_until = NULL, last_error = NULL, "
           f"updated_at = ? WHERE id = ? AND worker = ? AND status = 'running' AND EXISTS (SELECT 1 FROM lock) "
           f"AND EXISTS (SELECT 1 FROM r) RETURNING id) "
           f"INSERT INTO measurements ({', '.join(MEASUREMENT_COLUMNS)}) SELECT {select} FROM done, r RETURNING id")
    rows = store.run_one(sql, (name_lock_key(f"device:{job.device}"), int(run_id), rec["uuid"], now, job.id, worker,
                               *values))
    if not rows:
        raise _lost(job, worker)
    return int(rows[0]["id"])


def fail(store: Store, job: Job, worker: str, error: str) -> str:
    """Record a failed attempt: back to the queue, or `failed` with the error once attempts are used up."""
    message = " ".join(str(error).split())[:2000] or "unknown error"
    with store.transaction():
        store.execute("UPDATE jobs SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' "
                      "END, last_error = ?, worker = NULL, lease_until = NULL, updated_at = ? "
                      "WHERE id = ? AND worker = ? AND status = 'running'",
                      (message, time.time(), job.id, worker))
        rows = store.query("SELECT status FROM jobs WHERE id = ?", (job.id,))
    return rows[0]["status"]


def active_count(store: Store, devices: Sequence[str]) -> int:
    """Jobs still queued or running for these devices (a worker with --exit-when-idle waits for zero)."""
    if not devices:
        return 0
    marks = ", ".join("?" for _ in devices)
    rows = store.query(f"SELECT COUNT(*) AS n FROM jobs WHERE status IN ('queued', 'running') "
                       f"AND device IN ({marks})", tuple(devices))
    return int(rows[0]["n"])
