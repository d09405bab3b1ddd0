"""The vectorised predictor equals a per-config reference sum; calibration fits whole-subnet measurements."""
import numpy as np
import pytest

from bench.table import Calibration, EntryStats, LatencyPredictor, LatencyTable, candidates, subnet_keys
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


def test_note10_anchor_predicts_hand_sum():
    from bench.table import load_device_table

    space = SearchSpace.get("ofa-mbv3-w1.2")
    table = load_device_table("note10", space)  # no store: the published anchors ($OFA_BENCH_ANCHORS, set by conftest)
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


def _with_subnets(table, space, cfgs, measured):
    subnets = {(c.r, c.to_string()): EntryStats(float(m), float(m), 0.0, 5) for c, m in zip(cfgs, measured)}
    return LatencyTable("dev", "fp", space.name, "v3", table.entries, subnets)


def test_calibration_recovers_a_shared_relation():
    """Whole subnets = scale * (table sum - overhead per entry) + offset, the same at every resolution."""
    space = SearchSpace.get("ofa-mbv3-fmnist")
    res = [24, 28, 36]
    table = random_table(space, res)
    plain = LatencyPredictor.from_table(table, space)
    cfgs = space.sample(np.random.default_rng(3), 60, res)
    overhead = plain.min_block_ms * 24 / 32  # on the fit's grid
    truth = lambda p, c: 1.1 * (p.table_sum(c) - overhead * p.n_entries(c)) + 0.2  # noqa: E731
    pred = LatencyPredictor.from_table(_with_subnets(table, space, cfgs, truth(plain, cfgs)), space)
    cal = pred.calibration
    assert (cal.model, cal.n_subnets, cal.resolutions) == ("overhead", 60, (24, 28, 36))
    assert (cal.scale, cal.overhead_ms, cal.offset_ms) == pytest.approx((1.1, overhead, 0.2), rel=1e-6)
    test = space.sample(np.random.default_rng(4), 50, res)
    np.testing.assert_allclose(pred(test), truth(pred, test), rtol=1e-6)
    assert cal.upper_rel == pytest.approx(0.0, abs=1e-6) and cal.interval == "cross-validated"
    np.testing.assert_allclose(pred.upper(test), pred(test), rtol=1e-6)
    assert pred.n_entries(test).tolist() == [sum(c.d) + pred.n_fixed for c in test] and pred.n_fixed > 0
    uncalibrated = LatencyPredictor.from_table(_with_subnets(table, space, cfgs, truth(plain, cfgs)), space,
                                               calibration=Calibration())
    assert uncalibrated.calibration.is_identity


def test_calibration_never_predicts_less_for_more_work():
    """Per-resolution fits once gave r32 a scale of 1.39 and an offset of -0.138 ms: the smallest subnet then
    predicted faster at 32 px than at 24 px. Data shaped like that still give a fit in which one more block, or
    a larger entry, never lowers the prediction, and the smallest subnets keep their order across resolutions."""
    space = SearchSpace.get("ofa-mbv3-fmnist")
    res = [24, 28, 32, 36]
    table = random_table(space, res)
    plain = LatencyPredictor.from_table(table, space)
    rng = np.random.default_rng(7)
    cfgs = space.sample(rng, 40, res)
    sums = plain.table_sum(cfgs)
    coef = {24: (0.8, 0.05), 28: (1.0, 0.0), 32: (1.39, -0.138 * sums.mean()), 36: (0.9, 0.1)}
    measured = np.array([coef[c.r][0] * s + coef[c.r][1] for c, s in zip(cfgs, sums)]) * rng.lognormal(0, 0.03, 40)
    pred = LatencyPredictor.from_table(_with_subnets(table, space, cfgs, np.maximum(measured, 1e-3)), space)
    cal = pred.calibration
    assert cal.scale > 0 and 0 <= cal.overhead_ms <= plain.min_block_ms and cal.offset_ms >= 0
    probe = space.sample(np.random.default_rng(8), 200, res)
    x, ne = plain.table_sum(probe), plain.n_entries(probe)
    y = cal.apply(None, x, ne)
    assert (cal.apply(None, x + plain.min_block_ms, ne + 1) >= y - 1e-12).all()  # one more (smallest) block
    assert (cal.apply(None, x + 0.5, ne) > y).all()  # a larger entry
    smallest = [space.smallest(r) for r in res]
    assert np.array_equal(np.argsort(pred(smallest), kind="stable"), np.argsort(plain.table_sum(smallest), kind="stable"))
    assert (pred(smallest) > 0).all()


def test_calibration_with_few_points_is_a_ratio_with_an_assumed_interval():
    cal = Calibration.fit([160, 160], [10.0, 20.0], [11.0, 22.0])
    assert (cal.model, cal.scale, cal.offset_ms, cal.interval) == ("ratio", pytest.approx(1.1), 0.0, "assumed")
    assert cal.upper_rel == pytest.approx(0.10)
    assert "ratio calibration on 2 measured subnet(s)" in cal.describe()
    assert Calibration.fit([], [], []).is_identity
    few = Calibration.fit([160] * 5, [10, 12, 14, 16, 18], [11, 13.2, 15.4, 17.6, 19.8])  # under min_points
    assert few.model == "ratio"


def test_calibration_overhead_term_kept_only_when_it_helps():
    rng = np.random.default_rng(5)
    n = 40
    sums = rng.uniform(5, 20, n)
    ne = rng.integers(10, 21, n)
    r = np.full(n, 160)
    with_overhead = 0.95 * (sums - 0.08 * ne) + 0.3
    cal = Calibration.fit(r, sums, with_overhead, n_entries=ne, max_overhead_ms=0.32)
    assert cal.model == "overhead"
    assert (cal.scale, cal.overhead_ms, cal.offset_ms) == pytest.approx((0.95, 0.08, 0.3), rel=1e-6)
    np.testing.assert_allclose(cal.apply(r, sums, ne), with_overhead, rtol=1e-9)
    noisy_line = (1.05 * sums + 0.2) * rng.lognormal(0, 0.01, n)  # no dependence on the entry count
    cal2 = Calibration.fit(r, sums, noisy_line, n_entries=ne, max_overhead_ms=0.32)
    assert cal2.model in ("ratio", "affine")
    assert cal2.scale == pytest.approx(1.05, abs=0.05)


def test_upper_bound_covers_about_nine_in_ten_fresh_measurements():
    rng = np.random.default_rng(11)
    sums = rng.uniform(5, 20, 60)
    truth = lambda s: 1.2 * s + 0.5  # noqa: E731
    cal = Calibration.fit([160] * 60, sums, truth(sums) * rng.lognormal(0, 0.04, 60))
    assert cal.interval == "cross-validated" and 0.02 < cal.upper_rel < 0.15
    fresh = rng.uniform(5, 20, 2000)
    covered = np.mean(truth(fresh) * rng.lognormal(0, 0.04, 2000) <= cal.upper(None, fresh))
    assert 0.8 <= covered <= 0.97


def _weights_case():
    """(space, resolutions, a random table, its plain predictor, 40 random subnets, a per-entry overhead) for the
    weights-term tests."""
    space = SearchSpace.get("ofa-mbv3-fmnist")
    res = [24, 28, 32, 36]
    table = random_table(space, res)
    plain = LatencyPredictor.from_table(table, space)
    return space, res, table, plain, space.sample(np.random.default_rng(9), 40, res), plain.min_block_ms * 16 / 32


def test_weights_term_recovers_what_isolated_blocks_hide():
    """A block timed over and over keeps its weights in cache, a whole graph streams them: large subnets run
    slower than the sum of their blocks. The weights term (>= 0) takes it when cross-validation says so."""
    space, res, table, plain, cfgs, overhead = _weights_case()
    truth = lambda p, c: 0.9 * (p.table_sum(c) - overhead * p.n_entries(c)) + 0.8 * p.mparams(c) + 0.05  # noqa: E731
    pred = LatencyPredictor.from_table(_with_subnets(table, space, cfgs, truth(plain, cfgs)), space)
    cal = pred.calibration
    assert cal.model == "overhead+weights" and cal.needs_params
    assert (cal.scale, cal.overhead_ms, cal.offset_ms, cal.per_mparam_ms) == pytest.approx((0.9, overhead, 0.05, 0.8),
                                                                                          rel=1e-5)
    test = space.sample_batch(np.random.default_rng(10), 30, res)
    np.testing.assert_allclose(pred(test), truth(pred, test), rtol=1e-6)
    with pytest.raises(ValueError, match="parameter counts"):
        cal.apply(None, plain.table_sum(test), plain.n_entries(test))


def test_weights_counted_up_to_a_knee_when_the_streaming_cost_saturates():
    """Past some size the extra weights' streaming hides behind their compute (the small space on this host:
    the linear weights term over-predicted the subnets with the most weights by 10-14%). With enough measured
    subnets (20) the knee model is chosen when it predicts held-out subnets better; it never predicts less time
    for more weights; with fewer subnets it is not tried."""
    space, res, table, plain, cfgs, overhead = _weights_case()
    knee = float(np.quantile(plain.mparams(cfgs), 0.5))

    def truth(p, c):
        return 0.9 * (p.table_sum(c) - overhead * p.n_entries(c)) + 0.8 * np.minimum(p.mparams(c), knee) + 0.05

    pred = LatencyPredictor.from_table(_with_subnets(table, space, cfgs, truth(plain, cfgs)), space)
    cal = pred.calibration
    assert cal.model == "overhead+weights-knee" and cal.weights_knee_mparams == pytest.approx(knee)
    assert Calibration.from_dict(cal.to_dict()) == cal
    test = space.sample_batch(np.random.default_rng(10), 30, res)
    np.testing.assert_allclose(pred(test), truth(pred, test), rtol=1e-6)
    mp = np.linspace(0.0, 2.0, 50)  # more weights, the rest equal: never less time
    assert np.all(np.diff(cal.apply(None, np.full(50, 1.0), np.full(50, 20), mp)) >= 0)
    few = LatencyPredictor.from_table(_with_subnets(table, space, cfgs[:15], truth(plain, cfgs[:15])), space)
    assert few.calibration.model != "overhead+weights-knee"


@pytest.mark.parametrize("seed", range(6))
def test_validating_never_makes_held_out_predictions_worse(seed):
    """`profile` calibrates from its 8 spanning subnets; `validate` adds 20, then 40 more. Whole subnets follow
    the weights-aware relation with 3% measurement noise: the calibration refitted on more subnets predicts a
    large held-out set at least as well as before (within a tenth of a point: between two validations the
    error also moves by the noise of the subnets they drew)."""
    from bench.profile import calibration_configs

    space = SearchSpace.get("ofa-mbv3-fmnist")
    res = [24, 28, 32, 36]
    table = random_table(space, res, seed=seed)
    plain = LatencyPredictor.from_table(table, space)
    rng = np.random.default_rng(100 + seed)
    overhead = plain.min_block_ms * 0.4
    truth = lambda c: 0.9 * (plain.table_sum(c) - overhead * plain.n_entries(c)) + 0.6 * plain.mparams(c) + 0.05  # noqa: E731
    measure = lambda c: truth(c) * rng.lognormal(0, 0.03, len(c))  # noqa: E731
    held_out = space.sample(np.random.default_rng(200 + seed), 400, res)
    seen = calibration_configs(space, res, plain.table_sum, 8, np.random.default_rng(seed))
    values = list(measure(seen))
    errors = []
    for more in (0, 20, 40):
        if more:
            new = space.sample(rng, more, res)
            seen, values = seen + new, values + list(measure(new))
        cal = plain.fit(seen, values)
        got = cal.apply(None, plain.table_sum(held_out), plain.n_entries(held_out), plain.mparams(held_out))
        errors.append(float(np.mean(np.abs(got / truth(held_out) - 1))))
    assert errors[2] <= errors[0] + 0.001, errors


# A fresh local-cpu table of ofa-mbv3-fmnist (load 1.0, 2026-12-07): the 8 subnets `profile` measured for its
# calibration (4 ends of the space first), and 20 random subnets `validate` measured afterwards.
FRESH = {"r": [24, 24, 24, 28, 32, 36, 36, 36],
         "x": [0.14795, 0.21926, 0.33247, 0.23656, 0.27574, 0.17333, 0.25476, 0.44151],
         "y": [0.07377, 0.20389, 0.42363, 0.23877, 0.28212, 0.1075, 0.26624, 0.5328],
         "ne": [16, 21, 26, 20, 24, 16, 19, 26],
         "mp": [0.21104, 0.52081, 1.09356, 0.54541, 0.54973, 0.21104, 0.48113, 1.09356],
         "ends": [True, False, True, False, False, True, False, True], "min_block": 0.0073516584}
RANDOM = {"x": [0.18446, 0.22291, 0.18769, 0.21534, 0.26658, 0.2464, 0.22152, 0.26102, 0.23855, 0.22872, 0.21462,
                0.23733, 0.23564, 0.19599, 0.26055, 0.229, 0.31464, 0.22898, 0.26825, 0.27597],
          "y": [0.14684, 0.2386, 0.15921, 0.19688, 0.33082, 0.25525, 0.2087, 0.31966, 0.27026, 0.24688, 0.21614,
                0.2763, 0.25485, 0.17952, 0.30711, 0.19248, 0.36489, 0.22604, 0.31021, 0.28246],
          "ne": [19, 21, 18, 21, 23, 22, 21, 22, 20, 20, 19, 20, 21, 18, 22, 20, 23, 18, 20, 22],
          "mp": [0.3408, 0.5003, 0.36099, 0.38331, 0.71733, 0.47517, 0.40739, 0.65721, 0.52865, 0.48764, 0.39657,
                 0.56047, 0.47609, 0.36915, 0.62301, 0.35993, 0.65192, 0.33348, 0.48029, 0.46014]}


def test_the_space_ends_do_not_choose_the_calibration_model():
    """The ends run at half and at 1.2-1.3x their table sums; scored like the others they chose the overhead
    model, which predicted the random subnets worse than the plain table sum. Fitted but not scored, they leave
    a model that predicts the random subnets at least as well as the table sum."""
    f, v = FRESH, RANDOM
    args = (f["r"], f["x"], f["y"], f["ne"], f["min_block"])

    def mape(cal):
        pred = cal.apply(None, np.array(v["x"]), np.array(v["ne"]), np.array(v["mp"]))
        return float(np.mean(np.abs(pred / np.array(v["y"]) - 1)))

    table_sum = float(np.mean(np.abs(np.array(v["x"]) / np.array(v["y"]) - 1)))
    scored_ends = Calibration.fit(*args, mparams=f["mp"])
    judged = Calibration.fit(*args, mparams=f["mp"], ends=f["ends"])
    assert mape(scored_ends) > table_sum  # what a fresh table predicted before
    assert mape(judged) <= table_sum and judged.model != scored_ends.model
    # the ends still bound the interval: an upper bound above the typical error
    assert judged.upper_rel >= 0.15 and judged.n_subnets == 8


def test_the_space_ends_break_ties_between_models():
    """Of the models that predict the inner subnets equally well (within 3%), the one that also fits the
    space's ends is kept; without such a tie the ends do not choose. The held-out errors are those of one fresh
    profile, where the ratio (6.5% on the inner subnets) tied the weights model (6.4%) but missed the ends by
    16-30%."""
    from bench.table.predictor import choose_model

    end = np.array([True] * 4 + [False] * 8)
    inner_ratio = np.array([1.7, -15.3, -0.3, -9.3, 0.3, 0.3, -0.5, 3.4]) / 100
    inner_weights = np.array([8.6, 4.7, 10.6, -0.9, -3.0, 5.9, 7.2, 4.7]) / 100
    scored = {"ratio": np.concatenate([[0.30, -0.16, 0.22, -0.25], inner_ratio]),
              "overhead+weights": np.concatenate([[0.08, -0.05, 0.10, 0.02], inner_weights])}
    models = ["ratio", "overhead+weights"]
    assert choose_model(models, scored, end) == "overhead+weights"
    assert choose_model(models, scored, np.zeros(12, dtype=bool)) == "overhead+weights"  # all judged: the ends count
    # the inner subnets decide when the ratio is clearly better there, whatever the ends say
    scored["overhead+weights"] = np.concatenate([[0.08, -0.05, 0.10, 0.02], 2 * inner_weights])
    assert choose_model(models, scored, end) == "ratio"
    # and the simplest of a tie is kept when it fits the ends as well
    scored["ratio"] = np.concatenate([[0.08, -0.05, 0.10, 0.02], inner_ratio])
    scored["overhead+weights"] = np.concatenate([[0.08, -0.05, 0.10, 0.02], inner_weights])
    assert choose_model(models, scored, end) == "ratio"


def test_the_interval_covers_the_inner_subnets_where_the_ends_run_fast():
    """The ends (here 20% faster than their table sums) are fitted but pull the held-out errors down; the upper
    bound is the larger of the 90% quantiles over all subnets and over the inner ones, so it covers the subnets a
    search asks about."""
    rng = np.random.default_rng(4)
    x = np.linspace(0.1, 0.5, 12)
    ends = np.arange(12) < 4
    y = x * np.where(ends, 0.8, 1.0 + rng.uniform(-0.06, 0.06, 12))
    r = [28] * 12
    inner_only = Calibration.fit(r[4:], x[4:], y[4:])
    with_ends = Calibration.fit(r, x, y, ends=ends)
    pooled = Calibration.fit(r, x, y)  # the same points, none marked an end
    assert with_ends.upper_rel > pooled.upper_rel
    assert with_ends.upper_rel >= 0.8 * inner_only.upper_rel
    bound = with_ends.upper(None, x[~ends])
    assert np.mean(y[~ends] <= bound) >= 7 / 8
