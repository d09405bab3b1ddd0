"""Profiling: resume after SIGKILL leaves exactly the full set, concurrent profilers on one store, bad input.

A `null`-runtime device (runs nothing, so timings are the harness's own) and the small Fashion-MNIST space at
its smallest resolution keep these fast; the models are still really exported and the runner really runs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.table import candidates
from ofa_core.errors import OFABenchError
from ofa_core.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.get("ofa-mbv3-fmnist")
RES = 24
FULL = {(e.resolution, e.key) for e in candidates(SPACE, [RES])}



@pytest.fixture(scope="module")
def null_device(write_null_device):
    write_null_device("null-test", min_duration_s=0.02)
    # a second device with another fingerprint (two threads): devices with one fingerprint share one table
    write_null_device("null-test-2", min_duration_s=0.01, threads=2)
    # export every entry once for the module (the cache is shared through $OFA_BENCH_CACHE)
    from bench.export import export_entry
    from bench.profile import reference_entry

    for e in candidates(SPACE, [RES]) + [reference_entry(SPACE)]:
        export_entry(SPACE, e)
    return "null-test"


def profile_cmd(store, *extra):
    return [sys.executable, "-m", "bench.cli", "profile", "null-test", "--space", SPACE.name, "--resolutions",
            str(RES), "--store", str(store), "--json", *extra]


def block_measurements(store) -> list[dict]:
    """Every block measurement in the store, through the Store API (run by run)."""
    from bench.store import open_store

    st = open_store(str(store))
    try:
        return [m for run in st.runs() for m in st.measurements_of_run(run["id"]) if m["kind"] == "block"]
    finally:
        st.close()


def block_rows(store):
    return [(m["resolution"], m["key"], m["noisy"]) for m in block_measurements(store)]


def test_profile_then_resume_is_free(tmp_path, null_device):
    store = tmp_path / "s.sqlite"
    r = subprocess.run(profile_cmd(store), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["entries_total"] == len(FULL) == doc["entries_measured"] and doc["entries_reused"] == 0
    assert doc["simulated"] is True
    assert doc["subnets_measured"] == 12  # calibrated from the start
    # a subnet whose every pass stayed noisy (a busy moment) is not in the table: the next run measures it again
    settled = doc["calibration"]["n_subnets"]
    assert 9 <= settled <= 12
    rows = block_rows(store)
    assert {(r_, k) for r_, k, _ in rows} == FULL and len(rows) == len(FULL)
    r = subprocess.run(profile_cmd(store), cwd=REPO, capture_output=True, text=True, timeout=300)
    doc = json.loads(r.stdout)
    assert doc["entries_measured"] == 0 and doc["entries_reused"] == len(FULL)
    assert doc["subnets_measured"] == 12 - settled
    assert len(block_rows(store)) == len(FULL)
    # the profiled table feeds the predictor
    from bench.table import LatencyPredictor, load_device_table

    table = load_device_table("null-test", SPACE, str(store))
    assert set(table.entries) == FULL and table.nominal_ms is not None
    pred = LatencyPredictor.from_table(table, SPACE)
    assert pred.resolutions == [RES] and pred(SPACE.largest(RES))[0] > 0
    measured = {s for _, s in table.subnets}
    assert len(measured) >= 6 and {SPACE.smallest(RES).to_string(), SPACE.largest(RES).to_string()} & measured
    assert pred.calibration.n_subnets == len(measured) and not pred.calibration.is_identity


def test_resume_after_sigkill(tmp_path, null_device):
    store = tmp_path / "s.sqlite"
    proc = subprocess.Popen(profile_cmd(store, "--per-call", "6"), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if store.exists():
                try:
                    if len(block_rows(store)) >= 6:
                        break
                except OFABenchError:  # the store is still being created
                    pass
            assert proc.poll() is None, "profiler finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    partial = block_rows(store)
    assert 0 < len(partial) < len(FULL), "kill landed outside the measuring loop"
    assert len(partial) % 6 == 0  # only whole batches were committed
    r = subprocess.run(profile_cmd(store, "--per-call", "6"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["entries_reused"] == len(partial)
    assert doc["entries_measured"] == len(FULL) - len(partial)
    rows = block_rows(store)
    assert len(rows) == len(FULL) and {(r_, k) for r_, k, _ in rows} == FULL  # none lost, none duplicated


def test_two_concurrent_profilers_one_store(tmp_path, null_device):
    store = tmp_path / "s.sqlite"
    procs = [subprocess.Popen(profile_cmd(store, "--per-call", "8"), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    docs = [json.loads(o[0]) for o in outs]
    rows = block_rows(store)
    assert {(r_, k) for r_, k, _ in rows} == FULL and len(rows) == len(FULL)
    assert sum(d["entries_measured"] for d in docs) == len(FULL)


def test_several_devices_in_parallel(tmp_path, null_device):
    store = tmp_path / "s.sqlite"
    cmd = profile_cmd(store)
    cmd.insert(cmd.index("null-test") + 1, "null-test-2")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [d["device"] for d in doc["devices"]] == ["null-test", "null-test-2"]
    assert all(d["entries_measured"] == len(FULL) and d["status"] == "done" for d in doc["devices"])
    assert doc["entries_total"] == 2 * len(FULL)
    per_device: dict[str, int] = {}
    for m in block_measurements(store):
        per_device[m["device"]] = per_device.get(m["device"], 0) + 1
    assert per_device == {"null-test": len(FULL), "null-test-2": len(FULL)}


@pytest.mark.parametrize("args,needle", [
    (["profile", "no-such-device", "--space", "ofa-mbv3-fmnist"], "unknown device"),
    (["profile", "local-cpu", "--space", "no-such-space"], "unknown search space"),
    (["profile", "local-cpu", "--space", "ofa-mbv3-fmnist", "--resolutions", "13"], "not in space"),
])
def test_bad_input_one_line_nothing_written(tmp_path, args, needle):
    store = tmp_path / "s.sqlite"
    r = subprocess.run([sys.executable, "-m", "bench.cli", *args, "--store", str(store)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not store.exists()


def test_store_not_sqlite_untouched(tmp_path, null_device):
    store = tmp_path / "s.sqlite"
    store.write_bytes(b"not a database at all" * 64)
    before = store.read_bytes()
    r = subprocess.run(profile_cmd(store), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert store.read_bytes() == before


def test_a_table_never_mixes_raw_and_normalised_cells(tmp_path, null_device):
    """A cell timed without the reference block (an older farm worker) among normalised ones: the table is
    refused with the fix, and `profile --remeasure-raw` measures that entry again beside the reference."""
    from bench.table import LutError, load_device_table
    from bench.store import open_store

    store = tmp_path / "s.sqlite"
    r = subprocess.run(profile_cmd(store, "--calibration-subnets", "0"), cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    with open_store(store) as s:
        fp = s.latest_fingerprint("null-test")["id"]
        row = s.latest_measurements(fp, SPACE.name, kind="block")[0]
        run = s.start_run("null-test", fp, SPACE.name, "farm", {}, {})
        raw = {k: row[k] for k in ("resolution", "key", "kind", "latency_ms", "mean_ms", "std_ms", "n", "samples_ms")}
        s.add_measurements(run, [{**raw, "env": {"protocol": "raw/1"}, "noisy": False}])
        s.finish_run(run, "done")
    with pytest.raises(LutError, match=r"mix 1 cells timed without the reference .* --remeasure-raw"):
        load_device_table("null-test", SPACE, str(store))
    r = subprocess.run(profile_cmd(store, "--calibration-subnets", "0", "--remeasure-raw"), cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["entries_measured"] == 1
    table = load_device_table("null-test", SPACE, str(store))
    assert set(table.entries) == FULL


def test_calibration_configs_span_the_table():
    import numpy as np

    from bench.profile import calibration_configs

    sums = lambda cfgs: np.array([sum(c.d) + sum(c.ks) + sum(c.e) + c.r for c in cfgs], dtype=float)  # noqa: E731
    cfgs = calibration_configs(SPACE, [24, 36], sums, 12, np.random.default_rng(0))
    assert len(cfgs) == len(set(cfgs)) == 12
    assert cfgs[:4] == [SPACE.smallest(24), SPACE.largest(36), SPACE.smallest(36), SPACE.largest(24)]
    middle = sums(cfgs[4:])
    assert (np.diff(middle) >= 0).all() and sums([SPACE.smallest(24)])[0] < middle[0] < middle[-1] < sums([SPACE.largest(36)])[0]
    # between the ends, alternately many and few weights for the table sum: the per-weight cost is identifiable
    pool = SPACE.sample(np.random.default_rng(0), 512, [24, 36])
    band_of = np.searchsorted(np.sort(sums(pool)), middle, side="right")
    per_ms = np.asarray(SPACE.params(cfgs[4:]), dtype=float) / middle
    pool_per_ms = np.asarray(SPACE.params(pool), dtype=float) / sums(pool)
    typical = [np.median(pool_per_ms[np.argsort(sums(pool), kind="stable")[max(0, b - 64):b]]) for b in band_of]
    assert all((p > t) == (i % 2 == 0) for i, (p, t) in enumerate(zip(per_ms, typical)))
    assert calibration_configs(SPACE, [24], sums, 2, np.random.default_rng(0)) == [SPACE.smallest(24), SPACE.largest(24)]


def test_default_resolutions():
    from bench.profile import default_resolutions

    assert default_resolutions(SPACE) == list(SPACE.resolutions)
    assert default_resolutions(SearchSpace.get("ofa-mbv3-w1.0")) == [160, 192, 224]


def test_disturbed_reference_reruns_the_invocation():
    """A reference far off the recent ones means the invocation was hit by other work: it is run again and the
    attempt whose reference is closest is kept; a lasting change of speed is accepted after one retry."""
    from agents.measurement import Measurement
    from agents.runner import summarise
    from bench.profile import ReferenceWatch, measure_models

    class Scripted:
        def __init__(self, refs, model_ms):
            self.refs, self.model_ms, self.calls = list(refs), list(model_ms), 0

        def measure(self, paths, rounds=1):
            self.calls += 1
            out = []
            for i, p in enumerate(paths):
                ms = self.refs.pop(0) if i == 0 else self.model_ms.pop(0)
                samples = [ms] * 20
                out.append(Measurement.from_record({**summarise(samples), "samples_ms": samples}, str(p)))
            return out

    watch = ReferenceWatch(tolerance=0.02, max_tries=3)
    for ms in (1.0, 1.001, 0.999):
        watch.add(ms)
    assert not watch.disturbed(1.015) and watch.disturbed(1.1) and not watch.disturbed(0.9)
    # a slow stretch: 1.15 then 1.0 -> the second attempt (its model time 2.0) is kept
    agent = Scripted([1.15, 1.0], [2.3, 2.0])
    timed, refs = measure_models(agent, [Path("m.onnx")], Path("ref.onnx"), 1, 0.01, 0, watch)
    assert agent.calls == 2 and len(refs) == 2 and watch.redone == 1
    assert timed[0].ref_ms == 1.0 and timed[0].measurement.latency_ms == 2.0
    # slow for every attempt: three in all, the fastest kept
    agent = Scripted([1.081, 1.079, 1.085], [2.16, 2.15, 2.17])
    timed, _ = measure_models(agent, [Path("m.onnx")], Path("ref.onnx"), 1, 0.01, 0, watch)
    assert agent.calls == 3 and timed[0].ref_ms == 1.079 and timed[0].measurement.latency_ms == 2.15
    # the baseline is the fast mode even when half of the recent invocations were slow
    w = ReferenceWatch()
    for ms in (0.165, 0.20, 0.166, 0.201, 0.165, 0.202, 0.20, 0.164):
        w.add(ms)
    assert w.baseline() == pytest.approx(0.165) and w.disturbed(0.20) and not w.disturbed(0.167)
    # without a watch nothing is re-run
    agent = Scripted([1.5], [3.0])
    timed, _ = measure_models(agent, [Path("m.onnx")], Path("ref.onnx"), 1, 0.01, 0)
    assert agent.calls == 1 and timed[0].ref_ms == 1.5


def test_a_crash_marks_the_run_failed(tmp_path, null_device, monkeypatch):
    """Not only user errors and Ctrl-C: a bug or a broken install half-way (here, in the calibration step) leaves
    the run "failed", never "running", and the error goes on up."""
    import bench.profile as prof
    from bench.store import open_store

    def broken(*args, **kwargs):
        raise RuntimeError("a broken install")

    monkeypatch.setattr(prof, "measure_calibration_subnets", broken)
    store = str(tmp_path / "s.sqlite")
    with pytest.raises(RuntimeError, match="broken install"):
        prof.profile_device("null-test", SPACE, store, [RES], prof.MeasureSettings(min_duration_s=0.0, warmup_s=0.0))
    with open_store(store) as s:
        assert [r["status"] for r in s.runs("null-test")] == ["failed"]


def test_a_complete_calibration_is_not_measured_again():
    from bench.profile import calibration_ends, calibration_todo

    ends = calibration_ends(SPACE, [24, 36], 8)
    rng = np.random.default_rng(0)
    others = [c for c in SPACE.sample(rng, 16, [24, 36]) if c not in ends][:4]
    measured = {(c.r, c.to_string()) for c in ends + others}
    moved = others[:3] + [c for c in SPACE.sample(rng, 8, [24, 36]) if c not in ends + others][:1]
    # the picks between the ends moved (a re-normalised table sum): eight are measured, nothing more to do
    assert calibration_todo(SPACE, [24, 36], ends + moved, measured, 8) == []
    # one left out (every pass noisy): one more, and a missing end always comes back
    measured.discard((others[0].r, others[0].to_string()))
    assert len(calibration_todo(SPACE, [24, 36], ends + moved, measured, 8)) == 1
    measured.discard((ends[1].r, ends[1].to_string()))
    assert calibration_todo(SPACE, [24, 36], ends + moved, measured, 8)[0] == ends[1]


@pytest.mark.slow  # about 2 minutes: the torch runtime starts slowly and runs a graph op by op
def test_a_torch_runtime_device_profiles_pt2_entries_and_predicts(tmp_path):
    """A device on the torch runtime (the runner times `.pt2` ExportedPrograms; on a GPU with CUDA events) gets
    a table of its own: every entry exported as .pt2, timed, its calibration subnets measured beside the
    reference subnet, and predictions from it."""
    from bench.measure import MeasureSettings
    from bench.profile import profile_device
    from bench.table import LatencyPredictor, load_device_table

    folder = Path(os.environ["OFA_BENCH_DEVICES"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "torch-test.toml").write_text(
        'name = "torch-test"\nkind = "local"\ndescription = "this host\'s CPU, torch runtime (tests)"\n'
        'runtime = "torch"\nthreads = 1\nwarmup_runs = 2\nwarmup_s = 0.0\nmin_runs = 5\nmin_duration_s = 0.01\n'
        'max_runs = 200\nmax_duration_s = 1.0\nmax_remeasure = 0\n')
    store = tmp_path / "s.sqlite"
    rep = profile_device("torch-test", SPACE, str(store), [RES],
                         MeasureSettings(rounds=1, warmup_s=0.0, min_duration_s=0.01, max_remeasure=0, precision=0.5,
                                         calibration_subnets=4))
    assert rep.status == "done", rep.error
    assert rep.entries_total == len(FULL) and rep.subnets_measured == 4
    table = load_device_table("torch-test", SPACE, str(store))
    assert set(table.entries) == FULL and table.subnet_nominal_ms is not None
    pred = LatencyPredictor.from_table(table, SPACE)
    small, large = pred([SPACE.smallest(RES), SPACE.largest(RES)])
    assert 0 < small < large
