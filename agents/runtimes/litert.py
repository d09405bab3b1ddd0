"""LiteRT (`ai-edge-litert`) for `.tflite` files: the interpreter with the profile's thread count, inputs set
once before timing, `invoke()` timed. Inputs take the model's own shape and type (channel-last for the models
`bench.export` writes, int8 for an int8 model)."""
import numpy as np

try:
    from ai_edge_litert import interpreter as litert
except ImportError:  # one line, naming what to install (get_runtime turns it into RuntimeUnavailable)
    raise ImportError("the litert runtime needs ai-edge-litert: pip install ai-edge-litert "
                      "(on a host: pip install 'ofa-bench[litert]')") from None

from agents.runtimes import Loaded, ModelLoadError, check_file


def version():
    try:
        from importlib.metadata import version as dist_version

        return dist_version("ai-edge-litert")
    except Exception:
        return "unknown"


def build():
    return {"ai-edge-litert": version()}


def load(path, threads=1, device="cpu"):
    check_file(path)
    if device != "cpu":
        raise ModelLoadError(f"the litert runtime here runs on the CPU only, not {device!r}")
    try:
        interp = litert.Interpreter(model_path=path, num_threads=int(threads))
        interp.allocate_tensors()
    except Exception as exc:
        raise ModelLoadError(f"LiteRT cannot load {path}: {' '.join(str(exc).split())[:300]}") from None
    rng = np.random.default_rng(0)
    inputs = []
    for det in interp.get_input_details():
        shape = [int(d) if d > 0 else 1 for d in det["shape"]]
        dtype = np.dtype(det["dtype"])
        if np.issubdtype(dtype, np.floating):
            value = rng.standard_normal(shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:  # a quantised input: values over its range
            info = np.iinfo(dtype)
            value = rng.integers(info.min, int(info.max) + 1, size=shape).astype(dtype)
        else:
            value = np.zeros(shape, dtype=dtype)
        interp.set_tensor(det["index"], value)
        inputs.append({"name": det["name"], "shape": shape, "dtype": str(dtype)})
    return Loaded(interp.invoke, inputs)
