"""Checkpoints as safetensors: tensors under prefixes (`net.`, `teacher.`, `opt.`), everything else as JSON
in the file's string metadata. No pickle anywhere, so a checkpoint from elsewhere cannot run code.

Two kinds: a training checkpoint (supernet, teacher, optimizer state, progress; resumable) and shipped
weights (the supernet alone, with the command, config and figures that produced it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ofa_core.atomic import atomic_path
from ofa_core.errors import CheckpointError

FORMAT = "ofa-bench-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds: tensors grouped by prefix, and its JSON metadata."""

    space: str
    kind: str  # "train" or "weights"
    net: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
    opt: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write atomically (temporary file, then rename), so an interruption never leaves a half file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for prefix, group in (("net.", ckpt.net), ("teacher.", ckpt.teacher), ("opt.", ckpt.opt)):
        for k, v in group.items():
            tensors[prefix + k] = v.detach().contiguous().cpu()
    meta = {"format": FORMAT, "space": ckpt.space, "kind": ckpt.kind, "meta": json.dumps(ckpt.meta)}
    with atomic_path(path, mode=0o644) as tmp:  # weights are meant to be shared: 0644, not owner-only
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read any checkpoint; a missing, truncated or foreign file is a one-line `CheckpointError`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged header or body
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or not a safetensors file ({reason})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an ofa-bench checkpoint")
    try:
        meta = json.loads(header.get("meta", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {path} has damaged metadata") from None
    groups: dict[str, dict[str, torch.Tensor]] = {"net.": {}, "teacher.": {}, "opt.": {}}
    for k, v in tensors.items():
        prefix = k.split(".", 1)[0] + "."
        if prefix not in groups:
            raise CheckpointError(f"checkpoint {path} holds an unexpected tensor {k!r}")
        groups[prefix][k[len(prefix):]] = v
    return Checkpoint(space=header.get("space", "?"), kind=header.get("kind", "?"), net=groups["net."],
                      teacher=groups["teacher."], opt=groups["opt."], meta=meta)


def check_state(path: str | Path, space_name: str, expected: dict[str, torch.Tensor],
                got: dict[str, torch.Tensor], what: str = "supernet") -> None:
    """Raise `CheckpointError` unless `got` has exactly the keys and shapes of `expected`."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: {what} weights do not match space {space_name} "
                              f"({len(missing)} missing, {len(extra)} unexpected, e.g. {(missing + extra)[0]!r})")
    for k, v in expected.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: {what} tensor {k!r} has shape {tuple(got[k].shape)}, "
                                  f"space {space_name} needs {tuple(v.shape)}")


def shipped_weights_path(space_name: str) -> Path:
    """Where the package keeps the trained supernet of a space (ofa_core/weights/<space>.safetensors)."""
    return Path(str(resources.files("ofa_core") / "weights" / f"{space_name}.safetensors"))


def load_supernet(space, path: str | Path | None = None):
    """An `OFAMobileNetV3` of `space` with weights from `path` (default: the shipped weights), in eval mode.

    Accepts both shipped weights and training checkpoints; another space's file is a `CheckpointError`.
    """
    from ofa_core.supernet import OFAMobileNetV3

    if path is None:
        path = shipped_weights_path(space.name)
        if not path.is_file():
            raise CheckpointError(f"no shipped weights for space {space.name} (expected {path}); "
                                  f"pass --checkpoint")
    ckpt = read_checkpoint(path)
    if ckpt.space != space.name:
        raise CheckpointError(f"checkpoint {path} is of space {ckpt.space}, not {space.name}")
    net = OFAMobileNetV3(space)
    expected = net.state_dict()
    check_state(path, space.name, expected, ckpt.net)
    net.load_state_dict(ckpt.net)
    net.eval()
    return net
