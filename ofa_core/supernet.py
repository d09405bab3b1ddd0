"""The elastic OFA-MobileNetV3 supernet: `forward(x, cfg)` runs one subnet; `extract(cfg)` copies it out.

The config is an argument of every call; the network keeps no "active subnet" state. Fixed parts (first
conv, first block, final expand, feature mix, classifier) are the static modules of `ofa_core.blocks`; the
elastic block slots are `ofa_core.ops.ElasticMBConv`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ofa_core import blocks as B
from ofa_core.ops import ElasticMBConv
from ofa_core.errors import CheckpointError, InvalidConfigError
from ofa_core.space import SearchSpace, SubnetConfig


class OFAMobileNetV3(nn.Module):
    """Weight-sharing supernet of a `SearchSpace`; holds the weights of its largest subnet."""

    def __init__(self, space: SearchSpace | str) -> None:
        super().__init__()
        self.space = SearchSpace.get(space) if isinstance(space, str) else space
        sp = self.space
        self.first_conv = B.first_conv(sp)
        self.first_block = B.first_block(sp)
        self.blocks = nn.ModuleList(
            ElasticMBConv(b.in_channels, b.out_channels, b.stride, b.act, b.se, sp.ks_list, sp.expand_list)
            for b in sp.blocks()
        )
        self.final_expand = B.final_expand(sp)
        self.pool = B.global_pool()
        self.feature_mix = B.feature_mix(sp)
        self.classifier = B.classifier(sp)
        self.reset_parameters()

    # ---- weights -------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """OFA's "he_fout" initialisation: convs ~ N(0, 2 / fan_out), BN 1/0, linear U(+-1/sqrt(in)), zero biases."""
        for m in self.modules():
            weight = getattr(m, "weight", None)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.uniform_(-bound, bound)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(weight, nn.Parameter) and weight.dim() == 4:
                fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]  # as OFA: groups not divided out
                weight.normal_(0.0, math.sqrt(2.0 / fan_out))
                bias = getattr(m, "bias", None)
                if isinstance(bias, nn.Parameter):
                    bias.zero_()

    def num_params(self) -> int:
        """Every parameter of the supernet, kernel transformation matrices included."""
        return sum(p.numel() for p in self.parameters())

    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load weights saved from the official `OFAMobileNetV3` (or a published checkpoint of it).

        Accepts the bare state dict or `{"state_dict": ...}`; raises `CheckpointError` on missing, unexpected
        or misshapen keys.
        """
        self.load_state_dict(remap_official_state_dict(self, state_dict), strict=True)

    def official_key_map(self) -> dict[str, str]:
        """Our state-dict key -> the official implementation's key."""
        return official_key_map(self)

    # ---- running one subnet --------------------------------------------------------------------------
    def config(self, cfg: SubnetConfig | Mapping | str) -> SubnetConfig:
        """`cfg` as a validated `SubnetConfig` (also accepts the official dict or the string form)."""
        if isinstance(cfg, SubnetConfig):
            return self.space.validate(cfg)
        if isinstance(cfg, Mapping):
            return self.space.config_from_ofa_dict(cfg)
        if isinstance(cfg, str):
            return self.space.parse_config(cfg)
        raise InvalidConfigError(f"a subnet config must be a SubnetConfig, dict or string, got {type(cfg).__name__}")

    def forward(self, x: torch.Tensor, cfg: SubnetConfig | Mapping | str) -> torch.Tensor:
        """Logits of subnet `cfg` for `x` (N, C, H, W). The input's own size is used; `cfg.r` is not enforced."""
        cfg = self.config(cfg)
        x = self.first_block(self.first_conv(x))
        for i in cfg.active_slots():
            x = self.blocks[i](x, cfg.ks[i], cfg.e[i])
        x = self.feature_mix(self.pool(self.final_expand(x)))
        return self.classifier(x)

    # ---- extraction ----------------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, cfg: SubnetConfig | Mapping | str, fold_bn: bool = False) -> B.StaticMobileNetV3:
        """A static copy of subnet `cfg` made of `ofa_core.blocks` modules; same outputs as `self(x, cfg)`.

        With `fold_bn`, every BatchNorm is folded into the preceding conv (which gains a bias) using the running
        statistics, so it matches the supernet in eval mode. The copy is in the supernet's train/eval mode.
        """
        cfg = self.config(cfg)
        sp, norm = self.space, not fold_bn
        specs = sp.blocks()
        static = B.StaticMobileNetV3(  # built on "meta" without random initialisation; every tensor set below
            B.first_conv(sp, norm, init=False), [B.first_block(sp, norm, init=False)]
            + [B.mbconv(sp, specs[i], cfg.ks[i], cfg.e[i], norm, init=False) for i in cfg.active_slots()],
            B.final_expand(sp, norm, init=False), B.global_pool(), B.feature_mix(sp, init=False),
            B.classifier(sp, init=False),
        )
        _copy_conv_bn(static.first_conv, self.first_conv.conv.weight, self.first_conv.bn, fold_bn)
        _copy_static_mbconv(static.blocks[0], self.first_block, fold_bn)
        for dst, i in zip(list(static.blocks)[1:], cfg.active_slots()):
            _copy_elastic_mbconv(dst, self.blocks[i], cfg.ks[i], cfg.e[i], fold_bn)
        _copy_conv_bn(static.final_expand, self.final_expand.conv.weight, self.final_expand.bn, fold_bn)
        _set(static.feature_mix.conv, weight=self.feature_mix.conv.weight)
        _set(static.classifier.linear, weight=self.classifier.linear.weight, bias=self.classifier.linear.bias)
        leftover = [n for n, t in [*static.named_parameters(), *static.named_buffers()] if t.is_meta]
        if leftover:  # every tensor of the meta-built skeleton must have been replaced
            raise RuntimeError(f"extract left {leftover[0]} unset")
        return static.train(self.training)

    # ---- elastic width -------------------------------------------------------------------------------
    @torch.no_grad()
    def sort_channels(self, expand_stage: int = 0) -> None:
        """Reorder every block's middle channels by the L1 norm of the projecting conv (most important first).

        The network's function is unchanged for the largest expand ratio. With `expand_stage` k > 0 (the k-th
        width phase of progressive shrinking), channels only move inside the bands that the k+1 largest
        expand ratios delimit, so widths already trained keep their channels.
        """
        ratios = sorted(self.space.expand_list, reverse=True)
        for blk in self.blocks:
            importance = blk.project_conv.weight.abs().sum(dim=(0, 2, 3)).cpu().numpy()
            bounds = [blk.middle(r) for r in ratios[1:expand_stage + 1]]
            band = np.searchsorted(np.sort(np.asarray(bounds, dtype=np.int64)), np.arange(importance.size),
                                   side="right") if bounds else np.zeros(importance.size, dtype=np.int64)
            order = torch.as_tensor(np.lexsort((-importance, band)), device=blk.project_conv.weight.device)
            _permute_middle(blk, order)


def _fold(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    c = weight.shape[0]
    scale = bn.weight[:c] / torch.sqrt(bn.running_var[:c] + bn.eps)
    b = bn.bias[:c] - bn.running_mean[:c] * scale
    if bias is not None:
        b = b + bias * scale
    return weight * scale.reshape(-1, 1, 1, 1), b


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(memory_format=torch.contiguous_format))


def _set(module: nn.Module, **tensors: torch.Tensor) -> None:
    """Replace existing parameters (copies of the given tensors) or buffers of `module` in place.

    Writes the module's own tables directly: extraction sets ~400 tensors and `Module.__setattr__` is slow.
    """
    for name, t in tensors.items():
        if name in module._parameters:
            module._parameters[name] = _param(t)
        elif name in module._buffers:
            module._buffers[name] = t.detach().clone()
        else:
            raise KeyError(f"{type(module).__name__} has no tensor {name}")


def _copy_conv_bn(dst: B.ConvBNAct, weight: torch.Tensor, bn: nn.BatchNorm2d | None, fold: bool) -> None:
    """Give a meta-built static ConvBNAct copies of `weight` and the leading channels of `bn` (folded if asked)."""
    if fold and bn is not None:
        w, b = _fold(weight, None, bn)
        _set(dst.conv, weight=w, bias=b)
        return
    _set(dst.conv, weight=weight)
    if bn is not None:
        c = weight.shape[0]
        d = dst.bn
        d.eps, d.momentum = bn.eps, bn.momentum
        _set(d, weight=bn.weight[:c], bias=bn.bias[:c], running_mean=bn.running_mean[:c],
             running_var=bn.running_var[:c], num_batches_tracked=bn.num_batches_tracked)


def _copy_se(dst: B.SqueezeExcite, reduce: nn.Conv2d, expand: nn.Conv2d) -> None:
    m, c = dst.reduce.weight.shape[:2]
    _set(dst.reduce, weight=reduce.weight[:m, :c], bias=reduce.bias[:m])
    _set(dst.expand, weight=expand.weight[:c, :m], bias=expand.bias[:c])


def _copy_static_mbconv(dst: B.MBConv, src: B.MBConv, fold: bool) -> None:
    for name in ("expand", "depthwise", "project"):
        d, s = getattr(dst, name), getattr(src, name)
        if d is not None:
            _copy_conv_bn(d, s.conv.weight, s.bn, fold)
    if dst.se is not None:
        _copy_se(dst.se, src.se.reduce, src.se.expand)


def _copy_elastic_mbconv(dst: B.MBConv, src: ElasticMBConv, kernel: int, expand: int, fold: bool) -> None:
    mid = src.middle(expand)
    _copy_conv_bn(dst.expand, src.expand_conv.active_weight(src.in_channels, mid), src.expand_bn, fold)
    _copy_conv_bn(dst.depthwise, src.depth_conv.active_weight(mid, kernel), src.depth_bn, fold)
    if dst.se is not None:
        _copy_se(dst.se, src.se.reduce, src.se.expand)
    _copy_conv_bn(dst.project, src.project_conv.active_weight(mid, src.out_channels), src.project_bn, fold)


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        t.copy_(t[order])


def _permute_middle(blk: ElasticMBConv, order: torch.Tensor) -> None:
    """Apply one permutation of the middle channels to every tensor that touches them."""
    blk.project_conv.weight.copy_(blk.project_conv.weight[:, order])
    blk.depth_conv.weight.copy_(blk.depth_conv.weight[order])
    _permute_bn(blk.depth_bn, order)
    blk.expand_conv.weight.copy_(blk.expand_conv.weight[order])
    _permute_bn(blk.expand_bn, order)
    if blk.se is not None:
        se = blk.se
        se.expand.weight.copy_(se.expand.weight[order])
        se.expand.bias.copy_(se.expand.bias[order])
        se.reduce.weight.copy_(se.reduce.weight[:, order])
        se_order = torch.argsort(se.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True, stable=True)
        se.reduce.weight.copy_(se.reduce.weight[se_order])
        se.reduce.bias.copy_(se.reduce.bias[se_order])
        se.expand.weight.copy_(se.expand.weight[:, se_order])


# ---- the official implementation's state-dict keys ------------------------------------------------------
# (our key pattern, official key with {slot}), official names in canonical form: ".bn.bn." -> ".bn.",
# ".conv.conv." -> ".conv.", ".linear.linear." -> ".linear.", ".mobile_inverted_conv." -> ".conv.".
_ELASTIC_KEYS = (
    (r"expand_conv\.weight", "inverted_bottleneck.conv.weight"),
    (r"expand_bn\.(\w+)", "inverted_bottleneck.bn.{0}"),
    (r"depth_conv\.weight", "depth_conv.conv.weight"),
    (r"depth_conv\.transforms\.(\w+)", "depth_conv.conv.{0}_matrix"),
    (r"depth_bn\.(\w+)", "depth_conv.bn.{0}"),
    (r"se\.(reduce|expand)\.(\w+)", "depth_conv.se.fc.{0}.{1}"),
    (r"project_conv\.weight", "point_linear.conv.weight"),
    (r"project_bn\.(\w+)", "point_linear.bn.{0}"),
)
_FIXED_PREFIXES = (
    ("first_conv.", "first_conv."),
    ("first_block.depthwise.", "blocks.0.conv.depth_conv."),
    ("first_block.project.", "blocks.0.conv.point_linear."),
    ("final_expand.", "final_expand_layer."),
    ("feature_mix.", "feature_mix_layer."),
    ("classifier.", "classifier."),
)


def _canonical_official(key: str) -> str:
    key = key.removeprefix("module.").replace(".mobile_inverted_conv.", ".conv.")
    return key.replace(".bn.bn.", ".bn.").replace(".conv.conv.", ".conv.").replace(".linear.linear.", ".linear.")


def official_key_map(net: OFAMobileNetV3) -> dict[str, str]:
    """Our state-dict key -> the official key (canonical form), for every entry of `net.state_dict()`."""
    out: dict[str, str] = {}
    for key in net.state_dict():
        m = re.match(r"blocks\.(\d+)\.(.+)$", key)
        if m:
            slot, rest = int(m.group(1)), m.group(2)
            for pattern, template in _ELASTIC_KEYS:
                mm = re.fullmatch(pattern, rest)
                if mm:
                    out[key] = f"blocks.{slot + 1}.conv." + template.format(*mm.groups())
                    break
        else:
            for ours, theirs in _FIXED_PREFIXES:
                if key.startswith(ours):
                    out[key] = theirs + key[len(ours):]
                    break
        if key not in out:
            raise RuntimeError(f"no official name for supernet key {key}")  # a bug here, not a user error
    return out


def remap_official_state_dict(net: OFAMobileNetV3, state_dict: Mapping) -> dict[str, torch.Tensor]:
    """The official state dict renamed to our keys; `CheckpointError` (one line) if it does not fit `net`."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    theirs = {_canonical_official(k): v for k, v in state_dict.items()}
    mapping = official_key_map(net)
    own = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    missing = []
    for ours, official in mapping.items():
        if official not in theirs:
            if ours.endswith("num_batches_tracked"):
                out[ours] = torch.zeros_like(own[ours])
                continue
            missing.append(official)
            continue
        value = theirs[official]
        if tuple(value.shape) != tuple(own[ours].shape):
            raise CheckpointError(f"official weight {official} has shape {tuple(value.shape)}, "
                                  f"{net.space.name} needs {tuple(own[ours].shape)}")
        out[ours] = value
    if missing:
        raise CheckpointError(f"checkpoint is not an official {net.space.name} supernet: {len(missing)} keys "
                              f"missing, e.g. {missing[0]}")
    extra = sorted(set(theirs) - set(mapping.values()))
    if extra:
        raise CheckpointError(f"checkpoint has {len(extra)} keys that {net.space.name} lacks, e.g. {extra[0]}")
    return out
