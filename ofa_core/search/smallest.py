"""The smallest configs reachable, by greedy one-gene descent from the all-smallest config at each resolution.

`smallest_achievable` says how low one metric can go (exact for additive lookup tables: `ofa-bench search`
names it when a budget is out of reach); `smallest_feasible` seeds a search whose budget few random configs
meet, or raises `InfeasibleBudgetError` with the smallest value there is.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ofa_core.search.cache import ScoreCache
from ofa_core.search.genome import Genome
from ofa_core.search.problem import InfeasibleBudgetError, Predictor
from ofa_core.space import SearchSpace, SubnetConfig


def _descend(genome: Genome, cache: ScoreCache, score: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, float]:
    """Genes and score of the lowest point that greedy descent (the best neighbour, while it improves) reaches
    from the smallest config at each resolution; `score` maps cache rows to values."""
    best = None
    for g in genome.smallest():
        v = score(cache.rows(g[None, :]))[0]
        for _ in range(4 * genome.n_cols):
            nb = genome.neighbours(g)
            vals = score(cache.rows(nb))
            k = int(np.argmin(vals))
            if vals[k] >= v:
                break
            g, v = nb[k], vals[k]
        if best is None or v < best[1]:
            best = (g, v)
    return best


def smallest_feasible(genome: Genome, cache: ScoreCache, limits: np.ndarray) -> np.ndarray:
    """Feasible configs near the minimum of max(value / limit) over the limited metrics (`limits`: one per
    metric of the cache, inf where unlimited); raise `InfeasibleBudgetError` if that minimum breaks the budget."""
    names = cache.metric_names
    limited = np.isfinite(limits)
    scale = np.where(limited, limits, np.inf)

    def worst(rows: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = cache.values[rows] / scale
        return np.where(limited, ratio, 0.0).max(axis=1)

    best_g, best_w = _descend(genome, cache, worst)
    if best_w > 1.0:
        rows = cache.rows(best_g[None, :])
        vals = cache.values[rows[0]]
        parts = [f"{m} <= {limits[k]:g}" for k, m in enumerate(names) if limited[k]]
        found = [f"{m} {vals[k]:.4g}" for k, m in enumerate(names) if limited[k]]
        cfg = genome.decode(cache.genes[rows]).to_configs()[0]
        raise InfeasibleBudgetError(
            f"no subnet of {genome.space.name} meets {' and '.join(parts)}: the smallest achievable is "
            f"{', '.join(found)} ({cfg.to_string()})", cfg,
            {m: float(vals[k]) for k, m in enumerate(names) if limited[k]})
    nb = genome.neighbours(best_g)
    return nb[(cache.values[cache.rows(nb)] <= limits).all(axis=1)]


def smallest_achievable(space: SearchSpace, metric_fn: Predictor,
                        resolutions: Sequence[int] | None = None) -> tuple[SubnetConfig, float]:
    """The config (and value) minimising one metric, by greedy one-gene descent from the smallest configs
    (exact for additive lookup tables)."""
    genome = Genome(space, resolutions)
    cache = ScoreCache(genome, lambda b: np.zeros(len(b)), {"m": metric_fn})
    g, value = _descend(genome, cache, lambda rows: cache.values[rows, 0])
    return genome.decode(g[None, :]).to_configs()[0], float(value)
