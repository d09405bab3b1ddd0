"""Static building blocks: plain convolutions with fixed shapes, what an extracted subnet is made of.

Each lookup-table entry of a device is one of these modules built by a factory below (random weights), so a
measured block and the same block inside an extracted subnet are the same graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ofa_core.ops import activation_module
from ofa_core.space import BlockSpec, SearchSpace, make_divisible


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same padding) that can skip random initialisation: `init=False` leaves meta tensors, for
    extraction, which then replaces every weight (initialising a subnet costs more than copying it)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False, init: bool = True) -> None:
        object.__setattr__(self, "_init", init)
        super().__init__(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=bias,
                         device=None if init else "meta")

    def reset_parameters(self) -> None:
        if self._init:
            super().reset_parameters()


class BatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` that can skip initialisation (see `Conv2d`)."""

    def __init__(self, num_features: int, init: bool = True) -> None:
        object.__setattr__(self, "_init", init)
        super().__init__(num_features, device=None if init else "meta")

    def reset_parameters(self) -> None:
        if self._init:
            super().reset_parameters()


class Linear(nn.Linear):
    """`nn.Linear` that can skip initialisation (see `Conv2d`)."""

    def __init__(self, in_features: int, out_features: int, init: bool = True) -> None:
        object.__setattr__(self, "_init", init)
        super().__init__(in_features, out_features, device=None if init else "meta")

    def reset_parameters(self) -> None:
        if self._init:
            super().reset_parameters()


class ConvBNAct(nn.Module):
    """Conv (same padding) -> BatchNorm (optional) -> activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: str = "relu",
        norm: bool = True,
        bias: bool = False,
        init: bool = True,
    ) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel, stride, groups=groups, bias=bias, init=init)
        self.bn = BatchNorm2d(out_channels, init=init) if norm else None
        self.act = activation_module(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class SqueezeExcite(nn.Module):
    """x * h_sigmoid(expand(relu(reduce(mean(x))))), both 1x1 convs with biases."""

    def __init__(self, channels: int, mid_channels: int, init: bool = True) -> None:
        super().__init__()
        self.reduce = Conv2d(channels, mid_channels, 1, bias=True, init=init)
        self.expand = Conv2d(mid_channels, channels, 1, bias=True, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(s)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (absent when `expand` is False) -> depthwise -> SE? -> 1x1 project (+x)."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        act: str,
        se: bool,
        residual: bool,
        expand: bool = True,
        norm: bool = True,
        init: bool = True,
    ) -> None:
        super().__init__()
        if not expand and mid_channels != in_channels:
            raise ValueError(f"an MBConv without expansion needs mid == in, got {mid_channels} != {in_channels}")
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError("a residual MBConv needs stride 1 and equal in/out channels")
        self.in_channels, self.mid_channels, self.out_channels = in_channels, mid_channels, out_channels
        self.kernel, self.stride, self.act_name, self.residual = kernel, stride, act, residual
        conv = dict(norm=norm, bias=not norm, init=init)
        self.expand = ConvBNAct(in_channels, mid_channels, 1, act=act, **conv) if expand else None
        self.depthwise = ConvBNAct(mid_channels, mid_channels, kernel, stride, groups=mid_channels, act=act, **conv)
        self.se = SqueezeExcite(mid_channels, se_channels(mid_channels), init=init) if se else None
        self.project = ConvBNAct(mid_channels, out_channels, 1, act="none", **conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return y + x if self.residual else y


class GlobalPool(nn.Module):
    """Global average pooling, keeping (N, C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class Classifier(nn.Module):
    """Flatten -> dropout -> linear."""

    def __init__(self, in_features: int, n_classes: int, dropout: float, init: bool = True) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = Linear(in_features, n_classes, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(torch.flatten(x, 1)))


class StaticMobileNetV3(nn.Module):
    """A plain MobileNetV3 (one subnet of the supernet): every shape fixed at construction."""

    def __init__(self, first_conv: nn.Module, blocks: list[nn.Module], final_expand: nn.Module,
                 pool: nn.Module, feature_mix: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.Sequential(*blocks)
        self.final_expand = final_expand
        self.pool = pool
        self.feature_mix = feature_mix
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.first_conv(x))
        x = self.feature_mix(self.pool(self.final_expand(x)))
        return self.classifier(x)


def se_channels(mid_channels: int) -> int:
    """Middle width of squeeze-and-excite, as the official network rounds it."""
    return make_divisible(mid_channels // 4, 8)


# ---- factories: one per lookup-table entry kind -------------------------------------------------------
# `norm=False` builds the BN-folded variant (convs with biases); `init=False` skips random initialisation.
def first_conv(space: SearchSpace, norm: bool = True, init: bool = True) -> ConvBNAct:
    return ConvBNAct(space.in_channels, space.first_conv_width, 3, space.first_conv_stride,
                     act=space.first_conv_act, norm=norm, bias=not norm, init=init)


def first_block(space: SearchSpace, norm: bool = True, init: bool = True) -> MBConv:
    """The fixed 3x3 depthwise block with expand ratio 1 (no expansion conv)."""
    c_in, c_out = space.first_conv_width, space.first_block_width
    return MBConv(c_in, c_in, c_out, 3, 1, space.first_block_act, se=False, residual=c_in == c_out,
                  expand=False, norm=norm, init=init)


def mbconv(space: SearchSpace, block_spec: BlockSpec, kernel: int, expand: int, norm: bool = True,
           init: bool = True) -> MBConv:
    """The static MBConv that slot `block_spec` becomes with that kernel and expand ratio."""
    mid = space.middle_channels(block_spec.in_channels, expand)
    return MBConv(block_spec.in_channels, mid, block_spec.out_channels, kernel, block_spec.stride,
                  block_spec.act, block_spec.se, block_spec.residual, expand=True, norm=norm, init=init)


def final_expand(space: SearchSpace, norm: bool = True, init: bool = True) -> ConvBNAct:
    return ConvBNAct(space.stages[-1].width, space.final_expand_width, 1, act="h_swish", norm=norm, bias=not norm,
                     init=init)


def global_pool() -> GlobalPool:
    return GlobalPool()


def feature_mix(space: SearchSpace, init: bool = True) -> ConvBNAct:
    """1x1 conv without BN and without bias, then h-swish (as in the official network)."""
    return ConvBNAct(space.final_expand_width, space.feature_mix_width, 1, act="h_swish", norm=False, bias=False,
                     init=init)


def classifier(space: SearchSpace, init: bool = True) -> Classifier:
    return Classifier(space.feature_mix_width, space.n_classes, space.dropout, init=init)
