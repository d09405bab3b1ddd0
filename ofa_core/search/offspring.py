"""The children of one generation, in every lane of an evolution, each meeting its lane's budget.

A lane is one search (a budget and a restart) evolving beside the others in the same arrays. `LaneBudget`
checks candidates against their lanes' limits, computing only the metrics some budget limits; `Offspring`
draws children from their parents (mutation or crossover, as the official finder does) and redraws those
that break their budget.
"""
from __future__ import annotations

import numpy as np

from ofa_core.search.cache import ScoreCache
from ofa_core.search.genome import Genome
from ofa_core.search.problem import SearchParams


class LaneBudget:
    """The limits of every lane on the metrics that some budget limits: candidates are checked on those
    metrics only (a metric no budget limits, such as MACs beside a latency budget, is computed for the answer
    alone)."""

    def __init__(self, cache: ScoreCache, lane_limits: np.ndarray):
        self.cache = cache
        self.cols = np.flatnonzero(np.isfinite(lane_limits).any(axis=0))
        self.limits = lane_limits[:, self.cols]  # (L, limited metrics)
        self.n_metrics = lane_limits.shape[1]
        one = len(self.cols) == 1
        self._direct = cache.gene_metrics[self.cols[0]] if one else None  # the common case, without wrappers
        self._limit = float(self.limits[0, 0]) if one and len(self.limits) == 1 else None

    def check(self, g: np.ndarray, lanes: np.ndarray, act: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(feasible (N,) bool, values (N, limited metrics)) of gene rows in their lanes."""
        if self._direct is not None:
            v = self._direct(g, self.cache.genome.active_slots(g) if act is None else act)
            return (v <= self._limit if self._limit is not None else v <= self.limits[lanes, 0]), v[:, None]
        vals = self.cache.metric_values(g, self.cols, act)
        if len(self.cols) == 1:
            return vals[:, 0] <= self.limits[lanes, 0], vals
        return (vals <= self.limits[lanes]).all(axis=1), vals

    def full(self, vals: np.ndarray) -> np.ndarray:
        """Values of the limited metrics as rows of every metric (nan: not computed)."""
        if len(self.cols) == self.n_metrics:
            return vals
        out = np.full((len(vals), self.n_metrics), np.nan)
        out[:, self.cols] = vals
        return out


class Offspring:
    """The children of one generation in every lane, each meeting its lane's budget.

    Following the official finder, each child has its parents (one for a mutation, two for a crossover) and is
    redrawn from them while it breaks the budget: `oversample` candidates per child in the first round, then
    `oversample_retry` for the children still without one, the first feasible candidate kept; after
    `max_resample` rounds the child is a copy of its first parent. Children are laid out lane by lane, the
    first `n_mutations` of each lane mutations; random numbers are drawn in the same order and amounts as the
    straightforward loop this replaced, so a seed gives the same search as before."""

    def __init__(self, genome: Genome, cache: ScoreCache, budget: LaneBudget, params: SearchParams, L: int):
        self.genome, self.cache, self.budget, self.params = genome, cache, budget, params
        P, K = params.population, params.n_parents
        self.L, self.K = L, K
        self.n = L * P
        is_mut = np.zeros((L, P), dtype=bool)
        is_mut[:, :params.n_mutations] = True
        self.is_mut = is_mut.ravel()
        self.lane = np.repeat(np.arange(L), P)
        self.lane_base = (np.arange(L) * K)[:, None]  # parents of lane l are rows [l*K, (l+1)*K)
        self.all = np.arange(self.n)
        self.os0 = max(1, params.oversample)
        self.os1 = max(1, params.oversample_retry)
        self.round0 = self._layout(self.all, self.os0)  # the first round: every child, os0 candidates each
        self.mut_cols = genome.draw_of_col
        self.n_draws = genome.S + genome.T + 1
        self.n_choices = genome.n_choices.astype(np.float64)

    def _layout(self, todo: np.ndarray, os_: int):
        """Candidates of a round, `os_` per child of `todo`: (child of each, its lane, each child's first
        candidate, the mutation rows and the crossover rows: slices when the mutations come first (one lane),
        else indices)."""
        rep = todo.repeat(os_)
        is_mut = self.is_mut[rep]
        k = int(is_mut.sum())
        if is_mut[:k].all():
            mut, cross = slice(0, k), slice(k, None)
        else:
            mut, cross = is_mut.nonzero()[0], (~is_mut).nonzero()[0]
        return rep, self.lane[rep], np.arange(0, len(rep), os_), mut, cross

    def make(self, parents: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(genes, cache rows) of the children of parent rows `parents` (K per lane, lane by lane)."""
        genome, budget = self.genome, self.budget
        K, L, P = self.K, self.L, self.params.population
        pa = (self.lane_base + rng.integers(0, K, size=(L, P))).ravel()
        pb = (self.lane_base + rng.integers(0, K, size=(L, P))).ravel()  # drawn for mutations too (unused)
        todo = self.all
        genes = genes_act = genes_vals = None
        for round_ in range(self.params.max_resample):
            rep, lanes, first, mut, cross = self.round0 if round_ == 0 else self._layout(todo, self.os1)
            cand = self._vary(parents, pa[rep], pb[rep], mut, cross, rng)
            act = genome.active_slots(cand)
            ok, vals = budget.check(cand, lanes, act)
            pick = ok.reshape(len(first), -1).argmax(axis=1)  # the first feasible candidate (0 if none)
            pick += first
            if round_ == 0:
                genes, genes_act, genes_vals = cand[pick], act[pick], vals[pick]
            else:
                genes[todo], genes_act[todo], genes_vals[todo] = cand[pick], act[pick], vals[pick]
            todo = todo[~ok[pick]]
            if len(todo) == 0:
                break
        if len(todo):  # give up on these: keep the (feasible) first parent
            if genes is None:  # max_resample 0: no round at all
                genes, genes_act = parents[pa], np.empty((self.n, genome.S), dtype=bool)
                genes_vals = np.empty((self.n, len(budget.cols)))
            genes[todo] = parents[pa[todo]]
            genes_act[todo] = genome.active_slots(genes[todo])
            genes_vals[todo] = self.cache.values[self.cache.rows(genes[todo])][:, budget.cols]
        return genes, self.cache.rows(genes, budget.full(genes_vals), genes_act)

    def _vary(self, parents: np.ndarray, ia: np.ndarray, ib: np.ndarray, mut: slice | np.ndarray,
              cross: slice | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Candidates from parent rows `ia` (and `ib`): rows `mut` redraw each slot's kernel and expand, each
        depth and the resolution with `mutate_prob`; rows `cross` take each gene from `ia` or `ib` at random."""
        C = self.genome.n_cols
        bits = rng.integers(0, 256, size=(len(ia), self.genome.n_bytes), dtype=np.uint8)  # a bit per gene, all rows
        cand = parents[ia]
        take_b = np.unpackbits(bits[cross], axis=1, count=C).view(np.int8)
        take_b -= 1  # bit 0 takes `ib`'s gene: all bits set, a branch-free select (np.where on a random mask is 5x
        diff = np.bitwise_xor(cand[cross], parents[ib[cross]])  # slower, mispredicting every other gene)
        diff &= take_b
        cand[cross] ^= diff
        n_mut = mut.stop if isinstance(mut, slice) else len(mut)
        if n_mut:
            redraw = rng.random((n_mut, self.n_draws), dtype=np.float32) < self.params.mutate_prob
            redraw = redraw[:, self.mut_cols]  # a slot's draw redraws its kernel and its expand
            at = redraw.ravel().nonzero()[0]  # flat positions among the mutation rows
            col = at % C
            new = (rng.random(len(at)) * self.n_choices[col]).astype(np.int8)
            if isinstance(mut, slice):
                cand.reshape(-1)[at] = new  # the mutation rows come first: these are their flat positions in cand
            else:
                cand[mut[at // C], col] = new
        return cand
