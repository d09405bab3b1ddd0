"""Table entries and whole subnets as standalone static models (ONNX, or .tflite through the optional
`litert-torch` extra), cached on disk by a content hash of what determines the file.

The cache key covers the space definition, the entry (or config and weights), the format and the versions of
the exporters, so re-exporting the same thing is free and a change in any of them gives a new file. Files are
written to a temporary name and renamed, so concurrent profilers never see a half-written model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from ofa_core.atomic import atomic_path
from ofa_core.errors import OFABenchError
from ofa_core.onnx_export import EXPORT_LOCK, OPSET
from ofa_core.space import SearchSpace, SubnetConfig

from bench.candidates import Entry

CACHE_ENV = "OFA_BENCH_CACHE"
FORMATS = ("onnx", "tflite")
EXPORTER_TAG = "bench.export/1"


class ExportError(OFABenchError):
    """A model that cannot be exported (unknown format, missing optional converter)."""


def cache_dir() -> Path:
    """`$OFA_BENCH_CACHE/models`, else `~/.cache/ofa-bench/models`."""
    env = os.environ.get(CACHE_ENV)
    base = Path(env) if env else Path.home() / ".cache" / "ofa-bench"
    return base / "models"


def exporter_versions(fmt: str) -> dict:
    import torch

    out = {"torch": torch.__version__, "tag": EXPORTER_TAG, "opset": OPSET}
    try:
        import onnx

        out["onnx"] = onnx.__version__
    except ImportError:
        pass
    if fmt == "tflite":
        out["litert_torch"] = _litert_version()
    return out


def _litert_version() -> str:
    try:
        from importlib.metadata import version

        return version("litert-torch")
    except Exception:
        return "missing"


def _digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _space_doc(space: SearchSpace) -> dict:
    return dataclasses.asdict(space)


def entry_cache_key(space: SearchSpace, entry: Entry, fmt: str) -> str:
    return _digest({"space": _space_doc(space), "kind": entry.kind, "key": entry.key, "resolution": entry.resolution,
                    "shape": entry.input_shape, "format": fmt, "versions": exporter_versions(fmt)})


# ---- modules ---------------------------------------------------------------------------------------------
def entry_module(space: SearchSpace, entry: Entry, seed: int = 0):
    """The static module of one table entry, in eval mode with seeded random weights."""
    import torch

    from ofa_core import blocks as B

    torch.manual_seed(seed)
    build = {
        "first_conv": lambda: B.first_conv(space),
        "first_block": lambda: B.first_block(space),
        "mbconv": lambda: B.mbconv(space, entry.spec, entry.kernel, entry.expand),
        "final_expand": lambda: B.final_expand(space),
        "pool": lambda: B.global_pool(),
        "feature_mix": lambda: B.feature_mix(space),
        "logits": lambda: B.classifier(space),
    }
    if entry.kind not in build:
        raise ExportError(f"unknown entry kind {entry.kind!r}")
    return build[entry.kind]().eval()


def subnet_module(space: SearchSpace, cfg: SubnetConfig, seed: int = 0):
    """A whole static subnet built from the same factories as the table entries, seeded random weights."""
    import torch

    from ofa_core import blocks as B

    space.validate(cfg)
    torch.manual_seed(seed)
    specs = space.blocks()
    blocks = [B.first_block(space)] + [B.mbconv(space, specs[i], cfg.ks[i], cfg.e[i]) for i in cfg.active_slots()]
    return B.StaticMobileNetV3(B.first_conv(space), blocks, B.final_expand(space), B.global_pool(),
                               B.feature_mix(space), B.classifier(space)).eval()


# ---- writing ---------------------------------------------------------------------------------------------
def _write_onnx(module, input_shape, path: Path) -> None:
    import torch

    import warnings

    x = torch.randn(*input_shape)
    with EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is chosen on purpose: fast
        torch.onnx.export(module, (x,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)


def _write_tflite(module, input_shape, path: Path) -> None:
    try:
        import litert_torch  # optional extra: pip install 'ofa-bench[convert]'
    except ImportError:
        raise ExportError("converting to .tflite needs the optional litert-torch package "
                          "(pip install 'ofa-bench[convert]')") from None
    import torch

    with EXPORT_LOCK:
        edge = litert_torch.convert(module, (torch.randn(*input_shape),))
        edge.export(str(path))


def _materialise(path: Path, write, module, input_shape) -> Path:
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a fresh name per writer: concurrent profilers never share one
        write(module, input_shape, tmp)
    return path


def _writer(fmt: str):
    if fmt == "onnx":
        return _write_onnx
    if fmt == "tflite":
        return _write_tflite
    raise ExportError(f"unknown model format {fmt!r}; known: {', '.join(FORMATS)}")


def export_entry(space: SearchSpace, entry: Entry, fmt: str = "onnx", cache: Path | None = None) -> Path:
    """The model file of one table entry (batch 1, fixed shape), exported once and then served from the cache."""
    write = _writer(fmt)
    digest = entry_cache_key(space, entry, fmt)
    path = Path(cache or cache_dir()) / space.name / f"{entry.resolution}" / f"{digest}.{fmt}"
    if path.exists():
        return path
    return _materialise(path, write, entry_module(space, entry), entry.input_shape)


def export_subnet(space: SearchSpace, cfg: SubnetConfig, fmt: str = "onnx", weights=None, seed: int = 0,
                  cache: Path | None = None) -> Path:
    """A whole subnet as one model: random-but-seeded weights (latency does not depend on values), or
    `weights` (a state dict of the static subnet, or an nn.Module such as `supernet.extract(cfg)`)."""
    write = _writer(fmt)
    space.validate(cfg)
    doc = {"space": _space_doc(space), "config": cfg.to_string(), "format": fmt, "versions": exporter_versions(fmt)}
    module = None
    if weights is None:
        doc["seed"] = seed
    else:
        module = weights if hasattr(weights, "state_dict") else None
        state = weights.state_dict() if module is not None else weights
        doc["weights"] = _state_digest(state)
    path = Path(cache or cache_dir()) / space.name / "subnets" / f"{_digest(doc)}.{fmt}"
    if path.exists():
        return path
    if module is None:
        module = subnet_module(space, cfg, seed)
        if weights is not None:
            module.load_state_dict(weights)
    return _materialise(path, write, module.eval(), (1, space.in_channels, cfg.r, cfg.r))


def _state_digest(state) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:20]
