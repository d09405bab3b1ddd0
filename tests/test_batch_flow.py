"""Batch size carried through the rest of the tool (#19): `devices add --provider/--batch`, `nightly` refreshing
each batch size's table, farm jobs measured at their batch size, few-shot transfer between tables of the same
batch size, and `lut export|import --batch`. The small space at one resolution on `null`-runtime devices."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.farm import AgentSession, NullSession, Worker, WorkerSettings, enqueue, submit
from bench.store import open_store
from bench.table import candidates, load_device_table, table_from_store
from ofa_core.space import SearchSpace
from _cli import run_cli as _cli, one_error as _one_error
try:  # one module identity, so one PostgreSQL server per session (as test_farm and test_store import it)
    from tests._fixtures_pg import pg_server, pg_url  # noqa: F401  (a fresh database per test)
except ImportError:
    from _fixtures_pg import pg_server, pg_url  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.get("ofa-mbv3-fmnist")
RES = 24
KEYS = [(e.resolution, e.key) for e in candidates(SPACE, [RES])]


# ---- devices add ----------------------------------------------------------------------------------------------
@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OFA_BENCH_DEVICES", str(tmp_path / "devs"))
    return tmp_path / "devs"


def test_devices_add_writes_provider_and_batch(user_dir, capsys):
    from devices import get_device

    rc, out, err = _cli(capsys, "devices", "add", "gpu-box", "--kind", "local", "--runtime", "onnxruntime",
                        "--provider", "cuda", "--batch", "1,16,64", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["profile"]["provider"] == "cuda" and doc["profile"]["batch"] == [1, 16, 64]
    text = (user_dir / "gpu-box.toml").read_text()
    assert 'provider = "cuda"' in text and "batch = [1, 16, 64]" in text
    p = get_device("gpu-box")
    assert (p.provider, p.batch) == ("cuda", (1, 16, 64))
    # left out: the CPU provider and batch 1, which the file does not even spell out
    assert _cli(capsys, "devices", "add", "plain", "--kind", "local")[0] == 0
    assert (get_device("plain").provider, get_device("plain").batch) == ("cpu", (1,))
    assert "batch" not in (user_dir / "plain.toml").read_text()


@pytest.mark.parametrize("extra,needle", [
    (["--provider", "cuda", "--runtime", "litert"], "onnxruntime execution provider"),
    (["--provider", "rocm"], "unknown provider"),
    (["--batch", "0"], "--batch"),
    (["--batch", "1,x"], "--batch"),
])
def test_devices_add_bad_provider_or_batch_is_one_line(user_dir, capsys, extra, needle):
    rc, _, err = _cli(capsys, "devices", "add", "bad-dev", "--kind", "local", *extra)
    _one_error(rc, err, needle)
    assert not (user_dir / "bad-dev.toml").exists()


# ---- farm -------------------------------------------------------------------------------------------------------
def test_jobs_of_one_entry_at_two_batch_sizes_are_both_active(tmp_path):
    with open_store(tmp_path / "s.sqlite") as s:
        assert enqueue(s, "dev", SPACE, KEYS[:3]).queued == 3
        assert enqueue(s, "dev", SPACE, KEYS[:3], batch=2).queued == 3   # the same entries, another table
        again = enqueue(s, "dev", SPACE, KEYS[:3], batch=2)
        assert again.queued == 0 and again.already_active == 3
        rows = s.query("SELECT batch, COUNT(*) AS n FROM jobs GROUP BY batch ORDER BY batch")
        assert [(r["batch"], r["n"]) for r in rows] == [(1, 3), (2, 3)]


def test_farm_job_of_batch_2_is_measured_and_stored_at_batch_2(tmp_path):
    target = str(tmp_path / "s.sqlite")
    dev = "sim-null-batch"
    with open_store(target) as s:
        fp = s.register_fingerprint(dev, NullSession(dev).fingerprint())
        doc = submit(s, [dev], SPACE.name, [RES], batches=[2])
        assert doc["devices"][0]["batches"] == [{"batch": 2, "measured": 0, "queued": len(KEYS),
                                                 "already_queued": 0}]
    settings = WorkerSettings((dev,), lease_s=5, poll_s=0.01, exit_when_idle=True)
    report = Worker(target, settings, lambda d: NullSession(d)).run()
    assert report.devices[dev].done == len(KEYS)
    with open_store(target) as s:
        assert s.batches(fp, SPACE.name) == [2]
        assert s.measured_keys(fp, SPACE.name, batch=2) == set(KEYS)
        assert s.measured_keys(fp, SPACE.name, batch=1) == set()
        run = s.run(s.latest_measurements(fp, SPACE.name, batch=2)[0]["run_id"])
        assert run["kind"] == "farm" and run["settings"]["batch"] == 2
        # batch 2 is complete now: a submit of both batch sizes queues only the batch-1 table
        doc = submit(s, [dev], SPACE.name, [RES], batches=[1, 2])
        (d,) = doc["devices"]
        assert [(b["batch"], b["measured"], b["queued"]) for b in d["batches"]] == [(1, 0, len(KEYS)),
                                                                                     (2, len(KEYS), 0)]
        assert (d["queued"], d["measured"]) == (len(KEYS), len(KEYS))


def test_agent_session_exports_and_times_the_batch(tmp_path, write_null_device, monkeypatch):
    """The real path: the worker exports the entry taking 2 images and times it beside a reference of 2."""
    import onnx

    import bench.export

    real, exported = bench.export.export_entry, []

    def spy(*args, **kwargs):
        path = real(*args, **kwargs)
        exported.append((kwargs.get("batch"), path))
        return path

    monkeypatch.setattr(bench.export, "export_entry", spy)
    dev = write_null_device("null-farm-batch", min_duration_s=0.0)
    target = str(tmp_path / "s.sqlite")
    with open_store(target) as s:
        submit(s, [dev], SPACE.name, [RES], batches=[2])
    settings = WorkerSettings((dev,), lease_s=30, poll_s=0.02, max_jobs=2)
    report = Worker(target, settings, AgentSession).run()
    assert report.devices[dev].done == 2, report.to_json()
    with open_store(target) as s:
        fp = s.latest_fingerprint(dev)["id"]
        rows = s.history(fp, SPACE.name, batch=2)
        assert len(rows) == 2 and all(r["batch"] == 2 and r["env"]["reference_ms"] for r in rows)
        assert s.history(fp, SPACE.name) == []
        assert s.history(fp, SPACE.name, kind="reference", batch=2)
    assert exported and all(b == 2 for b, _ in exported)
    for _, path in exported:
        assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_farm_submit_cli_batch(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    rc, out, err = _cli(capsys, "farm", "submit", "local-cpu", "--space", SPACE.name, "--resolutions", RES,
                        "--batch", "1,2", "--store", store, "--json")
    assert rc == 0, err
    (d,) = json.loads(out)["devices"]
    assert [b["batch"] for b in d["batches"]] == [1, 2] and d["queued"] == 2 * len(KEYS)
    rc, _, err = _cli(capsys, "farm", "submit", "local-cpu", "--space", SPACE.name, "--batch", "0",
                      "--store", store)
    _one_error(rc, err, "--batch")


# ---- nightly and lut on a device with tables of batch sizes 1 and 2 ---------------------------------------------
def _seed_table(store, device: str, fp_id: str, batch: int, scale: float) -> None:
    """A complete table of batch size `batch` for `device`, as a profile run writes it (synthetic values, each
    timed beside a reference of 0.1 ms)."""
    rng = np.random.default_rng(batch)
    values = scale * rng.uniform(0.01, 0.5, len(KEYS))
    with store.running(device, fp_id, SPACE.name, "profile", {"batch": batch}, {}) as run_id:
        store.add_measurements(run_id, [{"resolution": r, "key": k, "kind": "block", "n": 5, "latency_ms": float(v),
                                         "normalised_ms": float(v), "samples_ms": [float(v)] * 5, "batch": batch,
                                         "env": {"reference_ms": 0.1, "protocol": "reference/1"}}
                                        for (r, k), v in zip(KEYS, values)])


@pytest.fixture(scope="module")
def two_tables(tmp_path_factory, write_null_device):
    """A null-runtime device whose profile lists batch sizes 1 and 2, with a table of each in one store (under
    the fingerprint its runner reports, so nightly goes on with them); the values are synthetic, so only the
    sentinels nightly re-measures are exported and timed."""
    from agents import connect
    from bench.measure import MeasureSettings, agent_profile
    from devices import get_device

    write_null_device("null-flow", min_duration_s=0.01, extra="batch = [1, 2]\n")
    store = tmp_path_factory.mktemp("flow") / "s.sqlite"
    with connect(agent_profile(get_device("null-flow"), MeasureSettings())) as agent:
        fingerprint = agent.fingerprint()
    with open_store(store) as st:
        fp_id = st.register_fingerprint("null-flow", fingerprint)
        _seed_table(st, "null-flow", fp_id, 1, 1.0)
        _seed_table(st, "null-flow", fp_id, 2, 1.8)
    return store


def _nightly(store, *extra):
    r = subprocess.run([sys.executable, "-m", "bench.cli", "nightly", "null-flow", "--store", str(store), "--json",
                        "--no-rebuild", "--threshold", "10", *extra], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    (dev,) = json.loads(r.stdout)["devices"]
    return dev


def test_nightly_refreshes_each_batch_table(two_tables):
    from bench.nightly import sentinels

    dev = _nightly(two_tables)
    assert dev["batches"] == [1, 2]
    assert [(s["space"], s["batch"]) for s in dev["spaces"]] == [(SPACE.name, 1), (SPACE.name, 2)]
    watched = sentinels(SPACE, [RES])
    assert all(s["sentinels"] == len(watched) for s in dev["spaces"])
    with open_store(two_tables) as st:
        fp = st.latest_fingerprint("null-flow")["id"]
        counts = {b: len(st.history(fp, SPACE.name, key=watched[0].key, resolution=RES, batch=b)) for b in (1, 2)}
        assert counts == {1: 2, 2: 2}  # the profile's and the nightly's, in each table
        runs = [r for r in st.runs("null-flow") if r["kind"] == "nightly"]
        assert sorted(r["settings"]["batch"] for r in runs) == [1, 2]
    # --batch picks the tables: only batch 2 this time
    dev = _nightly(two_tables, "--batch", "2")
    assert [s["batch"] for s in dev["spaces"]] == [2]
    with open_store(two_tables) as st:
        fp = st.latest_fingerprint("null-flow")["id"]
        assert len(st.history(fp, SPACE.name, key=watched[0].key, resolution=RES, batch=2)) == 3
        assert len(st.history(fp, SPACE.name, key=watched[0].key, resolution=RES, batch=1)) == 2


def test_nightly_bad_batch_is_one_line(capsys, tmp_path):
    open_store(tmp_path / "s.sqlite").close()
    rc, _, err = _cli(capsys, "nightly", "--store", tmp_path / "s.sqlite", "--batch", "-1")
    _one_error(rc, err, "--batch")


def test_lut_export_batch_2_and_round_trip(two_tables, tmp_path, capsys):
    out = tmp_path / "t2.csv"
    rc, doc, err = _cli(capsys, "lut", "export", "null-flow", "--format", "csv", "--out", out, "--batch", 2,
                        "--store", two_tables, "--json")
    assert rc == 0, err
    assert json.loads(doc)["batch"] == 2
    import pandas as pd

    frame = pd.read_csv(out)
    assert set(frame["batch"]) == {2}
    two = load_device_table("null-flow", SPACE, str(two_tables), batch=2)
    one = load_device_table("null-flow", SPACE, str(two_tables), batch=1)
    got = {(int(r), k): v for r, k, v in zip(frame["resolution"], frame["key"], frame["latency_ms"])}
    assert got == {k: st.latency_ms for k, st in two.entries.items()}
    assert got != {k: st.latency_ms for k, st in one.entries.items()}
    # import back: the file's batch column files it as the new device's table of batch 2
    store = tmp_path / "b.sqlite"
    rc, doc, err = _cli(capsys, "lut", "import", "copy", out, "--store", store, "--json")
    assert rc == 0 and json.loads(doc)["batch"] == 2, err
    back = load_device_table("copy", SPACE, str(store), batch=2)
    assert back.batch == 2 and set(back.entries) == set(two.entries)
    assert all(back.entries[k].value_ms == pytest.approx(st.value_ms, rel=1e-12) for k, st in two.entries.items())
    with open_store(store) as st:
        assert st.batches(st.latest_fingerprint("copy")["id"], SPACE.name) == [2]
    # a --batch that contradicts the file's column is refused; nothing written
    rc, _, err = _cli(capsys, "lut", "import", "other", out, "--batch", 4, "--store", store)
    _one_error(rc, err, "batch size 2")


def test_lut_yaml_import_and_export_at_a_batch(tmp_path, capsys):
    """Official YAML files have no place for the batch: `--batch` says it on import and picks it on export."""
    rng = np.random.default_rng(0)
    values = dict(zip(KEYS, rng.uniform(0.01, 0.5, len(KEYS))))
    folder = tmp_path / "yaml"
    folder.mkdir()
    import yaml

    (folder / f"{RES}_lookup_table.yaml").write_text(yaml.safe_dump(
        {k: {"mean": float(v), "std": 0.0, "count": 10} for (_, k), v in values.items()}))
    store = tmp_path / "s.sqlite"
    rc, doc, err = _cli(capsys, "lut", "import", "yb", folder, "--batch", 16, "--store", store, "--json")
    assert rc == 0 and json.loads(doc)["batch"] == 16, err
    rc, doc, err = _cli(capsys, "lut", "export", "yb", "--out", tmp_path / "o", "--batch", 16, "--store", store,
                        "--json")
    assert rc == 0 and json.loads(doc)["batch"] == 16, err
    back = yaml.safe_load((tmp_path / "o" / f"{RES}_lookup_table.yaml").read_text())
    assert {(RES, k): c["mean"] for k, c in back.items()} == pytest.approx(values)
    # the device has no table of batch 1
    rc, _, err = _cli(capsys, "lut", "export", "yb", "--out", tmp_path / "o1", "--batch", 1, "--store", store)
    _one_error(rc, err, "no latency table")


# ---- few-shot ---------------------------------------------------------------------------------------------------
def _csv(path: Path, values: dict) -> Path:
    import pandas as pd

    pd.DataFrame([{"resolution": r, "key": k, "mean_ms": v, "std_ms": 0.0, "count": 10}
                  for (r, k), v in values.items()]).to_csv(path, index=False, float_format="%.17g")
    return path


def test_few_shot_transfers_from_tables_of_the_same_batch(tmp_path):
    from bench.measure import ProfileError
    from bench.table import import_device_table
    from bench.transfer import check_few_shot, fill_by_transfer, plan_few_shot, transferred_entries

    rng = np.random.default_rng(1)
    base = dict(zip(KEYS, np.exp(rng.uniform(np.log(0.01), np.log(0.5), len(KEYS)))))
    target = str(tmp_path / "s.sqlite")
    # dev-a has a table of batch 1 only, dev-b one of batch 4 only
    import_device_table("dev-a", _csv(tmp_path / "a.csv", base), SPACE.name, target)
    import_device_table("dev-b", _csv(tmp_path / "b.csv", {k: 3.0 * v for k, v in base.items()}), SPACE.name,
                        target, batch=4)
    with pytest.raises(ProfileError, match="of batch 2"):
        check_few_shot(target, SPACE, [RES], ["new"], 8, print, batch=2)
    assert check_few_shot(target, SPACE, [RES], ["new"], 8, print, batch=4) == 8
    with open_store(target) as store:
        assert [s.device for s in plan_few_shot(store, SPACE, [RES], "new", set(), 8).sources] == ["dev-a"]
        plan = plan_few_shot(store, SPACE, [RES], "new", set(), 8, batch=4)
        assert [s.device for s in plan.sources] == ["dev-b"] and plan.batch == 4 and len(plan.measure) == 8
        fp = store.register_fingerprint("new", {"name": "new", "synthetic": True})
        with store.running("new", fp, SPACE.name, "profile", {}, {}) as run_id:  # the K entries, measured at 4
            store.add_measurements(run_id, [
                {"resolution": e.resolution, "key": e.key, "kind": "block", "n": 10, "samples_ms": [1.0] * 10,
                 "latency_ms": 6.0 * base[(e.resolution, e.key)], "env": {}, "batch": 4} for e in plan.measure])
        run_id = store.start_run("new", fp, SPACE.name, "profile", {"few_shot": 8, "batch": 4}, {})
        summary = fill_by_transfer(store, "new", SPACE, [RES], run_id, plan)
        store.finish_run(run_id, "done")
        assert summary["entries_transferred"] == len(KEYS) - 8 and summary["batch"] == 4
        assert store.latest_measurements(fp, SPACE.name, kind="transferred", batch=1) == []
        table = table_from_store(store, "new", SPACE, batch=4)
        assert set(table.entries) == set(KEYS) and len(table.transferred) == len(KEYS) - 8
        moved = [(e.resolution, e.key) for e in transferred_entries(store, fp, SPACE, batch=4)]
        assert len(moved) == len(KEYS) - 8 and transferred_entries(store, fp, SPACE) == []
        assert table.entries[moved[0]].value_ms == pytest.approx(6.0 * base[moved[0]], rel=0.05)


def test_nightly_measures_transferred_entries_of_a_batch_table(tmp_path, monkeypatch):
    """nightly's pass over the table of batch 4 measures that table's transferred entries first, and exports
    the reference taking 4 images."""
    from types import SimpleNamespace

    import bench.export
    from bench import nightly
    from bench.transfer import transferred_record

    with open_store(str(tmp_path / "s.sqlite")) as store:
        fp = store.register_fingerprint("dev", {"name": "dev"})
        with store.running("dev", fp, SPACE.name, "profile", {}, {}) as run_id:
            store.add_measurements(run_id, [{"resolution": r, "key": k, "kind": "block", "latency_ms": 1.0, "n": 5,
                                             "samples_ms": [1.0] * 5, "env": {}, "batch": 4} for r, k in KEYS[:10]])
            store.add_measurements(run_id, [transferred_record(key, 1.0, None, {}, 4) for key in KEYS[10:]])
        batches, seen = [], []
        monkeypatch.setattr(bench.export, "export_entry",
                            lambda *a, **k: batches.append(k.get("batch")) or Path("unused.onnx"))
        monkeypatch.setattr(nightly, "_measure_entries",
                            lambda agent, store, run_id, fp, sp, entries, *a: seen.extend(entries))
        prof = SimpleNamespace(name="dev", model_format="onnx", precision="fp32")
        rows = store.latest_measurements(fp, SPACE.name, batch=4)
        rep = nightly._check_space(None, store, prof, fp, SPACE, [RES], rows, nightly.NightlySettings(), 4)
        assert rep["batch"] == 4 and rep["transferred_measured"] == len(KEYS) - 10
        assert [(e.resolution, e.key) for e in seen[:len(KEYS) - 10]] == KEYS[10:]
        assert batches == [4]
        # the batch-1 pass of the same device has no transferred entry to measure
        rep = nightly._check_space(None, store, prof, fp, SPACE, [RES], [], nightly.NightlySettings())
        assert rep["batch"] == 1 and rep["transferred_measured"] == 0


@pytest.mark.postgres
def test_enqueue_nightly_queues_jobs_per_batch(pg_url):
    """The farm's nightly (a PostgreSQL store) queues each table's entries at its batch size."""
    from bench.nightly import NightlySettings, enqueue_nightly, sentinels

    with open_store(pg_url) as st:
        fp = st.register_fingerprint("farm-dev", {"name": "farm-dev"})
        for b in (1, 2):
            with st.running("farm-dev", fp, SPACE.name, "profile", {"batch": b}, {}) as run_id:
                st.add_measurements(run_id, [{"resolution": r, "key": k, "kind": "block", "latency_ms": 1.0,
                                              "n": 5, "samples_ms": [1.0] * 5, "batch": b} for r, k in KEYS])
    doc = enqueue_nightly(pg_url, ["farm-dev"], NightlySettings(batches=(1, 2)))
    (dev,) = doc["devices"]
    n = len(sentinels(SPACE, [RES]))
    assert dev["batches"] == [1, 2] and [(t["batch"], t["queued"]) for t in dev["tables"]] == [(1, n), (2, n)]
    with open_store(pg_url) as st:
        per_batch = Counter(j["batch"] for j in st.jobs())
    assert sorted(per_batch.items()) == [(1, n), (2, n)]
    # a farm device without a profile here: the batch sizes its tables have
    doc = enqueue_nightly(pg_url, ["farm-dev"], NightlySettings())
    assert doc["devices"][0]["batches"] == [1, 2] and doc["devices"][0]["queued"] == 0
