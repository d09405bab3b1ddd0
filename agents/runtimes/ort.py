"""onnxruntime (the default): intra-op threads from the profile, one inter-op thread, sequential execution, all
graph optimisations; inputs allocated once, seeded.

The execution provider comes from the device profile: `cpu` (CPUExecutionProvider), `cuda` (CUDAExecutionProvider)
or `tensorrt` (TensorrtExecutionProvider, with CUDA behind it for the nodes TensorRT does not take). On a GPU the
inputs are copied to the device once, at load, and the outputs preallocated there (I/O binding), so that one
timed run is `run_with_iobinding` plus waiting for the outputs: no host-device copy inside the timing. TensorRT
builds an engine per model the first time; its engines are kept in `cache_dir` (the device's cache folder), so
later invocations load them instead of building again, and the runner's warm-up covers the first run.
"""
import functools
import os

import numpy as np
import onnxruntime as ort

from agents.runtimes import Loaded, ModelLoadError, RuntimeUnavailable, check_file

_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

#: provider name in a device profile -> onnxruntime's execution providers, in priority order
PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
#: what to install when a provider is missing from this onnxruntime build
_INSTALL = {
    "cuda": "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime && "
            "pip install onnxruntime-gpu) with the CUDA and cuDNN libraries it was built for",
    "tensorrt": "install onnxruntime-gpu in place of onnxruntime and the TensorRT libraries it was built for "
                "(e.g. pip install tensorrt), with CUDA and cuDNN",
}
#: words in a session error that say a GPU library failed to load (not the model)
_GPU_LIBRARIES = ("libcu", "libnv", "cudnn", "tensorrt", "cuda driver", "cuda runtime")
#: where TensorRT engines go, under the cache folder the runner is given
TRT_CACHE = "ort-tensorrt"


def version():
    return ort.__version__


def build():
    return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
            "device": ort.get_device()}


def check_provider(provider, available=None):
    """Raise RuntimeUnavailable (one line, naming what to install) unless this onnxruntime build has `provider`'s
    first execution provider; `available` defaults to `onnxruntime.get_available_providers()`."""
    if provider not in PROVIDERS:
        raise RuntimeUnavailable(f"unknown onnxruntime provider {provider!r} (known: {', '.join(PROVIDERS)})")
    have = ort.get_available_providers() if available is None else list(available)
    wanted = PROVIDERS[provider][0]
    if wanted not in have:
        raise RuntimeUnavailable(f"onnxruntime {ort.__version__} here has no {wanted} (it has "
                                 f"{', '.join(have) or 'none'}): {_INSTALL.get(provider, 'install it')}")


def provider_list(provider, cache_dir=None, device_id=0):
    """The `providers` argument of an InferenceSession for `provider`: names with their options."""
    cuda = ("CUDAExecutionProvider", {"device_id": str(device_id)})
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if provider == "tensorrt":
        trt = {"device_id": str(device_id), "trt_fp16_enable": "False"}  # fp32 tables: no silent half precision
        if cache_dir:
            trt.update(trt_engine_cache_enable="True", trt_engine_cache_path=os.path.join(cache_dir, TRT_CACHE))
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]
    raise RuntimeUnavailable(f"unknown onnxruntime provider {provider!r} (known: {', '.join(PROVIDERS)})")


def session_options(threads):
    """The session settings every measurement uses (also used by the in-process reference loop)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def make_inputs(session, seed=0):
    """One random array per input; dynamic dimensions become 1."""
    rng = np.random.default_rng(seed)
    feed = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            raise ModelLoadError(f"input {arg.name} has unsupported type {arg.type}")
        if np.issubdtype(dtype, np.floating):
            feed[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[arg.name] = np.zeros(shape, dtype=dtype)
    return feed


def bound_run(session, feed, device_type="cuda", device_id=0):
    """One synchronised inference with inputs and outputs bound on the device: the inputs are copied there once,
    here; outputs of a known shape are preallocated there (others are allocated by onnxruntime on the device).
    The returned function runs the session and waits for its outputs, and copies nothing between host and device."""
    binding = session.io_binding()
    keep = []  # the bound values must outlive the binding
    for name, array in feed.items():
        value = ort.OrtValue.ortvalue_from_numpy(array, device_type, device_id)
        binding.bind_ortvalue_input(name, value)
        keep.append(value)
    for out in session.get_outputs():
        dtype = _DTYPES.get(out.type)
        if dtype is not None and all(isinstance(d, int) and d > 0 for d in out.shape):
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(out.shape), dtype, device_type, device_id)
            binding.bind_ortvalue_output(out.name, value)
            keep.append(value)
        else:
            binding.bind_output(out.name, device_type, device_id)
    binding.synchronize_inputs()

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return keep

    return run


def load(path, threads=1, device="cpu", provider="cpu", cache_dir=None):
    check_file(path)
    if device != "cpu":
        raise ModelLoadError(f"the onnxruntime runtime places models with its provider (provider = \"cuda\" or "
                             f"\"tensorrt\" in the device profile), not with device {device!r}")
    check_provider(provider)
    if provider == "tensorrt" and cache_dir:
        os.makedirs(os.path.join(cache_dir, TRT_CACHE), exist_ok=True)
    try:
        session = ort.InferenceSession(path, sess_options=session_options(threads),
                                       providers=provider_list(provider, cache_dir))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        text = " ".join(str(exc).split())[:300]
        if provider != "cpu" and any(lib in text.lower() for lib in _GPU_LIBRARIES):
            raise RuntimeUnavailable(f"onnxruntime cannot start its {PROVIDERS[provider][0]}: {text}; "
                                     f"{_INSTALL[provider]}") from None
        raise ModelLoadError(f"onnxruntime cannot load {path}: {text}") from None
    # A provider whose libraries fail to load is dropped by onnxruntime with a log line, and the session runs
    # on what is left: that would be a table of another provider under this one's name.
    wanted = PROVIDERS[provider][0]
    if wanted not in session.get_providers():
        raise RuntimeUnavailable(f"onnxruntime could not start {wanted} (the session fell back to "
                                 f"{', '.join(session.get_providers())}): {_INSTALL[provider]}")
    feed = make_inputs(session)
    inputs = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feed.items()]
    if provider == "cpu":
        return Loaded(functools.partial(session.run, None, feed), inputs)
    return Loaded(bound_run(session, feed, "cuda"), inputs)
