""".tflite files as a phone runs them: channel-last (NHWC) inputs and outputs with no TRANSPOSE added for the
layout, BatchNorm folded, every file checked against torch before it is kept.

`convert` runs in a converter worker (`bench.converters`); `tflite_ops`, `tflite_metadata` and `run_tflite`
read a written file and need only the LiteRT runtime (`ai-edge-litert`), not the converter.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from ofa_core.errors import OFABenchError

#: the name of the metadata entry every exported .tflite carries (a JSON document: layout, exporter, ...)
METADATA_NAME = "ofa_bench"
#: largest |tflite - torch| allowed, times the largest |output| (at least 1): float32 rounding grows with values
CHECK_ATOL = 1e-4
#: the same for int8 models, on a calibration sample: int8 steps are about 1/256 of each tensor's range and add
#: up over the layers of a whole subnet
CHECK_ATOL_INT8 = 0.25


class TfliteError(OFABenchError):
    """A .tflite file that cannot be written as deployed, or differs from torch."""


# ---- reading a written file ------------------------------------------------------------------------------
def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise TfliteError("reading .tflite files needs ai-edge-litert (pip install 'ofa-bench[litert]')") from None
    return schema


def _model(path: str | Path):
    schema = _schema()
    data = Path(path).read_bytes()
    return schema, schema.Model.GetRootAs(data, 0), data


def tflite_ops(path: str | Path) -> list[str]:
    """The builtin operators of every subgraph of a .tflite file, in execution order (e.g. `CONV_2D`)."""
    schema, model, _ = _model(path)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        # builtin codes past 127 live in BuiltinCode; older files only fill the deprecated byte
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        codes.append(names.get(code, f"BUILTIN_{code}") if code != schema.BuiltinOperator.CUSTOM
                     else (oc.CustomCode() or b"CUSTOM").decode())
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        ops += [codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())]
    return ops


def tflite_metadata(path: str | Path) -> dict:
    """The `ofa_bench` metadata document of a .tflite file ({} when it has none)."""
    _, model, _ = _model(path)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if (entry.Name() or b"").decode() == METADATA_NAME:
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(raw).decode())
    return {}


def run_tflite(path: str | Path, x):
    """The first output of a .tflite model on one float numpy input, with LiteRT on one CPU thread. An int8
    model's input is quantised and its output dequantised with the tensors' own scales."""
    import numpy as np

    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        raise TfliteError("running .tflite files needs ai-edge-litert (pip install 'ofa-bench[litert]')") from None
    interp = litert.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.set_tensor(inp["index"], quantise_input(x, inp))
    interp.invoke()
    y = interp.get_tensor(out["index"])
    if np.issubdtype(out["dtype"], np.integer):
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def quantise_input(x, detail: dict):
    """Float input `x` as the model's input tensor `detail` (a LiteRT input detail) takes it: unchanged for a
    float input, quantised with the tensor's own scale and zero point for an integer one."""
    import numpy as np

    if not np.issubdtype(detail["dtype"], np.integer):
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


# ---- the module as it is deployed -------------------------------------------------------------------------
def to_nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, C, H, W) -> (N, H, W, C); shapes of rank < 3 are left alone."""
    return (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else tuple(shape)


def _channel_last_tensor(t):
    return t.permute(0, *range(2, t.ndim), 1).contiguous() if t.ndim >= 3 else t


def fold_batchnorm(module):
    """A copy of `module` with every `ConvBNAct`'s BatchNorm folded into its conv (eval-mode statistics).

    The converter folds them itself, so the .tflite graph is the same; it just has fewer torch nodes to trace
    and lower (about 15% less conversion time for an MBConv block).
    """
    import torch

    from ofa_core import blocks as B

    out = copy.deepcopy(module)
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, B.ConvBNAct) and m.bn is not None:
                bn, conv = m.bn, m.conv
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = bn.bias - bn.running_mean * scale
                if conv.bias is not None:
                    bias = bias + conv.bias * scale
                conv.weight = torch.nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
                conv.bias = torch.nn.Parameter(bias)
                m.bn = None
    return out.eval()


def _channel_last_pool():
    import torch

    class ChannelLastPool(torch.nn.Module):
        """Global average pooling written for NHWC: alone in a graph, the converter keeps the transposes
        around a channel-first mean, so the pool entry is built channel-last from the start."""

        def forward(self, x):
            return x.mean((1, 2), keepdim=True)

    return ChannelLastPool()


def deployed_module(module, layout: str, out_ndim: int):
    """`module` as the converter should see it: BN folded, and for `nhwc` taking and giving channel-last
    tensors (a pure pooling module is rewritten; anything else wrapped so the converter cancels the permutes)."""
    from ofa_core import blocks as B

    folded = fold_batchnorm(module)
    if layout == "nchw":
        return folded
    if isinstance(module, B.GlobalPool):
        return _channel_last_pool().eval()
    import litert_torch

    return litert_torch.to_channel_last_io(folded, args=[0], outputs=[0] if out_ndim >= 3 else []).eval()


# ---- converting (in a converter worker) ----------------------------------------------------------------
def convert(module, input_shape: tuple[int, ...], path: str | Path, layout: str, metadata: dict,
            precision: str = "fp32", calibration=None, seed: int = 0) -> dict:
    """Convert `module` (NCHW, eval mode) to `path` in `layout`, check it against torch, add `metadata`.
    `int8`: static int8 weights and activations with int8 inputs and outputs (ai-edge-quantizer), calibrated on
    `calibration` (NCHW samples, float32).

    Raises `TfliteError` when the file has a TRANSPOSE in `nhwc` (the layout would cost time a deployed
    model does not spend) or its output differs from torch's by more than CHECK_ATOL (int8: CHECK_ATOL_INT8)
    times max(1, max |output|). Returns what was done: seconds (wall and CPU), the largest difference, the
    operator count.
    """
    import numpy as np
    import torch

    import litert_torch

    from ofa_core.atomic import atomic_path

    start, cpu_start = time.perf_counter(), time.process_time()
    module = module.eval()
    if precision == "int8":  # checked on a sample of the data it was calibrated on
        x = torch.from_numpy(np.ascontiguousarray(calibration[:1]))
    else:
        x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = module(x)
    sample = _channel_last_tensor(x) if layout == "nhwc" else x
    want = _channel_last_tensor(expected) if layout == "nhwc" else expected
    deployed = deployed_module(module, layout, expected.ndim)
    try:
        edge = litert_torch.convert(deployed, (sample,))
    except Exception as exc:  # noqa: BLE001 - the converter fails in many types; one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TfliteError(f"converting {type(module).__name__} to .tflite failed: {first}") from None
    raw = edge.model_content() if hasattr(edge, "model_content") else _exported_bytes(edge)
    if precision == "int8":
        samples = torch.from_numpy(np.asarray(calibration, dtype=np.float32))
        raw = quantize_int8(raw, (_channel_last_tensor(samples) if layout == "nhwc" else samples).numpy())
    data = _with_metadata(raw, dict(metadata, layout=layout, precision=precision))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
        ops = tflite_ops(tmp)
        if layout == "nhwc" and "TRANSPOSE" in ops:
            raise TfliteError(f"{path.name}: the channel-last .tflite of {type(module).__name__} still has "
                              f"{ops.count('TRANSPOSE')} TRANSPOSE op(s): {', '.join(ops)}")
        got = run_tflite(tmp, sample.numpy())
        want_np = want.numpy()
        if got.shape != want_np.shape:
            raise TfliteError(f"{path.name}: .tflite output shape {got.shape} differs from torch's {want_np.shape}")
        diff = float(np.abs(got - want_np).max()) if got.size else 0.0
        atol = CHECK_ATOL_INT8 if precision == "int8" else CHECK_ATOL
        tol = atol * max(1.0, float(np.abs(want_np).max()) if want_np.size else 0.0)
        if not diff <= tol:
            raise TfliteError(f"{path.name}: {precision} .tflite output differs from torch by {diff:.3g} (> "
                              f"{tol:.3g}: {atol:g} x the largest output)")
    return {"path": str(path), "seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start,
            "max_abs_diff": diff, "ops": len(ops)}


def quantize_int8(model: bytes, samples) -> bytes:
    """Static int8 quantisation of a float .tflite (weights and activations; int8 inputs and outputs, as an
    int8 model is deployed), with ranges calibrated on `samples` (N inputs in the model's own layout)."""
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(bytearray(model), recipe.static_wi8_ai8())
    from ai_edge_litert import interpreter as litert

    signatures = litert.Interpreter(model_content=bytes(model)).get_signature_list()
    (name, spec), = signatures.items()
    (arg,) = spec["inputs"]
    ranges = q.calibrate({name: [{arg: s[None]} for s in samples]}, num_threads=1)
    return bytes(q.quantize(ranges, enable_progress_report=False).quantized_model)


def _exported_bytes(edge) -> bytes:
    import os
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".tflite")
    os.close(fd)
    try:
        edge.export(name)
        return Path(name).read_bytes()
    finally:
        Path(name).unlink(missing_ok=True)


def _with_metadata(data: bytes, doc: dict) -> bytes:
    """`data` with an `ofa_bench` metadata entry holding `doc` as JSON (read back by `tflite_metadata`)."""
    import numpy as np
    from ai_edge_litert.tools import flatbuffer_utils

    schema = _schema()
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(doc, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")
