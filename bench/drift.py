"""Step detection over a measurement history: has an entry's latency moved to a new level?

A pure function over a series (no store, no clock), in the spirit of asv's step detection: the best single
split minimises the squared deviation from each side's median; it counts as a step only if the two levels
differ by a relative amount *and* by several robust standard errors, so noise alone is not flagged.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Step:
    """A level change: `index` is the first value of the new level."""

    index: int
    before_ms: float
    after_ms: float
    rel_change: float  # (after - before) / before
    score: float  # level difference in robust standard errors


def _robust_sigma(x: np.ndarray) -> float:
    return 1.4826 * float(np.median(np.abs(x - np.median(x)))) if len(x) else 0.0


def detect_step(values: Sequence[float], min_size: int = 3, min_rel_change: float = 0.05,
                min_score: float = 4.0, rel_noise_floor: float = 0.002) -> Step | None:
    """The most likely single step in `values` (oldest first), or None if there is no convincing one.

    `min_size`: points required on each side. `min_rel_change`: smallest relative level change reported.
    `min_score`: smallest level difference in robust standard errors. `rel_noise_floor`: sigma never assumed
    below this fraction of the level (a perfectly flat series has no noise estimate).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 2 * min_size:
        return None
    best_k, best_cost = None, math.inf
    for k in range(min_size, n - min_size + 1):
        a, b = x[:k], x[k:]
        cost = float(((a - np.median(a)) ** 2).sum() + ((b - np.median(b)) ** 2).sum())
        if cost < best_cost:
            best_k, best_cost = k, cost
    a, b = x[:best_k], x[best_k:]
    ma, mb = float(np.median(a)), float(np.median(b))
    if ma <= 0:
        return None
    sigma = max(_robust_sigma(np.concatenate([a - ma, b - mb])), rel_noise_floor * ma)
    se = sigma * math.sqrt(1.0 / len(a) + 1.0 / len(b))
    score = abs(mb - ma) / se
    rel = (mb - ma) / ma
    if abs(rel) < min_rel_change or score < min_score:
        return None
    return Step(index=int(best_k), before_ms=ma, after_ms=mb, rel_change=float(rel), score=float(score))
