"""The OFA evolutionary search under budgets: the best config by predicted accuracy whose metrics (latency,
MACs, ...) stay within every limit.

Evolution follows the official tutorial finder: keep the best `parent_ratio` of the population, make
`mutation_ratio` of the children by mutation and the rest by uniform crossover of two parents (`offspring`).
One deliberate change: parents are picked among distinct configs (`unique_parents`); the official loop lets
copies of one config fill the parent pool, which makes single runs stall and vary a lot between seeds.
Several searches (restarts and budgets) evolve side by side in the same arrays, one "lane" each, and the
costly accuracy predictor sees each distinct config once (`cache`).
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from ofa_core.errors import OFABenchError
from ofa_core.search.blas import one_blas_thread
from ofa_core.search.cache import ScoreCache
from ofa_core.search.genome import Genome
from ofa_core.search.offspring import LaneBudget, Offspring
from ofa_core.search.problem import Predictor, SearchParams, SearchResult, check_budget
from ofa_core.search.smallest import smallest_feasible
from ofa_core.space import SearchSpace


def evolution_search(space: SearchSpace, accuracy_fn: Predictor, metrics: Mapping[str, Predictor],
                     limits: Mapping[str, float], rng: np.random.Generator, params: SearchParams = SearchParams(),
                     resolutions: Sequence[int] | None = None) -> SearchResult:
    """Best config (by predicted accuracy) with `metrics[name](cfg) <= limits[name]` for every limit."""
    return evolution_search_many(space, accuracy_fn, metrics, [limits], rng, params, resolutions)[0]


def evolution_search_many(space: SearchSpace, accuracy_fn: Predictor, metrics: Mapping[str, Predictor],
                          budgets: Sequence[Mapping[str, float]], rng: np.random.Generator,
                          params: SearchParams = SearchParams(),
                          resolutions: Sequence[int] | None = None) -> list[SearchResult]:
    """One search per budget, all evolved together (budgets x restarts lanes in the same arrays)."""
    with one_blas_thread():
        return _evolve(space, accuracy_fn, metrics, budgets, rng, params, resolutions)


def _evolve(space: SearchSpace, accuracy_fn: Predictor, metrics: Mapping[str, Predictor],
            budgets: Sequence[Mapping[str, float]], rng: np.random.Generator, params: SearchParams,
            resolutions: Sequence[int] | None) -> list[SearchResult]:
    t0 = time.perf_counter()
    if not budgets:
        return []
    budgets = [check_budget(b) for b in budgets]
    unknown = sorted({k for b in budgets for k in b} - set(metrics))
    if unknown:
        raise OFABenchError(f"budget on {unknown[0]!r}, which has no predictor (have: {', '.join(metrics) or 'none'})")
    genome = Genome(space, resolutions)
    cache = ScoreCache(genome, accuracy_fn, metrics)
    L = len(budgets) * params.restarts
    limits = np.array([[float(b.get(m, np.inf)) for m in cache.metric_names] for b in budgets], dtype=np.float64)
    lane_budget = LaneBudget(cache, np.repeat(limits, params.restarts, axis=0))
    offspring = Offspring(genome, cache, lane_budget, params, L)
    first, first_vals = _initial_population(genome, cache, lane_budget, params, rng)  # (L*P, C)
    acc, rows, history = _generations(cache, offspring, first, first_vals, params, rng)
    return _results(cache, budgets, params, acc, rows, history, t0)


def _generations(cache: ScoreCache, offspring: Offspring, first: np.ndarray, first_vals: np.ndarray,
                 params: SearchParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evolve every lane from its first population: (accuracy, cache rows) of the last populations (L, K + P)
    and the best parent accuracy of each lane after each generation (L, generations)."""
    L, P, K = offspring.L, params.population, params.n_parents
    # Population per lane: K parent slots then P child slots; the first population sits in the child slots,
    # the parent slots start empty (accuracy -inf, distinct negative rows).
    Q = K + P
    C = cache.genome.n_cols
    pop_genes = np.zeros((L, Q, C), dtype=np.int8)
    pop_rows = np.broadcast_to(-1 - np.arange(Q), (L, Q)).copy()
    pop_acc = np.full((L, Q), -np.inf)
    first_rows = cache.rows(first, first_vals)
    pop_genes[:, K:] = first.reshape(L, P, C)
    pop_rows[:, K:] = first_rows.reshape(L, P)
    pop_acc[:, K:] = cache.accuracy(first_rows).reshape(L, P)
    flat_genes, flat_rows, flat_acc = pop_genes.reshape(L * Q, C), pop_rows.reshape(-1), pop_acc.reshape(-1)

    lane_off = (np.arange(L) * Q)[:, None]
    history = np.empty((L, params.generations))
    for gen in range(params.generations):
        key = pop_acc
        if params.unique_parents:  # copies of a config rank after every distinct config
            order = np.argsort(pop_rows, axis=1, kind="stable") + lane_off
            srt = flat_rows[order]
            key = pop_acc.copy()
            key.reshape(-1)[order[:, 1:][srt[:, 1:] == srt[:, :-1]]] = -np.inf
        top = (np.argpartition(-key, K - 1, axis=1)[:, :K] + lane_off).ravel()
        par_genes, par_rows, par_acc = flat_genes[top], flat_rows[top], flat_acc[top]
        history[:, gen] = par_acc.reshape(L, K).max(axis=1)
        child_genes, child_rows = offspring.make(par_genes, rng)
        pop_genes[:, :K] = par_genes.reshape(L, K, C)
        pop_rows[:, :K] = par_rows.reshape(L, K)
        pop_acc[:, :K] = par_acc.reshape(L, K)
        pop_genes[:, K:] = child_genes.reshape(L, P, C)
        pop_rows[:, K:] = child_rows.reshape(L, P)
        pop_acc[:, K:] = cache.accuracy(child_rows).reshape(L, P)
    return pop_acc, pop_rows, history


def _results(cache: ScoreCache, budgets: Sequence[Mapping[str, float]], params: SearchParams, acc: np.ndarray,
             rows: np.ndarray, history: np.ndarray, t0: float) -> list[SearchResult]:
    """Per budget, the best config of its lanes (restarts), with its values and the call's statistics."""
    genome, names, R = cache.genome, cache.metric_names, params.restarts
    L = len(acc)
    best = np.argmax(acc, axis=1)
    lane_best_acc = acc[np.arange(L), best]
    lane_best_row = rows[np.arange(L), best]
    cache.complete(lane_best_row)
    seconds = time.perf_counter() - t0
    results = []
    for i, budget in enumerate(budgets):
        lanes = np.arange(i * R, (i + 1) * R)
        j = lanes[int(np.argmax(lane_best_acc[lanes]))]
        row = int(lane_best_row[j])
        answer = genome.decode(cache.genes[row:row + 1])
        # the predictor's value for the answer on its own: scored within a batch, the last bits can differ
        accuracy = float(np.asarray(cache.accuracy_fn(answer), dtype=np.float64).reshape(-1)[0])
        results.append(SearchResult(
            config=answer.to_configs()[0], accuracy=accuracy,
            values={m: float(cache.values[row, k]) for k, m in enumerate(names)},
            limits={m: float(v) for m, v in budget.items()},
            history=history[j].copy(), restart_accuracies=tuple(float(a) for a in lane_best_acc[lanes]),
            n_scored=cache.n_acc, seconds=seconds,
        ))
    return results


def _initial_population(genome: Genome, cache: ScoreCache, budget: LaneBudget, params: SearchParams,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`params.population` feasible random configs per lane and their values (as `LaneBudget.full`); lanes
    short of them are filled around the smallest config, and a budget that even the smallest config breaks
    raises `InfeasibleBudgetError`."""
    L, P = len(budget.limits), params.population
    n = L * P
    lane = np.repeat(np.arange(L), P)
    out = np.empty((n, genome.n_cols), dtype=np.int8)
    out_vals = np.full((n, len(budget.cols)), np.nan)  # nan: seeds below, already in the cache with every value
    todo = np.arange(n)
    os_ = max(1, params.oversample)
    for _ in range(params.max_resample):
        if len(todo) == 0:
            return out, budget.full(out_vals)
        cand = genome.random(rng, len(todo) * os_)
        rep = np.repeat(todo, os_)
        ok, vals = budget.check(cand, lane[rep])
        ok = ok.reshape(-1, os_)
        has = ok.any(axis=1)
        pick = np.argmax(ok, axis=1)[has] + np.flatnonzero(has) * os_
        out[todo[has]] = cand[pick]
        out_vals[todo[has]] = vals[pick]
        todo = todo[~has]
    # Few random configs meet these budgets: start from the smallest one reachable and its feasible neighbours.
    lane_limits = np.full((L, budget.n_metrics), np.inf)
    lane_limits[:, budget.cols] = budget.limits
    for lane_id in np.unique(lane[todo]):
        seeds = smallest_feasible(genome, cache, lane_limits[lane_id])
        slots = todo[lane[todo] == lane_id]
        out[slots] = seeds[rng.integers(0, len(seeds), size=len(slots))]
    return out, budget.full(out_vals)
