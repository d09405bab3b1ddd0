"""The elastic supernet: extracted subnets equal the supernet, channel sorting, bad input, BN recalibration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ofa_core import InvalidConfigError, OFAMobileNetV3, SearchSpace, SubnetConfig, UnknownSpaceError
from ofa_core import blocks as B
from ofa_core.bn import recalibrate_bn


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def randomise_bn(net: nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, so that slicing mistakes show."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
            m.bias.copy_(0.2 * torch.randn(c, generator=gen))
            m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    for name, p in net.named_parameters():
        if "transforms" in name:
            p.add_(0.2 * torch.randn(p.shape, generator=gen))


_NETS: dict[str, OFAMobileNetV3] = {}


def supernet(name: str) -> OFAMobileNetV3:
    """One randomised supernet per space for the whole module (building w1.2 costs a second)."""
    if name not in _NETS:
        torch.manual_seed(0)
        net = OFAMobileNetV3(SearchSpace.get(name))
        randomise_bn(net, 1)
        _NETS[name] = net.eval()
    return _NETS[name]


def small_resolution(space: SearchSpace) -> int:
    """The smallest resolution whose last feature map is at least 2x2 (cheap, yet BN statistics stay sane)."""
    return min(r for r in space.resolutions if space.feature_size(r)[-1] >= 2)


@pytest.mark.parametrize("name", SearchSpace.names())
@pytest.mark.parametrize("fold_bn", [False, True])
def test_extract_equals_supernet(name, fold_bn):
    net = supernet(name)
    space = net.space
    rng = np.random.default_rng(11)
    cfgs = space.sample(rng, 4, resolutions=[small_resolution(space)])
    cfgs += [space.largest(r=small_resolution(space)), space.smallest(r=small_resolution(space))]
    gen = torch.Generator().manual_seed(5)
    for cfg in cfgs:
        x = torch.randn(2, space.in_channels, cfg.r, cfg.r, generator=gen)
        if fold_bn:  # folding is exact only up to rounding: keep activations at a realistic scale
            recalibrate_bn(net, [torch.randn(16, space.in_channels, cfg.r, cfg.r, generator=gen)], cfg=cfg)
        static = net.extract(cfg, fold_bn=fold_bn)
        assert not static.training
        with torch.no_grad():
            want, got = net(x, cfg), static(x)
        tol = 1e-4 * max(1.0, want.abs().max().item()) if fold_bn else 0.0  # relative, for folding
        assert (want - got).abs().max().item() <= tol, cfg.to_string()
        assert len(static.blocks) == 1 + sum(cfg.d)
        bn_count = sum(isinstance(m, nn.BatchNorm2d) for m in static.modules())
        assert bn_count == 0 if fold_bn else bn_count > 0


ALLOWED = (B.StaticMobileNetV3, B.ConvBNAct, B.MBConv, B.SqueezeExcite, B.GlobalPool, B.Classifier, B.Conv2d,
           B.BatchNorm2d, B.Linear,
           nn.Sequential, nn.ReLU, nn.Hardswish, nn.Identity, nn.Dropout)


def test_extracted_is_made_of_table_blocks():
    """Each extracted block has exactly the shapes of the factory module that a lookup-table entry uses."""
    net = supernet("ofa-mbv3-w1.0")
    space = net.space
    cfg = space.sample(np.random.default_rng(3))
    static = net.extract(cfg)
    assert all(type(m) in ALLOWED for m in static.modules())
    specs = space.blocks()
    expected = [B.first_block(space)] + [B.mbconv(space, specs[i], cfg.ks[i], cfg.e[i]) for i in cfg.active_slots()]
    for got, want in zip(static.blocks, expected):
        assert {k: v.shape for k, v in got.state_dict().items()} == {k: v.shape for k, v in want.state_dict().items()}
    for got, want in [(static.first_conv, B.first_conv(space)), (static.final_expand, B.final_expand(space)),
                      (static.feature_mix, B.feature_mix(space)), (static.classifier, B.classifier(space))]:
        assert {k: v.shape for k, v in got.state_dict().items()} == {k: v.shape for k, v in want.state_dict().items()}


def test_any_resolution_and_official_dict_and_string():
    net = supernet("ofa-mbv3-fmnist")
    cfg = net.space.sample(np.random.default_rng(4))
    x = torch.randn(1, 1, 21, 21)  # not a resolution of the space: the input's size is what runs
    with torch.no_grad():
        y = net(x, cfg)
        assert torch.equal(y, net(x, cfg.to_ofa_dict()))
        assert torch.equal(y, net(x, cfg.to_string()))
    assert y.shape == (1, 10)


def test_supernet_param_count_w10():
    net = supernet("ofa-mbv3-w1.0")
    assert net.num_params() == 7_678_880
    matrices = sum(p.numel() for n, p in net.named_parameters() if "transforms" in n)
    assert net.num_params() - matrices == sum(p.numel() for p in net.extract(net.space.largest()).parameters())


def test_elastic_kernel_uses_transform_matrices():
    """A 3x3 kernel is crop(crop(w7) @ M75^T) @ M53^T; gradients reach both matrices."""
    space = SearchSpace.get("ofa-mbv3-fmnist")
    net = OFAMobileNetV3(space).train()
    conv = net.blocks[0].depth_conv
    with torch.no_grad():
        w3 = conv.active_weight(8, 3)
        c5 = conv.weight[:8, :, 1:6, 1:6].reshape(8, 25) @ conv.transforms["7to5"].T
        manual = c5.reshape(8, 1, 5, 5)[:, :, 1:4, 1:4].reshape(8, 9) @ conv.transforms["5to3"].T
        assert torch.allclose(w3, manual.reshape(8, 1, 3, 3))
        assert torch.equal(conv.active_weight(8, 7), conv.weight[:8])
    cfg = SubnetConfig.from_ofa_dict({**space.largest().to_ofa_dict(), "ks": [3] * space.n_slots})
    net(torch.randn(2, 1, 16, 16), cfg).sum().backward()
    assert conv.transforms["7to5"].grad.abs().sum() > 0
    assert conv.transforms["5to3"].grad.abs().sum() > 0


def test_sort_channels_keeps_largest_subnet_and_sorts():
    torch.manual_seed(2)
    net = OFAMobileNetV3(SearchSpace.get("ofa-mbv3-fmnist"))
    randomise_bn(net, 3)
    net.eval()
    cfg = net.space.largest(r=24)
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        before = net(x, cfg)
        net.sort_channels()
        after = net(x, cfg)
    assert torch.allclose(before, after, atol=1e-5)
    for blk in net.blocks:
        imp = blk.project_conv.weight.abs().sum(dim=(0, 2, 3))
        assert torch.all(imp[:-1] >= imp[1:])
        if blk.se is not None:
            se_imp = blk.se.expand.weight.abs().sum(dim=(0, 2, 3))
            assert torch.all(se_imp[:-1] >= se_imp[1:])


def test_sort_channels_expand_stage_keeps_bands():
    torch.manual_seed(4)
    net = OFAMobileNetV3(SearchSpace.get("ofa-mbv3-fmnist"))
    blk = net.blocks[5]
    widths = sorted({blk.middle(e) for e in net.space.expand_list})  # e.g. 72, 96, 144
    tagged = blk.project_conv.weight.detach().abs().sum(dim=(0, 2, 3)).clone()
    with torch.no_grad():
        net.sort_channels(expand_stage=1)
    after = blk.project_conv.weight.abs().sum(dim=(0, 2, 3))
    cut = widths[-2]  # the second largest width is protected: channels do not cross it
    assert torch.allclose(torch.sort(after[:cut]).values, torch.sort(tagged[:cut]).values)
    assert torch.all(after[:cut - 1] >= after[1:cut])


@pytest.mark.parametrize("bad", [
    lambda s: SubnetConfig((3,) * 19, (3,) * 19, (4, 4, 4, 4, 3), 160),  # wrong number of slots for the space
    lambda s: SubnetConfig((4,) * 20, (3,) * 20, (4,) * 5, 160),  # kernel 4
    lambda s: {"ks": [3] * 20, "e": [3] * 20, "d": [5, 2, 2, 2, 2], "r": [160]},  # depth 5
    lambda s: SubnetConfig((3,) * 20, (5,) * 20, (4,) * 5, 160),  # expand 5
    lambda s: SubnetConfig((3,) * 20, (3,) * 20, (4,) * 5, 300),  # resolution outside
    lambda s: "r160:k3e4|k3e4",  # two stages
    lambda s: 42,
])
def test_invalid_config_raises_one_line(bad):
    net = supernet("ofa-mbv3-w1.0")
    x = torch.randn(1, 3, 32, 32)
    for call in (lambda c: net(x, c), lambda c: net.extract(c)):
        with pytest.raises(InvalidConfigError) as err:
            call(bad(net.space))
        assert "\n" not in str(err.value) and str(err.value)


def test_unknown_space():
    with pytest.raises(UnknownSpaceError) as err:
        OFAMobileNetV3("ofa-mbv3-w9.9")
    assert "\n" not in str(err.value)


def _batches(seed: int, n: int, r: int = 24):
    gen = torch.Generator().manual_seed(seed)
    return [(2.0 * torch.randn(8, 1, r, r, generator=gen) + 0.5, torch.zeros(8)) for _ in range(n)]


def test_recalibrate_supernet_equals_recalibrate_extracted():
    torch.manual_seed(6)
    space = SearchSpace.get("ofa-mbv3-fmnist")
    net = OFAMobileNetV3(space)
    randomise_bn(net, 7)
    net.train()
    cfg = space.sample(np.random.default_rng(8), resolutions=[24])
    static = net.extract(cfg)
    untouched = net.blocks[3].project_bn.running_mean.clone()
    assert recalibrate_bn(net, _batches(1, 4), cfg=cfg) == 32
    assert recalibrate_bn(static, _batches(1, 4)) == 32
    assert net.training and static.training  # modes restored
    after = net.extract(cfg).eval()
    x = _batches(2, 1)[0][0]
    with torch.no_grad():
        assert torch.allclose(after(x), static.eval()(x), atol=1e-5)
    if 3 not in cfg.active_slots():
        assert torch.equal(net.blocks[3].project_bn.running_mean, untouched)


def test_recalibrate_matches_data_statistics():
    """First BN's running mean/var = the average over batches of each batch's mean and biased variance."""
    torch.manual_seed(9)
    space = SearchSpace.get("ofa-mbv3-fmnist")
    static = OFAMobileNetV3(space).extract(space.smallest())
    batches = _batches(3, 3)
    recalibrate_bn(static, batches)
    with torch.no_grad():
        feats = [static.first_conv.conv(x) for x, _ in batches]
    bn = static.first_conv.bn
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=False) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, atol=1e-4)
