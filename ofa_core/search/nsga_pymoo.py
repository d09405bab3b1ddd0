"""NSGA-II's parts in pymoo's terms, over genes: the problem (accuracy and metrics from the score cache) and
the sampling, crossover and mutation operators (`Genome`'s own). Imported by `nsga.pareto_front` when it runs,
so that importing `ofa_core.search` does not import pymoo (seconds).

pymoo hands over genes as float arrays; they are rounded back to choice indices."""
from __future__ import annotations

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.sampling import Sampling

from ofa_core.search.cache import ScoreCache
from ofa_core.search.genome import Genome


def _genes(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int8)


class GeneProblem(Problem):
    """Minimise minus accuracy and every metric of the cache; with `limits` (inf: unlimited), one inequality
    constraint per metric (value - limit <= 0)."""

    def __init__(self, cache: ScoreCache, limits: np.ndarray):
        genome = cache.genome
        self.cache = cache
        self.limits = limits
        self.has_limits = bool(np.isfinite(limits).any())
        n_metrics = len(cache.metric_names)
        super().__init__(n_var=genome.n_cols, n_obj=1 + n_metrics, n_ieq_constr=n_metrics if self.has_limits else 0,
                         xl=np.zeros(genome.n_cols), xu=genome.n_choices - 1.0, vtype=int)

    def _evaluate(self, x, out, *args, **kwargs):
        cache = self.cache
        rows = cache.rows(_genes(x))
        vals = cache.values[rows]
        out["F"] = np.concatenate([-cache.accuracy(rows)[:, None], vals], axis=1)
        if self.has_limits:
            out["G"] = np.where(np.isfinite(self.limits), vals - self.limits, -1.0)


class GeneSampling(Sampling):
    """The first population: the `seeds` (gene rows) first, random configs for the rest."""

    def __init__(self, genome: Genome, seeds: np.ndarray):
        super().__init__()
        self.genome = genome
        self.seeds = seeds

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        first = self.seeds[:n_samples]
        rest = self.genome.random(random_state, n_samples - len(first))
        return np.concatenate([first, rest]).astype(np.float64)


class GeneCrossover(Crossover):
    """Uniform crossover of two parents into one child (`Genome.vary` without mutation)."""

    def __init__(self, genome: Genome):
        super().__init__(2, 1, prob=1.0)
        self.genome = genome

    def _do(self, problem, x, *args, random_state=None, **kwargs):
        a, b = _genes(x[0]), _genes(x[1])
        child = self.genome.vary(a, b, np.zeros(len(a), dtype=bool), 0.0, random_state)
        return child.astype(np.float64)[None]


class GeneMutation(Mutation):
    """Each slot's kernel and expand, each depth and the resolution redrawn with `prob` (`Genome.vary`)."""

    def __init__(self, genome: Genome, prob: float):
        super().__init__()
        self.genome = genome
        self.mutate_prob = prob

    def _do(self, problem, x, *args, random_state=None, **kwargs):
        g = _genes(x)
        return self.genome.vary(g, g, np.ones(len(g), dtype=bool), self.mutate_prob, random_state).astype(np.float64)
