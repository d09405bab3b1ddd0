"""Top-1 accuracy of any subnet of a trained supernet, after BN recalibration.

A subnet's BN statistics are not stored in the supernet (they were accumulated over many subnets), so each
evaluation extracts the static subnet, recomputes its BN running statistics on a fixed sample of training
images at its resolution (as OFA does, ~2000 images), then scores the held-out split.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ofa_core.data import Split, iterate, prepare
from ofa_core.space import SubnetConfig


def recal_sample(train: Split, n_images: int, seed: int = 0) -> Split:
    """A fixed random sample of the training split for BN recalibration (same images for every subnet)."""
    n = min(n_images, len(train))
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(train), size=n, replace=False)))
    return train.subset(idx)


@torch.no_grad()
def recalibrate(module: torch.nn.Module, images: Split, resolution: int, batch_size: int = 500) -> None:
    """Reset every BatchNorm's running statistics and recompute them as exact averages over `images`."""
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over all recalibration batches
    module.train()
    for x, _ in iterate(images, batch_size):
        module(prepare(x, resolution))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    module.eval()


@torch.no_grad()
def top1(module: torch.nn.Module, split: Split, resolution: int, batch_size: int = 1000) -> float:
    """Fraction of `split` classified correctly by `module` (eval mode) at `resolution`."""
    module.eval()
    correct = 0
    for x, y in iterate(split, batch_size):
        correct += int((module(prepare(x, resolution)).argmax(1) == y).sum())
    return correct / max(1, len(split))


def evaluate_subnet(net, cfg: SubnetConfig, split: Split, train: Split, recal_images: int = 2000,
                    seed: int = 0) -> float:
    """Top-1 (a fraction) of subnet `cfg` of supernet `net` on `split`, BN recalibrated on training images."""
    static = net.extract(cfg).to(memory_format=torch.channels_last)
    recalibrate(static, recal_sample(train, recal_images, seed), cfg.r)
    return top1(static, split, cfg.r)


def evaluate_many(net, cfgs: Sequence[SubnetConfig], split: Split, train: Split, recal_images: int = 2000,
                  seed: int = 0, progress: bool = True) -> np.ndarray:
    """Top-1 of many subnets (float64 array), with a progress bar on stderr."""
    import sys

    from tqdm import tqdm

    recal = recal_sample(train, recal_images, seed)
    out = np.zeros(len(cfgs))
    for i, cfg in enumerate(tqdm(cfgs, desc="evaluating subnets", file=sys.stderr, disable=not progress,
                                 dynamic_ncols=True)):
        static = net.extract(cfg).to(memory_format=torch.channels_last)
        recalibrate(static, recal, cfg.r)
        out[i] = top1(static, split, cfg.r)
    return out
