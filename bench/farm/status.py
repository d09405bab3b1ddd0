"""Who serves the farm and how its queue stands: the workers' registrations (name, host, devices, heartbeat)
and `farm_status`, the per-device summary that `ofa-bench farm status` prints.

A worker registers itself when it starts (`register_worker`), its heartbeat (`bench.farm.queue.renew`) keeps
its `last_heartbeat` fresh, and it marks itself stopped when it ends (`stop_worker`).
"""
from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Sequence

from bench.farm.queue import JOB_STATUSES
from bench.store import Store


def worker_name(pid: int) -> str:
    """A name unique across hosts and restarts: host, process id and a random suffix."""
    return f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:6]}"


def register_worker(store: Store, name: str, pid: int, devices: Sequence[str]) -> None:
    """Record (or revive) worker `name` as running on this host for `devices`."""
    now = time.time()
    with store.transaction():
        store.execute("INSERT INTO workers (name, host, pid, devices, started_at, last_heartbeat, status) "
                      "VALUES (?, ?, ?, ?, ?, ?, 'running') ON CONFLICT (name) DO UPDATE SET "
                      "last_heartbeat = excluded.last_heartbeat, status = 'running'",
                      (name, socket.gethostname(), int(pid), json.dumps(list(devices)), now, now))


def stop_worker(store: Store, name: str, status: str = "stopped") -> None:
    """Record that worker `name` ended (`status`: how)."""
    with store.transaction():
        store.execute("UPDATE workers SET status = ?, last_heartbeat = ? WHERE name = ?", (status, time.time(), name))


def farm_status(store: Store, now: float | None = None, stale_after_s: float = 120.0) -> dict:
    """Per device: job counts by status, last errors of failed jobs, and the workers serving it."""
    now = time.time() if now is None else now
    devices: dict[str, dict] = {}

    def dev(name: str) -> dict:
        return devices.setdefault(name, {"device": name, **{s: 0 for s in JOB_STATUSES}, "failed_jobs": [],
                                         "workers": []})

    for row in store.query("SELECT device, status, COUNT(*) AS n FROM jobs GROUP BY device, status"):
        dev(row["device"])[row["status"]] = int(row["n"])
    for row in store.query("SELECT device, space, resolution, key, attempts, last_error, batch FROM jobs "
                           "WHERE status = 'failed' ORDER BY updated_at DESC"):
        d = dev(row["device"])
        if len(d["failed_jobs"]) < 10:
            d["failed_jobs"].append({k: row[k] for k in ("space", "resolution", "key", "attempts", "last_error",
                                                         "batch")})
    workers = []
    for row in store.query("SELECT name, host, pid, devices, started_at, last_heartbeat, status FROM workers "
                           "ORDER BY name"):
        age = now - float(row["last_heartbeat"])
        state = row["status"]
        if state == "running" and age > stale_after_s:
            state = "stale"
        w = {"name": row["name"], "host": row["host"], "pid": int(row["pid"]), "devices": json.loads(row["devices"]),
             "status": state, "last_heartbeat": float(row["last_heartbeat"]), "heartbeat_age_s": round(age, 3)}
        workers.append(w)
        for d in w["devices"]:
            dev(d)["workers"].append({"name": w["name"], "status": state, "last_heartbeat": w["last_heartbeat"],
                                      "heartbeat_age_s": w["heartbeat_age_s"]})
    totals = {s: sum(d[s] for d in devices.values()) for s in JOB_STATUSES}
    return {"store": store.target, "devices": [devices[k] for k in sorted(devices)], "workers": workers,
            "totals": totals}
