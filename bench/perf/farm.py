"""`python -m bench.perf farm`: how fast the farm's queue turns over, and how a table's wall time scales with
devices on one host.

1. Queue throughput: W worker processes (`ofa-bench farm worker --measurer null`, a simulated in-process
   measurer timing an empty call) against a PostgreSQL server this benchmark starts (PostgreSQL's default,
   durable settings unless --fast-pg). Jobs are enqueued once every worker is polling; the rate is jobs
   claimed and completed per second from the enqueue commit to the last completion.
2. One table on 1, 2 and 4 loopback ADB devices (`python -m agents.sim.loopback_adbd`, simulated phones running
   the Python runner with onnxruntime on this host), all served by one worker process: wall time from the
   enqueue commit (table split evenly across the devices) to the last measurement. Models are exported
   before the clock starts, so the figure is measuring plus the farm's overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def _worker(url: str, devices: list[str], extra: list[str], env: dict) -> subprocess.Popen:
    argv = [sys.executable, "-m", "bench.cli", "farm", "worker", "--devices", ",".join(devices), "--store", url,
            "--json", *extra]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout_s: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: a process exited early: {p.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            tails = []
            for p in procs:
                p.kill()
                tails.append(" ".join(p.communicate()[1][-1500:].split()))
            raise RuntimeError(f"timed out waiting for {what}: {' | '.join(tails)}")
        time.sleep(0.05)


def _stat_cpu_s(pid: int, with_reaped_children: bool = False) -> float:
    """CPU seconds of a live process from /proc (plus its exited, reaped children if asked); 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _server_cpu_s(postmaster: int) -> float:
    """The PostgreSQL server's CPU so far: the postmaster, its live children, and the exited ones."""
    total = _stat_cpu_s(postmaster, with_reaped_children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:  # ppid
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def queue_throughput(server, workers: int, jobs_per_worker: int) -> dict:
    """Jobs claimed and completed per second with `workers` null-measurer worker processes."""
    from bench.farm import enqueue
    from bench.store import open_store

    url = server.create_db("farm_bench")
    devices = [f"sim-null-bench-{i}" for i in range(workers)]
    with open_store(url) as store:
        procs = [_worker(url, [d], ["--measurer", "null", "--poll-s", "0.02", "--lease-s", "30",
                                    "--max-jobs", str(jobs_per_worker)], _env()) for d in devices]
        try:
            _wait_for(lambda: store.query("SELECT COUNT(*) AS n FROM fingerprints")[0]["n"] == workers, 120,
                      "workers to start", procs)
            time.sleep(0.3)
            postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
            children0 = _children_cpu_s()
            workers0 = sum(_stat_cpu_s(p.pid) for p in procs)  # start-up and idle polling: not per-job cost
            server0 = _server_cpu_s(postmaster)
            with store.transaction():
                for d in devices:
                    enqueue(store, d, "ofa-mbv3-w1.0", [(224, f"bench-{i:05d}") for i in range(jobs_per_worker)],
                            in_transaction=True)
            t0 = time.time()
            outs = [p.communicate(timeout=600) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for p, (out, err) in zip(procs, outs):
            if p.returncode != 0:
                raise RuntimeError(f"worker failed: {err[-2000:]}")
        time.sleep(0.5)  # let the server reap the workers' backends
        client_cpu = _children_cpu_s() - children0 - workers0
        server_cpu = _server_cpu_s(postmaster) - server0
        total = workers * jobs_per_worker
        done = store.query("SELECT COUNT(*) AS n, MAX(updated_at) AS t FROM jobs WHERE status = 'done'")[0]
        n_meas = store.query("SELECT COUNT(*) AS n, COUNT(DISTINCT device || key) AS u FROM measurements")[0]
        wall = float(done["t"]) - t0
    return {"workers": workers, "jobs": total, "done": int(done["n"]), "measurements": int(n_meas["n"]),
            "distinct_entries": int(n_meas["u"]), "wall_s": round(wall, 3), "jobs_per_s": round(total / wall, 1),
            "client_cpu_ms_per_job": round(client_cpu / total * 1e3, 3),
            "server_cpu_ms_per_job": round(server_cpu / total * 1e3, 3),
            # what the CPU cost alone allows on this host's cores if nothing else ran
            "cpu_bound_jobs_per_s": round((os.cpu_count() or 1) / ((client_cpu + server_cpu) / total), 1)}


LOOPBACK_PROFILE = """name = "{name}"
kind = "adb"
description = "simulated: loopback ADB endpoint on 127.0.0.1:{port} (runs on this host), onnxruntime, 1 thread"
address = "127.0.0.1:{port}"
runtime = "onnxruntime"
threads = 1
warmup_runs = 5
warmup_s = 0.05
min_runs = 20
min_duration_s = {min_duration_s}
max_remeasure = 0
simulated = true
timeout_s = 60.0
"""


def loopback_table(server, n_devices: int, space_name: str, resolution: int, min_duration_s: float,
                   tmp: Path) -> dict:
    """Wall time of one table split across `n_devices` loopback ADB devices served by one worker process."""
    from agents.sim.loopback_adbd import spawn
    from bench.table import candidates
    from bench.export import export_entry
    from bench.farm import enqueue
    from bench.store import open_store
    from ofa_core.space import SearchSpace

    space = SearchSpace.get(space_name)
    table = candidates(space, [resolution])
    cache = tmp / "cache"
    os.environ["OFA_BENCH_CACHE"] = str(cache)
    for e in table:  # exported before the clock starts (the worker finds them in the cache)
        export_entry(space, e, fmt="onnx")
    devices_dir = tmp / f"devices-{n_devices}"
    devices_dir.mkdir(parents=True, exist_ok=True)
    adbds = []
    names = []
    try:
        for i in range(n_devices):
            adbd = spawn(tmp / f"adbd-{i + 10 * n_devices}", env=_env())
            adbds.append(adbd)
            port = adbd.port
            name = f"bench-loopback-{i}"
            names.append(name)
            (devices_dir / f"{name}.toml").write_text(LOOPBACK_PROFILE.format(name=name, port=port,
                                                                              min_duration_s=min_duration_s))
        url = server.create_db("farm_adb")
        env = _env(OFA_BENCH_DEVICES=str(devices_dir), OFA_BENCH_CACHE=str(cache))
        with open_store(url) as store:
            worker = _worker(url, names, ["--poll-s", "0.05", "--lease-s", "60"], env)
            try:
                _wait_for(lambda: store.query("SELECT COUNT(*) AS n FROM fingerprints")[0]["n"] == n_devices, 180,
                          "the worker to reach its devices", [worker])
                with store.transaction():
                    for i, name in enumerate(names):
                        enqueue(store, name, space.name, table[i::n_devices], in_transaction=True)
                t0 = time.time()
                _wait_for(lambda: store.query("SELECT COUNT(*) AS n FROM jobs WHERE status IN ('done', 'failed')"
                                              )[0]["n"] == len(table), 3600, "the table", [worker])
                stats = store.query("SELECT COUNT(*) AS n, MAX(updated_at) AS t FROM jobs WHERE status = 'done'")[0]
                failed = store.query("SELECT COUNT(*) AS n, MAX(last_error) AS e FROM jobs WHERE status = 'failed'")[0]
                noisy = store.query("SELECT COUNT(*) AS n FROM measurements WHERE noisy = 1")[0]["n"]
                wall = float(stats["t"]) - t0
            finally:
                worker.terminate()
                try:
                    worker.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()
        server.drop_db(url)
    finally:
        for adbd in adbds:
            adbd.stop()
    return {"devices": n_devices, "space": space.name, "resolution": resolution, "entries": len(table),
            "done": int(stats["n"]), "failed": int(failed["n"]), "last_error": failed["e"], "noisy": int(noisy), "wall_s": round(wall, 2),
            "s_per_entry": round(wall / len(table), 3)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf farm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--jobs-per-worker", type=int, default=500)
    parser.add_argument("--fast-pg", action="store_true", help="server with fsync off (not durable)")
    parser.add_argument("--adb-devices", default="1,2,4", help="device counts for the loopback table ('' skips)")
    parser.add_argument("--adb-space", default="ofa-mbv3-fmnist")
    parser.add_argument("--adb-resolution", type=int, default=28)
    parser.add_argument("--adb-min-duration-s", type=float, default=0.2, help="per-entry measuring time")
    parser.add_argument("--skip-queue", action="store_true", help="skip the queue-throughput part")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop the server and the processes

    from bench.store.pgserver import start_local_server

    doc: dict = {"host_cpus": os.cpu_count(), "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    with start_local_server(fast=args.fast_pg) as server, tempfile.TemporaryDirectory(prefix="ofa-farm-bench-") as tmp:
        doc["postgres"] = {"durable": not args.fast_pg}
        q = None if args.skip_queue else queue_throughput(server, args.workers, args.jobs_per_worker)
        doc["queue"] = q
        if q:
            print(f"queue: {q['workers']} workers, {q['jobs']} jobs (null measurer, PostgreSQL"
                  f"{'' if not args.fast_pg else ', fsync off'}): {q['jobs_per_s']} jobs/s "
                  f"({q['wall_s']} s; {q['done']} done, {q['distinct_entries']} distinct measurements); CPU per job "
                  f"{q['client_cpu_ms_per_job']} ms workers + {q['server_cpu_ms_per_job']} ms server "
                  f"(= {q['cpu_bound_jobs_per_s']} jobs/s on {os.cpu_count()} idle cores)", file=sys.stderr)
        counts = [int(c) for c in args.adb_devices.split(",") if c.strip()]
        doc["loopback_adb"] = []
        for n in counts:
            try:
                r = loopback_table(server, n, args.adb_space, args.adb_resolution, args.adb_min_duration_s,
                                   Path(tmp))
            except Exception as exc:  # report the part as pending rather than hide the queue figure
                r = {"devices": n, "error": " ".join(str(exc).split())[:500]}
            doc["loopback_adb"].append(r)
            if "error" in r:
                print(f"loopback adb, {n} device(s): failed: {r['error']}", file=sys.stderr)
            else:
                print(f"loopback adb, {n} device(s): one table ({r['entries']} entries of {r['space']} at "
                      f"{r['resolution']} px) in {r['wall_s']} s ({r['s_per_entry']} s/entry, {r['noisy']} noisy)",
                      file=sys.stderr)
    doc["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(doc, indent=2))
    return 0
