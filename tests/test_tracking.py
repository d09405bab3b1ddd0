"""The reference tracking coefficient (bench.measure.tracking): how much of the reference subnet's movement
between invocations the subnets share, and the rescaling of a pass with it."""
import numpy as np
import pytest

from bench.measure.tracking import PRIOR_PASSES, rescale, run_level, tracking_coefficient


def _passes(share: float, seed: int, n_subnets: int = 30, passes: int = 4, ref_sd: float = 0.05,
            own_sd: float = 0.01):
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(n_subnets):
        ref = 0.1 * np.exp(ref_sd * rng.standard_normal(passes))
        own = 0.2 * (i + 1) * np.exp(own_sd * rng.standard_normal(passes))
        groups.append(list(zip(own * (ref / 0.1) ** share, ref)))
    return groups


@pytest.mark.parametrize("share", [0.0, 0.3, 0.7, 1.0])
def test_the_share_of_the_reference_movement_is_recovered(share):
    assert tracking_coefficient(_passes(share, seed=int(10 * share))) == pytest.approx(share, abs=0.08)


def test_few_passes_stay_near_full_rescaling_and_the_share_stays_in_bounds():
    # one subnet, three passes: the prior (PRIOR_PASSES passes) outweighs them
    assert tracking_coefficient(_passes(0.0, seed=1, n_subnets=1, passes=3)) > 0.6
    assert PRIOR_PASSES > 3
    assert tracking_coefficient([]) == 1.0
    assert tracking_coefficient([[(1.0, 1.0)]]) == 1.0  # a subnet with one pass says nothing
    assert 0.0 <= tracking_coefficient(_passes(-1.0, seed=2)) <= tracking_coefficient(_passes(2.0, seed=3)) <= 1.0


def test_rescale_moves_the_level_in_full_and_the_deviation_by_the_share():
    assert rescale(2.0, 0.11, 0.1, 0.05, 1.0) == pytest.approx(2.0 * 0.05 / 0.11)  # the old rule
    assert rescale(2.0, 0.11, 0.1, 0.05, 0.0) == pytest.approx(2.0 * 0.05 / 0.1)   # the run's level only
    assert rescale(2.0, 0.11, 0.1, None, 0.5) == 2.0 and rescale(2.0, None, 0.1, 0.05, 0.5) == 2.0
    assert run_level([0.1, None, 0.3, 0.2]) == pytest.approx(0.2) and run_level([None]) is None
