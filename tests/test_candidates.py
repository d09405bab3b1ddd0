"""Candidate entries: the official key format, checked against the real Note10 tables."""
import re

import pytest
import yaml
from _anchors import note10_dir

from bench.table import candidates, keys_by_resolution, subnet_keys
from ofa_core.space import SearchSpace

NOTE10 = note10_dir() / "latency_table_note10"


def _note10_files():
    return sorted(NOTE10.glob("*_lookup_table.yaml"))


@pytest.mark.parametrize("path", _note10_files(), ids=lambda p: p.name)
def test_keys_equal_note10_yaml(path):
    r = int(path.name.split("_")[0])
    official = set(yaml.safe_load(path.read_text()))
    ours = keys_by_resolution(candidates(SearchSpace.get("ofa-mbv3-w1.2"), [r]))[r]
    assert ours == official


def test_note10_tables_present():
    assert len(_note10_files()) == 17, f"{NOTE10}: expected the 17 published tables"


def test_first_block_key_w12_224():
    entries = candidates(SearchSpace.get("ofa-mbv3-w1.2"), [224])
    assert entries[0].key == "Conv-input:224x224x3-output:112x112x24"
    assert entries[1].key == ("expanded_conv-input:112x112x24-output:112x112x24-expand:24-kernel:3-stride:1"
                              "-idskip:1-se:0-hs:0")
    assert entries[-1].key == "Logits-input:1x1x1536-output:1000"


KEY_RE = re.compile(r"^(Conv|Conv_1|Conv_2|AvgPool2D)-input:\d+x\d+x\d+-output:\d+x\d+x\d+$"
                    r"|^Logits-input:1x1x\d+-output:\d+$"
                    r"|^expanded_conv-input:\d+x\d+x\d+-output:\d+x\d+x\d+-expand:\d+-kernel:[357]-stride:[12]"
                    r"-idskip:[01]-se:[01]-hs:[01]$")


@pytest.mark.parametrize("name", SearchSpace.names())
def test_every_space_distinct_wellformed_keys(name):
    space = SearchSpace.get(name)
    res = [min(space.resolutions), max(space.resolutions)]
    entries = candidates(space, res)
    keys = [(e.resolution, e.key) for e in entries]
    assert len(keys) == len(set(keys))
    assert all(KEY_RE.match(k) for _, k in keys)
    # 6 fixed + per stage 2 block shapes x |ks| x |e|
    per_r = 6 + space.n_stages * 2 * len(space.ks_list) * len(space.expand_list)
    assert len(entries) == per_r * len(res)


@pytest.mark.parametrize("name", SearchSpace.names())
def test_subnet_keys_are_candidates(name):
    import numpy as np

    space = SearchSpace.get(name)
    rng = np.random.default_rng(0)
    for cfg in space.sample(rng, 20):
        known = keys_by_resolution(candidates(space, [cfg.r]))[cfg.r]
        keys = subnet_keys(space, cfg)
        assert len(keys) == 6 + sum(cfg.d)
        assert set(keys) <= known


def test_unknown_resolution_is_a_user_error():
    from ofa_core.errors import OFABenchError

    with pytest.raises(OFABenchError):
        candidates(SearchSpace.get("ofa-mbv3-w1.0"), [999])
