"""Hardware-aware search: the OFA evolutionary search under budgets, and NSGA-II Pareto fronts.

Predictors are passed in as plain callables `f(batch: ConfigBatch) -> np.ndarray` (an accuracy predictor, a
latency predictor, `space.macs`), as the official `EvolutionFinder` takes them. Unlike it, every population is
scored in one vectorised call, accuracies of configs already scored come from a cache, several searches
(restarts and budgets) evolve side by side in the same arrays ("lanes"), and a budget no subnet meets raises
`InfeasibleBudgetError` instead of resampling forever.

A config is held as a row of choice indices ("genes", int8): kernel per slot, expand per slot, depth per stage,
resolution. Evolution follows the official tutorial finder: keep the best `parent_ratio` of the population,
make `mutation_ratio` of the children by mutation (each slot's kernel+expand, each depth and the resolution
resampled with `mutate_prob`) and the rest by uniform crossover of two parents; a child that breaks a budget
is redrawn from the same parents (at most `max_resample` rounds, then the first parent is kept). One
deliberate change: parents are picked among distinct configs (`unique_parents`); the official loop lets
copies of one config fill the parent pool, which makes single runs stall and vary a lot between seeds.
Budgets are checked by calling the metric predictors on every candidate (table lookups, cheap); the costly
accuracy predictor only sees the children kept, once per distinct config.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ofa_core.errors import OFABenchError
from ofa_core.space import ConfigBatch, SearchSpace, SubnetConfig

Predictor = Callable[[ConfigBatch], np.ndarray]


class InfeasibleBudgetError(OFABenchError, ValueError):
    """No subnet of the space meets the budget; the message gives the smallest value reachable."""


class InvalidBudgetError(OFABenchError, ValueError):
    """A budget that is not a finite number above zero (0, a negative value, nan or inf)."""


def check_budget(budget: Mapping[str, float]) -> dict[str, float]:
    """The budget as floats; every limit must be finite and > 0 (nan would silently admit every subnet)."""
    out = {}
    for name, value in budget.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InvalidBudgetError(f"budget on {name} must be a number, got {value!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise InvalidBudgetError(f"budget on {name} must be a finite number > 0, got {value!r}")
        out[name] = v
    return out


@dataclass(frozen=True)
class SearchParams:
    """Evolution hyperparameters: the paper's / official finder's defaults; `restarts` independent searches
    evolve side by side and the best is kept."""

    population: int = 100
    generations: int = 500
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    restarts: int = 1
    max_resample: int = 50  # rounds of redrawing children that break a budget
    oversample: int = 3  # candidates drawn per child in the first round (the first feasible one is kept)
    oversample_retry: int = 8  # ... and in later rounds, for the children still breaking their budget
    unique_parents: bool = True  # pick parents among distinct configs (the official finder lets copies crowd in)

    def __post_init__(self) -> None:
        if self.population < 2 or self.generations < 0 or self.restarts < 1:
            raise OFABenchError("search needs population >= 2, generations >= 0 and restarts >= 1")
        if not 0 < self.parent_ratio <= 1 or not 0 <= self.mutation_ratio <= 1 or not 0 <= self.mutate_prob <= 1:
            raise OFABenchError("parent_ratio must be in (0, 1]; mutation_ratio and mutate_prob in [0, 1]")

    @property
    def n_parents(self) -> int:
        return max(1, int(round(self.parent_ratio * self.population)))

    @property
    def n_mutations(self) -> int:
        return int(round(self.mutation_ratio * self.population))


@dataclass(frozen=True)
class SearchResult:
    """The best config found under one budget, its predicted accuracy and the values of every metric."""

    config: SubnetConfig
    accuracy: float
    values: dict[str, float]
    limits: dict[str, float]
    history: np.ndarray = field(repr=False)  # best accuracy after each generation (best restart)
    restart_accuracies: tuple[float, ...] = ()
    n_scored: int = 0  # distinct configs scored by the accuracy predictor (shared by all lanes of the call)
    seconds: float = 0.0  # wall time of the whole call (all budgets)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def one_blas_thread():
    """Context: numpy's BLAS on one thread. A search runs thousands of small matmuls, where extra BLAS threads
    only add hand-offs (and spin badly on a loaded machine: 4x the CPU time measured here)."""
    ctl = _blas_controller()
    return ctl.limit(limits=1, user_api="blas") if ctl is not None else contextlib.nullcontext()


# ---- genes --------------------------------------------------------------------------------------------

class Genome:
    """Choice-index encoding of configs for one space and resolution list: decoding, sampling, variation."""

    def __init__(self, space: SearchSpace, resolutions: Sequence[int] | None = None):
        self.space = space
        res = tuple(sorted(set(int(r) for r in (resolutions or space.resolutions))))
        bad = [r for r in res if r not in space.resolutions]
        if bad:
            raise OFABenchError(f"resolution {bad[0]} is not in {space.name}")
        self.resolutions = res
        S, T = space.n_slots, space.n_stages
        self.S, self.T, self.M = S, T, space.max_depth
        self.n_cols = 2 * S + T + 1
        self.n_bytes = -(-self.n_cols // 8)
        self.ks_vals = np.asarray(space.ks_list, dtype=np.int64)
        self.e_vals = np.asarray(space.expand_list, dtype=np.int64)
        self.d_vals = np.asarray(space.depth_list, dtype=np.int64)
        self.r_vals = np.asarray(res, dtype=np.int64)
        self.n_choices = np.array([len(self.ks_vals)] * S + [len(self.e_vals)] * S + [len(self.d_vals)] * T
                                  + [len(self.r_vals)], dtype=np.int64)
        # one mutation draw per slot (kernel and expand together), per stage and for the resolution
        self.draw_of_col = np.concatenate([np.arange(S), np.arange(S), S + np.arange(T), [S + T]])
        self.stage_of_slot = np.repeat(np.arange(T), self.M)
        self.pos_of_slot = np.tile(np.arange(self.M), T)
        self._active_of_depth = np.arange(self.M)[None, :] < self.d_vals[:, None]  # (depth choice, position)

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return (rng.random((n, self.n_cols)) * self.n_choices).astype(np.int8)

    def vary(self, a: np.ndarray, b: np.ndarray, mutate: np.ndarray, prob: float,
             rng: np.random.Generator) -> np.ndarray:
        """Children of parent rows `a`, `b`: uniform crossover, then mutation where `mutate` (rows) is set.
        A mutation child has `b` equal to `a`, so the crossover leaves it unchanged."""
        n = len(a)
        bits = rng.integers(0, 256, size=(n, self.n_bytes), dtype=np.uint8)
        pick_a = np.unpackbits(bits, axis=1, count=self.n_cols).view(bool)
        child = np.where(pick_a, a, b)
        m = np.flatnonzero(mutate)
        if len(m):
            draws = rng.random((len(m), self.S + self.T + 1), dtype=np.float32) < prob
            flat = np.flatnonzero(draws[:, self.draw_of_col])
            if len(flat):
                r, c = m[flat // self.n_cols], flat % self.n_cols
                child[r, c] = (rng.random(len(flat)) * self.n_choices[c]).astype(np.int8)
        return child

    def active_cols(self, g: np.ndarray) -> np.ndarray:
        """(N, n_cols) bool: the genes that matter (kernel/expand of skipped slots do not)."""
        S, T = self.S, self.T
        act = self._active_of_depth[g[:, 2 * S: 2 * S + T]].reshape(len(g), S)
        out = np.ones((len(g), self.n_cols), dtype=bool)
        out[:, :S] = act
        out[:, S:2 * S] = act
        return out

    def canonical(self, g: np.ndarray) -> np.ndarray:
        """Genes with skipped slots set to their stage's last active block (equal configs, equal rows)."""
        S, T = self.S, self.T
        depth = self.d_vals[g[:, 2 * S: 2 * S + T].astype(np.intp)]  # (N, T)
        last = depth[:, self.stage_of_slot] - 1  # (N, S)
        src = self.stage_of_slot * self.M + np.minimum(self.pos_of_slot, last)
        rows = np.arange(len(g))[:, None]
        out = g.copy()
        out[:, :S] = g[rows, src]
        out[:, S:2 * S] = g[rows, S + src]
        return out

    def decode(self, g: np.ndarray) -> ConfigBatch:
        S, T = self.S, self.T
        gi = g.astype(np.intp)
        return ConfigBatch(self.ks_vals[gi[:, :S]], self.e_vals[gi[:, S:2 * S]], self.d_vals[gi[:, 2 * S:2 * S + T]],
                           self.r_vals[gi[:, -1]])

    def encode(self, batch: ConfigBatch) -> np.ndarray:
        """Genes of configs (their values must be among the choices and resolutions)."""
        b = batch.normalised()
        cols = [_index_of(b.ks, self.ks_vals, "kernel"), _index_of(b.e, self.e_vals, "expand"),
                _index_of(b.d, self.d_vals, "depth"), _index_of(b.r[:, None], self.r_vals, "resolution")]
        return np.concatenate(cols, axis=1).astype(np.int8)

    def smallest(self) -> np.ndarray:
        """The all-smallest-choice config at each resolution (choices are sorted ascending)."""
        g = np.zeros((len(self.r_vals), self.n_cols), dtype=np.int8)
        order = [np.argsort(v) for v in (self.ks_vals, self.e_vals, self.d_vals)]
        g[:, :self.S] = order[0][0]
        g[:, self.S:2 * self.S] = order[1][0]
        g[:, 2 * self.S:-1] = order[2][0]
        g[:, -1] = np.arange(len(self.r_vals))
        return g

    def neighbours(self, g: np.ndarray) -> np.ndarray:
        """Every config one gene away from row `g` (plus `g` itself)."""
        out = [g[None, :]]
        for col in range(self.n_cols):
            for v in range(self.n_choices[col]):
                if v != g[col]:
                    h = g.copy()
                    h[col] = v
                    out.append(h[None, :])
        return np.concatenate(out, axis=0)


def _index_of(values: np.ndarray, choices: np.ndarray, what: str) -> np.ndarray:
    hit = values[..., None] == choices
    if not hit.any(axis=-1).all():
        bad = values[~hit.any(axis=-1)][0]
        raise OFABenchError(f"{what} {int(bad)} is not among the searched choices {choices.tolist()}")
    return np.argmax(hit, axis=-1)


# ---- scores, cached -----------------------------------------------------------------------------------

class ScoreCache:
    """Metric values and accuracies of every config kept in one search call, keyed by its genes.

    The key of a config is the bytes of its genes with the genes that do not matter (kernel and expand of
    slots skipped by depth) masked, so configs that differ only there are one entry. Lookups are one dict
    access per row: the search asks only for the children it keeps (a few hundred per generation).
    Accuracy is computed only when asked, once per distinct config."""

    def __init__(self, genome: Genome, accuracy_fn: Predictor, metrics: Mapping[str, Predictor]):
        self.genome = genome
        self.accuracy_fn = accuracy_fn
        self.metric_names = tuple(metrics)
        self.metric_fns = tuple(metrics.values())
        self.index: dict[bytes, int] = {}
        self._key = np.dtype((np.void, genome.n_cols))
        cap = 4096
        self.genes = np.zeros((cap, genome.n_cols), dtype=np.int8)
        self.values = np.zeros((cap, len(self.metric_fns)), dtype=np.float64)
        self.acc = np.full(cap, np.nan)
        self.n = 0
        self.n_acc = 0
        self._fast = _index_path(genome, accuracy_fn)

    def metric_values(self, g: np.ndarray) -> np.ndarray:
        """(N, n_metrics) values of gene rows, computed directly (no cache)."""
        batch = self.genome.decode(g)
        out = np.empty((len(g), len(self.metric_fns)), dtype=np.float64)
        for j, fn in enumerate(self.metric_fns):
            out[:, j] = np.asarray(fn(batch), dtype=np.float64).reshape(-1)
        return out

    def rows(self, g: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Cache rows of gene rows `g`; configs not seen before are stored with their metric values (`values`,
        if the caller has them, else computed)."""
        masked = np.ascontiguousarray(np.where(self.genome.active_cols(g), g, np.int8(-1)))
        keys = masked.view(self._key).ravel().tolist()
        get = self.index.get
        rows = [get(k, -1) for k in keys]
        if -1 in rows:
            new: dict[bytes, int] = {}
            for i, r in enumerate(rows):
                if r < 0:
                    new.setdefault(keys[i], i)
            first = np.fromiter(new.values(), dtype=np.intp, count=len(new))
            start = self._add(g[first], None if values is None else values[first])
            self.index.update(zip(new.keys(), range(start, start + len(first))))
            rows = [get(k) for k in keys]
        return np.asarray(rows, dtype=np.intp)

    def _add(self, g: np.ndarray, values: np.ndarray | None) -> int:
        """Store new configs with their metric values (computed if not given); return the first new row."""
        k = len(g)
        start = self._grow(k)
        canon = self.genome.canonical(g)
        self.genes[start:start + k] = canon
        self.values[start:start + k] = self.metric_values(canon) if values is None else values
        return start

    def accuracy(self, rows: np.ndarray) -> np.ndarray:
        acc = self.acc[rows]
        todo = np.isnan(acc)
        if todo.any():
            need = np.unique(rows[todo])
            if self._fast is not None:
                self.acc[need] = self._fast(self.genes[need])
            else:
                self.acc[need] = np.asarray(self.accuracy_fn(self.genome.decode(self.genes[need])),
                                            dtype=np.float64).reshape(-1)
            self.n_acc += len(need)
            acc = self.acc[rows]
        return acc

    def _grow(self, k: int) -> int:
        start = self.n
        if start + k > len(self.acc):
            cap = max(2 * len(self.acc), start + k)
            self.genes = np.resize(self.genes, (cap, self.genes.shape[1]))
            self.values = np.resize(self.values, (cap, self.values.shape[1]))
            acc = np.full(cap, np.nan)
            acc[:start] = self.acc[:start]
            self.acc = acc
        self.n = start + k
        return start


def _index_path(genome: Genome, accuracy_fn):
    """For an accuracy predictor that can take choice indices (ours), a function genes -> accuracies that skips
    decoding to values and re-encoding; None for any other callable or a mismatch of choices."""
    enc = getattr(accuracy_fn, "encoding", None)
    if enc is None or not hasattr(accuracy_fn, "forward_features") or not hasattr(enc, "encode_indices"):
        return None
    try:
        k_map = np.array([list(enc.ks_list).index(v) for v in genome.ks_vals])
        e_map = np.array([list(enc.expand_list).index(v) for v in genome.e_vals])
        r_bin = enc.resolution_bins(genome.r_vals)
    except (ValueError, OFABenchError):
        return None
    if (enc.n_stages, enc.max_depth) != (genome.T, genome.M):
        return None
    S, T = genome.S, genome.T

    def predict(g: np.ndarray) -> np.ndarray:
        gi = g.astype(np.intp)
        x = enc.encode_indices(k_map[gi[:, :S]], e_map[gi[:, S:2 * S]], genome.active_cols(g)[:, :S],
                               r_bin[gi[:, -1]])
        return accuracy_fn.forward_features(x)

    return predict


# ---- evolution ----------------------------------------------------------------------------------------

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


def _evolve(space, accuracy_fn, metrics, budgets, rng, params, resolutions) -> list[SearchResult]:
    t0 = time.perf_counter()
    if not budgets:
        return []
    budgets = [check_budget(b) for b in budgets]
    unknown = sorted({k for b in budgets for k in b} - set(metrics))
    if unknown:
        raise OFABenchError(f"budget on {unknown[0]!r}, which has no predictor (have: {', '.join(metrics) or 'none'})")
    genome = Genome(space, resolutions)
    cache = ScoreCache(genome, accuracy_fn, metrics)
    names = cache.metric_names
    R, P, K = params.restarts, params.population, params.n_parents
    L = len(budgets) * R
    limits = np.array([[float(b.get(m, np.inf)) for m in names] for b in budgets], dtype=np.float64)
    lane_limits = np.repeat(limits, R, axis=0)  # (L, n_metrics)

    # Population buffers per lane: K parent slots then P child slots; the first population sits in the
    # child slots, the parent slots start empty (accuracy -inf, distinct negative rows).
    Q = K + P
    C = genome.n_cols
    pop_genes = np.zeros((L, Q, C), dtype=np.int8)
    pop_rows = np.broadcast_to(-1 - np.arange(Q), (L, Q)).copy()
    pop_acc = np.full((L, Q), -np.inf)
    first = _initial_population(genome, cache, lane_limits, budgets, P, params, rng)  # (L*P, C)
    first_rows = cache.rows(first)
    pop_genes[:, K:] = first.reshape(L, P, C)
    pop_rows[:, K:] = first_rows.reshape(L, P)
    pop_acc[:, K:] = cache.accuracy(first_rows).reshape(L, P)
    flat_genes, flat_rows, flat_acc = pop_genes.reshape(L * Q, C), pop_rows.reshape(-1), pop_acc.reshape(-1)

    is_mut = np.zeros((L, P), dtype=bool)
    is_mut[:, :params.n_mutations] = True
    is_mut = is_mut.ravel()
    lane_of_child = np.repeat(np.arange(L), P)
    lane_base = (np.arange(L) * K)[:, None]
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
        pa = (lane_base + rng.integers(0, K, size=(L, P))).ravel()
        pb = np.where(is_mut, pa, (lane_base + rng.integers(0, K, size=(L, P))).ravel())
        child_genes, child_rows = _feasible_children(genome, cache, par_genes, pa, pb, is_mut, lane_of_child,
                                                     lane_limits, params, rng)
        pop_genes[:, :K] = par_genes.reshape(L, K, C)
        pop_rows[:, :K] = par_rows.reshape(L, K)
        pop_acc[:, :K] = par_acc.reshape(L, K)
        pop_genes[:, K:] = child_genes.reshape(L, P, C)
        pop_rows[:, K:] = child_rows.reshape(L, P)
        pop_acc[:, K:] = cache.accuracy(child_rows).reshape(L, P)
    acc, rows = pop_acc, pop_rows

    best = np.argmax(acc, axis=1)
    lane_best_acc = acc[np.arange(L), best]
    lane_best_row = rows[np.arange(L), best]
    seconds = time.perf_counter() - t0
    results = []
    for i, budget in enumerate(budgets):
        lanes = np.arange(i * R, (i + 1) * R)
        j = lanes[int(np.argmax(lane_best_acc[lanes]))]
        row = int(lane_best_row[j])
        cfg = genome.decode(cache.genes[row:row + 1]).to_configs()[0]
        results.append(SearchResult(
            config=cfg, accuracy=float(cache.acc[row]),
            values={m: float(cache.values[row, k]) for k, m in enumerate(names)},
            limits={m: float(v) for m, v in budget.items()},
            history=history[j].copy(), restart_accuracies=tuple(float(a) for a in lane_best_acc[lanes]),
            n_scored=cache.n_acc, seconds=seconds,
        ))
    return results


def _feasible(cache: ScoreCache, rows: np.ndarray, lanes: np.ndarray, lane_limits: np.ndarray) -> np.ndarray:
    return (cache.values[rows] <= lane_limits[lanes]).all(axis=1)


def _feasible_children(genome, cache, parents, pa, pb, is_mut, lane_of_child, lane_limits, params, rng):
    """One child per (pa, pb) pair, redrawn while it breaks its lane's budget; `oversample` draws per round.
    Budgets are checked by calling the metrics on the candidates directly (cheap table lookups); only the
    children kept go through the cache, where their accuracy is looked up or computed."""
    n = len(pa)
    out_genes = np.empty((n, genome.n_cols), dtype=np.int8)
    out_vals = np.empty((n, len(cache.metric_fns)), dtype=np.float64)
    todo = np.arange(n)
    for round_ in range(params.max_resample):
        if len(todo) == 0:
            break
        os_ = max(1, params.oversample if round_ == 0 else params.oversample_retry)
        rep = np.repeat(todo, os_)
        cand = genome.vary(parents[pa[rep]], parents[pb[rep]], is_mut[rep], params.mutate_prob, rng)
        vals = cache.metric_values(cand)
        ok = (vals <= lane_limits[lane_of_child[rep]]).all(axis=1).reshape(-1, os_)
        has = ok.any(axis=1)
        pick = np.argmax(ok, axis=1)[has] + np.flatnonzero(has) * os_
        done = todo[has]
        out_genes[done] = cand[pick]
        out_vals[done] = vals[pick]
        todo = todo[~has]
    if len(todo):  # give up on these: keep the (feasible) first parent
        out_genes[todo] = parents[pa[todo]]
        out_vals[todo] = cache.values[cache.rows(out_genes[todo])]
    return out_genes, cache.rows(out_genes, out_vals)


def _initial_population(genome, cache, lane_limits, budgets, P, params, rng) -> np.ndarray:
    """P feasible random configs per lane; lanes short of them are filled around the smallest config, and a
    budget that even the smallest config breaks raises `InfeasibleBudgetError`."""
    L = len(lane_limits)
    n = L * P
    lane = np.repeat(np.arange(L), P)
    out = np.empty((n, genome.n_cols), dtype=np.int8)
    todo = np.arange(n)
    os_ = max(1, params.oversample)
    for _ in range(params.max_resample):
        if len(todo) == 0:
            return out
        cand = genome.random(rng, len(todo) * os_)
        rep = np.repeat(todo, os_)
        ok = (cache.metric_values(cand) <= lane_limits[lane[rep]]).all(axis=1).reshape(-1, os_)
        has = ok.any(axis=1)
        out[todo[has]] = cand[np.argmax(ok, axis=1)[has] + np.flatnonzero(has) * os_]
        todo = todo[~has]
    # Few random configs meet these budgets: start from the smallest one reachable and its feasible neighbours.
    for lane_id in np.unique(lane[todo]):
        seeds = _smallest_feasible(genome, cache, lane_limits[lane_id], budgets[lane_id // params.restarts])
        slots = todo[lane[todo] == lane_id]
        out[slots] = seeds[rng.integers(0, len(seeds), size=len(slots))]
    return out


def _smallest_feasible(genome, cache, limits, budget) -> np.ndarray:
    """Feasible configs near the minimum of max(value / limit); raise if that minimum breaks the budget."""
    names = cache.metric_names
    scale = np.where(np.isfinite(limits), limits, np.inf)

    def worst(rows):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = cache.values[rows] / scale
        ratio = np.where(np.isfinite(limits), ratio, 0.0)
        return ratio.max(axis=1)

    starts = genome.smallest()
    best_g, best_w = None, np.inf
    for g in starts:  # greedy descent, one gene at a time, from the smallest config at each resolution
        w = worst(cache.rows(g[None, :]))[0]
        for _ in range(4 * genome.n_cols):
            nb = genome.neighbours(g)
            ws = worst(cache.rows(nb))
            k = int(np.argmin(ws))
            if ws[k] >= w:
                break
            g, w = nb[k], ws[k]
        if w < best_w:
            best_g, best_w = g, w
    rows = cache.rows(best_g[None, :])
    if best_w > 1.0:
        vals = cache.values[rows[0]]
        parts = [f"{m} <= {limits[k]:g}" for k, m in enumerate(names) if np.isfinite(limits[k])]
        found = [f"{m} {vals[k]:.4g}" for k, m in enumerate(names) if np.isfinite(limits[k])]
        cfg = genome.decode(cache.genes[rows]).to_configs()[0]
        raise InfeasibleBudgetError(
            f"no subnet of {genome.space.name} meets {' and '.join(parts)}: the smallest achievable is "
            f"{', '.join(found)} ({cfg.to_string()})")
    nb = genome.neighbours(best_g)
    ok = _feasible(cache, cache.rows(nb), np.zeros(len(nb), dtype=np.intp), limits[None, :])
    return nb[ok]


def smallest_achievable(space: SearchSpace, metric_fn: Predictor,
                        resolutions: Sequence[int] | None = None) -> tuple[SubnetConfig, float]:
    """The config (and value) minimising one metric, by greedy one-gene descent from the smallest configs
    (exact for additive lookup tables)."""
    genome = Genome(space, resolutions)
    cache = ScoreCache(genome, lambda b: np.zeros(len(b)), {"m": metric_fn})
    best = None
    for g in genome.smallest():
        v = cache.values[cache.rows(g[None, :])[0], 0]
        for _ in range(4 * genome.n_cols):
            nb = genome.neighbours(g)
            vals = cache.values[cache.rows(nb), 0]
            k = int(np.argmin(vals))
            if vals[k] >= v:
                break
            g, v = nb[k], vals[k]
        if best is None or v < best[1]:
            best = (g, v)
    return genome.decode(best[0][None, :]).to_configs()[0], float(best[1])


# ---- Pareto fronts (NSGA-II) --------------------------------------------------------------------------

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
                 mutate_prob: float = 0.1) -> ParetoFront:
    """NSGA-II (pymoo) over accuracy and every metric, our crossover and mutation on genes; the front is taken
    over every config scored (an archive), not only the last population."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.crossover import Crossover
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem
    from pymoo.core.sampling import Sampling
    from pymoo.optimize import minimize

    t0 = time.perf_counter()
    if not metrics:
        raise OFABenchError("a Pareto front needs at least one cost (latency or MACs)")
    limits = check_budget(limits or {})
    genome = Genome(space, resolutions)
    cache = ScoreCache(genome, accuracy_fn, metrics)
    names = cache.metric_names
    lim = np.array([float((limits or {}).get(m, np.inf)) for m in names])
    has_limits = bool(np.isfinite(lim).any())
    if has_limits:
        _smallest_feasible(genome, cache, lim, dict(limits or {}))  # a clear error for an impossible budget

    class _Problem(Problem):
        def __init__(self):
            super().__init__(n_var=genome.n_cols, n_obj=1 + len(names), n_ieq_constr=len(names) if has_limits else 0,
                             xl=np.zeros(genome.n_cols), xu=genome.n_choices - 1.0, vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            rows = cache.rows(np.rint(x).astype(np.int8))
            vals = cache.values[rows]
            out["F"] = np.concatenate([-cache.accuracy(rows)[:, None], vals], axis=1)
            if has_limits:
                out["G"] = np.where(np.isfinite(lim), vals - lim, -1.0)

    class _Sampling(Sampling):
        def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
            return genome.random(random_state, n_samples).astype(np.float64)

    class _Crossover(Crossover):
        def __init__(self):
            super().__init__(2, 1, prob=1.0)

        def _do(self, problem, x, *args, random_state=None, **kwargs):
            a, b = np.rint(x[0]).astype(np.int8), np.rint(x[1]).astype(np.int8)
            child = genome.vary(a, b, np.zeros(len(a), dtype=bool), 0.0, random_state)
            return child.astype(np.float64)[None]

    class _Mutation(Mutation):
        def _do(self, problem, x, *args, random_state=None, **kwargs):
            g = np.rint(x).astype(np.int8)
            return genome.vary(g, g, np.ones(len(g), dtype=bool), mutate_prob, random_state).astype(np.float64)

    algorithm = NSGA2(pop_size=population, sampling=_Sampling(), crossover=_Crossover(), mutation=_Mutation(),
                      eliminate_duplicates=True)
    with one_blas_thread():
        minimize(_Problem(), algorithm, ("n_gen", max(1, generations)), seed=int(rng.integers(2**31 - 1)),
                 verbose=False)
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
    configs = genome.decode(cache.genes[rows]).to_configs() if len(rows) else []
    return ParetoFront(configs=configs, accuracy=cache.acc[rows].copy(),
                       values={m: cache.values[rows, j].copy() for j, m in enumerate(names)},
                       n_evaluated=int(len(scored)), seconds=time.perf_counter() - t0)
