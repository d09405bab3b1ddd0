"""Every runner runtime on this CPU, on tiny models the project writes itself (ONNX, .tflite, .pt2)."""
import numpy as np
import pytest

from agents.runtimes import RUNTIMES, ModelLoadError, RuntimeUnavailable, get_runtime
from agents.tiny_models import tiny_model

FORMAT = {"onnxruntime": "onnx", "litert": "tflite", "torch": "pt2", "null": "onnx"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("rt")


def _runtime_or_skip(name):
    try:
        return get_runtime(name)
    except RuntimeUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_runtime_loads_runs_and_reports(name, model_dir):
    rt = _runtime_or_skip(name)
    path = tiny_model(model_dir / f"tiny-{name}", FORMAT[name])
    loaded = rt.load(str(path), threads=1, device="cpu")
    for _ in range(3):
        loaded.run()
    assert isinstance(rt.version(), str) and rt.version()
    assert isinstance(rt.build(), dict)
    if name != "null":
        assert loaded.inputs and loaded.inputs[0]["shape"][0] == 1


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_runtime_rejects_missing_and_corrupt(name, model_dir):
    rt = _runtime_or_skip(name)
    with pytest.raises(ModelLoadError, match="not found"):
        rt.load(str(model_dir / "absent.bin"), 1, "cpu")
    if name == "null":
        return  # null never parses the file
    bad = model_dir / f"corrupt.{FORMAT[name]}"
    bad.write_bytes(b"\x00\x01 definitely not a model " * 40)
    with pytest.raises(ModelLoadError) as exc:
        rt.load(str(bad), 1, "cpu")
    assert "\n" not in str(exc.value) and "corrupt" in str(exc.value)


def test_unknown_runtime():
    with pytest.raises(RuntimeUnavailable, match="unknown runtime"):
        get_runtime("mxnet")


def _depthwise_nhwc(x, w, b):
    """Reference 'same' depthwise conv in NHWC with numpy (weights 1 x K x K x C)."""
    k = w.shape[1]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            out += xp[:, i:i + x.shape[1], j:j + x.shape[2], :] * w[0, i, j, :]
    return out + b


def test_tflite_writer_computes_the_intended_graph(model_dir):
    """The hand-built flatbuffer really is depthwise conv + ReLU + constant add (checked against numpy)."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    path = tiny_model(model_dir / "check", "tflite", channels=4, size=6, kernel=5, seed=7)
    rng = np.random.default_rng(7)
    w = rng.standard_normal((1, 5, 5, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    c = rng.standard_normal((1, 1, 1, 4)).astype(np.float32)
    interp = litert.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    x = np.random.default_rng(1).standard_normal((1, 6, 6, 4)).astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    want = np.maximum(_depthwise_nhwc(x, w, b), 0) + c
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_onnx_session_settings():
    ort = _runtime_or_skip("onnxruntime")
    so = ort.session_options(3)
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    import onnxruntime

    assert so.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_torch_cpu_only_without_gpu(model_dir):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; see test_torch_cuda_events")
    rt = get_runtime("torch")
    path = tiny_model(model_dir / "cpuonly", "pt2")
    with pytest.raises(ModelLoadError, match="no CUDA"):
        rt.load(str(path), 1, "cuda")


@pytest.mark.gpu
def test_torch_cuda_events(model_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    loaded = get_runtime("torch").load(str(tiny_model(model_dir / "gpu", "pt2")), 1, "cuda")
    samples = loaded.event_timer(5)
    assert len(samples) == 5 and all(s > 0 for s in samples)
