"""BatchNorm recalibration for one chosen subnet (OFA's `set_running_statistics`, without global switches).

Weight sharing leaves the supernet's running statistics matching no particular subnet. Recalibration runs the
subnet over a few training batches, normalising each batch by its own statistics, and sets every BatchNorm's
running mean and variance to the average of the per-batch mean and (biased) variance, weighted by batch size.
Only the channels the subnet uses are written; BatchNorms the subnet does not run keep their statistics.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, cfg=None, max_batches: int | None = None) -> int:
    """Recompute the running statistics of `model` (a static net, or the supernet when `cfg` is given).

    `batches` yields input tensors or `(inputs, labels)` pairs. Returns the number of images seen. Every
    other piece of state (train/eval mode, dropout, `num_batches_tracked`, weights) is left as it was.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if not bns:
        return 0
    sums: dict[nn.BatchNorm2d, list] = {}

    def pre_hook(bn: nn.BatchNorm2d, inputs: tuple) -> None:
        x = inputs[0].float()
        mean = x.mean(dim=(0, 2, 3))
        var = (x - mean.reshape(1, -1, 1, 1)).pow(2).mean(dim=(0, 2, 3))
        n = x.shape[0]
        acc = sums.get(bn)
        if acc is None:
            sums[bn] = [mean * n, var * n, n]
        else:
            acc[0] += mean * n
            acc[1] += var * n
            acc[2] += n

    modes = {m: m.training for m in model.modules()}
    saved = {bn: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns}
    handles = [bn.register_forward_pre_hook(pre_hook) for bn in bns]
    seen = 0
    try:
        model.eval()
        for bn in bns:
            bn.train()  # normalise by the batch's own statistics, as the final network's data will be
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(next(model.parameters()).device)
            model(x) if cfg is None else model(x, cfg)
            seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
        for bn, (mean, var, tracked) in saved.items():  # undo the momentum updates of the passes above
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(tracked)
    for bn, (mean_sum, var_sum, n) in sums.items():
        c = mean_sum.shape[0]
        bn.running_mean[:c] = (mean_sum / n).to(bn.running_mean.dtype)
        bn.running_var[:c] = (var_sum / n).to(bn.running_var.dtype)
    return seen
