"""MACs and parameter counts straight from configs, vectorised over a whole `ConfigBatch`.

What counts (the same rule as the official `ofa.utils.flops_counter`), for one image (batch 1):
- MACs: every `nn.Conv2d` adds out_elements x (in_channels / groups) x kernel_h x kernel_w, every `nn.Linear`
  adds in_features x out_features. Squeeze-and-excite convs and the classifier are included. Not counted:
  biases, BatchNorm, activations, pooling, the SE scaling product and residual additions.
- Params: every parameter of the extracted subnet (`net.extract(cfg)`, BatchNorm not folded): conv weights,
  conv biases (SE), BatchNorm weight and bias, linear weight and bias. Running statistics are buffers, not
  parameters. The supernet's kernel transformation matrices are not part of any subnet.
`count_module` measures the same thing on a real module with forward hooks; the tests hold them equal.

The entry points are `SearchSpace.macs` and `SearchSpace.params`: the space validates the configs and turns
them into a batch, then calls `batch_macs` / `batch_params` here (so this module needs nothing from
`ofa_core.space` at run time, and the two do not import each other).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ofa_core.space import ConfigBatch, SearchSpace


def _make_divisible(v: np.ndarray, divisor: int = 8) -> np.ndarray:
    """`ofa_core.space.make_divisible` on integer arrays."""
    v = np.asarray(v, dtype=np.int64)
    out = np.maximum(divisor, (v + divisor // 2) // divisor * divisor)
    return np.where(out < 0.9 * v, out + divisor, out)


def _slot_arrays(space: SearchSpace) -> dict[str, np.ndarray]:
    specs = space.blocks()
    return {
        "in": np.array([s.in_channels for s in specs], dtype=np.int64),
        "out": np.array([s.out_channels for s in specs], dtype=np.int64),
        "stride": np.array([s.stride for s in specs], dtype=np.int64),
        "se": np.array([s.se for s in specs], dtype=bool),
    }


def _spatial(space: SearchSpace, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) size after the first conv, (N, slots) input and output sizes of every slot (same padding)."""
    h = -(-r // space.first_conv_stride)
    first = h
    h_in, h_out = [], []
    for spec in space.blocks():
        h_in.append(h)
        h = -(-h // spec.stride)
        h_out.append(h)
    return first, np.stack(h_in, axis=1), np.stack(h_out, axis=1)


def _blocks(space: SearchSpace, b: ConfigBatch) -> tuple[np.ndarray, np.ndarray]:
    """Per config and slot: MACs and params of the elastic blocks (zero where depth skips them)."""
    s = _slot_arrays(space)
    mid = _make_divisible(s["in"][None, :] * b.e)
    se_mid = _make_divisible(mid // 4)
    _, h_in, h_out = _spatial(space, b.r)
    k2 = b.ks * b.ks
    se = s["se"][None, :]
    macs = (h_in ** 2 * s["in"] * mid + h_out ** 2 * mid * k2 + h_out ** 2 * mid * s["out"]
            + np.where(se, 2 * mid * se_mid, 0))
    params = (s["in"] * mid + 2 * mid + mid * k2 + 2 * mid + mid * s["out"] + 2 * s["out"]
              + np.where(se, 2 * mid * se_mid + se_mid + mid, 0))
    act = b.active
    return np.where(act, macs, 0), np.where(act, params, 0)


def _fixed(space: SearchSpace, r: np.ndarray) -> tuple[np.ndarray, int]:
    """MACs (N,) and params of everything outside the elastic blocks."""
    c0, c1, cl = space.first_conv_width, space.first_block_width, space.stages[-1].width
    fe, fm, nc = space.final_expand_width, space.feature_mix_width, space.n_classes
    h1, _, h_out = _spatial(space, r)
    hl = h_out[:, -1]
    macs = (h1 ** 2 * space.in_channels * c0 * 9 + h1 ** 2 * c0 * 9 + h1 ** 2 * c0 * c1
            + hl ** 2 * cl * fe + fe * fm + fm * nc)
    params = (space.in_channels * c0 * 9 + 2 * c0 + c0 * 9 + 2 * c0 + c0 * c1 + 2 * c1
              + cl * fe + 2 * fe + fe * fm + fm * nc + nc)
    return macs, params


def batch_macs(space: SearchSpace, b: ConfigBatch) -> np.ndarray:
    """MACs (int64, one per config) of a batch already validated against `space`, by the rule above."""
    block_macs, _ = _blocks(space, b)
    return (block_macs.sum(axis=1) + _fixed(space, b.r)[0]).astype(np.int64)


def batch_params(space: SearchSpace, b: ConfigBatch) -> np.ndarray:
    """Parameters (int64, one per config) of the extracted subnets of a batch already validated against `space`."""
    _, block_params = _blocks(space, b)
    return (block_params.sum(axis=1) + _fixed(space, b.r)[1]).astype(np.int64)


def count_module(module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, params) of a real module, measured with forward hooks on one input of `input_shape` (batch 1)."""
    import torch
    from torch import nn

    total = [0]

    def conv_hook(m: nn.Conv2d, _inputs, out) -> None:
        kh, kw = m.kernel_size
        total[0] += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inputs, _out) -> None:
        total[0] += m.in_features * m.out_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = module.training
    try:
        module.eval()
        p = next(module.parameters())
        with torch.no_grad():
            module(torch.zeros(input_shape, dtype=p.dtype, device=p.device))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total[0], sum(p.numel() for p in module.parameters())
