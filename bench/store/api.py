"""The store's one API: devices and their fingerprints, runs, and append-only measurements with raw samples.

One interface, two backends: an SQLite file (the embedded default, `bench.store.sqlite`) or a PostgreSQL
database (a farm of hosts sharing one store, `bench.store.postgres`). `open_store(target)` picks the backend
from the target, checks the store is one of ours and not from a newer version of this code, and applies the
pending migrations (`bench.store.migrations`).
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.store.errors import StoreConflict, StoreError, one_line
from bench.store.migrations import LATEST_VERSION, MIGRATIONS, VERSION_TABLE, render
from bench.store.postgres import PostgresBackend, is_postgres_url
from bench.store.rows import MEASUREMENT_COLUMNS, decode_measurement, decode_run, measurement_row, to_json
from bench.store.sqlite import SqliteBackend

__all__ = ["open_store", "check_store_exists", "Store", "fingerprint_id", "RUN_STATUSES"]

RUN_STATUSES = ("running", "done", "interrupted", "failed")


def fingerprint_id(fingerprint: dict) -> str:
    """Stable short hash of a fingerprint dict (key order does not matter); same as `devices.fingerprint_id`."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def check_store_exists(target: str | os.PathLike) -> None:
    """Raise `StoreError` ("store PATH does not exist") unless the SQLite file at `target` exists. A
    `postgresql://` URL passes: the server answers for its database when connected to."""
    text = str(target)
    if not text.strip():
        raise StoreError("empty store path")
    if not is_postgres_url(text):
        SqliteBackend(Path(text)).check_exists()


def open_store(target: str | os.PathLike, *, connect_timeout_s: float = 10.0,
               busy_timeout_s: float = 60.0, migrate: bool = True,
               statement_timeout_s: float | None = None, create: bool = True) -> "Store":
    """Open the store at an SQLite path or a `postgresql://` URL and bring its schema up to date.

    A new SQLite file is created only with `create=True` (the commands that write measurements); with
    `create=False` a missing file is a `StoreError`, so a mistyped path never becomes an empty store.
    With `migrate=False` an older schema is left as it is (`store.version` tells; `store.migrate()` updates it).
    `statement_timeout_s` (PostgreSQL) cancels any statement or idle transaction running longer (farm workers)."""
    text = str(target)
    if not text.strip():
        raise StoreError("empty store path")
    if is_postgres_url(text):
        backend = PostgresBackend(text, connect_timeout_s=connect_timeout_s, statement_timeout_s=statement_timeout_s)
    else:
        backend = SqliteBackend(Path(text), busy_timeout_s=busy_timeout_s)
        if not create:
            backend.check_exists()
    backend.check_target()
    conn = backend.connect()
    try:
        store = Store(backend, conn)
        store._check_and_migrate(migrate)
    except BaseException:
        try:
            conn.close()
        except Exception:
            pass
        raise
    return store


class Store:
    """A connection to one store. Not shared between threads: open one per thread (cheap).

    Each write method (`register_fingerprint`, `start_run`, `finish_run`, `add_measurements`) is one transaction
    of its own, or part of the caller's when called inside `transaction()` (`lut import` writes a whole table so).
    """

    def __init__(self, backend, conn):
        self._backend = backend
        self._conn = conn
        self._in_tx = False
        self.version = 0

    # ---------------------------------------------------------------- basics
    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._backend.name

    @property
    def target(self) -> str:
        """The path or (password-free) URL this store was opened from."""
        return self._backend.describe()

    @property
    def claim_lock(self) -> str:
        """What the backend appends to a SELECT that claims queued rows (SKIP LOCKED on PostgreSQL)."""
        return self._backend.claim_lock

    def lock_name(self, name: str) -> None:
        """Inside a write transaction: hold a lock on `name` until it ends (PostgreSQL advisory lock; SQLite
        write transactions are exclusive already). Take several in sorted order to avoid deadlocks."""
        if not self._in_tx:
            raise RuntimeError("lock_name needs a transaction")
        self._backend.lock_name(self._conn, name)

    def reopen(self) -> "Store":
        """Another connection to the same store (for another thread)."""
        conn = self._backend.connect()
        self._backend.prepare(conn)
        other = Store(self._backend, conn)
        other.version = self.version
        return other

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator["Store"]:
        """One transaction: everything inside commits together or not at all. Driver errors become StoreError."""
        if self._in_tx:
            raise RuntimeError("nested store transaction")
        be = self._backend
        try:
            be.begin(self._conn, write)
        except be.driver_errors() as exc:
            raise self._error(exc) from None
        self._in_tx = True
        try:
            yield self
        except BaseException as exc:
            self._in_tx = False
            try:
                self._conn.execute("ROLLBACK")
            except Exception:
                pass
            if isinstance(exc, be.driver_errors()):
                raise self._error(exc) from None
            raise
        else:
            self._in_tx = False
            try:
                self._conn.execute("COMMIT")
            except be.driver_errors() as exc:
                try:
                    self._conn.execute("ROLLBACK")
                except Exception:
                    pass
                raise self._error(exc) from None

    @contextmanager
    def _writing(self) -> Iterator["Store"]:
        """The caller's transaction when one is open, else a write transaction of its own."""
        if self._in_tx:
            yield self
        else:
            with self.transaction(write=True):
                yield self

    def _error(self, exc: BaseException) -> StoreError:
        if self._backend.is_unique_violation(exc):
            return StoreConflict(f"store {self.target}: {one_line(exc)}")
        return self._backend.error(exc)

    def query(self, sql: str, params: Sequence = ()) -> list[dict]:
        """Rows of a statement as dicts (inside or outside a transaction). SQL uses `?` placeholders."""
        try:
            cur = self._backend.execute(self._conn, sql, tuple(params))
            return self._backend.fetch_dicts(cur)
        except self._backend.driver_errors() as exc:
            if self._in_tx:
                raise
            raise self._error(exc) from None

    def run_one(self, sql: str, params: Sequence = ()) -> list[dict]:
        """One statement as its own write transaction (one round trip on PostgreSQL); returns its rows."""
        if self._backend.name == "postgresql" and not self._in_tx:
            return self.query(sql, params)  # autocommit: the statement is its own transaction
        with self.transaction(write=True):
            return self.query(sql, params)

    def execute(self, sql: str, params: Sequence = ()) -> int:
        """Run one statement; returns the number of rows it changed. Use inside `transaction()`."""
        cur = self._backend.execute(self._conn, sql, tuple(params))
        return cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        self._backend.executemany(self._conn, sql, [tuple(r) for r in rows])

    # ---------------------------------------------------------------- schema
    def _read_version(self) -> int:
        be = self._backend
        if not be.table_exists(self._conn, "schema_version"):
            if be.has_any_table(self._conn):
                raise StoreError(f"{self.target} holds tables but no schema_version: not an ofa-bench store")
            return 0
        rows = self._backend.fetch_dicts(be.execute(self._conn, "SELECT MAX(version) AS v FROM schema_version"))
        return int(rows[0]["v"] or 0)

    def _check_and_migrate(self, migrate: bool = True) -> None:
        be = self._backend
        try:
            be.begin(self._conn, False)
            try:
                version = self._read_version()
            finally:
                self._conn.execute("ROLLBACK")
        except be.driver_errors() as exc:
            raise self._error(exc) from None
        if version > LATEST_VERSION:
            raise StoreError(f"store {self.target} has schema version {version}, newer than this ofa-bench "
                             f"(knows up to {LATEST_VERSION}); upgrade ofa-bench")
        try:
            be.prepare(self._conn)
        except be.driver_errors() as exc:
            raise self._error(exc) from None
        self.version = version
        if migrate and version < LATEST_VERSION:
            self.migrate()

    def migrate(self) -> list[int]:
        """Apply every pending migration in one transaction; returns the versions applied (maybe none)."""
        be = self._backend
        applied: list[int] = []
        with self.transaction(write=True):
            be.lock_schema(self._conn)
            self.execute(render(VERSION_TABLE, be.types, be.name))
            version = self._read_version()  # again, under the lock: another process may have migrated
            if version > LATEST_VERSION:
                raise StoreError(f"store {self.target} has schema version {version}, newer than this ofa-bench")
            for m in MIGRATIONS:
                if m.version <= version:
                    continue
                for statement in m.statements:
                    self.execute(render(statement, be.types, be.name))
                self.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                             (m.version, m.name, time.time()))
                applied.append(m.version)
        self.version = max([self.version, *applied])
        return applied

    def applied_migrations(self) -> list[dict]:
        return self.query("SELECT version, name, applied_at FROM schema_version ORDER BY version")

    # ---------------------------------------------------------------- fingerprints
    def register_fingerprint(self, device_name: str, fingerprint: dict) -> str:
        """Record that `device_name` has this fingerprint (idempotent); returns the fingerprint's id."""
        if not device_name:
            raise StoreError("device name is empty")
        if not isinstance(fingerprint, dict):
            raise StoreError(f"fingerprint of {device_name} must be a dict, got {type(fingerprint).__name__}")
        fp_id = fingerprint_id(fingerprint)
        now = time.time()
        with self._writing():
            self.execute("INSERT INTO fingerprints (id, device, fingerprint, created_at, last_seen_at) "
                         "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device, id) DO UPDATE SET "
                         "last_seen_at = excluded.last_seen_at",
                         (fp_id, device_name, to_json(fingerprint), now, now))
        return fp_id

    def fingerprints(self, device_name: str | None = None) -> list[dict]:
        """Every (device, fingerprint) pair, oldest first, optionally for one device."""
        sql = "SELECT id, device, fingerprint, created_at, last_seen_at FROM fingerprints"
        params: tuple = ()
        if device_name is not None:
            sql += " WHERE device = ?"
            params = (device_name,)
        rows = self.query(sql + " ORDER BY created_at, device, id", params)
        for r in rows:
            r["fingerprint"] = json.loads(r["fingerprint"])
        return rows

    def latest_fingerprint(self, device_name: str) -> dict | None:
        """The fingerprint this device reported most recently, or None if it was never seen."""
        rows = self.query("SELECT id, device, fingerprint, created_at, last_seen_at FROM fingerprints "
                          "WHERE device = ? ORDER BY last_seen_at DESC, created_at DESC LIMIT 1", (device_name,))
        if not rows:
            return None
        rows[0]["fingerprint"] = json.loads(rows[0]["fingerprint"])
        return rows[0]

    def devices(self) -> list[str]:
        return [r["device"] for r in self.query("SELECT DISTINCT device FROM fingerprints ORDER BY device")]

    # ---------------------------------------------------------------- runs
    def start_run(self, device_name: str, fp_id: str, space: str, kind: str, settings: dict,
                  metadata: dict) -> int:
        """Open a run (who, when, host, settings) that measurements will belong to; returns its id."""
        with self._writing():
            rows = self.query(
                "INSERT INTO runs (uuid, device, fingerprint_id, space, kind, settings, metadata, status, "
                "user_name, host, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?) RETURNING id",
                (str(uuid.uuid4()), device_name, fp_id, space, kind, to_json(settings or {}),
                 to_json(metadata or {}), _user(), socket.gethostname(), time.time()))
        return int(rows[0]["id"])

    def finish_run(self, run_id: int, status: str) -> None:
        """End a run as "done", "interrupted" or "failed"."""
        if status not in RUN_STATUSES[1:]:
            raise StoreError(f"run status must be one of {', '.join(RUN_STATUSES[1:])}, got {status!r}")
        with self._writing():
            if self.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
                            (status, time.time(), int(run_id))) != 1:
                raise StoreError(f"store {self.target} has no run {run_id}")

    @contextmanager
    def running(self, device_name: str, fp_id: str, space: str, kind: str, settings: dict,
                metadata: dict) -> Iterator[int]:
        """A run around a block of measurements: it ends "done" when the block does, "interrupted" on Ctrl-C,
        "failed" on any other error (which goes on up), so no run is left "running" behind a crash."""
        run_id = self.start_run(device_name, fp_id, space, kind, settings, metadata)
        try:
            yield run_id
        except KeyboardInterrupt:
            self.finish_run(run_id, "interrupted")
            raise
        except BaseException:
            self.finish_run(run_id, "failed")
            raise
        self.finish_run(run_id, "done")

    def run(self, run_id: int) -> dict | None:
        rows = self.query("SELECT * FROM runs WHERE id = ?", (int(run_id),))
        return decode_run(rows[0]) if rows else None

    def runs(self, device_name: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM runs", ()
        if device_name is not None:
            sql, params = sql + " WHERE device = ?", (device_name,)
        return [decode_run(r) for r in self.query(sql + " ORDER BY id", params)]

    # ---------------------------------------------------------------- measurements
    def add_measurements(self, run_id: int, records: list[dict]) -> list[int]:
        """Append measurements to a run in one transaction; returns their ids. A bad record writes nothing."""
        with self._writing():
            return self.insert_measurements(run_id, records)

    def insert_measurements(self, run_id: int, records: list[dict]) -> list[int]:
        """The rows of `add_measurements`, written inside the caller's transaction (a farm job's completion, a
        profile's commit, `lut import`); returns their ids."""
        rows = self.query("SELECT device, fingerprint_id, space FROM runs WHERE id = ?", (int(run_id),))
        if not rows:
            raise StoreError(f"store {self.target} has no run {run_id}")
        run = rows[0]
        values = [measurement_row(run_id, run, rec, i) for i, rec in enumerate(records)]
        cols = ", ".join(MEASUREMENT_COLUMNS)
        marks = ", ".join("?" for _ in MEASUREMENT_COLUMNS)
        ids = []
        for v in values:
            ids.append(int(self.query(f"INSERT INTO measurements ({cols}) VALUES ({marks}) RETURNING id",
                                      v)[0]["id"]))
        return ids

    def measured_keys(self, fp_id: str, space: str, resolutions: Sequence[int] | None = None,
                      kind: str = "block", batch: int = 1) -> set[tuple[int, str]]:
        """(resolution, key) of every entry with at least one good (not noisy) measurement at `batch`."""
        sql = ("SELECT DISTINCT resolution, key FROM measurements WHERE fingerprint_id = ? AND space = ? "
               "AND kind = ? AND batch = ? AND noisy = 0")
        params: list = [fp_id, space, kind, int(batch)]
        rows = self.query(sql, params)
        wanted = None if resolutions is None else {int(r) for r in resolutions}
        return {(int(r["resolution"]), r["key"]) for r in rows
                if wanted is None or int(r["resolution"]) in wanted}

    def spaces(self, fp_id: str, kind: str = "block") -> list[str]:
        """The spaces this fingerprint has at least one good measurement of `kind` in (its tables' spaces)."""
        rows = self.query("SELECT DISTINCT space FROM measurements WHERE fingerprint_id = ? AND kind = ? "
                          "AND noisy = 0 ORDER BY space", (fp_id, kind))
        return [r["space"] for r in rows]

    def batches(self, fp_id: str, space: str, kind: str = "block") -> list[int]:
        """The batch sizes this fingerprint has at least one good measurement of `kind` at in `space` (one table
        each), smallest first."""
        rows = self.query("SELECT DISTINCT batch FROM measurements WHERE fingerprint_id = ? AND space = ? "
                          "AND kind = ? AND noisy = 0 ORDER BY batch", (fp_id, space, kind))
        return [int(r["batch"]) for r in rows]

    def latest_measurements(self, fp_id: str, space: str, kind: str = "block", whole_run: bool = False,
                            batch: int = 1) -> list[dict]:
        """The latest good measurement of each (resolution, key) at `batch`, ordered by resolution then key. With
        `whole_run`, every good measurement of each key in the run that made its latest one (validation times a
        subnet in several passes), ordered by resolution, key, then id."""
        cols = ", ".join(("id", *MEASUREMENT_COLUMNS))
        order = "ORDER BY measured_at DESC, id DESC"
        if whole_run:
            sql = (f"SELECT {cols} FROM (SELECT {cols}, FIRST_VALUE(run_id) OVER (PARTITION BY resolution, key "
                   f"{order}) AS last_run_ FROM measurements WHERE fingerprint_id = ? AND space = ? AND kind = ? "
                   f"AND batch = ? AND noisy = 0) latest WHERE run_id = last_run_ ORDER BY resolution, key, id")
        else:
            sql = (f"SELECT {cols} FROM (SELECT {cols}, ROW_NUMBER() OVER (PARTITION BY resolution, key "
                   f"{order}) AS rank_ FROM measurements WHERE fingerprint_id = ? AND space = ? AND kind = ? "
                   f"AND batch = ? AND noisy = 0) latest WHERE rank_ = 1 ORDER BY resolution, key")
        return [decode_measurement(r) for r in self.query(sql, (fp_id, space, kind, int(batch)))]

    def history(self, fp_id: str, space: str, key: str | None = None, resolution: int | None = None,
                kind: str = "block", batch: int = 1) -> list[dict]:
        """Every measurement (noisy ones too) at `batch` matching, oldest first."""
        sql = (f"SELECT id, {', '.join(MEASUREMENT_COLUMNS)} FROM measurements "
               "WHERE fingerprint_id = ? AND space = ? AND kind = ? AND batch = ?")
        params: list = [fp_id, space, kind, int(batch)]
        if key is not None:
            sql += " AND key = ?"
            params.append(key)
        if resolution is not None:
            sql += " AND resolution = ?"
            params.append(int(resolution))
        rows = self.query(sql + " ORDER BY measured_at, id", params)
        return [decode_measurement(r) for r in rows]

    def measurements_of_run(self, run_id: int) -> list[dict]:
        rows = self.query(f"SELECT id, {', '.join(MEASUREMENT_COLUMNS)} FROM measurements WHERE run_id = ? "
                          "ORDER BY id", (int(run_id),))
        return [decode_measurement(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Row count of each table (for `store migrate`/`store copy` reports)."""
        out = {}
        for table in ("fingerprints", "runs", "measurements", "jobs", "workers"):
            out[table] = int(self.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])
        return out

    # ---------------------------------------------------------------- farm jobs (read only: `bench.farm` writes them)
    def jobs(self, device: str | None = None, status: str | None = None) -> list[dict]:
        """The farm's jobs as stored (every column), in queue order, optionally only one device's and/or only
        those with one status (`queued`, `running`, `done`, `failed`): for reports and checks."""
        clauses, params = [], []
        if device is not None:
            clauses.append("device = ?")
            params.append(device)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return self.query(f"SELECT * FROM jobs{where} ORDER BY id", params)
