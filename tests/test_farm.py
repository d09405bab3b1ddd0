"""The farm's job queue on both backends: enqueue/claim/lease/complete semantics, real worker processes killed
midway, concurrent workers and submits, `store copy` round trips, and the CLI's one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.cli import main as cli_main
from bench.farm import (AgentSession, FarmError, LostJob, NullSession, Worker, WorkerSettings, claim, complete,
                        enqueue, fail, farm_status, register_worker, renew, submit)
from bench.store import LATEST_VERSION, StoreError, open_store
from bench.store.copy import copy_store, portable_rows

try:
    from tests._fixtures_pg import PASSWORD_USER, free_port, pg_server, pg_url, store_target  # noqa: F401
except ImportError:
    from _fixtures_pg import PASSWORD_USER, free_port, pg_server, pg_url, store_target  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SPACE = "ofa-mbv3-w1.0"


def null_record() -> dict:
    return NullSession("x").measure_job(None)


def sim(name: str) -> str:
    return f"sim-null-{name}"


@pytest.fixture
def store(store_target):
    s = open_store(store_target)
    yield s
    s.close()


def register_sim(store, *names: str) -> dict[str, str]:
    return {n: store.register_fingerprint(n, NullSession(n).fingerprint()) for n in names}


def entries(n: int, resolution: int = 160) -> list[tuple[int, str]]:
    return [(resolution, f"key-{i:03d}") for i in range(n)]


def run_one_device(store_target, factory, n_entries: int, max_attempts: int):
    """Queue `n_entries` jobs for simulated device a and run one worker over them until idle."""
    with open_store(store_target) as s:
        register_sim(s, sim("a"))
        enqueue(s, sim("a"), SPACE, entries(n_entries), max_attempts=max_attempts)
    settings = WorkerSettings((sim("a"),), lease_s=5, poll_s=0.01, exit_when_idle=True)
    return Worker(store_target, settings, factory).run()


def job_rows(store, device=None) -> list[dict]:
    return store.jobs(device or None)


# -------------------------------------------------------------------- queue semantics
def test_enqueue_skips_active_entries(store):
    a = enqueue(store, "dev-a", SPACE, entries(5))
    assert a.queued == 5 and a.already_active == 0
    again = enqueue(store, "dev-a", SPACE, entries(7))
    assert again.queued == 2 and again.already_active == 5
    other = enqueue(store, "dev-b", SPACE, entries(5))
    assert other.queued == 5
    assert len(job_rows(store)) == 12


def test_claim_one_at_a_time_per_device(store):
    enqueue(store, "dev-a", SPACE, entries(3))
    enqueue(store, "dev-b", SPACE, entries(1))
    j1 = claim(store, "w1", "dev-a", lease_s=30)
    assert j1 is not None and j1.key == "key-000" and j1.attempts == 1 and j1.status == "running"
    assert claim(store, "w1", "dev-a", lease_s=30) is None      # the device is busy
    assert claim(store, "w2", "dev-a", lease_s=30) is None      # whichever worker asks
    jb = claim(store, "w2", "dev-b", lease_s=30)
    assert jb is not None and jb.device == "dev-b"
    assert claim(store, "w1", "nobody", lease_s=30) is None


def test_complete_writes_result_and_done_together(store):
    fps = register_sim(store, "dev-a")
    run = store.start_run("dev-a", fps["dev-a"], SPACE, "farm", {}, {})
    enqueue(store, "dev-a", SPACE, entries(2), fingerprint_id=fps["dev-a"])
    job = claim(store, "w1", "dev-a", lease_s=30)
    mid = complete(store, job, "w1", run, null_record())
    row = job_rows(store, "dev-a")[0]
    assert row["status"] == "done" and row["lease_until"] is None
    (m,) = store.history(fps["dev-a"], SPACE)
    assert m["id"] == mid and m["uuid"] == row["measurement_uuid"] and m["key"] == "key-000"
    assert m["env"]["simulated"] is True
    with pytest.raises(LostJob):  # completing twice is refused and writes nothing
        complete(store, job, "w1", run, null_record())
    assert len(store.history(fps["dev-a"], SPACE)) == 1
    # the device is free again
    assert claim(store, "w1", "dev-a", lease_s=30).key == "key-001"


def test_expired_lease_goes_back_to_queue_and_stale_worker_loses_it(store):
    fps = register_sim(store, "dev-a")
    run = store.start_run("dev-a", fps["dev-a"], SPACE, "farm", {}, {})
    enqueue(store, "dev-a", SPACE, entries(1))
    t = time.time()  # the clock is passed in: no sleeping, no dependence on machine load
    stale = claim(store, "w-dead", "dev-a", lease_s=1.0, now=t)
    assert claim(store, "w-new", "dev-a", lease_s=30, now=t + 0.9) is None  # lease still valid
    fresh = claim(store, "w-new", "dev-a", lease_s=30, now=t + 1.1)
    assert fresh is not None and fresh.id == stale.id and fresh.attempts == 2 and fresh.worker == "w-new"
    with pytest.raises(LostJob):
        complete(store, stale, "w-dead", run, null_record())
    complete(store, fresh, "w-new", run, null_record())
    assert len(store.history(fps["dev-a"], SPACE)) == 1


def test_renew_keeps_the_job(store):
    enqueue(store, "dev-a", SPACE, entries(1))
    register_worker(store, "w1", os.getpid(), ["dev-a"])
    t = time.time()
    claim(store, "w1", "dev-a", lease_s=1.0, now=t)
    for step in range(1, 5):
        assert renew(store, "w1", lease_s=1.0, now=t + 0.8 * step) == 1
        assert claim(store, "w2", "dev-a", lease_s=30, now=t + 0.8 * step + 0.5) is None
    assert claim(store, "w2", "dev-a", lease_s=30, now=t + 0.8 * 4 + 1.1) is not None  # renewals stopped
    assert farm_status(store, now=t + 4)["workers"][0]["name"] == "w1"


def test_failures_requeue_then_fail_with_last_error(store):
    enqueue(store, "dev-a", SPACE, entries(1), max_attempts=2)
    job = claim(store, "w1", "dev-a", lease_s=30)
    assert fail(store, job, "w1", "runner crashed:\nsegfault") == "queued"
    job = claim(store, "w1", "dev-a", lease_s=30)
    assert job.attempts == 2
    assert fail(store, job, "w1", "device vanished") == "failed"
    assert claim(store, "w1", "dev-a", lease_s=30) is None
    row = job_rows(store)[0]
    assert row["status"] == "failed" and row["last_error"] == "device vanished"
    # a failed entry can be queued again later
    assert enqueue(store, "dev-a", SPACE, entries(1)).queued == 1


def test_expired_lease_counts_as_an_attempt(store):
    enqueue(store, "dev-a", SPACE, entries(1), max_attempts=1)
    t = time.time()
    claim(store, "w-dead", "dev-a", lease_s=1.0, now=t)
    assert claim(store, "w2", "dev-a", lease_s=30, now=t + 2) is None
    row = job_rows(store)[0]
    assert row["status"] == "failed" and "lease expired" in row["last_error"] and "w-dead" in row["last_error"]


# -------------------------------------------------------------------- submit
def test_submit_queues_only_missing_entries(store):
    fps = register_sim(store, sim("a"))
    run = store.start_run(sim("a"), fps[sim("a")], SPACE, "profile", {}, {})
    from bench.table import candidates
    from ofa_core.space import SearchSpace

    table = candidates(SearchSpace.get(SPACE), [160])
    store.add_measurements(run, [{**null_record(), "resolution": 160, "key": e.key} for e in table[:10]])
    store.add_measurements(run, [{**null_record(), "resolution": 160, "key": table[10].key, "noisy": True}])
    doc = submit(store, [sim("a")], SPACE, [160])
    (d,) = doc["devices"]
    assert doc["entries"] == len(table)
    assert d["measured"] == 10 and d["queued"] == len(table) - 10 and d["fingerprint_id"] == fps[sim("a")]
    queued = {r["key"] for r in job_rows(store)}
    assert queued == {e.key for e in table[10:]}                 # the noisy one is measured again
    doc2 = submit(store, [sim("a")], SPACE, [160])
    assert doc2["devices"][0]["queued"] == 0 and doc2["devices"][0]["already_queued"] == len(table) - 10


def test_submit_unknown_device_writes_nothing(store):
    register_sim(store, sim("a"))
    with pytest.raises(FarmError, match="unknown device 'no-such-phone'") as err:
        submit(store, [sim("a"), "no-such-phone"], SPACE, [160])
    assert "\n" not in str(err.value)
    assert job_rows(store) == []
    with pytest.raises(Exception, match="unknown search space"):
        submit(store, [sim("a")], "no-such-space", None)
    assert job_rows(store) == []


def test_submit_profile_device_without_fingerprint(store):
    doc = submit(store, ["local-cpu"], SPACE, [160])  # a profile of this host, never measured yet
    assert doc["devices"][0]["fingerprint_id"] is None and doc["devices"][0]["queued"] == doc["entries"]


# -------------------------------------------------------------------- the worker, in-process
def test_worker_completes_table_once(store_target):
    with open_store(store_target) as s:
        register_sim(s, sim("a"), sim("b"))
        doc = submit(s, [sim("a"), sim("b")], SPACE, [160])
    settings = WorkerSettings((sim("a"), sim("b")), lease_s=5, poll_s=0.02, exit_when_idle=True)
    report = Worker(store_target, settings, NullSession, name="w-test").run()
    assert sum(d.done for d in report.devices.values()) == doc["queued"]
    with open_store(store_target) as s:
        for dev in (sim("a"), sim("b")):
            fp = s.latest_fingerprint(dev)["id"]
            hist = s.history(fp, SPACE)
            assert len(hist) == doc["entries"] == len({h["key"] for h in hist})
        st = farm_status(s)
        assert st["totals"] == {"queued": 0, "running": 0, "done": doc["queued"], "failed": 0}
        (w,) = st["workers"]
        assert w["name"] == "w-test" and w["status"] == "stopped" and set(w["devices"]) == {sim("a"), sim("b")}
        assert all(r["status"] == "done" for r in s.runs())


class FlakySession(NullSession):
    """Fails on chosen keys (every attempt) to exercise the failure path."""

    def __init__(self, device, bad_keys):
        super().__init__(device)
        self.bad_keys = bad_keys

    def measure_job(self, job):
        if job.key in self.bad_keys:
            raise RuntimeError(f"runner crashed on {job.key}")
        return super().measure_job(job)


def test_worker_marks_failing_jobs_failed(store_target):
    report = run_one_device(store_target, lambda d: FlakySession(d, {"key-002"}), 6, max_attempts=2)
    assert report.devices[sim("a")].done == 5 and report.devices[sim("a")].failed_attempts == 2
    with open_store(store_target) as s:
        st = farm_status(s)
        (d,) = st["devices"]
        assert (d["done"], d["failed"], d["queued"], d["running"]) == (5, 1, 0, 0)
        assert d["failed_jobs"][0]["key"] == "key-002"
        assert d["failed_jobs"][0]["last_error"] == "RuntimeError: runner crashed on key-002"


class NanSession(NullSession):
    """Returns a record the store would refuse (NaN latency)."""

    def measure_job(self, job):
        return {**super().measure_job(job), "latency_ms": float("nan")}


def test_record_the_store_refuses_is_a_failed_attempt(store_target):
    report = run_one_device(store_target, NanSession, 2, max_attempts=2)
    assert report.devices[sim("a")].failed_attempts == 4 and report.devices[sim("a")].done == 0
    with open_store(store_target) as s:
        assert {r["status"] for r in job_rows(s)} == {"failed"}
        assert "NaN" in job_rows(s)[0]["last_error"]
        assert s.counts()["measurements"] == 0


class NoisySession(NullSession):
    """Its measurement of one key never settles (the agent's noise policy marked it noisy)."""

    def measure_job(self, job):
        record = super().measure_job(job)
        return {**record, "noisy": True, "robust_cv": 0.12} if job.key == "key-001" else record


def test_a_noisy_measurement_is_not_a_done_job(store_target):
    """It was: 96 jobs 'done' while 21 never entered the table. Now the attempt fails, is measured again while
    attempts remain, and the job ends failed; the noisy rows stay in the store for the record."""
    report = run_one_device(store_target, NoisySession, 4, max_attempts=3)
    assert report.devices[sim("a")].done == 3 and report.devices[sim("a")].failed_attempts == 3
    with open_store(store_target) as s:
        (d,) = farm_status(s)["devices"]
        assert (d["done"], d["failed"]) == (3, 1) and d["failed_jobs"][0]["key"] == "key-001"
        assert "too noisy for the table (spread 12.0%)" in d["failed_jobs"][0]["last_error"]
        rows = s.history(s.latest_fingerprint(sim("a"))["id"], SPACE)
        assert sorted((r["key"], bool(r["noisy"])) for r in rows if r["key"] == "key-001") == [("key-001", True)] * 3
        assert len(rows) == 6 == s.counts()["measurements"]


@pytest.mark.postgres
def test_worker_survives_dropped_connections(pg_server, pg_url):
    """The server drops every worker connection mid-table: the worker reconnects and finishes, nothing twice."""
    import psycopg

    with open_store(pg_url) as s:
        register_sim(s, sim("a"))
        enqueue(s, sim("a"), SPACE, entries(30))
    settings = WorkerSettings((sim("a"),), lease_s=2, poll_s=0.05, exit_when_idle=True)
    worker = Worker(pg_url, settings, lambda d: NullSession(d, min_duration_s=0.03))
    t = threading.Thread(target=worker.run)
    t.start()
    try:
        with open_store(pg_url) as watcher:  # closed before the drop: only the worker's connections are counted
            deadline = time.time() + 60
            while time.time() < deadline:
                if len(watcher.jobs(status="done")) >= 5:
                    break
                time.sleep(0.02)
        with psycopg.connect(pg_url, autocommit=True) as admin:  # SQL on purpose: the server drops connections
            dropped = admin.execute("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                                    "application_name = 'ofa-bench' AND pid <> pg_backend_pid()").fetchone()[0]
        t.join(120)
    finally:
        worker.stop()
        t.join()
    assert dropped >= 2  # the device thread's and the heartbeat's connections
    with open_store(pg_url) as s:
        fp = s.latest_fingerprint(sim("a"))["id"]
        keys = [h["key"] for h in s.history(fp, SPACE)]
        assert sorted(keys) == [k for _, k in entries(30)]
        assert farm_status(s)["totals"] == {"queued": 0, "running": 0, "done": 30, "failed": 0}
        assert all(r["status"] == "done" for r in s.runs())


def test_heartbeat_holds_lease_through_long_measurement(store_target):
    """A measurement longer than the lease keeps its job: the heartbeat thread renews it."""
    with open_store(store_target) as s:
        register_sim(s, sim("a"))
        enqueue(s, sim("a"), SPACE, entries(1))
    settings = WorkerSettings((sim("a"),), lease_s=0.8, poll_s=0.02, exit_when_idle=True)
    worker = Worker(store_target, settings, lambda d: NullSession(d, min_duration_s=2.0))
    t = threading.Thread(target=worker.run)
    t.start()
    stolen = []
    with open_store(store_target) as s:
        deadline = time.time() + 20
        while not s.jobs(status="running") and time.time() < deadline:
            time.sleep(0.01)  # until the worker holds the job
        deadline = time.time() + 1.6
        while time.time() < deadline:  # a rival keeps trying to take the device's job
            job = claim(s, "rival", sim("a"), lease_s=30)
            if job is not None:
                stolen.append(job)
                break
            time.sleep(0.05)
    t.join(30)
    assert not stolen
    with open_store(store_target) as s:
        (row,) = job_rows(s)
        assert row["status"] == "done" and row["attempts"] == 1


def test_job_the_worker_lost_track_of_expires(store_target):
    """A job left 'running' under the worker's own name (claimed on a connection that then dropped) is not kept
    alive by the worker's heartbeat: its lease runs out, the device's claim requeues it, and the worker finishes."""
    name = "w-orphan"
    with open_store(store_target) as s:
        register_sim(s, sim("a"))
        enqueue(s, sim("a"), SPACE, entries(3))
        register_worker(s, name, os.getpid(), [sim("a")])
        orphan = claim(s, name, sim("a"), lease_s=0.6)
    settings = WorkerSettings((sim("a"),), lease_s=0.6, poll_s=0.02, exit_when_idle=True)
    worker = Worker(store_target, settings, NullSession, name=name)
    t = threading.Thread(target=worker.run)
    t.start()
    t.join(30)
    hung = t.is_alive()
    worker.stop()
    t.join()
    assert not hung, "the heartbeat kept renewing a job no device thread was working on"
    with open_store(store_target) as s:
        rows = {r["id"]: r for r in job_rows(s)}
        assert [r["status"] for r in rows.values()] == ["done"] * 3
        assert rows[orphan.id]["attempts"] == 2


@pytest.mark.postgres
def test_statement_timeout_bounds_queries_and_lock_waits(pg_url):
    """A worker's connections cancel a statement (a lock wait included) that runs past their timeout."""
    with open_store(pg_url) as holder, open_store(pg_url, statement_timeout_s=0.5) as s:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="timeout"):
            s.query("SELECT pg_sleep(10)")  # SQL on purpose: a statement slower than the server's time limit
        with holder.transaction():
            holder.lock_name("device:x")
            with pytest.raises(StoreError, match="timeout"):
                with s.transaction():
                    s.lock_name("device:x")
        assert time.monotonic() - t0 < 5
        assert s.counts()["jobs"] == 0  # the connection is still usable


def test_worker_without_devices_or_unreachable_device(tmp_path):
    with pytest.raises(FarmError):
        Worker(str(tmp_path / "s.sqlite"), WorkerSettings(()), NullSession)

    def unreachable(device):
        raise ConnectionError(f"{device}: no route to host")

    open_store(tmp_path / "s.sqlite").close()  # a worker serves an existing store
    with pytest.raises(FarmError, match="no route to host"):
        Worker(str(tmp_path / "s.sqlite"), WorkerSettings(("phone",), poll_s=0.01, exit_when_idle=True),
               unreachable).run()


def test_agent_session_measures_real_entries(tmp_path, monkeypatch):
    """The real path: export the entry, measure it through agents.connect on this host (null runtime)."""
    devices_dir = Path(os.environ["OFA_BENCH_DEVICES"])
    devices_dir.mkdir(parents=True, exist_ok=True)
    (devices_dir / "sim-null-local.toml").write_text(
        'name = "sim-null-local"\nkind = "local"\ndescription = "simulated: this host, null runtime"\n'
        'runtime = "null"\nthreads = 1\nwarmup_runs = 1\nwarmup_s = 0.0\nmin_runs = 5\nmin_duration_s = 0.0\n'
        'max_remeasure = 0\nsimulated = true\n')
    target = str(tmp_path / "s.sqlite")
    with open_store(target) as s:
        doc = submit(s, ["sim-null-local"], SPACE, [128])
    settings = WorkerSettings(("sim-null-local",), lease_s=30, poll_s=0.02, max_jobs=2)
    report = Worker(target, settings, AgentSession).run()
    assert report.devices["sim-null-local"].done == 2, report.to_json()
    with open_store(target) as s:
        fp = s.latest_fingerprint("sim-null-local")
        assert fp["fingerprint"]["runtime"] == "null"
        hist = s.history(fp["id"], SPACE)
        assert [h["resolution"] for h in hist] == [128, 128] and all(h["n"] >= 5 for h in hist)
        assert farm_status(s)["totals"]["queued"] == doc["queued"] - 2
        # measured as profile measures: beside the reference block, whose timings are stored too
        assert all(h["env"]["protocol"] == "reference/1" and h["env"]["reference_ms"] for h in hist)
        assert len(s.history(fp["id"], SPACE, kind="reference")) >= 2


# -------------------------------------------------------------------- real processes
def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _worker_proc(target: str, devices: list[str], *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "bench.cli", "farm", "worker", "--devices", ",".join(devices), "--store", target,
            "--measurer", "null", "--json", *extra]
    return subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_worker_job_rerun_after_lease(store_target):
    """SIGKILL a worker mid-table; a second worker finishes it: complete, no duplicates, nothing lost."""
    dev = sim("a")
    with open_store(store_target) as s:
        register_sim(s, dev)
        doc = submit(s, [dev], SPACE, [160])
    total = doc["queued"]
    with open_store(store_target) as s:
        fp = s.latest_fingerprint(dev)["id"]
        for _attempt in range(3):  # the kill may land between two jobs (rarely): then kill another worker
            first = _worker_proc(store_target, [dev], "--lease-s", "1.5", "--poll-s", "0.05",
                                 "--null-min-duration-s", "0.2")
            deadline = time.time() + 60
            done0 = len(s.jobs(status="done"))
            while time.time() < deadline:
                done = len(s.jobs(status="done"))
                running = len(s.jobs(status="running"))
                if done >= done0 + 5 and running == 1:
                    break
                time.sleep(0.01)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            assert first.returncode == -signal.SIGKILL
            killed = s.jobs(status="running")
            if killed:
                break
        before = {h["uuid"] for h in s.history(fp, SPACE)}
        assert 5 <= len(before) < total and len(killed) == 1, (len(before), killed)
    t_restart = time.time()
    second = _worker_proc(store_target, [dev], "--lease-s", "5", "--poll-s", "0.05", "--exit-when-idle")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    report = json.loads(out)
    with open_store(store_target) as s:
        hist = s.history(fp, SPACE)
        keys = [h["key"] for h in hist]
        assert len(keys) == total == len(set(keys))                 # complete, nothing twice
        assert before <= {h["uuid"] for h in hist}                   # nothing the first worker wrote is lost
        (rerun,) = [j for j in s.jobs(dev) if j["id"] == killed[0]["id"]]
        assert rerun["status"] == "done" and rerun["attempts"] == 2 and rerun["worker"] == report["worker"]
        assert farm_status(s)["totals"] == {"queued": 0, "running": 0, "done": total, "failed": 0}
        # its lease had to run out (no heartbeat renewed it) before it was measured again
        (redone,) = [h["measured_at"] for h in hist if h["uuid"] == rerun["measurement_uuid"]]
        assert redone >= max(t_restart, float(killed[0]["lease_until"]))


def test_concurrent_workers_and_submits(store_target):
    """Three worker processes on three devices and two submit processes racing: every table once."""
    devs = [sim("a"), sim("b"), sim("c")]
    with open_store(store_target) as s:
        register_sim(s, *devs)
        from bench.table import candidates
        from ofa_core.space import SearchSpace

        per_device = len(candidates(SearchSpace.get(SPACE), [160, 164]))
    workers = [_worker_proc(store_target, [d], "--lease-s", "10", "--poll-s", "0.05", "--max-jobs",
                            str(per_device)) for d in devs]
    time.sleep(0.5)
    submit_argv = [sys.executable, "-m", "bench.cli", "farm", "submit", *devs, "--space", SPACE,
                   "--resolutions", "160,164", "--store", store_target, "--json"]
    submits = [subprocess.Popen(submit_argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    docs = []
    for p in submits:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    for p in workers:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    queued = sum(d["queued"] for d in docs)
    assert queued == 3 * per_device  # between them, the two submits queued each entry exactly once
    with open_store(store_target) as s:
        for d in devs:
            fp = s.latest_fingerprint(d)["id"]
            keys = [(h["resolution"], h["key"]) for h in s.history(fp, SPACE)]
            assert len(keys) == per_device == len(set(keys))
        assert farm_status(s)["totals"]["done"] == 3 * per_device


# -------------------------------------------------------------------- store copy
def _fill(store) -> None:
    fps = register_sim(store, sim("a"), sim("b"))
    run = store.start_run(sim("a"), fps[sim("a")], SPACE, "profile", {"threads": 1}, {"note": "é ünïcode"})
    store.add_measurements(run, [{**null_record(), "resolution": 160, "key": f"k{i}", "normalised_ms": 0.5 * i}
                                 for i in range(30)])
    store.finish_run(run, "done")
    store.start_run(sim("b"), fps[sim("b")], SPACE, "profile", {}, {})  # still running
    enqueue(store, sim("a"), SPACE, entries(5))
    enqueue(store, sim("b"), SPACE, entries(3), max_attempts=1)
    register_worker(store, "w-x", 1234, [sim("a")])
    job = claim(store, "w-x", sim("a"), lease_s=60)
    complete(store, job, "w-x", run, null_record())
    claim(store, "w-x", sim("a"), lease_s=60)
    job = claim(store, "w-x", sim("b"), lease_s=60)
    fail(store, job, "w-x", "boom")


def _other(pg_server, tmp_path, kind: str, tag: str) -> str:
    return pg_server.create_db() if kind == "postgresql" else str(tmp_path / f"{tag}.sqlite")


@pytest.mark.postgres
@pytest.mark.parametrize("first", ["sqlite", "postgresql"])
def test_store_copy_round_trip(first, pg_server, tmp_path):
    second = "postgresql" if first == "sqlite" else "sqlite"
    a_target, b_target, c_target = (_other(pg_server, tmp_path, first, "a"), _other(pg_server, tmp_path, second, "b"),
                                    _other(pg_server, tmp_path, first, "c"))
    with open_store(a_target) as a:
        _fill(a)
        rows_a = portable_rows(a)
    assert len(rows_a["measurements"]) == 31 and len(rows_a["jobs"]) == 8
    assert main_json(["store", "copy", a_target, b_target, "--json"])["tables"]["measurements"]["copied"] == 31
    with open_store(b_target) as b, open_store(c_target) as c:
        assert portable_rows(b) == rows_a
        copy_store(b, c)
        assert portable_rows(c) == rows_a
        again = copy_store(b, c)  # idempotent
        assert all(r["copied"] == 0 and r["updated"] == 0 for r in again.values()), again
        assert portable_rows(c) == rows_a
        # the copy is a working store: its queue carries on where the original stopped
        fp = c.latest_fingerprint(sim("a"))["id"]
        assert len(c.measured_keys(fp, SPACE)) == 31
        assert claim(c, "w-y", sim("a"), lease_s=60) is None  # the copied running job still holds the device
    # new rows on the source travel on the next copy, old ones are not duplicated
    with open_store(a_target) as a:
        run = a.start_run(sim("a"), a.latest_fingerprint(sim("a"))["id"], SPACE, "nightly", {}, {})
        a.add_measurements(run, [{**null_record(), "resolution": 164, "key": "new"}])
        with open_store(b_target) as b:
            rep = copy_store(a, b)
            assert rep["measurements"] == {"copied": 1, "present": 31, "updated": 0}
            assert portable_rows(b) == portable_rows(a)


def test_store_copy_same_store_refused(tmp_path):
    target = str(tmp_path / "s.sqlite")
    with open_store(target) as a, open_store(target) as b:
        with pytest.raises(StoreError, match="same store"):
            copy_store(a, b)


# -------------------------------------------------------------------- CLI
def main_json(argv: list[str]) -> dict:
    """Run the CLI in a subprocess-free way and parse its one JSON document."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(argv)
    assert rc == 0, (argv, rc)
    return json.loads(buf.getvalue())


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_submit_status_migrate(store_target, capsys):
    with open_store(store_target) as s:
        register_sim(s, sim("a"))
    rc, out, err = run_cli(["farm", "submit", sim("a"), "--space", SPACE, "--resolutions", "160",
                            "--store", store_target, "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["devices"][0]["queued"] == doc["entries"] > 0
    rc, out, err = run_cli(["farm", "status", "--store", store_target, "--json"], capsys)
    assert rc == 0
    st = json.loads(out)
    assert st["devices"][0]["device"] == sim("a") and st["devices"][0]["queued"] == doc["entries"]
    rc, out, err = run_cli(["store", "migrate", "--store", store_target, "--json"], capsys)
    assert rc == 0 and json.loads(out)["to_version"] == LATEST_VERSION and json.loads(out)["applied"] == []
    rc, out, err = run_cli(["farm", "submit", "no-such-phone", "--space", SPACE, "--store", store_target, "--json"],
                           capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "unknown device 'no-such-phone'" in err


def test_cli_newer_schema_refused_nothing_written(store_target, capsys):
    with open_store(store_target) as s:
        register_sim(s, sim("a"))
        with s.transaction():  # SQL on purpose: a store written by a newer ofa-bench
            s.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, 'future', 0)",
                      (LATEST_VERSION + 1,))
    for argv in (["farm", "submit", sim("a"), "--resolutions", "160"], ["farm", "status"], ["store", "migrate"],
                 ["farm", "worker", "--devices", sim("a"), "--measurer", "null", "--exit-when-idle"]):
        rc, out, err = run_cli([*argv, "--store", store_target], capsys)
        assert rc == 2 and err.startswith("ofa-bench: error: ") and "newer" in err and err.count("\n") == 1, argv
    # nothing was written (SQL on purpose: the store API refuses to open a newer store)
    if store_target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store_target) as conn:
            assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
            assert conn.execute("SELECT COUNT(*) FROM workers").fetchone()[0] == 0
    else:
        import sqlite3

        with sqlite3.connect(store_target) as conn:
            assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
            assert conn.execute("SELECT COUNT(*) FROM workers").fetchone()[0] == 0


@pytest.mark.postgres
def test_cli_bad_databases(pg_server, pg_url, capsys, tmp_path):
    db = pg_url.rsplit("/", 1)[1]
    cases = [
        (["farm", "status", "--store", pg_server.url(db, PASSWORD_USER, "wrong")], "password authentication"),
        (["farm", "submit", "local-cpu", "--store", f"postgresql://postgres@127.0.0.1:{free_port()}/x"],
         "cannot connect"),
        (["store", "copy", str(tmp_path / "a.sqlite"), pg_server.url(db, PASSWORD_USER, "wrong")],
         "password authentication"),
    ]
    open_store(tmp_path / "a.sqlite").close()  # the copy's source exists: the destination is what fails
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database")
    cases.append((["farm", "status", "--store", str(notes)], "not an SQLite database"))
    for argv, expect in cases:
        t0 = time.monotonic()
        rc, out, err = run_cli(argv, capsys)
        assert rc == 2 and out == "" and expect in err and err.count("\n") == 1, (argv, err)
        assert time.monotonic() - t0 < 15
    assert notes.read_text() == "not a database"
