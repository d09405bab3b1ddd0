"""Step detection on seeded synthetic series."""
import numpy as np
import pytest

from bench.drift import detect_step


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("where,size", [(10, 0.15), (25, -0.10), (6, 0.30)])
def test_step_found_at_the_right_place(seed, where, size):
    rng = np.random.default_rng(seed)
    n = 40
    level = np.where(np.arange(n) < where, 5.0, 5.0 * (1 + size))
    values = level * (1 + rng.normal(0, 0.01, n))
    step = detect_step(values)
    assert step is not None
    assert abs(step.index - where) <= 1
    assert step.rel_change == pytest.approx(size, abs=0.02)


@pytest.mark.parametrize("seed", range(50))
def test_noise_without_step_not_flagged(seed):
    rng = np.random.default_rng(1000 + seed)
    values = 3.0 * (1 + rng.normal(0, 0.02, 40))
    assert detect_step(values) is None


@pytest.mark.parametrize("seed", range(20))
def test_outliers_alone_not_a_step(seed):
    rng = np.random.default_rng(2000 + seed)
    values = 2.0 * (1 + rng.normal(0, 0.01, 30))
    values[rng.integers(0, 30, 2)] *= 1.5  # two spikes (a busy moment) are not a level change
    assert detect_step(values) is None


def test_small_step_below_threshold_ignored():
    rng = np.random.default_rng(7)
    values = np.r_[np.full(15, 4.0), np.full(15, 4.08)] * (1 + rng.normal(0, 0.001, 30))
    assert detect_step(values, min_rel_change=0.05) is None
    step = detect_step(values, min_rel_change=0.01)
    assert step is not None and step.index == 15


def test_short_or_empty_series():
    assert detect_step([]) is None
    assert detect_step([1.0, 2.0, 3.0]) is None
    assert detect_step([1.0] * 10) is None
