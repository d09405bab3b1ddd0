"""A subnet's accuracy as a device delivers it: the model file the device runs (.tflite at fp32 or int8),
scored image by image through that runtime, beside the float model it came from.

`ofa-bench eval --precision int8` and the int8 benchmark score through here; `ofa_core.evaluate` scores the
float subnet (torch or onnxruntime) and knows nothing of device formats.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ofa_core.errors import OFABenchError

RUNTIMES = ("onnxruntime", "litert")


def check_runtime(precision: str, runtime: str | None) -> str:
    """The runtime that scores a model of `precision` (None: onnxruntime for fp32, LiteRT for int8)."""
    from bench.export import PRECISIONS

    if precision not in PRECISIONS:
        raise OFABenchError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    runtime = runtime or ("litert" if precision == "int8" else "onnxruntime")
    if runtime not in RUNTIMES:
        raise OFABenchError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision == "int8" and runtime != "litert":
        raise OFABenchError("int8 models are .tflite files: score them with --runtime litert")
    return runtime


def top1_tflite(path: str | Path, split, resolution: int) -> float:
    """Fraction of `split` a .tflite model classifies correctly, one image per call as a device runs it (LiteRT,
    one thread). Inputs are prepared as in training and laid out as the file takes them; an int8 model's input
    is quantised and its logits dequantised with the file's own scales."""
    from bench.tflite import TfliteError, tflite_metadata
    from ofa_core.data import prepare

    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        raise TfliteError("scoring .tflite files needs ai-edge-litert (pip install 'ofa-bench[litert]')") from None
    nhwc = tflite_metadata(path).get("layout", "nhwc") == "nhwc"
    interp = litert.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    quantised = np.issubdtype(inp["dtype"], np.integer)
    if quantised:
        scale, zero = inp["quantization"]
        lo, hi = np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max
    correct = 0
    for start in range(0, len(split), 1000):
        x = prepare(split.images[start:start + 1000], resolution).contiguous().numpy().astype(np.float32)
        if nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if quantised:
            x = np.clip(np.round(x / scale) + zero, lo, hi).astype(inp["dtype"])
        labels = split.labels[start:start + 1000].numpy()
        for i in range(len(x)):
            interp.set_tensor(inp["index"], x[i:i + 1])
            interp.invoke()
            # the class with the largest logit: dequantising (a positive scale) keeps the order
            correct += int(interp.get_tensor(out["index"]).reshape(-1).argmax() == labels[i])
    return correct / max(1, len(split))


def evaluate_deployed(space_name: str, config: str, checkpoint: str | Path | None = None, split: str = "test",
                      precision: str = "fp32", runtime: str | None = None, recal_images: int = 2000,
                      seed: int = 0, limit: int = 0) -> dict:
    """Top-1 on `split` of one subnet as `runtime` runs it at `precision`: BN recalibrated as `ofa-bench eval`
    does, then (LiteRT) exported to the channel-last .tflite a phone runs, int8 calibrated on training images,
    and scored through LiteRT; onnxruntime scores the float subnet as `ofa_core.evaluate` does. The document of
    `evaluate_checkpoint` plus precision, runtime and the model file."""
    from bench.export import export_subnet
    from ofa_core.checkpoint import load_supernet
    from ofa_core.data import load_fmnist
    from ofa_core.evaluate import calibrated_subnet, recal_sample, top1_onnx
    from ofa_core.space import SearchSpace

    runtime = check_runtime(precision, runtime)
    sp = SearchSpace.get(space_name)
    cfg = sp.parse_config(config)
    net = load_supernet(sp, checkpoint)
    data = load_fmnist(seed=seed)
    scored = data.split(split).head(limit) if limit > 0 else data.split(split)
    t0 = time.perf_counter()
    static = calibrated_subnet(net, cfg, recal_sample(data.train, recal_images, seed))
    model = None
    if runtime == "litert":
        model = export_subnet(sp, cfg, "tflite", weights=static, precision=precision)
        top1 = top1_tflite(model, scored, cfg.r)
    else:
        top1 = top1_onnx(static, scored, cfg.r)
    return {"space": sp.name, "config": cfg.to_string(), "split": split, "images": len(scored), "top1": top1,
            "precision": precision, "runtime": runtime, "model": str(model) if model else None,
            "macs": int(sp.macs(cfg)), "params": int(sp.params(cfg)), "checkpoint": checkpoint or "shipped",
            "seconds": round(time.perf_counter() - t0, 2)}
