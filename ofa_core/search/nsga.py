"""Pareto fronts of accuracy against costs (latency, MACs): NSGA-II (pymoo) over genes, with the front taken
over every config scored (an archive), not only the last population."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ofa_core.errors import OFABenchError
from ofa_core.search.blas import one_blas_thread
from ofa_core.search.cache import ScoreCache
from ofa_core.search.genome import Genome
from ofa_core.search.problem import Predictor, check_budget
from ofa_core.search.smallest import smallest_feasible
from ofa_core.space import ConfigBatch, SearchSpace, SubnetConfig


@dataclass(frozen=True)
class ParetoFront:
    """Non-dominated configs (higher accuracy, lower metrics), sorted by the first metric."""

    configs: list[SubnetConfig]
    accuracy: np.ndarray
    values: dict[str, np.ndarray]
    n_evaluated: int = 0
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.configs)

    def rows(self) -> list[dict]:
        return [{"config": c.to_ofa_dict(), "config_string": c.to_string(), "accuracy": float(a),
                 **{m: float(v[i]) for m, v in self.values.items()}}
                for i, (c, a) in enumerate(zip(self.configs, self.accuracy))]


def non_dominated(acc: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (accuracy >=, every cost <=, one strictly), sorted by the
    first cost. Two objectives: one sort and a running maximum; more: pairwise, for small sets."""
    acc = np.asarray(acc, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64).reshape(len(acc), -1)
    if len(acc) == 0:
        return np.empty(0, dtype=np.intp)
    if costs.shape[1] == 1:
        order = np.lexsort((-acc, costs[:, 0]))  # by cost, best accuracy first among equal costs
        a = acc[order]
        prev_best = np.maximum.accumulate(np.concatenate([[-np.inf], a[:-1]]))
        return order[a > prev_best]
    f = np.concatenate([-acc[:, None], costs], axis=1)
    keep = []
    for i in range(len(f)):
        worse_eq = (f <= f[i]).all(axis=1) & (f < f[i]).any(axis=1)
        if not worse_eq.any():
            keep.append(i)
    keep = np.asarray(keep, dtype=np.intp)
    return keep[np.argsort(costs[keep, 0], kind="stable")]


def pareto_front(space: SearchSpace, accuracy_fn: Predictor, metrics: Mapping[str, Predictor],
                 rng: np.random.Generator, population: int = 100, generations: int = 150,
                 resolutions: Sequence[int] | None = None, limits: Mapping[str, float] | None = None,
                 mutate_prob: float = 0.1,
                 initial: Sequence[SubnetConfig] | ConfigBatch | None = None) -> ParetoFront:
    """NSGA-II (pymoo) over accuracy and every metric, our crossover and mutation on genes; the front is taken
    over every config scored (an archive), not only the last population. `initial`: configs that start in the
    first population (the rest is random) and are always in the archive, e.g. the space's extremes and the
    answers of single-budget searches, so the front reaches both ends of the range."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.optimize import minimize

    from ofa_core.search.nsga_pymoo import GeneCrossover, GeneMutation, GeneProblem, GeneSampling

    t0 = time.perf_counter()
    if not metrics:
        raise OFABenchError("a Pareto front needs at least one cost (latency or MACs)")
    limits = check_budget(limits or {})
    genome = Genome(space, resolutions)
    cache = ScoreCache(genome, accuracy_fn, metrics)
    lim = np.array([float(limits.get(m, np.inf)) for m in cache.metric_names])
    if np.isfinite(lim).any():
        smallest_feasible(genome, cache, lim)  # a clear error for an impossible budget
    seeds = np.zeros((0, genome.n_cols), dtype=np.int8)
    if initial is not None and len(initial):
        seed_batch = initial if isinstance(initial, ConfigBatch) else ConfigBatch.from_configs(list(initial))
        seeds = genome.encode(seed_batch)
        cache.accuracy(cache.rows(seeds))  # in the archive whatever the evolution does with them

    algorithm = NSGA2(pop_size=population, sampling=GeneSampling(genome, seeds), crossover=GeneCrossover(genome),
                      mutation=GeneMutation(genome, mutate_prob), eliminate_duplicates=True)
    with one_blas_thread():  # a fresh algorithm: no need for minimize's defensive deep copy of it
        minimize(GeneProblem(cache, lim), algorithm, ("n_gen", max(1, generations)),
                 seed=int(rng.integers(2**31 - 1)), verbose=False, copy_algorithm=False)
    return _archive_front(cache, lim, t0)


def _archive_front(cache: ScoreCache, lim: np.ndarray, t0: float) -> ParetoFront:
    """The non-dominated configs among every config scored within the limits `lim` (one per metric); `t0`: when
    the call started (`seconds` counts this step too)."""
    names = cache.metric_names
    scored = np.flatnonzero(~np.isnan(cache.acc[:cache.n]))
    vals = cache.values[scored]
    ok = (vals <= lim).all(axis=1)
    scored, vals = scored[ok], vals[ok]
    acc = cache.acc[scored]
    if len(names) > 1 and len(scored) > 4000:  # pairwise filtering is quadratic: pre-filter per metric
        pre = np.unique(np.concatenate([non_dominated(acc, vals[:, [j]]) for j in range(len(names))]))
        extra = np.argsort(-acc)[:2000]
        pre = np.unique(np.concatenate([pre, extra]))
        keep = pre[non_dominated(acc[pre], vals[pre])]
    else:
        keep = non_dominated(acc, vals)
    rows = scored[keep]
    configs = cache.genome.decode(cache.genes[rows]).to_configs() if len(rows) else []
    return ParetoFront(configs=configs, accuracy=cache.acc[rows].copy(),
                       values={m: cache.values[rows, j].copy() for j, m in enumerate(names)},
                       n_evaluated=int(len(scored)), seconds=time.perf_counter() - t0)
