"""Our supernet reproduces the official implementation (PyPI `ofa==0.1.0.post202307202001`) from its weights.

CI installs it through the `official` extra. Its package imports torchvision and gdown, which its wheel does
not declare and which do not work beside our torch: empty stand-ins take those names while it is imported.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from ofa_core import OFAMobileNetV3, SearchSpace
from ofa_core.errors import CheckpointError

RESOLUTIONS = (128, 176, 224)
N_SUBNETS = 20


class _StandIn(types.ModuleType):
    """A module whose every public attribute is a fresh empty class (enough for `class X(transforms.Y)`)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


def _import_official():
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.datasets", "gdown"]
    if importlib.util.find_spec("ofa") is None:
        pytest.skip("official `ofa` package not installed; "
                    "install it with: pip install -c .ci/constraints.txt torch==2.13.0 '.[official]'")
    with pytest.MonkeyPatch.context() as mp:
        stand_ins = {n: _StandIn(n) for n in names}
        for n, module in stand_ins.items():
            mp.setitem(sys.modules, n, module)
            parent, _, child = n.rpartition(".")
            if parent:
                setattr(stand_ins[parent], child, module)
        return importlib.import_module("ofa.imagenet_classification.elastic_nn.networks").OFAMobileNetV3


@torch.no_grad()
def _randomise(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights everywhere (transform matrices too) and non-trivial BN running statistics."""
    for name, p in net.named_parameters():
        if name.endswith("_matrix"):
            p.copy_(torch.eye(p.shape[0]) + 0.3 * torch.randn(p.shape, generator=gen))
        elif p.dim() == 1:
            p.copy_((1.0 if name.endswith("bn.weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
        else:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in) ** 0.5)
    for name, b in net.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=gen))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=gen))


@pytest.fixture(scope="module")
def official_cls():
    return _import_official()


@pytest.mark.parametrize("width", [1.0, 1.2])
def test_official_equivalence(official_cls, one_thread, width):
    space = SearchSpace.get(f"ofa-mbv3-w{width}")
    theirs = official_cls(n_classes=1000, dropout_rate=0.1, width_mult=width, ks_list=[3, 5, 7],
                          expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    _randomise(theirs, torch.Generator().manual_seed(int(width * 10)))
    theirs.eval()
    ours = OFAMobileNetV3(space)
    ours.load_official_state_dict(theirs.state_dict())
    ours.eval()
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters())

    rng = np.random.default_rng(7)
    gen = torch.Generator().manual_seed(3)
    worst = 0.0
    for cfg in space.sample(rng, N_SUBNETS):
        theirs.set_active_subnet(ks=list(cfg.ks), e=list(cfg.e), d=list(cfg.d))
        for r in RESOLUTIONS:
            x = torch.randn(1, 3, r, r, generator=gen)
            with torch.no_grad():
                expected, got = theirs(x), ours(x, cfg)
            assert expected.abs().max() > 1e-2  # a meaningful comparison, not two zeros
            worst = max(worst, (expected - got).abs().max().item())
    assert worst <= 1e-4, f"max abs logit difference {worst:.3g}"


def test_checkpoint_key_variants(official_cls):
    """Published checkpoints say `mobile_inverted_conv` and wrap the weights in {"state_dict": ...}."""
    space = SearchSpace.get("ofa-mbv3-w1.0")
    theirs = official_cls(width_mult=1.0, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    _randomise(theirs, torch.Generator().manual_seed(1))
    sd = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
          for k, v in theirs.state_dict().items()}
    ours = OFAMobileNetV3(space)
    ours.load_official_state_dict({"state_dict": sd})
    key = "blocks.3.depth_conv.transforms.7to5"
    assert torch.equal(ours.state_dict()[key], theirs.state_dict()["blocks.4.conv.depth_conv.conv.7to5_matrix"])

    with pytest.raises(CheckpointError) as err:
        OFAMobileNetV3(SearchSpace.get("ofa-mbv3-w1.2")).load_official_state_dict(sd)
    assert "\n" not in str(err.value)


def test_cost_matches_official_counter(official_cls, one_thread):
    """Our MACs and params equal the official counter run on the official extracted subnet."""
    from ofa.utils import count_net_flops, count_parameters

    space = SearchSpace.get("ofa-mbv3-w1.0")
    theirs = official_cls(width_mult=1.0, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    for cfg in space.sample(np.random.default_rng(9), 3, resolutions=[128, 160]) + [space.largest(r=128)]:
        theirs.set_active_subnet(ks=list(cfg.ks), e=list(cfg.e), d=list(cfg.d))
        sub = theirs.get_active_subnet(preserve_weight=False)
        assert space.macs(cfg) == int(count_net_flops(sub, (1, 3, cfg.r, cfg.r)))
        assert space.params(cfg) == count_parameters(sub)
