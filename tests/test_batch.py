"""Batch size as a table dimension: models exported taking B images, one table per batch size in one store,
commands picking a batch's table (`--batch`, else 1 or the only batch a device has), and on this CPU a batch of
16 taking longer than a batch of 1. The small space at one resolution on a `null`-runtime device keeps the
profiling fast; the models are really exported and the runner really runs."""
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from bench.table import LutError, candidates, device_batch, load_device_table
from ofa_core.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.get("ofa-mbv3-fmnist")
RES = 24


def _input_shape(path: Path) -> list[int]:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims]


def test_exports_take_the_batch_and_key_the_cache_by_it():
    from bench.export import export_entry, export_subnet

    entry = next(e for e in candidates(SPACE, [RES]) if e.kind == "mbconv")
    one, four = export_entry(SPACE, entry), export_entry(SPACE, entry, batch=4)
    assert one != four and _input_shape(one)[0] == 1 and _input_shape(four) == [4, *_input_shape(one)[1:]]
    assert export_entry(SPACE, entry, batch=4) == four  # served from the cache
    cfg = SPACE.smallest(RES)
    assert _input_shape(export_subnet(SPACE, cfg, batch=3)) == [3, SPACE.in_channels, RES, RES]


@pytest.fixture(scope="module")
def two_tables(tmp_path_factory, write_null_device):
    """`ofa-bench profile` of a device whose profile lists batch sizes 1 and 4: one store, two tables."""
    write_null_device("null-batch", min_duration_s=0.01, extra="batch = [1, 4]\n")
    store = tmp_path_factory.mktemp("batch") / "s.sqlite"
    r = subprocess.run([sys.executable, "-m", "bench.cli", "profile", "null-batch", "--space", SPACE.name,
                        "--resolutions", str(RES), "--calibration-subnets", "0", "--store", str(store), "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return store, json.loads(r.stdout)


def test_profile_makes_a_table_per_batch_and_keeps_them_apart(two_tables):
    from bench.store import open_store

    store, doc = two_tables
    n = len(candidates(SPACE, [RES]))
    assert [(d["batch"], d["entries_measured"], d["status"]) for d in doc["devices"]] == [(1, n, "done"),
                                                                                           (4, n, "done")]
    with open_store(store) as st:
        fp = st.latest_fingerprint("null-batch")["id"]
        assert st.batches(fp, SPACE.name) == [1, 4]
        rows = st.latest_measurements(fp, SPACE.name, batch=4)
        assert len(rows) == n and {r["batch"] for r in rows} == {4}
        assert all(r["run_id"] == doc["devices"][1]["run_id"] for r in rows)
        refs = st.history(fp, SPACE.name, kind="reference", batch=4)
        assert refs and all(r["run_id"] == doc["devices"][1]["run_id"] for r in refs)  # its own reference speed
    one = load_device_table("null-batch", SPACE, str(store))
    four = load_device_table("null-batch", SPACE, str(store), batch=4)
    assert (one.batch, four.batch) == (1, 4) and one.version != four.version and set(one.entries) == set(four.entries)
    with pytest.raises(LutError, match="batch 16"):
        load_device_table("null-batch", SPACE, str(store), batch=16)
    # profiling again measures nothing at either batch size
    r = subprocess.run([sys.executable, "-m", "bench.cli", "profile", "null-batch", "--space", SPACE.name,
                        "--resolutions", str(RES), "--calibration-subnets", "0", "--batch", "4,1",
                        "--store", str(store), "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [(d["batch"], d["entries_measured"], d["entries_reused"]) for d in json.loads(r.stdout)["devices"]] \
        == [(4, 0, n), (1, 0, n)]


def _predict(store, *extra):
    r = subprocess.run([sys.executable, "-m", "bench.cli", "predict", "--device", "null-batch", "--config",
                        "largest", "--store", str(store), "--json", *extra], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_predict_picks_the_batch_table(two_tables):
    store, _ = two_tables
    one, four, default = _predict(store, "--batch", "1"), _predict(store, "--batch", "4"), _predict(store)
    assert (one["batch"], four["batch"], default["batch"]) == (1, 4, 1)  # both held: 1 unless asked
    assert one["table_version"] != four["table_version"] and default["table_version"] == one["table_version"]
    r = subprocess.run([sys.executable, "-m", "bench.cli", "predict", "--device", "null-batch", "--batch", "16",
                        "--store", str(store)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "batch 16" in r.stderr.strip().splitlines()[-1]


def _records(batches: dict[int, list[str]]) -> list[dict]:
    return [dict(resolution=RES, key=k, kind="block", latency_ms=1.0, n=1, samples_ms=[1.0], batch=b)
            for b, keys in batches.items() for k in keys]


def test_default_batch_is_1_or_the_only_one(tmp_path):
    from bench.store import open_store

    store = str(tmp_path / "s.sqlite")
    with open_store(store) as st:
        for device, batches in (("only-16", {16: ["k"]}), ("both", {1: ["k"], 64: ["k"]}),
                                ("no-1", {16: ["k"], 64: ["k"]})):
            fp = st.register_fingerprint(device, {"device": device})
            st.add_measurements(st.start_run(device, fp, SPACE.name, "profile", {}, {}), _records(batches))
    assert device_batch("only-16", SPACE, None, store) == 16
    assert device_batch("both", SPACE, None, store) == 1
    assert device_batch("both", SPACE, 64, store) == 64
    assert device_batch("never-profiled", SPACE, None, store) == 1
    with pytest.raises(LutError, match="16, 64") as exc:
        device_batch("no-1", SPACE, None, store)
    assert "--batch" in str(exc.value)


def test_batch_16_takes_longer_than_batch_1_on_this_cpu(tmp_path):
    """Real onnxruntime timings on local-cpu: a few entries exported at batch 1 and 16, timed in one invocation."""
    from agents import connect
    from bench.export import export_entry
    from devices import get_device

    entries = [e for e in candidates(SPACE, [RES]) if e.kind in ("first_conv", "mbconv", "final_expand")][:4]
    paths = [export_entry(SPACE, e, batch=b) for e in entries for b in (1, 16)]
    profile = get_device("local-cpu").replace(workdir=str(tmp_path / "dev"), min_duration_s=0.1, warmup_s=0.05,
                                              min_runs=20)
    with connect(profile) as agent:
        got = agent.measure(paths, rounds=2)
    for i, e in enumerate(entries):
        one, sixteen = got[2 * i], got[2 * i + 1]
        assert one.env["inputs"][0]["shape"][0] == 1 and sixteen.env["inputs"][0]["shape"][0] == 16
        assert sixteen.median_ms > one.median_ms, (e.key, one.median_ms, sixteen.median_ms)
