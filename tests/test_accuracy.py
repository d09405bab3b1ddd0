"""Accuracy predictor: the official encoding and weights reproduce the official package's predictions; the
numpy forward equals the torch one; training, saving and loading work for any space."""
import json

import numpy as np
import pytest

from ofa_core.accuracy import AccuracyEncoding, AccuracyPredictor
from ofa_core.errors import CheckpointError, InvalidConfigError
from ofa_core.space import ConfigBatch, SearchSpace, SubnetConfig

W12 = SearchSpace.get("ofa-mbv3-w1.2")


@pytest.fixture(scope="module")
def official_pth(anchors_dir):
    return anchors_dir / "ofa-mbv3-w12-note10" / "acc_predictor.pth"


@pytest.fixture(scope="module")
def predictor(official_pth):
    return AccuracyPredictor.from_official(official_pth)


def test_encoding_layout():
    enc = AccuracyEncoding.official()
    assert enc.n_features == 128
    cfg = SubnetConfig.from_string("r160:k3e4,k5e6|k7e3,k3e3,k5e4|k3e6,k3e6|k5e3,k5e3,k5e3,k5e3|k7e6,k7e6")
    x = enc.encode([cfg])[0]
    ks, es, rs = x[:60].reshape(20, 3), x[60:120].reshape(20, 3), x[120:]
    active = cfg.active_slots()
    for slot in range(20):
        if slot in active:
            assert ks[slot].sum() == 1 and es[slot].sum() == 1
            assert ks[slot, (3, 5, 7).index(cfg.ks[slot])] == 1
            assert es[slot, (3, 4, 6).index(cfg.e[slot])] == 1
        else:
            assert ks[slot].sum() == 0 and es[slot].sum() == 0  # skipped by depth: zeros
    assert rs.tolist() == [0, 0, 0, 1, 0, 0, 0, 0]  # 160 is the 4th of 112..224 step 16


def test_resolution_between_grid_points_takes_the_bin_below():
    enc = AccuracyEncoding.official()
    assert enc.resolution_bins(np.array([112, 127, 128, 164, 175, 176, 220, 224])).tolist() == [0, 0, 1, 3, 3, 4, 6, 7]
    with pytest.raises(InvalidConfigError):
        enc.resolution_bins(np.array([100]))


def test_numpy_forward_equals_torch(predictor):
    batch = W12.sample_batch(np.random.default_rng(1), 500)
    a, b = predictor(batch), predictor.predict_torch(batch)
    assert a.shape == (500,)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert 0.6 < a.min() and a.max() < 0.9  # top-1 fractions of OFA subnets on ImageNet


def test_reproduces_official_package(predictor, official_pth):
    """Known predictions of the official tutorial predictor, computed here with the official code."""
    perf = pytest.importorskip("bench.perf.search")
    try:
        official = perf.official_accuracy_predictor(official_pth)
    except ImportError as exc:
        pytest.skip(str(exc))
    rng = np.random.default_rng(7)
    cfgs = W12.sample(rng, 64, resolutions=[160, 164, 176, 192, 200, 208, 224])
    cfgs += [W12.largest(224), W12.smallest(160)]
    theirs = official.predict_accuracy([c.to_ofa_dict() for c in cfgs]).numpy().reshape(-1)
    np.testing.assert_allclose(predictor(cfgs), theirs, atol=1e-5)
    # the official code reads kernels and expands of skipped slots as absent, as we do
    assert predictor([W12.largest(224)])[0] > predictor([W12.smallest(160)])[0]


def test_skipped_slots_do_not_matter(predictor):
    a = SubnetConfig((3,) * 20, (3,) * 20, (2,) * 5, 192)
    ks = list(a.ks)
    ks[3] = 7  # slot 3 is skipped at depth 2
    b = ConfigBatch(np.array([a.ks, ks]), np.array([a.e, a.e]), np.array([a.d, a.d]), np.array([192, 192]))
    p = predictor(b)
    assert p[0] == p[1]


def test_unknown_choice_is_an_error(predictor):
    b = ConfigBatch(np.full((1, 20), 9), np.full((1, 20), 3), np.full((1, 5), 2), np.array([160]))
    with pytest.raises(InvalidConfigError, match="kernel 9"):
        predictor(b)


def test_bad_file_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        AccuracyPredictor.from_official(bad)
    with pytest.raises(CheckpointError):
        AccuracyPredictor.load(tmp_path / "missing.safetensors")


def _synthetic(space, rng, n):
    """A smooth made-up accuracy: more kernel, expand, depth and resolution help, with diminishing returns."""
    b = space.sample_batch(rng, n)
    act = b.active
    score = ((b.ks - 3) * act).sum(1) * 0.002 + ((b.e - 3) * act).sum(1) * 0.003 + b.d.sum(1) * 0.004
    score = score + (b.r - min(space.resolutions)) / (np.ptp(space.resolutions) or 1) * 0.05
    return b, 0.7 + 0.2 * np.tanh(5 * score) + rng.normal(0, 0.001, n)


def test_fit_save_load_roundtrip(tmp_path):
    space = SearchSpace.get("ofa-mbv3-fmnist")
    rng = np.random.default_rng(0)
    train, y = _synthetic(space, rng, 1000)
    pred = AccuracyPredictor.fit(train, y, space, rng=np.random.default_rng(1), hidden=64, epochs=30,
                                 batch_size=64)
    test, y_test = _synthetic(space, np.random.default_rng(2), 400)
    rmse = float(np.sqrt(np.mean((pred(test) - y_test) ** 2)))
    assert rmse < 0.25 * float(np.std(y_test))  # learns the function, not just its mean
    assert abs(pred.base_acc - float(np.mean(y))) < 0.01
    assert pred.metadata["fit"]["val_rmse"] < 0.25 * float(np.std(y_test))

    path = pred.save(tmp_path / "pred.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["space"] == space.name and meta["encoding"]["resolution_grid"] == list(space.resolutions)
    loaded = AccuracyPredictor.load(path)
    np.testing.assert_array_equal(loaded(test), pred(test))
    loaded.check_space(space)
    with pytest.raises(CheckpointError):
        loaded.check_space(SearchSpace.get("ofa-mbv3-w1.0"))  # resolutions 128..224 are not in its bins


def test_fit_is_deterministic():
    space = SearchSpace.get("ofa-mbv3-fmnist")
    b, y = _synthetic(space, np.random.default_rng(3), 200)
    p1 = AccuracyPredictor.fit(b, y, space, rng=np.random.default_rng(5), hidden=32, epochs=5)
    p2 = AccuracyPredictor.fit(b, y, space, rng=np.random.default_rng(5), hidden=32, epochs=5)
    np.testing.assert_array_equal(p1(b), p2(b))


def test_official_roundtrip_through_safetensors(predictor, tmp_path):
    path = predictor.save(tmp_path / "official.safetensors")
    loaded = AccuracyPredictor.load(path)
    batch = W12.sample_batch(np.random.default_rng(4), 50)
    np.testing.assert_array_equal(loaded(batch), predictor(batch))
    assert loaded.encoding == AccuracyEncoding.official()
