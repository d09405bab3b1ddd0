"""Export a static module (an extracted subnet, one table entry) to a self-contained ONNX file, checked.

TorchScript-based exporter (`dynamo=False`: fast, one file, no external data), opset 17, fixed input shape.
The check runs the file in onnxruntime on a seeded random input and compares with torch.
"""
from __future__ import annotations

import io
import os
import tempfile
import threading
import warnings
from pathlib import Path

from ofa_core.errors import OFABenchError

OPSET = 17
# torch's exporters keep global state (`GLOBALS.in_onnx_export`): two threads exporting at once (profile
# workers of two devices) fail with "in_onnx_export must be False". Every export in the project takes this.
EXPORT_LOCK = threading.Lock()


class OnnxExportError(OFABenchError):
    """The exported model does not reproduce torch's outputs (or cannot be exported)."""


def export_onnx(module, path: str | Path, input_shape: tuple[int, ...], check: bool = True, atol: float = 1e-4,
                opset: int = OPSET, seed: int = 0) -> Path:
    """Write `module` (run in eval mode) as ONNX to `path`; with `check`, compare onnxruntime against torch.

    Raises `OnnxExportError` if export fails or outputs differ by more than `atol` times the largest output
    magnitude (at least 1: float32 rounding grows with the values; trained weights on a random input give
    logits in the tens). The file is written to a
    temporary name and renamed, so readers never see half a model.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        return _export(module, path, tuple(input_shape), check, atol, opset, seed)
    finally:
        module.train(was_training)


def _export(module, path: Path, input_shape: tuple[int, ...], check: bool, atol: float, opset: int,
            seed: int) -> Path:
    import torch

    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape, generator=gen).to(device)
    buf = io.BytesIO()
    try:
        with EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its retirement
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["output"], do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - exporter errors come in many types; report them in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxExportError(f"ONNX export of {type(module).__name__} failed: {first}") from None
    data = buf.getvalue()
    if check:
        with torch.no_grad():
            expected = module(x).detach().cpu().numpy()
        got = run_onnx(data, x.cpu().numpy())
        if got.shape != expected.shape:
            raise OnnxExportError(f"ONNX output shape {got.shape} differs from torch's {expected.shape}")
        diff = float(abs(got - expected).max()) if got.size else 0.0
        tol = atol * max(1.0, float(abs(expected).max()) if expected.size else 0.0)
        if not diff <= tol:
            raise OnnxExportError(f"ONNX output differs from torch by {diff:.3g} (> {tol:.3g}: atol {atol:g} x the "
                                  f"largest output) for {path.name}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_onnx(model: bytes | str | Path, x):
    """Outputs of an ONNX model (bytes or file) on one numpy input, with onnxruntime on one CPU thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
