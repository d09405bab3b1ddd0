"""How much of the reference subnet's movement a whole subnet shares, and the rescaling that follows from it.

Every pass of a whole subnet is timed beside the reference subnet and rescaled by the reference's speed in that
invocation. That pays where the two move together and costs where the reference's movement is its own:

- `ofa-mbv3-w1.0` at 160-224 px on this host: in `validate` runs a subnet's passes and their references
  correlate at 0.84-0.88, and rescaling halves the spread of the passes (log-sd 0.032 -> 0.015 at load 2);
- LiteRT's reference subnet on the small space (about 0.09 ms) jitters by 7-8% from one invocation to the next
  while the subnets beside it move by 3%: rescaling doubled the spread (0.029 -> 0.061), and onnxruntime's on
  the small space went either way from run to run (one `validate` run: 0.023 -> 0.045).

So a run's passes are rescaled in two parts. The run's level (the median reference of its passes) is rescaled
in full to the table's speed, as before, so runs taken at different speeds still meet. The pass-to-pass part
is rescaled by a tracking coefficient fitted on the run itself: the pooled regression, through the origin, of
the subnets' log deviations from their own mean on their references' log deviations, shrunk toward 1 (full
rescaling) by a prior worth `PRIOR_PASSES` passes at `PRIOR_LOG_SD`, and kept in [0, 1]. A `search --confirm`
of one subnet (three passes) stays near 1; a `validate` run of 60 subnets finds its own.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

#: the prior toward full rescaling: as many passes as this, each with the reference this far (log) off its mean
PRIOR_PASSES = 8
PRIOR_LOG_SD = 0.02


def tracking_coefficient(groups: Iterable[Sequence[tuple[float, float]]]) -> float:
    """The share (0..1) of the reference's pass-to-pass movement that the subnets share. `groups`: one per
    subnet, its passes as (value, reference) pairs in ms; passes without a reference and subnets with fewer than
    two passes say nothing."""
    num = den = 0.0
    for group in groups:
        pairs = np.log(np.asarray([p for p in group if p[0] > 0 and p[1] and p[1] > 0],
                                  dtype=np.float64).reshape(-1, 2))
        if len(pairs) < 2:
            continue
        dev = pairs - pairs.mean(axis=0)
        num += float(dev[:, 0] @ dev[:, 1])
        den += float(dev[:, 1] @ dev[:, 1])
    prior = PRIOR_PASSES * PRIOR_LOG_SD ** 2
    return min(1.0, max(0.0, (num + prior) / (den + prior)))


def run_level(refs: Iterable[float]) -> float | None:
    """A run's reference level: the median reference of its passes (None without one)."""
    values = [float(r) for r in refs if r and r > 0]
    return float(np.median(values)) if values else None


def rescale(value: float, ref: float | None, level: float | None, nominal: float | None, beta: float) -> float:
    """A pass's value at the `nominal` reference speed: the run's `level` rescaled in full, the pass's own
    reference's deviation from it by the share `beta`; the value itself without a nominal speed or a reference."""
    if not nominal or not ref or not level or not math.isfinite(value):
        return value
    return value * (nominal / level) * (level / ref) ** beta


def rescale_run(groups: Sequence[Sequence[tuple[float, float | None]]], nominal: float | None
                ) -> tuple[list[list[float]], float]:
    """Every pass of one run at the `nominal` reference speed (`groups`: one per subnet, its passes as (value,
    reference or None) pairs in ms): the rescaled values, group by group, and the run's tracking coefficient."""
    beta = tracking_coefficient(groups)
    level = run_level(r for group in groups for _, r in group)
    return [[rescale(v, r, level, nominal, beta) for v, r in group] for group in groups], beta
