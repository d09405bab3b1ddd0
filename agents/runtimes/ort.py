"""onnxruntime (the default): CPU provider, intra-op threads from the profile, one inter-op thread,
sequential execution, all graph optimisations; inputs allocated once, seeded."""
import functools

import numpy as np
import onnxruntime as ort

from agents.runtimes import Loaded, ModelLoadError, check_file

_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def version():
    return ort.__version__


def build():
    return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
            "device": ort.get_device()}


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


def load(path, threads=1, device="cpu"):
    check_file(path)
    if device != "cpu":
        raise ModelLoadError(f"the onnxruntime runtime runs on the CPU only, not {device!r}")
    try:
        session = ort.InferenceSession(path, sess_options=session_options(threads),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise ModelLoadError(f"onnxruntime cannot load {path}: {' '.join(str(exc).split())[:300]}") from None
    feed = make_inputs(session)
    inputs = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feed.items()]
    return Loaded(functools.partial(session.run, None, feed), inputs)
