"""The measurement store on both backends (SQLite file and a real PostgreSQL server), including bad input."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bench.store.migrations import LATEST_VERSION, MIGRATIONS, VERSION_TABLE, check_order, render
from bench.store import MEASUREMENT_COLUMNS, Store, StoreError, fingerprint_id, measurement_row, open_store
from bench.store.sqlite import SqliteBackend

try:
    from tests._fixtures_pg import PASSWORD, PASSWORD_USER, free_port, pg_server, pg_url, store_target  # noqa: F401
except ImportError:  # tests/ on sys.path instead of the repo root
    from _fixtures_pg import PASSWORD, PASSWORD_USER, free_port, pg_server, pg_url, store_target  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def record(key: str, latency_ms: float, resolution: int = 160, noisy: bool = False, **extra) -> dict:
    samples = [latency_ms * f for f in (0.98, 1.0, 1.03)]
    rec = dict(resolution=resolution, key=key, kind="block", latency_ms=latency_ms, mean_ms=sum(samples) / 3,
               std_ms=0.01, p10_ms=samples[0], p90_ms=samples[2], cv=0.01, n=3, samples_ms=samples, noisy=noisy,
               env={"threads": 1})
    rec.update(extra)
    return rec


@pytest.fixture
def store(store_target):
    s = open_store(store_target)
    yield s
    s.close()


def test_migrations_are_ordered():
    check_order()
    assert LATEST_VERSION == len(MIGRATIONS)


def test_new_store_is_at_latest_version(store_target):
    with open_store(store_target) as s:
        assert s.version == LATEST_VERSION
        assert [m["version"] for m in s.applied_migrations()] == list(range(1, LATEST_VERSION + 1))
    with open_store(store_target) as s:  # reopening applies nothing twice
        assert [m["version"] for m in s.applied_migrations()] == list(range(1, LATEST_VERSION + 1))


def test_fingerprints_idempotent_and_latest(store):
    fp_a = {"model": "Pixel 7", "runtime": "onnxruntime 1.20", "threads": 1}
    fp_b = {"model": "Pixel 7", "runtime": "onnxruntime 1.21", "threads": 1}
    a1 = store.register_fingerprint("pixel7", fp_a)
    a2 = store.register_fingerprint("pixel7", dict(reversed(list(fp_a.items()))))
    assert a1 == a2 == fingerprint_id(fp_a)
    assert len(store.fingerprints("pixel7")) == 1
    time.sleep(0.01)
    b = store.register_fingerprint("pixel7", fp_b)
    assert b != a1
    assert store.latest_fingerprint("pixel7")["id"] == b
    time.sleep(0.01)
    store.register_fingerprint("pixel7", fp_a)  # the device went back to the old build
    latest = store.latest_fingerprint("pixel7")
    assert latest["id"] == a1 and latest["fingerprint"] == fp_a
    assert store.latest_fingerprint("nobody") is None
    assert {f["id"] for f in store.fingerprints()} == {a1, b}


def test_runs_and_measurements(store):
    fp = store.register_fingerprint("dev", {"cpu": "x"})
    run = store.start_run("dev", fp, "ofa-mbv3-w1.0", "profile", {"threads": 1}, {"note": "t"})
    ids = store.add_measurements(run, [record("k1", 1.0, measured_at=100.0), record("k2", 2.0, measured_at=100.0),
                                       record("k3", 3.0, noisy=True, measured_at=100.0),
                                       record("k1", 5.0, resolution=192, measured_at=100.0)])
    assert len(ids) == 4 and len(set(ids)) == 4
    run2 = store.start_run("dev", fp, "ofa-mbv3-w1.0", "nightly", {}, {})
    store.add_measurements(run2, [record("k1", 1.5, measured_at=200.0), record("k2", 9.0, noisy=True,
                                                                              measured_at=200.0)])
    store.finish_run(run, "done")
    store.finish_run(run2, "interrupted")

    assert store.measured_keys(fp, "ofa-mbv3-w1.0") == {(160, "k1"), (160, "k2"), (192, "k1")}
    assert store.measured_keys(fp, "ofa-mbv3-w1.0", resolutions=[192]) == {(192, "k1")}
    assert store.measured_keys(fp, "other-space") == set()
    latest = {(r["resolution"], r["key"]): r for r in store.latest_measurements(fp, "ofa-mbv3-w1.0")}
    assert set(latest) == {(160, "k1"), (160, "k2"), (192, "k1")}
    assert latest[(160, "k1")]["latency_ms"] == 1.5  # the newer good one
    assert latest[(160, "k2")]["latency_ms"] == 2.0  # the newer one is noisy
    row = latest[(160, "k1")]
    assert row["run_id"] == run2 and row["device"] == "dev" and row["fingerprint_id"] == fp
    assert row["space"] == "ofa-mbv3-w1.0" and row["measured_at"] == 200.0
    assert row["samples_ms"] == pytest.approx([1.47, 1.5, 1.545]) and row["env"] == {"threads": 1}
    assert row["noisy"] is False and row["n"] == 3

    hist = store.history(fp, "ofa-mbv3-w1.0", key="k1")
    assert [h["latency_ms"] for h in hist] == [1.0, 5.0, 1.5]
    assert [h["latency_ms"] for h in store.history(fp, "ofa-mbv3-w1.0", key="k1", resolution=160)] == [1.0, 1.5]
    assert len(store.history(fp, "ofa-mbv3-w1.0")) == 6
    runs = store.runs("dev")
    assert [r["status"] for r in runs] == ["done", "interrupted"]
    assert runs[0]["settings"] == {"threads": 1} and runs[0]["host"] and runs[0]["user_name"]


def test_batches_are_kept_apart(store):
    """A batch size is part of an entry's identity: each batch is a table of its own, batch 1 by default."""
    fp = store.register_fingerprint("dev", {"cpu": "x"})
    run = store.start_run("dev", fp, "s", "profile", {}, {})
    store.add_measurements(run, [record("k1", 1.0), record("k2", 2.0), record("k1", 9.0, batch=16),
                                 record("ref", 0.5, kind="reference"), record("ref", 4.0, kind="reference", batch=16)])
    assert store.batches(fp, "s") == [1, 16]
    assert store.measured_keys(fp, "s") == {(160, "k1"), (160, "k2")}
    assert store.measured_keys(fp, "s", batch=16) == {(160, "k1")}
    assert [r["latency_ms"] for r in store.latest_measurements(fp, "s", batch=16)] == [9.0]
    assert [r["batch"] for r in store.latest_measurements(fp, "s")] == [1, 1]
    assert [r["latency_ms"] for r in store.history(fp, "s", key="ref", kind="reference", batch=16)] == [4.0]
    assert store.latest_measurements(fp, "s", batch=64) == []


def test_running_ends_every_run(store):
    fp = store.register_fingerprint("dev", {"cpu": "x"})
    with store.running("dev", fp, "s", "validate", {}, {}) as done:
        assert store.run(done)["status"] == "running"
    with pytest.raises(KeyboardInterrupt), store.running("dev", fp, "s", "validate", {}, {}) as stopped:
        raise KeyboardInterrupt
    with pytest.raises(RuntimeError, match="agent died"), store.running("dev", fp, "s", "confirm", {}, {}) as broke:
        raise RuntimeError("agent died")
    assert [store.run(r)["status"] for r in (done, stopped, broke)] == ["done", "interrupted", "failed"]
    assert store.run(broke)["kind"] == "confirm"


def test_bad_records_write_nothing(store):
    fp = store.register_fingerprint("dev", {"cpu": "x"})
    run = store.start_run("dev", fp, "s", "profile", {}, {})
    bad_batches = [
        [record("ok", 1.0), {"resolution": 160, "latency_ms": 1.0}],           # no key
        [record("ok", 1.0), record("b", float("nan"))],                           # NaN latency
        [record("ok", 1.0), record("b", 1.0, resolution="big")],                  # resolution not int
        [record("ok", 1.0), record("b", 1.0, kind="weird")],                      # unknown kind
        [record("ok", 1.0), record("b", 1.0, samples_ms=["x"])],                 # samples not numbers
        [record("ok", 1.0), record("b", 1.0, batch=0)],                           # batch below 1
        [record("ok", 1.0), record("b", 1.0, batch=2.5)],                         # batch not an integer
    ]
    for batch in bad_batches:
        with pytest.raises(StoreError) as err:
            store.add_measurements(run, batch)
        assert "\n" not in str(err.value)
    assert store.history(fp, "s") == []
    with pytest.raises(StoreError):
        store.add_measurements(run + 1000, [record("ok", 1.0)])
    with pytest.raises(StoreError):
        store.finish_run(run, "exploded")
    with pytest.raises(StoreError):
        store.finish_run(run + 1000, "done")
    assert store.counts()["measurements"] == 0


def test_measurements_are_append_only_in_order(store):
    fp = store.register_fingerprint("dev", {"cpu": "x"})
    run = store.start_run("dev", fp, "s", "profile", {}, {})
    ids = []
    for i in range(5):
        ids += store.add_measurements(run, [record("k", float(i + 1))])
    assert ids == sorted(ids)
    assert [h["latency_ms"] for h in store.history(fp, "s", key="k")] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_measurements_refuse_update_and_delete(store):
    fp = store.register_fingerprint("dev", {"cpu": "x"})
    run = store.start_run("dev", fp, "s", "profile", {}, {})
    store.add_measurements(run, [record("k", 1.0)])
    # SQL on purpose: the schema's own guard (its triggers) is tested, below every method of the API
    for sql in ("UPDATE measurements SET latency_ms = 2.0", "DELETE FROM measurements"):
        with pytest.raises(StoreError, match="append-only"):
            with store.transaction():
                store.execute(sql)
    assert [h["latency_ms"] for h in store.history(fp, "s")] == [1.0]


def _bump_version(store: Store, version: int) -> None:
    # SQL on purpose: a store written by a newer ofa-bench, which no method of this one writes
    with store.transaction():
        store.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                      (version, "from the future", time.time()))


def test_newer_schema_is_refused_untouched(store_target):
    with open_store(store_target) as s:
        _bump_version(s, LATEST_VERSION + 1)
        before = s.counts()
    if not store_target.startswith("postgresql://"):
        path = Path(store_target)
        blob = path.read_bytes()
    with pytest.raises(StoreError, match="newer") as err:
        open_store(store_target)
    assert "\n" not in str(err.value)
    if not store_target.startswith("postgresql://"):
        assert path.read_bytes() == blob
    else:
        # still readable with a raw connection, and nothing was written (SQL on purpose: the store API refuses
        # to open it)
        import psycopg

        with psycopg.connect(store_target) as conn:
            assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == LATEST_VERSION + 1
            assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == before["runs"]


def test_old_store_is_migrated(store_target):
    """A store created at version 1 (before the job queue existed) is brought up to date, data kept."""
    # SQL on purpose: the version-1 schema and a row as version 1 wrote it are made by hand, as no API writes them
    from bench.store.postgres import PostgresBackend

    backend = (PostgresBackend(store_target) if store_target.startswith("postgresql://")
               else SqliteBackend(store_target))
    backend.check_target()
    conn = backend.connect()
    backend.prepare(conn)
    old = Store(backend, conn)
    with old.transaction():
        old.execute(render(VERSION_TABLE, backend.types, backend.name))
        for statement in MIGRATIONS[0].statements:
            old.execute(render(statement, backend.types, backend.name))
        old.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (1, 'v1', 0)")
    old.version = 1
    fp = old.register_fingerprint("dev", {"cpu": "x"})
    run = old.start_run("dev", fp, "s", "profile", {}, {})
    # a row as version 1 wrote it: no batch column yet
    cols = [c for c in MEASUREMENT_COLUMNS if c != "batch"]
    row = measurement_row(run, {"fingerprint_id": fp, "device": "dev", "space": "s"}, record("k", 1.0), 0)
    with old.transaction():
        old.execute(f"INSERT INTO measurements ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                    row[:len(cols)])
    old.close()
    with open_store(store_target) as s:
        assert s.version == LATEST_VERSION
        assert s.measured_keys(fp, "s") == {(160, "k")}
        assert s.latest_measurements(fp, "s")[0]["batch"] == 1  # every earlier row was a batch of one
        assert s.batches(fp, "s") == [1] and s.measured_keys(fp, "s", batch=16) == set()
        assert s.counts()["jobs"] == 0


# -------------------------------------------------------------------- SQLite-specific bad input
def test_sqlite_refuses_foreign_file_untouched(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 10)
    blob = path.read_bytes()
    with pytest.raises(StoreError, match="not an SQLite database") as err:
        open_store(path)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == blob
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no -wal / -shm beside it


def test_sqlite_refuses_foreign_database(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)  # SQL on purpose: a database that is not a store, made without the store
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.commit()
    conn.close()
    blob = path.read_bytes()
    with pytest.raises(StoreError, match="not an ofa-bench store"):
        open_store(path)
    assert path.read_bytes() == blob


def test_sqlite_refuses_directory_and_creates_parents(tmp_path):
    with pytest.raises(StoreError, match="not a file"):
        open_store(tmp_path)
    deep = tmp_path / "a" / "b" / "store.sqlite"
    with open_store(deep) as s:
        assert s.backend == "sqlite"
    assert deep.exists()
    with sqlite3.connect(deep) as conn:  # SQL on purpose: the file's own journal mode, as SQLite reports it
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def hold_write_lock(path, seconds: float, *statements: str) -> threading.Thread:
    """Another connection takes the write lock of `path` now, runs `statements` and keeps the lock `seconds`
    (in a thread), then rolls back. SQL on purpose: another program holding SQLite's lock on the file."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    for sql in statements:
        holder.execute(sql)

    def release():
        time.sleep(seconds)
        holder.execute("ROLLBACK")
        holder.close()

    t = threading.Thread(target=release)
    t.start()
    return t


def test_sqlite_retries_busy_errors_its_own_handler_misses(tmp_path):
    """In WAL mode SQLite can answer "database is locked" without calling its busy handler (a connection of
    another process closing or recovering the file). Simulated by switching the handler off: a writer holding
    the lock for 0.4 s is still waited for by a write transaction; a busy timeout too short gives a clear error."""
    path = tmp_path / "s.sqlite"
    with open_store(path) as s:
        s.execute("PRAGMA busy_timeout = 0")  # SQL on purpose: SQLite's own busy handler, switched off
        fp = s.register_fingerprint("dev", {"cpu": "x"})
        t = hold_write_lock(path, 0.4)
        t0 = time.monotonic()
        run = s.start_run("dev", fp, "s", "profile", {}, {})  # BEGIN IMMEDIATE behind the holder
        waited = time.monotonic() - t0
        t.join()
        assert waited >= 0.3 and s.run(run)["status"] == "running"
    t = hold_write_lock(path, 0.4)
    with open_store(path, busy_timeout_s=0.1) as s:  # too short to wait the holder out: a clear error
        with pytest.raises(StoreError, match="database is locked"):
            s.start_run("dev", fp, "s", "profile", {}, {})
    t.join()
    with open_store(path) as s:  # nothing half-written
        assert s.counts()["runs"] == 1


def test_new_store_opened_while_another_process_sets_it_up(tmp_path):
    """The race two profilers starting on one new store ran into in CI: while one connection holds a write
    transaction on the file still in rollback-journal mode (as while it switches it to WAL), SQLite answers
    the other's `PRAGMA journal_mode = WAL` with "database is locked" at once, without its busy handler.
    open_store waits instead (it failed at once before)."""
    path = tmp_path / "s.sqlite"
    t = hold_write_lock(path, 0.4, "CREATE TABLE scratch (a)")  # a new file: still in rollback-journal mode
    t0 = time.monotonic()
    try:
        with open_store(path) as s:
            waited = time.monotonic() - t0
            assert s.version == LATEST_VERSION
    finally:
        t.join()
    assert waited >= 0.3


WRITER = textwrap.dedent("""
    import sys
    from bench.store import open_store
    target, name, runs, per_run = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = open_store(target)
    fp = store.register_fingerprint(name, {"who": name})
    for r in range(runs):
        run = store.start_run(name, fp, "s", "profile", {}, {})
        for i in range(per_run):
            store.add_measurements(run, [dict(resolution=160, key=f"{name}-{r}-{i}", latency_ms=1.0 + i,
                                              samples_ms=[1.0], n=1, noisy=False, env={})])
        store.finish_run(run, "done")
    store.close()
""")


def test_two_processes_write_concurrently(store_target):
    """Two profilers writing into one store at the same time lose nothing."""
    open_store(store_target).close()  # create it first, like a user's existing store
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, store_target, name, "4", "25"], cwd=REPO, env=env,
                              stderr=subprocess.PIPE, text=True) for name in ("alpha", "beta")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with open_store(store_target) as s:
        assert s.counts()["measurements"] == 200
        assert s.counts()["runs"] == 8
        for name in ("alpha", "beta"):
            fp = s.latest_fingerprint(name)["id"]
            assert s.measured_keys(fp, "s") == {(160, f"{name}-{r}-{i}") for r in range(4) for i in range(25)}


def test_threads_each_with_own_connection(store_target):
    with open_store(store_target) as s:
        fp = s.register_fingerprint("dev", {"cpu": "x"})
        run = s.start_run("dev", fp, "s", "profile", {}, {})
        errors = []

        def write(tag):
            try:
                with s.reopen() as mine:
                    for i in range(20):
                        mine.add_measurements(run, [record(f"{tag}{i}", 1.0)])
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(t,)) for t in "abc"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(s.measured_keys(fp, "s")) == 60


# -------------------------------------------------------------------- PostgreSQL-specific bad input
@pytest.mark.postgres
def test_pg_wrong_credentials(pg_server, pg_url):
    db = pg_url.rsplit("/", 1)[1]
    with pytest.raises(StoreError, match="password authentication failed") as err:
        open_store(pg_server.url(db, PASSWORD_USER, "wrong"))
    assert "\n" not in str(err.value) and "wrong" not in str(err.value)  # password not echoed
    import psycopg

    # nothing was written: the database has no tables at all (SQL on purpose: the server's catalogue)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    with open_store(pg_server.url(db, PASSWORD_USER, PASSWORD)) as s:  # the right password works
        assert s.version == LATEST_VERSION


@pytest.mark.postgres
def test_pg_unknown_database(pg_server):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(pg_server.url("no_such_db"))


@pytest.mark.postgres
def test_pg_nothing_listening():
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect") as err:
        open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout_s=2)
    assert time.monotonic() - t0 < 5
    assert "\n" not in str(err.value)


@pytest.mark.postgres
def test_pg_silent_server_times_out():
    """A server that accepts TCP but never answers fails within the connect timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="cannot connect") as err:
            open_store(f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout_s=2)
        elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 8, elapsed
    assert "\n" not in str(err.value)


def test_latest_measurements_whole_run(store):
    """`whole_run`: every good row of the run that made each key's latest one (validation's passes)."""
    fp = store.register_fingerprint("dev", {"cpu": "x"})
    run1 = store.start_run("dev", fp, "ofa-mbv3-w1.0", "validate", {}, {})
    store.add_measurements(run1, [record("k1", 1.0, measured_at=100.0), record("k1", 1.1, measured_at=101.0),
                                  record("k2", 2.0, measured_at=100.0)])
    store.finish_run(run1, "done")
    run2 = store.start_run("dev", fp, "ofa-mbv3-w1.0", "validate", {}, {})
    store.add_measurements(run2, [record("k1", 1.6, measured_at=300.0), record("k1", 1.7, measured_at=301.0),
                                  record("k1", 9.9, noisy=True, measured_at=302.0),
                                  record("k2", 8.0, noisy=True, measured_at=300.0)])
    store.finish_run(run2, "done")
    whole = store.latest_measurements(fp, "ofa-mbv3-w1.0", whole_run=True)
    assert [(r["key"], r["latency_ms"]) for r in whole] == [("k1", 1.6), ("k1", 1.7), ("k2", 2.0)]
    assert [r["latency_ms"] for r in store.latest_measurements(fp, "ofa-mbv3-w1.0")] == [1.7, 2.0]
