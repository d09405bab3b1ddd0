"""onnxruntime's execution providers (CPU, CUDA, TensorRT) as the runner's runtimes, checked where no GPU is: the
provider chosen from the device profile, the one-line error for a provider this build lacks, I/O binding (on the
CPU, where onnxruntime binds too), settling warm-up, fingerprints that keep providers apart, the GPU check's
exit without a GPU. What needs a GPU is marked `gpu` and skipped here."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents import runner
from agents.runtimes import RuntimeUnavailable, get_runtime
from agents.tiny_models import tiny_onnx
from devices import DeviceProfile, DeviceProfileError, get_device
from devices.fingerprint import complete_fingerprint, fingerprint_id

REPO = Path(__file__).resolve().parents[1]
ort_rt = get_runtime("onnxruntime")
HAS_CUDA_EP = "CUDAExecutionProvider" in ort_rt.ort.get_available_providers()
HAS_TRT_EP = "TensorrtExecutionProvider" in ort_rt.ort.get_available_providers()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("prov") / "tiny.onnx")


# ---- provider selection -------------------------------------------------------------------------------------
def test_provider_lists():
    assert ort_rt.provider_list("cpu") == ["CPUExecutionProvider"]
    cuda = ort_rt.provider_list("cuda")
    assert [p[0] if isinstance(p, tuple) else p for p in cuda] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = ort_rt.provider_list("tensorrt", cache_dir="/data/cache")
    names = [p[0] if isinstance(p, tuple) else p for p in trt]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    options = trt[0][1]
    assert options["trt_engine_cache_enable"] == "True"  # engines built once, reused by later invocations
    assert options["trt_engine_cache_path"].startswith("/data/cache/")
    assert options["trt_fp16_enable"] == "False"  # an fp32 table is timed in fp32
    assert "trt_engine_cache_enable" not in ort_rt.provider_list("tensorrt")[0][1]  # no folder: no cache
    with pytest.raises(RuntimeUnavailable, match="unknown onnxruntime provider"):
        ort_rt.provider_list("rocm")


def test_check_provider_against_a_build():
    ort_rt.check_provider("cpu")
    ort_rt.check_provider("cuda", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    ort_rt.check_provider("tensorrt", available=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    with pytest.raises(RuntimeUnavailable) as exc:
        ort_rt.check_provider("tensorrt", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "TensorrtExecutionProvider" in str(exc.value) and "TensorRT libraries" in str(exc.value)


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider")
def test_missing_cuda_provider_is_one_line_naming_the_package(onnx_model):
    with pytest.raises(RuntimeUnavailable) as exc:
        ort_rt.check_provider("cuda")
    text = str(exc.value)
    assert "\n" not in text and "onnxruntime-gpu" in text and "CUDAExecutionProvider" in text
    with pytest.raises(RuntimeUnavailable, match="onnxruntime-gpu"):
        ort_rt.load(str(onnx_model), 1, "cpu", provider="cuda")


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider")
@pytest.mark.parametrize("extra", [["--fingerprint"], ["MODEL"]])
def test_runner_reports_a_missing_provider_as_a_runtime_error(onnx_model, capsys, extra):
    argv = ["--runtime", "onnxruntime", "--provider", "cuda"] + [str(onnx_model) if a == "MODEL" else a
                                                                for a in extra]
    assert runner.main(argv) == runner.EXIT_RUNTIME
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["kind"] == "runtime" and "onnxruntime-gpu" in doc["error"]


def test_runner_refuses_a_provider_for_a_runtime_without_providers(onnx_model, capsys):
    assert runner.main(["--runtime", "null", "--provider", "cuda", str(onnx_model)]) == runner.EXIT_RUNTIME
    doc = json.loads(capsys.readouterr().out.strip())
    assert doc["kind"] == "runtime" and "no execution providers" in doc["error"]


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has the CUDA provider")
def test_agent_of_a_cuda_profile_fails_in_one_line(tmp_path):
    """Through the real runner, pushed by the local transport: the error the user sees at probe or profile."""
    from agents import connect
    from agents.errors import UnknownRuntimeError

    profile = get_device("cuda-ort").replace(name="cuda-here", workdir=str(tmp_path / "dev"), timeout_s=60.0)
    with connect(profile) as agent:
        with pytest.raises(UnknownRuntimeError) as exc:
            agent.fingerprint()
    text = str(exc.value)
    assert "\n" not in text and "cuda-here" in text and "onnxruntime-gpu" in text


# ---- timing --------------------------------------------------------------------------------------------------
def test_bound_run_matches_session_run(onnx_model):
    """I/O binding as the GPU providers use it, on the CPU: inputs bound once, outputs preallocated, the same
    result as a plain run."""
    ort = ort_rt.ort
    session = ort.InferenceSession(str(onnx_model), sess_options=ort_rt.session_options(1),
                                   providers=ort_rt.provider_list("cpu"))
    feed = ort_rt.make_inputs(session)
    want = session.run(None, feed)[0]
    run = ort_rt.bound_run(session, feed, "cpu")
    for _ in range(3):
        bound = run()
    np.testing.assert_allclose(bound[-1].numpy(), want, rtol=1e-6, atol=1e-6)


def test_settle_waits_for_falling_medians_and_is_bounded():
    speeds = iter([300] * 16 + [200] * 16 + [150] * 16 + [149] * 16 + [10] * 10_000)
    assert runner.settle(lambda: next(speeds), max_ns=10 ** 10, window=16, tolerance=0.01) == 64
    assert runner.settle(lambda: 100, max_ns=10 ** 10, window=8) == 16  # flat from the start: two windows
    falling = iter(range(10 ** 9, 0, -1000))
    assert runner.settle(lambda: next(falling), max_ns=0, window=4) == 4  # out of time after one window


def test_gpu_runs_skip_the_cpu_preemption_filter():
    args = runner._parse(["--provider", "cuda", "x.onnx"])
    assert runner.on_gpu(args) and not runner.preemption_filter(args)
    args = runner._parse(["x.onnx"])
    assert not runner.on_gpu(args) and runner.preemption_filter(args)


# ---- fingerprints and profiles --------------------------------------------------------------------------------
def test_fingerprints_of_providers_differ_and_cpu_ones_are_unchanged():
    cpu = runner.fingerprint("onnxruntime", ort_rt, 1)
    assert "provider" not in cpu and "gpu" not in cpu  # tables profiled before providers keep their id
    cuda = runner.fingerprint("onnxruntime", ort_rt, 1, provider="cuda", gpu=True)
    trt = runner.fingerprint("onnxruntime", ort_rt, 1, provider="tensorrt", gpu=True)
    assert cuda["provider"] == "cuda" and "gpu" in cuda  # None here: no nvidia-smi
    base = get_device("local-cpu")
    ids = {fingerprint_id(complete_fingerprint(fp, base.replace(provider=p)))
           for fp, p in ((cpu, "cpu"), (cuda, "cuda"), (trt, "tensorrt"))}
    assert len(ids) == 3
    # the profile's provider decides even where the device reported none
    assert complete_fingerprint(cpu, base.replace(provider="cuda"))["provider"] == "cuda"
    assert "provider" not in complete_fingerprint(cpu, base)


def test_profile_provider_and_batch_fields():
    ex = get_device("cuda-ort")
    assert (ex.runtime, ex.provider, ex.model_format, ex.batch) == ("onnxruntime", "cuda", "onnx", (1, 16, 64))
    assert get_device("local-cpu").provider == "cpu" and get_device("local-cpu").batch == (1,)
    assert DeviceProfile(name="t", provider="tensorrt").provider == "tensorrt"
    bad = [dict(provider="rocm"), dict(provider="cuda", runtime="torch"), dict(provider="cuda", runtime="litert"),
           dict(batch=()), dict(batch=(1, 0)), dict(batch=(4, 4))]
    for changes in bad:
        with pytest.raises(DeviceProfileError) as exc:
            DeviceProfile(name="t", **changes)
        assert "\n" not in str(exc.value)
    with pytest.raises(DeviceProfileError, match="batch"):
        DeviceProfile.from_dict({"name": "t", "batch": 16})  # a list, not a number


def test_runner_argv_carries_the_provider_and_its_cache(tmp_path):
    from agents.runner_agent import RunnerAgent
    from agents.transports.local import LocalTransport

    profile = get_device("cuda-ort").replace(workdir=str(tmp_path / "dev"))
    agent = RunnerAgent(profile, LocalTransport(workdir=profile.workdir))
    agent.runner_remote = "runner.pyz"
    argv = agent._argv([])
    assert argv[argv.index("--provider") + 1] == "cuda"
    assert argv[argv.index("--cache-dir") + 1] == f"{tmp_path / 'dev'}/ort-cache"
    plain = RunnerAgent(get_device("local-cpu"), LocalTransport(workdir=str(tmp_path / "dev")))
    plain.runner_remote = "runner.pyz"
    assert "--provider" not in plain._argv([])


# ---- the GPU check -----------------------------------------------------------------------------------------------
NVIDIA_SMI_CSV = """name, driver_version, clocks.current.sm [MHz], clocks.current.memory [MHz]
NVIDIA H100 80GB HBM3, 550.54.15, 1980 MHz, 2619 MHz
"""


def test_nvidia_smi_csv_is_read():
    from bench.perf.gpu import _clocks, parse_nvidia_smi_csv

    rows = parse_nvidia_smi_csv(NVIDIA_SMI_CSV)
    assert rows == [{"name": "NVIDIA H100 80GB HBM3", "driver_version": "550.54.15",
                     "clocks.current.sm [MHz]": "1980 MHz", "clocks.current.memory [MHz]": "2619 MHz"}]
    assert _clocks(rows[0]) == {"sm": "1980 MHz", "mem": "2619 MHz"}
    assert parse_nvidia_smi_csv("") == []


def test_gpu_check_without_a_gpu_says_so_and_exits_2():
    from bench.perf.gpu import probe

    if probe() is not None:
        pytest.skip("a GPU is present")
    r = subprocess.run([sys.executable, "-m", "bench.perf", "gpu"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU is present" in lines[0]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_EP, reason="needs onnxruntime-gpu and a CUDA GPU")
def test_cuda_provider_times_with_io_binding(onnx_model):
    loaded = ort_rt.load(str(onnx_model), 1, "cpu", provider="cuda")
    for _ in range(5):
        loaded.run()
    samples = runner.time_runs(loaded.run, 20, 0, 100, int(5e9))
    assert len(samples) >= 20 and all(s > 0 for s in samples)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT_EP, reason="needs onnxruntime-gpu with TensorRT and a CUDA GPU")
def test_tensorrt_engines_are_cached(onnx_model, tmp_path):
    ort_rt.load(str(onnx_model), 1, "cpu", provider="tensorrt", cache_dir=str(tmp_path)).run()
    assert any((tmp_path / ort_rt.TRT_CACHE).iterdir())
