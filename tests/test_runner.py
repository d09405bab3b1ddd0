"""The on-device runner: statistics, the timing loop's stopping rules, rounds, JSON output, the zipapp."""
import json
import subprocess
import sys
import time
import zipfile

import pytest

from agents import runner
from agents.bundle import build_runner, runner_sources
from agents.tiny_models import tiny_onnx


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("m") / "tiny.onnx")


def test_quantile_and_summary_match_numpy():
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(3)
    values = list(rng.gamma(2.0, 1.5, size=101))
    s = runner.summarise(values)
    assert s["median_ms"] == pytest.approx(np.median(values))
    assert s["p10_ms"] == pytest.approx(np.percentile(values, 10))
    assert s["p90_ms"] == pytest.approx(np.percentile(values, 90))
    assert s["mean_ms"] == pytest.approx(np.mean(values))
    assert s["std_ms"] == pytest.approx(np.std(values, ddof=1))
    assert s["cv"] == pytest.approx(np.std(values, ddof=1) / np.mean(values))
    assert s["n"] == 101


def test_time_runs_stops_on_min_count_and_min_duration():
    calls = []
    samples = runner.time_runs(lambda: calls.append(1), min_runs=5, min_ns=int(0.05e9), max_runs=10 ** 7,
                               max_ns=int(5e9))
    assert len(samples) == len(calls) and len(samples) > 5  # 50 ms of no-ops is far more than 5 calls
    assert sum(samples) < 0.05e9 and all(s >= 0 for s in samples)
    few = runner.time_runs(lambda: time.sleep(0.002), min_runs=7, min_ns=0, max_runs=100, max_ns=int(5e9))
    assert len(few) == 7 and min(few) >= 2_000_000


def test_time_runs_caps():
    capped = runner.time_runs(lambda: None, min_runs=10 ** 6, min_ns=int(10e9), max_runs=300, max_ns=int(10e9))
    assert len(capped) == 300
    start = time.perf_counter()
    timed = runner.time_runs(lambda: time.sleep(0.001), min_runs=10 ** 6, min_ns=int(60e9), max_runs=10 ** 6,
                             max_ns=int(0.1e9))
    assert time.perf_counter() - start < 1.0 and 10 < len(timed) < 100


def _busy(ns):
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def test_runs_spent_off_the_cpu_are_left_out():
    """A run that sleeps for part of its time (as a preempted one waits for the core) is left out and counted;
    the budget counts clean runs, so the clean ones still reach min_runs."""
    calls = []

    def alternate():  # busy 1 ms; every other call also 2 ms off the CPU
        calls.append(1)
        _busy(1_000_000)
        if len(calls) % 2 == 0:
            time.sleep(0.002)

    samples, preempted = runner.time_runs_on_cpu(alternate, min_runs=10, min_ns=0, max_runs=1000, max_ns=int(5e9))
    assert len(samples) == 10 and preempted >= 9 and len(calls) == len(samples) + preempted
    assert max(samples) < 2_500_000  # no sleeping run among them (those took 3 ms)
    busy, none_left_out = runner.time_runs_on_cpu(lambda: _busy(300_000), min_runs=20, min_ns=0, max_runs=1000,
                                                  max_ns=int(5e9))
    assert len(busy) >= 20 and none_left_out <= 2  # a stray interrupt at most
    # hardly any clean run (a model that waits on something else, or a saturated core): clean runs are waited
    # for up to three times the planned runs and duration, not up to max_duration; then every run is kept
    start = time.perf_counter()
    slept, all_out = runner.time_runs_on_cpu(lambda: time.sleep(0.001), min_runs=5, min_ns=int(0.02e9),
                                             max_runs=10_000, max_ns=int(10e9))
    assert time.perf_counter() - start < 0.5 and len(slept) == all_out >= 15 and min(slept) >= 1_000_000


def test_preemption_filter_only_where_the_thread_does_the_work(onnx_model, capsys):
    base = ["--warmup-runs", "1", "--warmup-s", "0", "--min-runs", "5", "--min-duration-s", "0", str(onnx_model)]
    for extra, on in (([], True), (["--threads", "2"], False), (["--clock", "thread"], False),
                      (["--keep-preempted"], False)):
        rc, lines = _run(extra + base, capsys)
        assert rc == 0 and lines[0]["preemption_filter"] is on and lines[0]["preempted_runs"] >= 0


def test_warm_up_counts_and_time():
    assert runner.warm_up(lambda: None, 17, 0) == 17
    start = time.perf_counter()
    n = runner.warm_up(lambda: None, 1, int(0.03e9))
    assert time.perf_counter() - start >= 0.03 and n > 1


def _run(argv, capsys):
    rc = runner.main(argv)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return rc, lines


def test_main_prints_one_line_per_model_with_rounds(onnx_model, capsys):
    rc, lines = _run(["--warmup-runs", "2", "--warmup-s", "0", "--min-runs", "20", "--min-duration-s", "0",
                      "--max-runs", "1000", "--rounds", "2", str(onnx_model), str(onnx_model)], capsys)
    assert rc == 0 and len(lines) == 2
    for rec in lines:
        assert rec["model"] == str(onnx_model)
        assert rec["n"] == len(rec["samples_ms"]) == 20  # 10 per round x 2 rounds
        assert rec["rounds"] == 2 and rec["warmup_runs"] == 2
        assert rec["p10_ms"] <= rec["median_ms"] <= rec["p90_ms"]
        env = rec["env"]
        assert env["runtime"] == "onnxruntime" and env["threads"] == 1 and env["runtime_version"]
        assert "temperature_c" in env and "loadavg" in env and "governor" in env


def test_main_errors_are_json(tmp_path, capsys):
    rc, lines = _run(["--runtime", "tensorflow-xl", str(tmp_path / "a.onnx")], capsys)
    assert rc == runner.EXIT_RUNTIME and "unknown runtime" in lines[0]["error"]
    rc, lines = _run([str(tmp_path / "missing.onnx")], capsys)
    assert rc == runner.EXIT_MODEL and "missing.onnx" in lines[0]["error"]
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    rc, lines = _run([str(bad)], capsys)
    assert rc == runner.EXIT_MODEL and "corrupt.onnx" in lines[0]["error"]


def test_pinning(onnx_model, capsys):
    rc, lines = _run(["--cores", "0", "--runtime", "null", "--min-runs", "3", "--min-duration-s", "0",
                      "--warmup-runs", "0", "--warmup-s", "0", str(onnx_model)], capsys)
    assert rc == 0 and lines[0]["env"]["affinity"] == [0]


def test_fingerprint_has_no_volatile_fields(capsys):
    rc, lines = _run(["--fingerprint"], capsys)
    fp = lines[0]["fingerprint"]
    assert rc == 0 and fp["runtime"] == "onnxruntime" and fp["arch"] and fp["os"]
    assert not {"temperature_c", "loadavg", "cur_freq_khz"} & set(fp)


def test_bundle_is_one_deterministic_file_that_runs(tmp_path, onnx_model):
    a = build_runner(tmp_path / "c1")
    b = build_runner(tmp_path / "c2")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = set(zf.namelist())
    assert {"__main__.py", "agents/runner.py", "agents/runtimes/ort.py", "agents/runtimes/null.py"} <= names
    assert set(runner_sources()) == names
    out = subprocess.run([sys.executable, str(a), "--runtime", "null", "--min-runs", "5", "--min-duration-s", "0",
                          "--warmup-s", "0", str(onnx_model)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    rec = json.loads(out.stdout)
    assert out.returncode == 0 and rec["n"] >= 5 and rec["env"]["runtime"] == "null"
