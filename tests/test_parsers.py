"""Parsers of measuring tools, on captured outputs (tests/data/), and the user-binary path end to end through
the local transport with a stand-in script."""
from pathlib import Path

import pytest

from agents import RunnerOutputError, connect
from agents.binary_agent import merge_summaries
from agents.parsers import ParseError, parse_benchmark_model, parse_onnxruntime_perf_test, tool_of
from devices import DeviceProfile

DATA = Path(__file__).resolve().parent / "data"


def _read(name):
    return (DATA / name).read_text()


def test_old_plain_takes_the_timed_line_not_the_warmup():
    r = parse_benchmark_model(_read("benchmark_model_old_plain.txt"))
    assert r["n"] == 50 and r["samples_ms"] == [] and r["env"]["summary_only"] is True
    assert r["mean_ms"] == pytest.approx(65.2215) and r["median_ms"] == pytest.approx(65.2215)
    assert r["env"]["median_from"] == "avg" and r["env"]["format"] == "old"
    assert r["min_ms"] == pytest.approx(64.230) and r["max_ms"] == pytest.approx(69.118)
    assert r["std_ms"] == pytest.approx(1.003) and r["cv"] == pytest.approx(1.003 / 65.2215)
    assert r["env"]["warmup"] == {"count": 8, "avg_ms": pytest.approx(67.2834)}
    assert r["env"]["threads"] == 4 and r["env"]["graph"].endswith("mobilenet_v2_1.0_224.tflite")


def test_old_with_op_profiling_tables():
    r = parse_benchmark_model(_read("benchmark_model_old_op_profiling.txt"))
    assert r["n"] == 50 and r["mean_ms"] == pytest.approx(79.732) and r["std_ms"] == pytest.approx(1.929)
    assert r["env"]["first_ms"] == pytest.approx(79.449) and r["env"]["warmup"]["count"] == 1


def test_new_format_with_info_prefix_percentiles_and_delegate():
    r = parse_benchmark_model(_read("benchmark_model_new_xnnpack.txt"))
    assert r["n"] == 2890  # not the warm-up's 1433
    assert r["median_ms"] == pytest.approx(0.340) and r["mean_ms"] == pytest.approx(0.344936)
    assert r["env"]["p5_ms"] == pytest.approx(0.331) and r["env"]["p95_ms"] == pytest.approx(0.372)
    assert r["p10_ms"] is None and r["p90_ms"] is None  # the tool does not print them
    assert r["env"]["median_from"] == "median" and r["env"]["format"] == "new"
    assert r["env"]["delegates"] == [{"name": "TfLiteXNNPackDelegate", "nodes_delegated": 7, "nodes_total": 7,
                                      "partitions": 1}]
    assert r["env"]["delegate_coverage"] == 1.0
    assert r["env"]["init_ms"] == pytest.approx(5.685)


def test_benchmark_model_spread_comes_from_its_percentiles():
    """std/mean of this capture is 0.055, above the default 0.05 threshold: every entry was re-measured and
    flagged noisy. Its p5..p95 give the outlier-proof spread instead."""
    from agents.measurement import Measurement

    r = parse_benchmark_model(_read("benchmark_model_new_xnnpack.txt"))
    m = Measurement(model="x.tflite", samples_ms=(), median_ms=r["median_ms"], p10_ms=None, p90_ms=None,
                    mean_ms=r["mean_ms"], std_ms=r["std_ms"], cv=r["cv"], n=r["n"], env=r["env"])
    assert r["cv"] > 0.05
    assert m.robust_cv == pytest.approx((0.372 - 0.331) / (2 * 1.6449 * 0.340))
    assert m.robust_cv < 0.05
    old = parse_benchmark_model(_read("benchmark_model_old_plain.txt"))  # no percentiles: std/mean as before
    m_old = Measurement(model="x", samples_ms=(), median_ms=old["median_ms"], p10_ms=None, p90_ms=None,
                        mean_ms=old["mean_ms"], std_ms=old["std_ms"], cv=old["cv"], n=old["n"], env=old["env"])
    assert m_old.robust_cv == pytest.approx(old["cv"])
    merged = merge_summaries([r, {**r, "env": {**r["env"], "p5_ms": 0.351, "p95_ms": 0.392}}])
    assert merged["env"]["p5_ms"] == pytest.approx(0.341) and merged["env"]["p95_ms"] == pytest.approx(0.382)


def test_new_format_scientific_values_and_partial_delegation():
    r = parse_benchmark_model(_read("benchmark_model_new_gpu_large.txt"))
    assert r["n"] == 5 and r["mean_ms"] == pytest.approx(1240.27) and r["median_ms"] == pytest.approx(1239.66)
    assert r["max_ms"] == pytest.approx(1266.31) and r["env"]["warmup"]["avg_ms"] == pytest.approx(1285.44)
    assert r["env"]["delegate_coverage"] == pytest.approx(118 / 126)
    assert r["env"]["delegates"][0]["name"] == "TfLiteGpuDelegateV2"
    assert r["env"]["init_ms"] == pytest.approx(1398.76)


def test_tool_without_headers_takes_the_timings_line():
    # a build that prints only the profiler summary (no "Running benchmark" headers), Memory line last
    text = ("Timings (microseconds): count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929\n"
            "Memory (bytes): count=0\n3 nodes observed\n")
    r = parse_benchmark_model(text)
    assert r["n"] == 50 and r["mean_ms"] == pytest.approx(79.732) and r["env"]["format"] == "old"


def test_failed_benchmark_model_is_a_one_line_error():
    with pytest.raises(ParseError) as exc:
        parse_benchmark_model(_read("benchmark_model_failed.txt"))
    assert "HARD_SWISH" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ParseError):
        parse_benchmark_model("")
    with pytest.raises(ParseError):
        parse_benchmark_model(_read("onnxruntime_perf_test.txt"))


def test_onnxruntime_perf_test_units():
    r = parse_onnxruntime_perf_test(_read("onnxruntime_perf_test.txt"))
    assert r["mean_ms"] == pytest.approx(1.85739)  # printed in ms
    assert r["median_ms"] == pytest.approx(1.85674)  # P50 printed in seconds
    assert r["p90_ms"] == pytest.approx(1.96581) and r["min_ms"] == pytest.approx(1.71229)
    assert r["env"]["p99_ms"] == pytest.approx(2.34121) and r["n"] == 1000 and r["samples_ms"] == []
    assert r["std_ms"] is None and r["cv"] is None and r["env"]["init_ms"] == pytest.approx(53.2453)


def test_onnxruntime_perf_test_failure():
    with pytest.raises(ParseError) as exc:
        parse_onnxruntime_perf_test(_read("onnxruntime_perf_test_failed.txt"))
    assert "IR version" in str(exc.value)


def test_tool_of():
    assert tool_of("onnxruntime_perf_test") == "onnxruntime_perf_test"
    assert tool_of("benchmark_model_android_aarch64") == "benchmark_model"


def test_merge_rounds_of_summaries():
    a = {"n": 10, "median_ms": 1.0, "mean_ms": 1.0, "std_ms": 0.1, "p10_ms": None, "p90_ms": None, "min_ms": 0.9,
         "max_ms": 1.2, "env": {"median_from": "median"}}
    b = {**a, "n": 30, "median_ms": 2.0, "mean_ms": 2.0, "min_ms": 1.8, "max_ms": 2.5}
    m = merge_summaries([a, b])
    assert m["n"] == 40 and m["mean_ms"] == pytest.approx(1.75) and m["median_ms"] == pytest.approx(1.75)
    assert (m["min_ms"], m["max_ms"]) == (0.9, 2.5) and m["std_ms"] > 0.4  # between-round spread counts
    assert "2 rounds" in m["env"]["median_from"]


# ---------------------------------------------------------------- the user-binary path, end to end

@pytest.fixture
def binary_profile(tmp_path):
    return DeviceProfile(name="standin-phone", kind="local", runtime="litert", model_format="tflite",
                         binary=str(DATA / "standin_benchmark_model.sh"), threads=3, cores=(0,),
                         workdir=str(tmp_path / "dev"), max_remeasure=0, timeout_s=20.0)


def test_binary_pushed_once_run_with_quoted_flags_and_parsed(binary_profile, tmp_path):
    model = tmp_path / "my block; rm -rf x.tflite"  # spaces and shell syntax must arrive as one argument
    model.write_bytes(b"TFL3 placeholder model for the stand-in")
    with connect(binary_profile) as agent:
        first = agent.binary_remote
        ms = agent.measure([model, model], rounds=2)
        fp = agent.fingerprint()
    assert len(ms) == 2 and first.endswith("standin_benchmark_model.sh")
    m = ms[0]
    assert m.n == 2 * 2890 and m.median_ms == pytest.approx(0.340) and m.samples_ms == ()
    assert m.env["summary_only"] and m.env["threads"] == 3 and m.env["rounds"] == 2
    assert m.env["graph"].endswith("my block; rm -rf x.tflite")  # the pushed copy, hash-prefixed
    assert fp["runtime_build"]["binary"] == "standin_benchmark_model.sh" and len(fp["runtime_build"]["sha256"]) == 64
    pushed = list(Path(binary_profile.workdir).iterdir())
    assert sum(p.name.endswith("standin_benchmark_model.sh") for p in pushed) == 1


def test_binary_failure_names_device_and_file(binary_profile, tmp_path):
    with connect(binary_profile) as agent:
        agent.binary_remote = "/bin/false"  # the binary runs but prints nothing usable
        model = tmp_path / "x.tflite"
        model.write_bytes(b"TFL3")
        with pytest.raises(RunnerOutputError) as exc:
            agent.measure([model])
    text = str(exc.value)
    assert "standin-phone" in text and "x.tflite" in text and "\n" not in text


def test_missing_binary(binary_profile):
    from agents import AgentError

    with pytest.raises(AgentError, match="not found"):
        connect(binary_profile.replace(binary=str(DATA / "no_such_benchmark_model")))
