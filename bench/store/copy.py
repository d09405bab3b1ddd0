"""Copy every row of one store into another (SQLite <-> PostgreSQL), skipping what the target already holds.

Rows are matched by their stable unique ids (uuid for runs, measurements and jobs; (device, id) for
fingerprints; the name for workers), never by the integer ids, which are local to each store: a measurement's
run is re-linked through the run's uuid. Copying twice adds nothing; the whole copy is one transaction on the
target, so an interrupted copy leaves it unchanged.
"""
from __future__ import annotations

from collections.abc import Iterator

from bench.store.api import Store
from bench.store.errors import StoreError
from bench.store.rows import MEASUREMENT_COLUMNS

RUN_COLUMNS = ("uuid", "device", "fingerprint_id", "space", "kind", "settings", "metadata", "status", "user_name",
               "host", "started_at", "finished_at")
JOB_COLUMNS = ("uuid", "device", "fingerprint_id", "space", "kind", "resolution", "key", "status", "attempts",
               "max_attempts", "worker", "lease_until", "last_error", "measurement_uuid", "created_at", "updated_at",
               "batch")
FINGERPRINT_COLUMNS = ("id", "device", "fingerprint", "created_at", "last_seen_at")
WORKER_COLUMNS = ("name", "host", "pid", "devices", "started_at", "last_heartbeat", "status")
TERMINAL_JOB_STATUSES = ("done", "failed")


def _rows(store: Store, sql: str, batch: int = 2000) -> Iterator[dict]:
    """All rows of `sql` (which must end in ORDER BY a unique column list) in pages, to bound memory."""
    offset = 0
    while True:
        page = store.query(f"{sql} LIMIT {int(batch)} OFFSET {int(offset)}")
        yield from page
        if len(page) < batch:
            return
        offset += batch


def _insert_sql(table: str, columns: tuple[str, ...], skip_conflicts: bool = False) -> str:
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    return sql + (" ON CONFLICT DO NOTHING" if skip_conflicts else "")


def copy_store(src: Store, dst: Store) -> dict:
    """Copy `src` into `dst`; returns per table how many rows were copied, already there, or updated."""
    if src.backend == dst.backend and src.target == dst.target:
        raise StoreError(f"store copy: source and destination are the same store ({src.target})")
    report = {t: {"copied": 0, "present": 0, "updated": 0}
              for t in ("fingerprints", "runs", "measurements", "jobs", "workers")}
    with src.transaction(write=False):
        if src.backend == "postgresql":
            src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot for every table
        with dst.transaction(write=True):
            _copy_fingerprints(src, dst, report["fingerprints"])
            _copy_runs(src, dst, report["runs"])
            _copy_measurements(src, dst, report["measurements"])
            _copy_jobs(src, dst, report["jobs"])
            _copy_workers(src, dst, report["workers"])
    return report


def _copy_fingerprints(src: Store, dst: Store, rep: dict) -> None:
    have = {(r["device"], r["id"]): r["last_seen_at"]
            for r in dst.query("SELECT device, id, last_seen_at FROM fingerprints")}
    new = []
    for r in _rows(src, f"SELECT {', '.join(FINGERPRINT_COLUMNS)} FROM fingerprints ORDER BY device, id"):
        seen = have.get((r["device"], r["id"]))
        if seen is None:
            new.append([r[c] for c in FINGERPRINT_COLUMNS])
        else:
            rep["present"] += 1
            if r["last_seen_at"] > seen:
                dst.execute("UPDATE fingerprints SET last_seen_at = ? WHERE device = ? AND id = ?",
                            (r["last_seen_at"], r["device"], r["id"]))
                rep["updated"] += 1
    dst.executemany(_insert_sql("fingerprints", FINGERPRINT_COLUMNS), new)
    rep["copied"] += len(new)


def _copy_runs(src: Store, dst: Store, rep: dict) -> None:
    have = {r["uuid"]: r for r in dst.query("SELECT uuid, status, finished_at FROM runs")}
    new = []
    for r in _rows(src, f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY id"):
        mine = have.get(r["uuid"])
        if mine is None:
            new.append([r[c] for c in RUN_COLUMNS])
            continue
        rep["present"] += 1
        if mine["finished_at"] is None and r["finished_at"] is not None:  # the run ended since the last copy
            dst.execute("UPDATE runs SET status = ?, finished_at = ? WHERE uuid = ?",
                        (r["status"], r["finished_at"], r["uuid"]))
            rep["updated"] += 1
    dst.executemany(_insert_sql("runs", RUN_COLUMNS), new)
    rep["copied"] += len(new)


def _copy_measurements(src: Store, dst: Store, rep: dict) -> None:
    run_ids = {r["uuid"]: int(r["id"]) for r in dst.query("SELECT id, uuid FROM runs")}
    have = {r["uuid"] for r in dst.query("SELECT uuid FROM measurements")}
    cols = [c for c in MEASUREMENT_COLUMNS if c != "run_id"]
    select = ", ".join(f"m.{c}" for c in cols)
    new = []
    for r in _rows(src, f"SELECT {select}, r.uuid AS run_uuid FROM measurements m JOIN runs r ON r.id = m.run_id "
                        f"ORDER BY m.id"):
        if r["uuid"] in have:
            rep["present"] += 1
            continue
        r["run_id"] = run_ids[r["run_uuid"]]
        new.append([r[c] for c in MEASUREMENT_COLUMNS])
        if len(new) >= 2000:
            dst.executemany(_insert_sql("measurements", MEASUREMENT_COLUMNS), new)
            rep["copied"] += len(new)
            new = []
    dst.executemany(_insert_sql("measurements", MEASUREMENT_COLUMNS), new)
    rep["copied"] += len(new)


def _copy_jobs(src: Store, dst: Store, rep: dict) -> None:
    have = {r["uuid"]: r for r in dst.query("SELECT uuid, status, updated_at FROM jobs")}
    for r in _rows(src, f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs ORDER BY id"):
        mine = have.get(r["uuid"])
        if mine is None:
            # an entry already active for the device in the target under another job is skipped (no duplicate)
            n = dst.execute(_insert_sql("jobs", JOB_COLUMNS, skip_conflicts=True), [r[c] for c in JOB_COLUMNS])
            if n == 1:
                rep["copied"] += 1
            else:
                rep["skipped_active_duplicate"] = rep.get("skipped_active_duplicate", 0) + 1
            continue
        rep["present"] += 1
        # only finished states travel onto an existing job: they leave the active-entry indexes, so never clash
        if (r["status"] in TERMINAL_JOB_STATUSES and r["updated_at"] > mine["updated_at"]
                and mine["status"] != r["status"]):
            dst.execute("UPDATE jobs SET status = ?, attempts = ?, worker = ?, lease_until = ?, last_error = ?, "
                        "measurement_uuid = ?, updated_at = ? WHERE uuid = ?",
                        (r["status"], r["attempts"], r["worker"], r["lease_until"], r["last_error"],
                         r["measurement_uuid"], r["updated_at"], r["uuid"]))
            rep["updated"] += 1


def _copy_workers(src: Store, dst: Store, rep: dict) -> None:
    have = {r["name"]: r["last_heartbeat"] for r in dst.query("SELECT name, last_heartbeat FROM workers")}
    new = []
    for r in _rows(src, f"SELECT {', '.join(WORKER_COLUMNS)} FROM workers ORDER BY name"):
        beat = have.get(r["name"])
        if beat is None:
            new.append([r[c] for c in WORKER_COLUMNS])
            continue
        rep["present"] += 1
        if r["last_heartbeat"] > beat:
            dst.execute("UPDATE workers SET last_heartbeat = ?, status = ? WHERE name = ?",
                        (r["last_heartbeat"], r["status"], r["name"]))
            rep["updated"] += 1
    dst.executemany(_insert_sql("workers", WORKER_COLUMNS), new)
    rep["copied"] += len(new)


def portable_rows(store: Store) -> dict[str, list[dict]]:
    """Every row without store-local integer ids (a measurement names its run by uuid): equal across a copy."""
    out = {
        "fingerprints": store.query(f"SELECT {', '.join(FINGERPRINT_COLUMNS)} FROM fingerprints ORDER BY device, id"),
        "runs": store.query(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs ORDER BY uuid"),
        "measurements": store.query(
            f"SELECT {', '.join('m.' + c for c in MEASUREMENT_COLUMNS if c != 'run_id')}, r.uuid AS run_uuid "
            f"FROM measurements m JOIN runs r ON r.id = m.run_id ORDER BY m.uuid"),
        "jobs": store.query(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs ORDER BY uuid"),
        "workers": store.query(f"SELECT {', '.join(WORKER_COLUMNS)} FROM workers ORDER BY name"),
    }
    sort_keys = {"fingerprints": ("device", "id"), "runs": ("uuid",), "measurements": ("uuid",), "jobs": ("uuid",),
                 "workers": ("name",)}
    for table, rows in out.items():  # sorted here: database collations may order text differently
        rows.sort(key=lambda r: tuple(r[k] for k in sort_keys[table]))
    return out
