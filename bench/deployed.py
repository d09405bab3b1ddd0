"""A subnet's accuracy as a device delivers it: the model file the device runs (.tflite at fp32 or int8),
scored image by image through that runtime, beside the float model it came from.

`ofa-bench eval --precision int8` and the int8 benchmark score through here; `ofa_core.evaluate` scores the
float subnet (torch or onnxruntime) and knows nothing of device formats.
"""
from __future__ import annotations

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
    is quantised with the file's own scale (its logits keep their order without dequantising)."""
    from bench.tflite import TfliteError, quantise_input, tflite_metadata
    from ofa_core.data import prepare

    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        raise TfliteError("scoring .tflite files needs ai-edge-litert (pip install 'ofa-bench[litert]')") from None
    nhwc = tflite_metadata(path).get("layout", "nhwc") == "nhwc"
    interp = litert.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    correct = 0
    for start in range(0, len(split), 1000):
        x = prepare(split.images[start:start + 1000], resolution).contiguous().numpy().astype(np.float32)
        if nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        x = quantise_input(x, inp)
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
    """Top-1 on `split` of one subnet as `runtime` runs it at `precision`: the document of
    `ofa_core.evaluate.evaluate_checkpoint` (BN recalibrated; onnxruntime scores the float subnet) plus
    precision, runtime and the model file. LiteRT scores the channel-last .tflite a phone runs, exported from
    the recalibrated subnet, int8 calibrated on training images."""
    from bench.export import export_subnet
    from ofa_core.evaluate import evaluate_checkpoint
    from ofa_core.space import SearchSpace

    runtime = check_runtime(precision, runtime)
    if runtime == "onnxruntime":
        doc = evaluate_checkpoint(space_name, config, checkpoint, split, recal_images, seed, limit)
        return dict(doc, precision=precision, runtime=runtime, model=None)
    space = SearchSpace.get(space_name)
    model: list[Path] = []

    def score(static, images, resolution: int) -> float:
        cfg = space.parse_config(config)
        model.append(export_subnet(space, cfg, "tflite", weights=static, precision=precision))
        return top1_tflite(model[0], images, resolution)

    doc = evaluate_checkpoint(space_name, config, checkpoint, split, recal_images, seed, limit, score=score)
    return dict(doc, precision=precision, runtime=runtime, model=str(model[0]))
