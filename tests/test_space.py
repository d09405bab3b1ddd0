"""Search spaces and subnet configs: round trips (property-tested), normalisation, validation errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ofa_core import ConfigBatch, InvalidConfigError, SearchSpace, SubnetConfig, UnknownSpaceError

SPACES = [SearchSpace.get(n) for n in SearchSpace.names()]


@st.composite
def space_and_config(draw):
    """A registered space and any config of it, with arbitrary (valid) values in skipped slots."""
    space = draw(st.sampled_from(SPACES))
    n = space.n_slots
    ks = draw(st.lists(st.sampled_from(space.ks_list), min_size=n, max_size=n))
    e = draw(st.lists(st.sampled_from(space.expand_list), min_size=n, max_size=n))
    d = draw(st.lists(st.sampled_from(space.depth_list), min_size=space.n_stages, max_size=space.n_stages))
    r = draw(st.sampled_from(space.resolutions))
    return space, SubnetConfig(tuple(ks), tuple(e), tuple(d), r)


@settings(max_examples=60, deadline=None)
@given(space_and_config())
def test_official_dict_round_trip(sc):
    space, cfg = sc
    d = cfg.to_ofa_dict()
    assert set(d) == {"ks", "e", "d", "r"} and d["r"] == [cfg.r]
    assert SubnetConfig.from_ofa_dict(d) == cfg
    assert space.config_from_ofa_dict(json.loads(json.dumps(d))) == cfg
    assert space.parse_config(json.dumps(d)) == cfg
    alt = {"ks": d["ks"], "e": d["e"], "d": d["d"], "image_size": cfg.r}
    assert SubnetConfig.from_ofa_dict(alt) == cfg


@settings(max_examples=60, deadline=None)
@given(space_and_config())
def test_string_round_trip(sc):
    space, cfg = sc
    text = cfg.to_string()
    assert str(cfg) == text and text.startswith(f"r{cfg.r}:")
    assert text.count("|") == space.n_stages - 1
    assert SubnetConfig.from_string(text, max_depth=space.max_depth) == cfg
    assert space.parse_config(text) == cfg
    assert space.validate(cfg) is cfg


@settings(max_examples=60, deadline=None)
@given(space_and_config(), st.data())
def test_configs_differing_only_in_skipped_blocks_are_equal(sc, data):
    space, cfg = sc
    ks, e = list(cfg.ks), list(cfg.e)
    active = set(cfg.active_slots())
    for i in range(space.n_slots):
        if i not in active:
            ks[i] = data.draw(st.sampled_from(space.ks_list))
            e[i] = data.draw(st.sampled_from(space.expand_list))
    other = SubnetConfig(tuple(ks), tuple(e), cfg.d, cfg.r)
    assert other == cfg and hash(other) == hash(cfg)
    assert other.to_string() == cfg.to_string()
    assert space.macs(other) == space.macs(cfg)
    assert np.array_equal(space.one_hot([other]), space.one_hot([cfg]))
    raw = ConfigBatch(np.array([ks]), np.array([e]), np.array([cfg.d]), np.array([cfg.r]))
    assert raw.normalised().to_configs() == [cfg]


def test_batch_round_trip_and_sampling_is_seeded():
    for space in SPACES:
        a = space.sample(np.random.default_rng(3), 50)
        b = space.sample(np.random.default_rng(3), 50)
        assert a == b and all(space.validate(c) is c for c in a)
        assert ConfigBatch.from_configs(a).to_configs() == a
        rng = np.random.default_rng(4)
        child = space.crossover(a[0], a[1], rng)
        assert space.validate(space.mutate(child, rng, prob=0.5)) is not None
        oh = space.one_hot(a)
        per_slot = len(space.ks_list) + len(space.expand_list)
        assert oh.shape == (50, space.n_slots * per_slot + len(space.resolutions))
        assert np.array_equal(oh.sum(axis=1), [2 * sum(c.d) + 1 for c in a])


def _bad_cases(space: SearchSpace):
    n, s = space.n_slots, space.n_stages
    good_r = space.resolutions[0]
    return [
        SubnetConfig((3,) * (n - s), (3,) * (n - s), (2,) * s, good_r),  # too few slots per stage
        SubnetConfig((4,) * n, (3,) * n, (space.max_depth,) * s, good_r),  # kernel 4
        SubnetConfig((3,) * n, (5,) * n, (space.max_depth,) * s, good_r),  # expand 5
        SubnetConfig((3,) * n, (3,) * n, (space.max_depth,) * s, max(space.resolutions) + 1),  # resolution
        SubnetConfig((3,) * n, (3,) * n, (1,) * s, good_r),  # depth 1 is not offered
    ]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_invalid_configs_raise_one_line(space):
    for cfg in _bad_cases(space):
        with pytest.raises(InvalidConfigError) as err:
            space.validate(cfg)
        assert "\n" not in str(err.value) and space.name in str(err.value)


@pytest.mark.parametrize("make", [
    lambda: SubnetConfig((3,) * 20, (3,) * 20, (5, 4, 4, 4, 4), 160),  # depth 5 > 4 slots per stage
    lambda: SubnetConfig((3,) * 20, (3,) * 19, (4,) * 5, 160),  # lengths differ
    lambda: SubnetConfig((3,) * 20, (3,) * 20, (), 160),
    lambda: SubnetConfig.from_ofa_dict({"ks": [3], "e": [3]}),
    lambda: SubnetConfig.from_ofa_dict({"ks": [3] * 20, "e": [3] * 20, "d": [4] * 5, "r": [160, 176]}),
    lambda: SubnetConfig.from_ofa_dict([1, 2]),
    lambda: SubnetConfig.from_string("160:k3e4"),
    lambda: SubnetConfig.from_string("r160:k3e4,k4x|k3e3"),
    lambda: SubnetConfig.from_string("r160:k3e4,k3e4,k3e4,k3e4,k3e4"),
    lambda: SubnetConfig.parse("{not json"),
])
def test_malformed_configs_raise_one_line(make):
    with pytest.raises(InvalidConfigError) as err:
        make()
    assert "\n" not in str(err.value) and str(err.value)


def test_unknown_space_one_line():
    with pytest.raises(UnknownSpaceError) as err:
        SearchSpace.get("mobilenet-v9")
    assert "\n" not in str(err.value) and "ofa-mbv3-w1.0" in str(err.value)


def test_official_skeleton():
    w10 = SearchSpace.get("ofa-mbv3-w1.0")
    assert [st.width for st in w10.stages] == [24, 40, 80, 112, 160]
    assert [st.se for st in w10.stages] == [False, True, False, True, True]
    assert [st.stride for st in w10.stages] == [2, 2, 2, 1, 2]
    assert (w10.final_expand_width, w10.feature_mix_width) == (960, 1280)
    w12 = SearchSpace.get("ofa-mbv3-w1.2")
    assert [w12.first_conv_width] + [st.width for st in w12.stages] == [24, 32, 48, 96, 136, 192]
    assert w10.feature_size(224) == [112, 56, 28, 14, 14, 7]
