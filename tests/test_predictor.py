"""The vectorised predictor equals a per-config reference sum; calibration fits whole-subnet measurements."""
import numpy as np
import pytest

from bench.candidates import candidates, subnet_keys
from bench.lut import EntryStats, LatencyTable
from bench.predictor import Calibration, LatencyPredictor
from ofa_core.errors import InvalidConfigError
from ofa_core.space import SearchSpace


def random_table(space, resolutions, seed=0, subnets=None):
    rng = np.random.default_rng(seed)
    entries = {(e.resolution, e.key): EntryStats(float(v), float(v), 0.0, 10)
               for e, v in zip(candidates(space, resolutions), rng.uniform(0.01, 3.0, 10**6))}
    return LatencyTable("dev", "fp", space.name, "v1", entries, subnets or {})


@pytest.mark.parametrize("name", SearchSpace.names())
def test_predictor_equals_reference_sum(name):
    space = SearchSpace.get(name)
    res = list(space.resolutions[:2])
    table = random_table(space, res)
    pred = LatencyPredictor.from_table(table, space)
    batch = space.sample_batch(np.random.default_rng(1), 300, res)
    got = pred(batch)
    ref = [sum(table.entries[(c.r, k)].value_ms for k in subnet_keys(space, c)) for c in batch.to_configs()]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(pred.table_sum(batch.to_configs()), ref, rtol=1e-12)
    assert got.table_version == "v1" and pred.version == "v1"
    assert pred.resolutions == sorted(res)


def test_note10_anchor_predicts_hand_sum(shared_dir):
    from bench.lut import load_device_table

    space = SearchSpace.get("ofa-mbv3-w1.2")
    table = load_device_table("note10", space)  # no store: the anchors beside the repo
    pred = LatencyPredictor.from_table(table, space)
    assert pred.resolutions == list(range(160, 225, 4))
    cfg = space.largest(224)
    by_hand = sum(table.entries[(224, k)].mean_ms for k in subnet_keys(space, cfg))
    assert pred(cfg)[0] == pytest.approx(by_hand, rel=1e-12)


def test_normalised_values_preferred():
    space = SearchSpace.get("ofa-mbv3-fmnist")
    table = random_table(space, [24])
    doubled = {k: EntryStats(v.latency_ms, v.mean_ms, 0.0, 1, normalised_ms=2 * v.latency_ms) for k, v in table.entries.items()}
    t2 = LatencyTable("dev", "fp", space.name, "v2", doubled)
    cfg = space.largest(24)
    a = LatencyPredictor.from_table(table, space)(cfg)[0]
    b = LatencyPredictor.from_table(t2, space)(cfg)[0]
    assert b == pytest.approx(2 * a)


def test_unknown_resolution_and_choice_rejected():
    space = SearchSpace.get("ofa-mbv3-fmnist")
    pred = LatencyPredictor.from_table(random_table(space, [24, 28]), space)
    with pytest.raises(InvalidConfigError):
        pred(space.largest(36))
    b = space.sample_batch(np.random.default_rng(0), 4, [24])
    b.ks[0, 0] = 9
    with pytest.raises(InvalidConfigError):
        pred(b)


def test_incomplete_resolution_excluded():
    space = SearchSpace.get("ofa-mbv3-fmnist")
    table = random_table(space, [24, 28])
    entries = dict(table.entries)
    entries.pop(next(k for k in entries if k[0] == 28))
    pred = LatencyPredictor.from_table(LatencyTable("d", "f", space.name, "v", entries), space)
    assert pred.resolutions == [24]


def test_calibration_recovers_linear_relation():
    space = SearchSpace.get("ofa-mbv3-fmnist")
    res = [24, 28, 36]
    table = random_table(space, res)
    plain = LatencyPredictor.from_table(table, space)
    cfgs = space.sample(np.random.default_rng(3), 60, res)
    sums = plain.table_sum(cfgs)
    coef = {24: (1.1, 0.2), 28: (1.0, 0.1), 36: (0.9, -0.1)}
    measured = np.array([coef[c.r][0] * s + coef[c.r][1] for c, s in zip(cfgs, sums)])
    subnets = {(c.r, c.to_string()): EntryStats(float(m), float(m), 0.0, 5) for c, m in zip(cfgs, measured)}
    table2 = LatencyTable("dev", "fp", space.name, "v3", table.entries, subnets)
    pred = LatencyPredictor.from_table(table2, space)
    assert pred.calibration.n_subnets == 60
    test = space.sample(np.random.default_rng(4), 50, res)
    want = [coef[c.r][0] * s + coef[c.r][1] for c, s in zip(test, pred.table_sum(test))]
    np.testing.assert_allclose(pred(test), want, rtol=1e-9)
    # interpolated between calibrated resolutions
    mid = pred.calibration.apply(np.array([32]), np.array([10.0]))[0]
    assert mid == pytest.approx(((1.0 + 0.9) / 2) * 10 + 0.0)
    assert LatencyPredictor.from_table(table2, space, calibration=Calibration()).calibration.is_identity


def test_calibration_with_few_points_is_a_ratio():
    cal = Calibration.fit([160, 160], [10.0, 20.0], [11.0, 22.0])
    assert cal.scale == (pytest.approx(1.1),) and cal.offset_ms == (0.0,)


def test_calibration_block_term_kept_only_when_it_helps():
    rng = np.random.default_rng(5)
    n = 40
    sums = rng.uniform(5, 20, n)
    nb = rng.integers(10, 21, n)
    r = np.full(n, 160)
    with_blocks = 0.95 * sums + 0.08 * nb + 0.3
    cal = Calibration.fit(r, sums, with_blocks, n_blocks=nb)
    assert cal.per_block_ms[0] == pytest.approx(0.08, abs=1e-6) and cal.scale[0] == pytest.approx(0.95)
    np.testing.assert_allclose(cal.apply(r, sums, nb), with_blocks, rtol=1e-9)
    noisy_line = 1.05 * sums + 0.2 + rng.normal(0, 0.05, n)  # no dependence on the block count
    cal2 = Calibration.fit(r, sums, noisy_line, n_blocks=nb)
    assert abs(cal2.per_block_ms[0]) < 0.02
    assert cal2.scale[0] == pytest.approx(1.05, abs=0.02)
