"""MACs and parameters from configs equal a forward-hook count on the extracted modules."""
from __future__ import annotations

import numpy as np
import pytest

from ofa_core import InvalidConfigError, OFAMobileNetV3, SearchSpace
from ofa_core.cost import count_module


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", SearchSpace.names())
def test_config_cost_equals_hook_count(name):
    space = SearchSpace.get(name)
    net = OFAMobileNetV3(space)
    rng = np.random.default_rng(21)
    cfgs = space.sample(rng, 6) + [space.largest(), space.smallest()]
    macs, params = space.macs(cfgs), space.params(cfgs)
    assert macs.dtype == np.int64 and macs.shape == (len(cfgs),)
    for cfg, m, p in zip(cfgs, macs, params):
        assert (int(m), int(p)) == count_module(net.extract(cfg), (1, space.in_channels, cfg.r, cfg.r)), str(cfg)
        assert space.macs(cfg) == m and isinstance(space.macs(cfg), int)
        assert space.params(cfg) == p and isinstance(space.params(cfg), int)


def test_batch_path_equals_single_path():
    space = SearchSpace.get("ofa-mbv3-w1.2")
    batch = space.sample_batch(np.random.default_rng(5), 300)
    cfgs = batch.to_configs()
    assert np.array_equal(space.macs(batch), [space.macs(c) for c in cfgs])
    assert np.array_equal(space.params(batch), [space.params(c) for c in cfgs])
    assert np.array_equal(space.macs(batch), space.macs(cfgs))


def test_official_parameter_counts():
    space = SearchSpace.get("ofa-mbv3-w1.0")
    assert space.params(space.largest()) == 7_664_760
    assert OFAMobileNetV3(space).num_params() == 7_678_880


def test_cost_grows_with_resolution_and_choices():
    space = SearchSpace.get("ofa-mbv3-w1.0")
    assert space.macs(space.largest(r=128)) < space.macs(space.largest(r=224))
    assert space.params(space.largest(r=128)) == space.params(space.largest(r=224))
    assert space.macs(space.smallest()) < space.macs(space.largest())


def test_invalid_batch_raises_one_line():
    space = SearchSpace.get("ofa-mbv3-w1.0")
    batch = space.sample_batch(np.random.default_rng(1), 10)
    batch.ks[4, 0] = 4
    with pytest.raises(InvalidConfigError) as err:
        space.macs(batch)
    assert "config 4" in str(err.value) and "\n" not in str(err.value)
    batch = space.sample_batch(np.random.default_rng(1), 10)
    batch.r[2] = 100
    with pytest.raises(InvalidConfigError):
        space.params(batch)
    other = SearchSpace.get("ofa-mbv3-fmnist").sample_batch(np.random.default_rng(1), 3)
    with pytest.raises(InvalidConfigError):
        space.macs(other)
