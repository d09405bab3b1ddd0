"""Nightly: re-measures sentinels, keeps history, flags an injected step, exits non-zero on drift or when a
device is unreachable."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.nightly import sentinels
from ofa_core.space import SearchSpace
try:  # one module identity, so one PostgreSQL server per session (as test_farm and test_store import it)
    from tests._fixtures_pg import pg_server, pg_url  # noqa: F401  (a fresh database per test)
except ImportError:
    from _fixtures_pg import pg_server, pg_url  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.get("ofa-mbv3-fmnist")

PROFILES = {
    "null-nightly": """
name = "null-nightly"
kind = "local"
description = "simulated: null runtime, for tests"
runtime = "null"
threads = 1
warmup_runs = 1
warmup_s = 0.0
min_runs = 5
min_duration_s = 0.01
max_runs = 100
max_duration_s = 1.0
max_remeasure = 0
simulated = true
""",
    "gone-nightly": """
name = "gone-nightly"
kind = "ssh"
address = "nobody@127.0.0.1:1"
description = "an ssh device that is not there"
timeout_s = 5.0
""",
}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def devices():
    folder = Path(os.environ["OFA_BENCH_DEVICES"])
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in PROFILES.items():
        (folder / f"{name}.toml").write_text(text)


def test_sentinels_cover_each_resolution():
    s = sentinels(SPACE, [24, 28])
    assert {e.resolution for e in s} == {24, 28}
    assert {"first_conv", "first_block", "mbconv", "final_expand"} <= {e.kind for e in s}


def test_nightly_keeps_history_and_flags_injected_step(tmp_path, devices):
    from bench.store import open_store

    store = tmp_path / "s.sqlite"
    r = cli("profile", "null-nightly", "--space", SPACE.name, "--resolutions", "24", "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    r = cli("nightly", "null-nightly", "--store", store, "--json", "--no-rebuild", "--threshold", "10")
    assert r.returncode == 0, r.stderr  # a 1000% threshold: nothing counts as drift
    doc = json.loads(r.stdout)
    (dev,) = doc["devices"]
    assert dev["status"] in ("ok", "drifted") and dev["spaces"][0]["sentinels"] == len(sentinels(SPACE, [24]))
    watched = sentinels(SPACE, [24])[0]
    with open_store(store) as st:
        hist = st.history(st.latest_fingerprint("null-nightly")["id"], SPACE.name, key=watched.key, resolution=24)
        assert len(hist) == 2  # the profile's and the nightly's: history kept, nothing overwritten
        # inject a clear level change for that sentinel: ratio to the reference 1.0 x 8, then 2.0 x 8
        fp_id = st.latest_fingerprint("null-nightly")["id"]
        run = st.start_run("null-nightly", fp_id, SPACE.name, "nightly", {}, {"injected": True})
        now = time.time()
        recs = [{"resolution": 24, "key": watched.key, "kind": "block", "latency_ms": ratio * 0.5, "n": 10,
                 "samples_ms": [], "env": {"reference_ms": 0.5}, "measured_at": now + i}
                for i, ratio in enumerate([1.0] * 8 + [2.0] * 8)]
        st.add_measurements(run, recs)
        st.finish_run(run, "done")
    r = cli("nightly", "null-nightly", "--store", store, "--json", "--plots", tmp_path / "plots")
    assert r.returncode != 0 and "drifted beyond 5%: null-nightly" in r.stderr
    doc = json.loads(r.stdout)
    (dev,) = doc["devices"]
    assert dev["status"] == "drifted" and doc["drifted"] == ["null-nightly"]
    hit = [d for d in dev["drift"] if d["kind"] == "entry" and d["key"] == watched.key]
    assert hit and hit[0]["rel_change"] > 0.5
    assert dev["rebuilt"] and dev["rebuilt"][0]["resolutions"] == [24]
    assert doc["plots"] and all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in doc["plots"])


def test_nightly_unreachable_exits_nonzero(tmp_path, devices):
    from bench.store import open_store

    open_store(tmp_path / "s.sqlite").close()  # nightly maintains an existing store
    r = cli("nightly", "gone-nightly", "--store", tmp_path / "s.sqlite", "--json")
    assert r.returncode != 0 and "unreachable: gone-nightly" in r.stderr
    doc = json.loads(r.stdout)
    assert doc["unreachable"] == ["gone-nightly"] and doc["devices"][0]["status"] == "unreachable"
    assert doc["devices"][0]["batches"] == []  # every device report has the same keys


@pytest.mark.postgres
def test_nightly_with_postgres_enqueues_jobs(pg_url):
    from bench.nightly import NightlySettings, enqueue_nightly
    from bench.store import open_store

    with open_store(pg_url) as st:
        fp_id = st.register_fingerprint("farm-dev", {"model": "x"})
        run = st.start_run("farm-dev", fp_id, SPACE.name, "profile", {}, {})
        watch = sentinels(SPACE, [24])
        st.add_measurements(run, [{"resolution": 24, "key": e.key, "kind": "block", "latency_ms": 1.0, "n": 1,
                                   "samples_ms": [1.0]} for e in watch])
        st.finish_run(run, "done")
    doc = enqueue_nightly(pg_url, None, NightlySettings())
    assert doc["mode"] == "farm" and doc["devices"][0]["queued"] == len(watch)
    again = enqueue_nightly(pg_url, ["farm-dev"], NightlySettings())
    assert again["devices"][0]["queued"] == 0  # already queued: nothing doubled
    with open_store(pg_url) as st:
        assert len(st.jobs()) == len(watch)


def test_nightly_unknown_device_writes_nothing(tmp_path):
    r = cli("nightly", "no-such-device", "--store", tmp_path / "s.sqlite")
    assert r.returncode != 0 and "unknown device" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "s.sqlite").exists()
