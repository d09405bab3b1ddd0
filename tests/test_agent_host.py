"""The host side: connect + measure through the local transport end to end, the thermal and noise policy,
and every bad input ending in a one-line error that names the device and the file (never a hang)."""
import os
import stat
import time
from pathlib import Path

import pytest

from agents import AgentError, Measurement, ModelFileError, RunnerOutputError, TransportError, connect
from agents.host import Agent
from agents.tiny_models import tiny_onnx
from agents.transports import make_transport
from agents.transports.local import LocalTransport
from devices import DeviceProfile, get_device
from ofa_core.errors import OFABenchError

FAST = dict(warmup_runs=2, warmup_s=0.0, min_runs=20, min_duration_s=0.05, max_runs=2000, max_duration_s=2.0,
            cv_threshold=10.0, max_remeasure=0, timeout_s=30.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return [tiny_onnx(folder / "small.onnx", channels=4, size=8), tiny_onnx(folder / "big.onnx", channels=32, size=32)]


@pytest.fixture
def profile(tmp_path):
    return get_device("local-cpu").replace(workdir=str(tmp_path / "device"), **FAST)


def _one_line(exc):
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_local_end_to_end(profile, models):
    with connect(profile) as agent:
        fp = agent.fingerprint()
        assert fp["runtime"] == "onnxruntime" and fp["cores"] == [0] and fp["simulated"] is False
        ms = agent.measure(models, rounds=2)
        assert [m.model for m in ms] == [str(m) for m in models]
        for m in ms:
            assert isinstance(m, Measurement) and m.n == len(m.samples_ms) >= 20
            assert m.latency_ms == m.median_ms > 0 and m.p10_ms <= m.median_ms <= m.p90_ms
            assert m.env["rounds"] == 2 and m.env["affinity"] == [0] and m.env["attempts"] == 1
            rec = m.to_record()
            assert rec["latency_ms"] == m.median_ms and rec["samples_ms"] == list(m.samples_ms)
        # 32 channels at 32x32 is far more work than 4 channels at 8x8
        assert ms[1].median_ms > ms[0].median_ms
        pushed = sorted(os.listdir(profile.workdir))
        agent.measure(models[:1])
        assert sorted(os.listdir(profile.workdir)) == pushed  # content-hash cache: nothing pushed again
    assert len([p for p in pushed if p.endswith(".pyz")]) == 1


def test_make_transport_local(profile):
    t = make_transport(profile)
    assert isinstance(t, LocalTransport) and t.name == "local-cpu"
    res = t.run(["echo", "a b; $(rm -rf /)"])
    assert res.returncode == 0 and res.stdout.strip() == "a b; $(rm -rf /)"  # argv, never a shell


def test_local_transport_timeout_kills(tmp_path):
    t = LocalTransport(workdir=str(tmp_path))
    start = time.monotonic()
    with pytest.raises(TransportError) as exc:
        t.run(["sleep", "30"], timeout_s=0.5)
    assert time.monotonic() - start < 5 and "timed out" in _one_line(exc)


def test_missing_corrupt_and_wrong_format_models(profile, models, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x01garbage" * 50)
    wrong = tmp_path / "model.tflite"
    wrong.write_bytes(b"TFL3")
    with connect(profile) as agent:
        with pytest.raises(ModelFileError) as exc:
            agent.measure([models[0], tmp_path / "nope.onnx"])
        assert "local-cpu" in _one_line(exc) and "nope.onnx" in str(exc.value)
        with pytest.raises(ModelFileError) as exc:
            agent.measure([corrupt])
        text = _one_line(exc)
        assert "local-cpu" in text and str(corrupt) in text  # the user's name, not the pushed hash name
        with pytest.raises(ModelFileError) as exc:
            agent.measure([wrong])
        assert "model.tflite" in _one_line(exc)


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_runner_output_not_json(profile, models, tmp_path):
    # the device's "python" prints banner text instead of running the runner
    bad = profile.replace(python=_script(tmp_path / "py", 'echo "Welcome to BusyBox"\n'))
    with connect(bad) as agent, pytest.raises(RunnerOutputError) as exc:
        agent.measure(models[:1])
    text = _one_line(exc)
    assert "not JSON" in text and "local-cpu" in text and "small.onnx" in text


def test_log_lines_beside_the_results_are_tolerated(profile, models, tmp_path):
    # adb's legacy shell merges stderr into stdout: runtime log lines land between the JSON lines
    import sys

    noisy = profile.replace(python=_script(tmp_path / "py", f'echo "INFO: Created TensorFlow Lite XNNPACK delegate"\n'
                                                          f'exec {sys.executable} "$@"\n'))
    with connect(noisy) as agent:
        [m] = agent.measure(models[:1])
        assert agent.fingerprint()["runtime"] == "onnxruntime"
    assert m.n >= 20


def test_runner_killed_mid_run(profile, models, tmp_path):
    dying = profile.replace(python=_script(tmp_path / "py", 'printf \'{"model": "x", "samp\'\nkill -9 $$\n'))
    with connect(dying) as agent, pytest.raises(AgentError) as exc:
        agent.measure(models)
    text = _one_line(exc)
    assert "signal 9" in text and "small.onnx" in text and "local-cpu" in text


class _DroppingTransport(LocalTransport):
    """Stands in for a device whose connection drops once the runner starts (as adb/ssh transports report it)."""

    def run(self, argv, timeout_s=None):
        if len(argv) > 1 and str(argv[1]).endswith(".pyz"):
            raise TransportError(f"{self.name}: connection reset by peer")
        return super().run(argv, timeout_s)


def test_device_drops_mid_run(profile, models):
    with connect(profile, transport=_DroppingTransport(workdir=profile.workdir, name=profile.name)) as agent:
        with pytest.raises(TransportError) as exc:
            agent.measure(models)
    text = _one_line(exc)
    assert "connection reset" in text and "big.onnx" in text and "local-cpu" in text


def test_hanging_device_times_out(profile, models, tmp_path):
    hang = profile.replace(python=_script(tmp_path / "py", "sleep 60\n"), timeout_s=0.5, max_duration_s=0.2)
    start = time.monotonic()
    with connect(hang) as agent, pytest.raises(TransportError) as exc:
        agent.measure(models[:1])
    assert time.monotonic() - start < 10 and "timed out" in _one_line(exc)


def test_missing_interpreter_and_unknown_runtime(profile, models):
    with connect(profile.replace(python="/nonexistent/python9")) as agent, pytest.raises(AgentError) as exc:
        agent.measure(models[:1])
    assert "local-cpu" in _one_line(exc)
    with pytest.raises(OFABenchError) as exc:
        DeviceProfile(name="x", runtime="tensorflow-xl")
    assert "unknown runtime" in _one_line(exc)
    with pytest.raises(OFABenchError) as exc:
        connect(profile.replace(runtime="fpga-model"))
    assert "unknown runtime" in _one_line(exc)


def test_the_registry_picks_one_agent_per_profile_and_names_the_known_ones():
    from types import SimpleNamespace

    from agents.registry import agent_kind, known_agents

    picked = {name: agent_kind(get_device(name)).name for name in ("local-cpu", "android-tcp", "fpga-zu9eg")}
    assert picked == {"local-cpu": "runner", "android-tcp": "binary", "fpga-zu9eg": "fpga-model"}
    tpu = SimpleNamespace(name="tpu-0", kind="tpu", runtime="onnxruntime", binary="")
    with pytest.raises(AgentError) as exc:
        connect(tpu)
    text = _one_line(exc)
    assert text.startswith("tpu-0: no agent measures a 'tpu' device")
    assert all(name in text for name in known_agents())


def test_unreachable_device_fails_fast():
    pytest.importorskip("agents.transports.adb")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(OFABenchError) as exc:
        connect(get_device(f"adb:127.0.0.1:{port}").replace(timeout_s=3.0))
    assert time.monotonic() - start < 10 and str(port) in _one_line(exc)


# ---------------------------------------------------------------- policy, on scripted measurements

class _Scripted(Agent):
    """An agent whose device returns prepared spreads (robust coefficients of variation) and temperatures."""

    def __init__(self, profile, cvs, temps=()):
        self.slept = []
        super().__init__(profile, None, sleep=self.slept.append)
        self.cvs, self.temps, self.calls = list(cvs), list(temps), 0

    def read_temperature(self):
        return self.temps.pop(0) if self.temps else None

    def _measure_once(self, models, rounds):
        self.calls += 1
        cv = self.cvs.pop(0)
        half = 1.2816 * cv  # p10..p90 of a normal with sigma = cv * median
        return [Measurement(model=str(m), samples_ms=(1.0 - half, 1.0 + half), median_ms=1.0, p10_ms=1.0 - half,
                            p90_ms=1.0 + half, mean_ms=1.0, std_ms=cv, cv=cv, n=2) for m in models]


def test_remeasure_until_settled_else_noisy(profile, models):
    p = profile.replace(cv_threshold=0.05, max_remeasure=2)
    settled = _Scripted(p, [0.3, 0.02]).measure(models[:1])[0]
    assert not settled.noisy and settled.cv == 0.02 and settled.env["attempts"] == 2
    agent = _Scripted(p, [0.3, 0.2, 0.4])
    noisy = agent.measure(models[:1])[0]
    assert noisy.noisy and agent.calls == 3 and noisy.cv == 0.2  # best of the attempts, flagged
    assert _Scripted(p, [0.01]).measure(models[:1])[0].noisy is False


def test_preemption_outliers_do_not_make_a_measurement_noisy(profile, models):
    """A few huge samples inflate std/mean but not the p10..p90 spread the policy reads."""
    samples = tuple([1.0] * 95 + [1.01] * 0 + [40.0] * 5)
    m = Measurement(model="x", samples_ms=samples, median_ms=1.0, p10_ms=0.99, p90_ms=1.01, mean_ms=2.95,
                    std_ms=8.5, cv=2.9, n=100)
    assert m.cv > 1 and m.robust_cv < 0.01

def test_cooldown_fixed_and_by_temperature(profile, models):
    p = profile.replace(cooldown_s=3.0, cooldown_temp_c=45.0, cooldown_max_s=60.0, cv_threshold=1.0)
    agent = _Scripted(p, [0.01, 0.01], temps=[70.0, 60.0, 50.0, 44.0])
    agent.measure(models[:1])
    assert agent.slept == []  # nothing before the first measurement
    second = agent.measure(models[:1])[0]
    assert agent.slept[0] == 3.0 and len(agent.slept) == 4  # fixed pause, then 3 polls until 44 C
    assert second.env["cooldown"]["reached"] is True and second.env["cooldown"]["temperature_c"] == 44.0
    unreadable = _Scripted(p, [0.01, 0.01])
    unreadable.measure(models[:1])
    assert unreadable.measure(models[:1])[0].env["cooldown"]["temperature"] == "unreadable"


@pytest.mark.adb
def test_rounds_and_fingerprint_through_the_loopback_adb_device(tmp_path, models):
    """The same runner through a real ADB-protocol endpoint (agents/sim/loopback_adbd.py) instead of a subprocess."""
    pytest.importorskip("adb_shell")
    from agents.sim.loopback_adbd import LoopbackAdbd

    server = LoopbackAdbd()
    server.start()
    try:
        profile = get_device(f"adb:127.0.0.1:{server.port}").replace(**{**FAST, "timeout_s": 60.0})
        with connect(profile) as agent:
            fp = agent.fingerprint()
            ms = agent.measure(models, rounds=2)
    finally:
        server.stop()
    assert fp["model"] == "ofa-bench-loopback" and fp["kind"] == "adb" and fp["simulated"] is True
    assert all(m.env["simulated"] is True for m in ms)
    assert [m.model for m in ms] == [str(m) for m in models] and all(m.n >= 20 for m in ms)
    assert ms[1].median_ms > ms[0].median_ms


@pytest.mark.parametrize("runtime,fmt", [("onnxruntime", "onnx"), ("litert", "tflite"), ("torch", "pt2"),
                                         ("null", "onnx")])
def test_every_runtime_through_the_local_transport(runtime, fmt, profile, tmp_path):
    from agents.runtimes import RuntimeUnavailable, get_runtime
    from agents.tiny_models import tiny_model

    try:
        get_runtime(runtime)
    except RuntimeUnavailable as exc:
        pytest.skip(str(exc))
    model = tiny_model(tmp_path / "tiny", fmt)
    p = profile.replace(runtime=runtime, model_format=fmt, min_runs=10, min_duration_s=0.0)
    with connect(p) as agent:
        [m] = agent.measure([model])
        fp = agent.fingerprint()
    assert m.n >= 10 and m.env["runtime"] == runtime and fp["runtime"] == runtime and fp["runtime_version"]
    assert m.env["inputs"] == ([] if runtime == "null" else m.env["inputs"]) and m.median_ms > 0


def test_thread_clock_times_cpu_of_the_measuring_thread(profile, tmp_path):
    """`clock = "thread"` times with the thread's CPU clock, says so, and keeps its tables apart by fingerprint."""
    from agents.tiny_models import mbconv_onnx

    model = mbconv_onnx(tmp_path / "block.onnx")
    wall = profile.replace(min_runs=30, min_duration_s=0.05)
    cpu = wall.replace(clock="thread")
    with connect(wall) as a, connect(cpu) as b:
        [mw], [mc] = a.measure([model]), b.measure([model])
        fw, fc = a.fingerprint(), b.fingerprint()
    assert mw.env["timer"] == "perf_counter_ns" and mc.env["timer"] == "thread_time_ns"
    assert mc.n >= 30 and mc.median_ms > 0
    # CPU time of the thread never exceeds the wall time around the same call (up to clock granularity)
    assert mc.median_ms < mw.median_ms * 3
    assert fc.get("clock") == "thread" and "clock" not in fw


def test_unknown_clock_is_a_profile_error(profile):
    from devices.profile import DeviceProfileError

    with pytest.raises(DeviceProfileError, match="unknown clock"):
        profile.replace(clock="sundial")
