"""Elastic operators of the supernet: each takes the active shape as a forward argument, never as state.

Weights are stored at their largest shape; a smaller shape uses a leading slice (channels) or, for the
depthwise kernel, the centre crop passed through the learned kernel transformation matrices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ofa_core.space import make_divisible

ACTIVATIONS = ("relu", "h_swish", "none")


def activate(x: torch.Tensor, act: str) -> torch.Tensor:
    """Apply the named activation (h-swish is x * relu6(x + 3) / 6, as MobileNetV3 defines it)."""
    if act == "relu":
        return F.relu(x)
    if act == "h_swish":
        return F.hardswish(x)
    if act == "none":
        return x
    raise ValueError(f"unknown activation {act!r}")


def activation_module(act: str) -> nn.Module:
    """The `nn.Module` twin of `activate`, for static (exportable) networks."""
    if act == "relu":
        return nn.ReLU()
    if act == "h_swish":
        return nn.Hardswish()
    if act == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {act!r}")


def crop_centre(weight: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` window of a (..., K, K) kernel."""
    k = weight.shape[-1]
    start = (k - size) // 2
    return weight[..., start:start + size, start:start + size]


class ElasticPointwiseConv(nn.Module):
    """1x1 convolution whose input and output channels are leading slices of the full weight."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_out, max_in, 1, 1))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def active_weight(self, in_channels: int, out_channels: int) -> torch.Tensor:
        return self.weight[:out_channels, :in_channels]

    def forward(self, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        return F.conv2d(x, self.active_weight(x.shape[1], out_channels))


class ElasticDepthwiseConv(nn.Module):
    """Depthwise conv with elastic kernel: one K_max kernel; smaller kernels come from its centre.

    Going from kernel `a` down to the next smaller `b`, the centre b x b window is flattened and multiplied
    by a learned (b*b, b*b) matrix (`transforms["{a}to{b}"]`, identity at start): w_b = crop(w_a) @ M^T.
    """

    def __init__(self, max_channels: int, kernel_sizes: tuple[int, ...], stride: int) -> None:
        super().__init__()
        self.kernel_sizes = tuple(sorted(set(kernel_sizes)))
        self.stride = stride
        k = self.kernel_sizes[-1]
        self.weight = nn.Parameter(torch.empty(max_channels, 1, k, k))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for small, big in zip(self.kernel_sizes[:-1], self.kernel_sizes[1:])
        })

    def active_weight(self, channels: int, kernel: int) -> torch.Tensor:
        """The (channels, 1, kernel, kernel) filter of that kernel size (differentiable in the matrices)."""
        w = self.weight[:channels]
        for big, small in zip(reversed(self.kernel_sizes[1:]), reversed(self.kernel_sizes[:-1])):
            if big <= kernel:
                break
            flat = crop_centre(w, small).reshape(channels, small * small)
            w = F.linear(flat, self.transforms[f"{big}to{small}"]).reshape(channels, 1, small, small)
        return w

    def forward(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        c = x.shape[1]
        return F.conv2d(x, self.active_weight(c, kernel), None, self.stride, kernel // 2, 1, c)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the leading `C` channels of its input; running statistics are sliced the same way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or not self.track_running_stats
        return F.batch_norm(
            x, self.running_mean[:c] if self.running_mean is not None else None,
            self.running_var[:c] if self.running_var is not None else None,
            self.weight[:c], self.bias[:c], use_batch, factor, self.eps,
        )


class ElasticSqueezeExcite(nn.Module):
    """Squeeze-and-excite whose middle width follows its input: make_divisible(C // 4, 8)."""

    def __init__(self, max_channels: int) -> None:
        super().__init__()
        mid = make_divisible(max_channels // 4, 8)
        self.reduce = nn.Conv2d(max_channels, mid, 1, bias=True)
        self.expand = nn.Conv2d(mid, max_channels, 1, bias=True)

    @staticmethod
    def middle(channels: int) -> int:
        return make_divisible(channels // 4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        m = self.middle(c)
        s = x.mean((2, 3), keepdim=True)
        s = F.relu(F.conv2d(s, self.reduce.weight[:m, :c], self.reduce.bias[:m]))
        s = F.conv2d(s, self.expand.weight[:c, :m], self.expand.bias[:c])
        return x * F.hardsigmoid(s)


class ElasticMBConv(nn.Module):
    """One elastic block slot: 1x1 expand -> depthwise (elastic kernel) -> SE? -> 1x1 project (+x).

    The middle width is `make_divisible(round(in * expand), 8)`; the first channels of the middle layer are
    the ones kept (see `OFAMobileNetV3.sort_channels`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        act: str,
        se: bool,
        kernel_sizes: tuple[int, ...],
        expand_ratios: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride, self.act = in_channels, out_channels, stride, act
        self.residual = stride == 1 and in_channels == out_channels
        max_mid = self.middle(max(expand_ratios))
        self.expand_conv = ElasticPointwiseConv(in_channels, max_mid)
        self.expand_bn = ElasticBatchNorm2d(max_mid)
        self.depth_conv = ElasticDepthwiseConv(max_mid, kernel_sizes, stride)
        self.depth_bn = ElasticBatchNorm2d(max_mid)
        self.se = ElasticSqueezeExcite(max_mid) if se else None
        self.project_conv = ElasticPointwiseConv(max_mid, out_channels)
        self.project_bn = ElasticBatchNorm2d(out_channels)

    def middle(self, expand: int) -> int:
        return make_divisible(round(self.in_channels * expand), 8)

    def forward(self, x: torch.Tensor, kernel: int, expand: int) -> torch.Tensor:
        y = activate(self.expand_bn(self.expand_conv(x, self.middle(expand))), self.act)
        y = activate(self.depth_bn(self.depth_conv(y, kernel)), self.act)
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project_conv(y, self.out_channels))
        return y + x if self.residual else y
