"""Validation end to end on this CPU (tiny Fashion-MNIST subnets), and the pure metrics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.validate import accuracy_metrics, kendall_tau
from ofa_core.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.get("ofa-mbv3-fmnist")

ORT_PROFILE = """
name = "ort-test"
kind = "local"
description = "this CPU, onnxruntime, short timings for tests"
runtime = "onnxruntime"
threads = 1
warmup_runs = 2
warmup_s = 0.01
min_runs = 10
min_duration_s = 0.03
max_runs = 2000
max_duration_s = 2.0
max_remeasure = 1
"""


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_kendall_tau_known_cases():
    x = np.arange(10.0)
    assert kendall_tau(x, x * 2) == pytest.approx(1.0)
    assert kendall_tau(x, -x) == pytest.approx(-1.0)
    # one swapped adjacent pair among 10: (45 - 2) / 45
    y = x.copy()
    y[[3, 4]] = y[[4, 3]]
    assert kendall_tau(x, y) == pytest.approx(43 / 45)


def test_accuracy_metrics():
    m = accuracy_metrics([1.04, 2.18, 3.0, 3.5], [1.0, 2.0, 3.0, 4.0])
    assert m["n"] == 4
    assert m["within_5pct"] == pytest.approx(0.5) and m["within_10pct"] == pytest.approx(0.75)
    assert m["mape"] == pytest.approx((0.04 + 0.09 + 0 + 0.125) / 4)
    assert m["rmse_ms"] == pytest.approx(np.sqrt((0.04 ** 2 + 0.18 ** 2 + 0.25) / 4))


@pytest.fixture(scope="module")
def ort_device():
    folder = Path(os.environ["OFA_BENCH_DEVICES"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ort-test.toml").write_text(ORT_PROFILE)
    return "ort-test"


def test_validate_end_to_end(tmp_path, ort_device):
    store = tmp_path / "s.sqlite"
    for _ in range(3):  # an entry left noisy by a busy moment is measured again by the same command
        r = cli("profile", ort_device, "--space", SPACE.name, "--resolutions", "24", "--store", store, "--json",
                "--rounds", "2")
        assert r.returncode == 0, r.stderr
        if json.loads(r.stdout)["entries_noisy"] == 0:
            break
    plot = tmp_path / "pvm.png"
    r = cli("validate", ort_device, "--space", SPACE.name, "--subnets", "8", "--seed", "3", "--remeasure",
            "--store", store, "--plot", plot, "--json", "--min-duration-s", "0.05", "--rounds", "2")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for k in ("n", "mape", "rmse_ms", "within_5pct", "within_10pct", "kendall_tau", "remeasure_within_5pct"):
        assert k in doc
    assert doc["n"] == 8 and doc["resolutions"] == [24]
    for k in ("within_5pct", "within_10pct", "remeasure_within_5pct"):
        assert 0.0 <= doc[k] <= 1.0
    assert -1.0 <= doc["kendall_tau"] <= 1.0 and doc["mape"] >= 0
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    # the measured subnets are in the store and now calibrate the predictor
    from bench.table import LatencyPredictor, load_device_table

    table = load_device_table(ort_device, SPACE, str(store))
    validated = {s["config"] for s in doc["subnets"]}
    held = {s for _, s in table.subnets}
    # profile measured 12 calibration subnets (smallest, largest, a spread); validate added its own 8
    assert validated <= held and len(held - validated) == 12 and SPACE.smallest(24).to_string() in held
    pred = LatencyPredictor.from_table(table, SPACE)
    assert pred.calibration.n_subnets == len(held)
    r = cli("predict", "--device", ort_device, "--space", SPACE.name, "--config", "largest", "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["table_version"] == table.version and p["latency_ms"] > 0 and p["table_sum_ms"] > 0


def test_validate_without_table_is_one_line(tmp_path, ort_device):
    r = cli("validate", ort_device, "--space", SPACE.name, "--subnets", "4", "--store", tmp_path / "s.sqlite")
    assert r.returncode != 0 and "does not exist" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "s.sqlite").exists()
    from bench.store import open_store

    open_store(tmp_path / "s.sqlite").close()
    r = cli("validate", ort_device, "--space", SPACE.name, "--subnets", "4", "--store", tmp_path / "s.sqlite")
    assert r.returncode != 0 and "no latency table" in r.stderr and r.stderr.count("\n") == 1


def test_plots_write_png(tmp_path):
    from bench.table import load_device_table
    from bench.plots import drift_history, predicted_vs_measured, subnet_stage_breakdown

    w12 = SearchSpace.get("ofa-mbv3-w1.2")
    table = load_device_table("note10", w12)
    paths = [
        subnet_stage_breakdown(w12, table, w12.largest(224), tmp_path / "b.png"),
        drift_history([0, 3600, 7200, 10800], [1.0, 1.0, 1.2, 1.2], tmp_path / "d.png", step_index=2),
        predicted_vs_measured([1.0, 2.1], [1.05, 2.0], [160, 224], tmp_path / "p.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 1000


# ---- passes: every subnet timed in several invocations, more while they disagree -------------------------
class _PassAgent:
    """Stands in for a device agent: each model's latency per invocation comes from a script (ms), and the
    reference always takes 1 ms, so the normalised value is the scripted one."""

    def __init__(self, script):
        self.script = script  # model file name -> list of latencies, one per invocation
        self.calls: dict[str, int] = {}

    def measure(self, paths, rounds=1):
        from agents.measurement import Measurement
        from agents.runner import summarise

        out = []
        for i, p in enumerate(paths):
            name = Path(p).name
            if i == 0:
                ms = 1.0
            else:
                k = self.calls.get(name, 0)
                self.calls[name] = k + 1
                ms = self.script[name][min(k, len(self.script[name]) - 1)]
            samples = [ms * (1 + 0.001 * (j % 3 - 1)) for j in range(30)]
            out.append(Measurement.from_record({**summarise(samples), "samples_ms": samples}, str(p),
                                               {"loadavg": [0.5, 0.5, 0.5]}))
        return out


def test_passes_repeat_until_the_median_is_precise(tmp_path):
    from bench.export import export_subnet
    from bench.store import open_store
    from bench.validate import ValidateSettings, measure_subnets, median_precision

    assert median_precision([1.0]) == float("inf")
    assert median_precision([1.0, 1.0, 1.0]) == 0.0
    assert median_precision([1.0, 1.1, 1.0]) > 0.01  # one stray pass is not called precise

    cfgs = SPACE.sample(np.random.default_rng(5), 3, [24])
    names = [export_subnet(SPACE, c, "onnx").name for c in cfgs]
    script = {names[0]: [2.0, 2.0, 2.0],                    # agrees at once: 3 passes
              names[1]: [3.0, 3.3, 2.7, 3.0, 3.0, 3.0],     # disagrees: passes until precise (5 here)
              names[2]: [4.0, 4.0, 9.0, 4.0, 4.0, 4.0]}     # an outlier pass: all 6, the median ignores it
    agent = _PassAgent(script)
    store = open_store(tmp_path / "s.sqlite")
    try:
        fp = store.register_fingerprint("fake", {"host": "test"})
        run = store.start_run("fake", fp, SPACE.name, "validate", {}, {})
        calls = []
        got = measure_subnets(agent, store, run, fp, SPACE, cfgs, ValidateSettings(per_call=2), 0.01, "onnx",
                              progress=lambda done, total: calls.append((done, total)), value_nominal=1.0)
        store.finish_run(run, "done")
        assert [len(t.values_ms) for t in got] == [3, 5, 6]
        # progress: 3 subnets x 3 passes planned, then each extra pass adds its timings to the total
        assert calls == [(2, 9), (3, 9), (5, 9), (6, 9), (8, 9), (9, 9), (11, 11), (13, 13), (14, 14)]
        assert got[0].value_ms == pytest.approx(2.0, rel=1e-3) and got[1].value_ms == pytest.approx(3.0, rel=1e-3)
        assert got[2].value_ms == pytest.approx(4.0, rel=1e-3)
        # every pass is stored; the table's subnet value is the median over the run's passes
        rows = store.history(fp, SPACE.name, kind="subnet")
        assert len(rows) == sum(len(t.values_ms) for t in got)
        from bench.table import subnet_stats

        stats, used = subnet_stats(store, fp, SPACE, nominal=1.0)
        assert len(used) == len(rows)
        assert {k[1]: round(v.value_ms, 3) for k, v in stats.items()} == {
            c.to_string(): round(t.value_ms, 3) for c, t in zip(cfgs, got)}
    finally:
        store.close()


class _SpeedAgent:
    """Stands in for a device whose speed changes between invocations: in the k-th invocation every model takes
    `speeds[k]` times its own latency, the reference (first path) included; with `ref_speeds`, the reference
    moves by its own factors instead (a reference whose jitter the models do not share)."""

    def __init__(self, base: dict, ref_ms: float, speeds, ref_speeds=None):
        self.base, self.ref_ms, self.speeds, self.first_paths = base, ref_ms, list(speeds), []
        self.ref_speeds = list(ref_speeds) if ref_speeds is not None else self.speeds

    def measure(self, paths, rounds=1):
        from agents.measurement import Measurement
        from agents.runner import summarise

        k = len(self.first_paths)
        f, g = self.speeds[k % len(self.speeds)], self.ref_speeds[k % len(self.ref_speeds)]
        self.first_paths.append(Path(paths[0]).name)
        out = []
        for i, p in enumerate(paths):
            ms = g * self.ref_ms if i == 0 else f * self.base[Path(p).name]
            samples = [ms] * 20
            out.append(Measurement.from_record({**summarise(samples), "samples_ms": samples}, str(p), {}))
        return out


def _four_subnets_timed(tmp_path, speeds, ref_speeds=None):
    """Four subnets of 0.1-0.4 ms timed by `measure_subnets` (three passes, two per invocation) on a
    `_SpeedAgent` into a new store, at the reference speed 0.5 ms: (configs, agent, open store, fingerprint,
    timings)."""
    from bench.export import export_subnet
    from bench.store import open_store
    from bench.validate import ValidateSettings, measure_subnets

    cfgs = SPACE.sample(np.random.default_rng(9), 4, [28])
    base = {export_subnet(SPACE, c, "onnx").name: 0.1 * (i + 1) for i, c in enumerate(cfgs)}
    agent = _SpeedAgent(base, ref_ms=0.5, speeds=speeds, ref_speeds=ref_speeds)
    store = open_store(tmp_path / "s.sqlite")
    fp = store.register_fingerprint("fake", {"host": "test"})
    run = store.start_run("fake", fp, SPACE.name, "validate", {}, {})
    got = measure_subnets(agent, store, run, fp, SPACE, cfgs, ValidateSettings(per_call=2, passes=3), 0.01,
                          "onnx", value_nominal=0.5)
    store.finish_run(run, "done")
    return cfgs, agent, store, fp, got


def test_whole_subnets_are_timed_beside_the_reference_subnet(tmp_path):
    """The reference block is a few microseconds of call overhead on the small space and does not follow a whole
    subnet's speed; subnets are timed beside a subnet of typical size, and their values are normalised by it
    (not by the block's speed) when the table reads them."""
    from bench.export import export_subnet
    from bench.measure import reference_subnet, subnet_reference_key, subnet_reference_nominal_ms
    from bench.table import subnet_stats

    ref = reference_subnet(SPACE)
    macs = list(SPACE.macs([SPACE.smallest(), ref, SPACE.largest()]))
    assert macs[0] < macs[1] < macs[2]
    assert ref.r == sorted(SPACE.resolutions)[len(SPACE.resolutions) // 2]

    cfgs, agent, store, fp, got = _four_subnets_timed(tmp_path, speeds=[1.0, 1.6, 0.8, 1.3, 1.0])
    try:
        ref_name = export_subnet(SPACE, ref, "onnx").name
        assert set(agent.first_paths) == {ref_name}  # every invocation began with the reference subnet
        # the speed changes cancel: every subnet's value is its own latency at the reference's 0.5 ms
        assert [round(t.value_ms, 6) for t in got] == [round(0.1 * (i + 1), 6) for i in range(4)]
        assert got[0].tracking == pytest.approx(1.0)  # the subnets move with the reference, all of it
        refs = store.history(fp, SPACE.name, key=subnet_reference_key(SPACE), kind="reference")
        assert len(refs) == len(agent.first_paths) and all(r["resolution"] == ref.r for r in refs)
        # the subnets' speed is the median of the reference subnet's latest latencies
        assert subnet_reference_nominal_ms(store, fp, SPACE) == pytest.approx(
            float(np.median([r["latency_ms"] for r in refs][-9:])))
        # read back at the reference subnet's speed; the block's speed (here absurd) does not enter
        stats, _ = subnet_stats(store, fp, SPACE, nominal=1000.0, subnet_nominal=0.5)
        assert {k[1]: round(v.value_ms, 6) for k, v in stats.items()} == {
            c.to_string(): round(0.1 * (i + 1), 6) for i, c in enumerate(cfgs)}
    finally:
        store.close()


def test_a_reference_whose_jitter_the_subnets_do_not_share_is_not_followed(tmp_path):
    """A reference subnet that jitters on its own (LiteRT's ~0.09 ms one moves 7-8% between invocations, the
    subnets beside it 3%) would pass its jitter on to every subnet's passes; the run's tracking coefficient
    (`bench.measure.tracking`) finds that the subnets do not share it, so their passes keep their own spread and
    only the run's level is rescaled. `validate`'s values and the table's read of the same rows agree."""
    from bench.table import subnet_stats

    cfgs, _, store, fp, got = _four_subnets_timed(tmp_path, speeds=[1.0],
                                                  ref_speeds=[1.0, 1.3, 0.8, 1.2, 0.9, 1.1, 0.85])
    try:
        assert got[0].tracking < 0.2
        for t in got:  # rescaled in full, the passes would spread by 30-50%
            assert max(t.values_ms) / min(t.values_ms) < 1.06, t.values_ms
        level = float(np.median([r for t in got for r in t.refs_ms]))
        assert level != pytest.approx(0.5)
        stats, _ = subnet_stats(store, fp, SPACE, nominal=None, subnet_nominal=0.5)
        for c, t in zip(cfgs, got):
            assert stats[(c.r, c.to_string())].value_ms == pytest.approx(t.value_ms, rel=1e-9)
    finally:
        store.close()


def test_a_benchmark_times_subnets_in_a_run_of_its_own(tmp_path):
    """`timed_subnet_run` (the benchmarks' held-out and calibration subnets): the device's fingerprint registered,
    every pass stored in one run of the given kind, marked done; values at the given reference speed."""
    from bench.store import open_store
    from bench.validate import ValidateSettings, timed_subnet_run
    from devices import get_device

    cfgs = SPACE.sample(np.random.default_rng(3), 3, [28])
    got = timed_subnet_run(get_device("fpga-zu3eg-model"), str(tmp_path / "s.sqlite"), SPACE, cfgs,
                           ValidateSettings(n=3, passes=2, max_passes=2, seed=3), "benchmark", {"holdout": 3},
                           None, np.random.default_rng(3))
    assert len(got) == 3 and all(len(t.values_ms) == 2 and t.value_ms > 0 for t in got)
    with open_store(tmp_path / "s.sqlite") as store:
        (run,) = store.runs("fpga-zu3eg-model")
        assert run["kind"] == "benchmark" and run["status"] == "done" and run["settings"] == {"holdout": 3}
        rows = store.history(run["fingerprint_id"], SPACE.name, kind="subnet")
        assert len(rows) == 6 and {r["run_id"] for r in rows} == {run["id"]}
