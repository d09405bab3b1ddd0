"""Sample statistics of raw timings and how precise a measured median is.

The runner returns raw samples; a table cell is one statistic of them (the median by default; low quantiles
resist preemption on a loaded host), and a measurement is settled once its median is known to `threshold`.
"""
from __future__ import annotations

import math

from ofa_core.errors import OFABenchError

#: per-entry statistics a table can be built from (all computed from the stored raw samples)
STATISTICS = ("median", "p25", "p10", "min")
DEFAULT_STATISTIC = "median"
#: absolute spread (ms) below which an entry is never called noisy: timer and scheduler granularity
SPREAD_FLOOR_MS = 0.004


class StatisticError(OFABenchError, ValueError):
    """An unknown statistic name."""


def sample_statistic(samples_ms, statistic: str) -> float | None:
    """`statistic` of raw samples (None without samples). Low quantiles resist preemption on a loaded host."""
    if statistic not in STATISTICS:
        raise StatisticError(f"unknown statistic {statistic!r}; use one of {', '.join(STATISTICS)}")
    xs = sorted(float(v) for v in samples_ms or ())
    if not xs:
        return None
    if statistic == "min":
        return xs[0]
    q = {"median": 0.5, "p25": 0.25, "p10": 0.1}[statistic]
    pos = (len(xs) - 1) * q
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def sample_stats(samples_ms) -> dict:
    """Every statistic of `STATISTICS` of the samples (stored beside a measurement for its reference)."""
    return {k: sample_statistic(samples_ms, k) for k in STATISTICS}


def spread_ms(m) -> float:
    """Robust standard deviation from the 10-90% range (a normal's p90 - p10 is 2.563 sigma)."""
    if m.p10_ms is None or m.p90_ms is None:
        return m.std_ms or 0.0
    return (m.p90_ms - m.p10_ms) / 2.563


def median_rel_se(m) -> float:
    """Relative standard error of the median: how precise the table value is, which is what matters, rather
    than how wide single runs spread. Distribution-free (order statistics n/2 -+ sqrt(n)/2 bound a one-sigma
    interval of the median), so the heavy tail of preempted runs on a loaded machine does not inflate it."""
    xs = sorted(m.samples_ms)
    n = len(xs)
    if n >= 8:
        h = math.sqrt(n) / 2
        lo, hi = xs[max(0, int(math.floor(n / 2 - h)))], xs[min(n - 1, int(math.ceil(n / 2 + h)))]
        return (hi - lo) / 2 / max(m.latency_ms, 1e-9)
    return 1.2533 * spread_ms(m) / math.sqrt(max(m.n, 1)) / max(m.latency_ms, 1e-9)


def is_settled(m, threshold: float) -> bool:
    return median_rel_se(m) <= threshold or spread_ms(m) <= SPREAD_FLOOR_MS
