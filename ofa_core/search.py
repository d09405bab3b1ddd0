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
Budgets are checked by calling the metric predictors on every candidate (table lookups, cheap), only those a
budget limits (the others are computed for the answer); the costly accuracy predictor only sees the children
kept, once per distinct config. Our own predictors are read straight from genes (`_index_path`, `_table_path`:
no decoding to configs and back), with the same values as calling them.
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
    """No subnet of the space meets the budget; the message gives the smallest value reachable, `config` the
    subnet that reaches it and `values` its value of each limited metric."""

    def __init__(self, message: str, config: SubnetConfig | None = None, values: Mapping[str, float] | None = None):
        super().__init__(message)
        self.config = config
        self.values = dict(values or {})


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
        # per (stage, depth choice): for each slot of the stage, the slot whose genes a canonical config repeats
        n_d = len(self.d_vals)
        self._depth_base = np.arange(T) * n_d
        last = np.minimum(np.arange(self.M)[None, :], self.d_vals[:, None] - 1)  # (depth choice, position)
        self._src_of_depth = (np.arange(T)[:, None, None] * self.M + last[None]).reshape(T * n_d, self.M)
        self._key = np.dtype((np.void, self.n_cols))

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

    def active_slots(self, g: np.ndarray) -> np.ndarray:
        """(N, S) bool: the slots that the depth genes keep."""
        depth = g[:, 2 * self.S: 2 * self.S + self.T].astype(np.intp)
        return self._active_of_depth.take(depth, axis=0).reshape(len(g), self.S)  # take: 4x fancy indexing

    def canonical(self, g: np.ndarray) -> np.ndarray:
        """Genes with skipped slots set to their stage's last active block (equal configs, equal rows)."""
        S, T, C = self.S, self.T, self.n_cols
        depth = g[:, 2 * S: 2 * S + T].astype(np.intp) + self._depth_base  # (N, T): stage x depth choice
        src = self._src_of_depth.take(depth, axis=0).reshape(len(g), S)  # the slot each slot copies
        src += (np.arange(len(g)) * C)[:, None]
        flat = g.reshape(-1)
        out = g.copy()
        out[:, :S] = flat.take(src)
        src += S
        out[:, S:2 * S] = flat.take(src)
        return out

    def keys(self, g: np.ndarray, act: np.ndarray | None = None) -> list[bytes]:
        """Hashable keys of gene rows, equal exactly when the configs are: the bytes of their `masked` genes
        (measured: faster than packing the genes into numbers first)."""
        return self.masked(g, act).view(self._key).ravel().tolist()

    def masked(self, g: np.ndarray, act: np.ndarray | None = None) -> np.ndarray:
        """Genes plus one, with 0 for the kernel and expand of skipped slots: equal configs, equal rows (a
        cache key without `canonical`'s gathers). `act`: `active_slots(g)`, if the caller has them."""
        S = self.S
        act = self.active_slots(g) if act is None else act
        out = g + np.int8(1)
        out[:, :S] *= act
        out[:, S:2 * S] *= act
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

    The key of a config packs its genes with the genes that do not matter (kernel and expand of slots skipped
    by depth) masked, so configs that differ only there are one entry (`Genome.keys`). Lookups are one dict
    access per row: the search asks only for the children it keeps (about a hundred per generation), where a
    dict beats a sorted array of 64-bit hashes searched with numpy (measured) and needs no collision check.
    Values of metrics that no budget limits may be left out (nan) when the search stores a child; `complete`
    computes them for the rows asked for. Accuracy is computed only when asked, once per distinct config.
    Predictors that can read genes directly (ours, see `_index_path` and `_table_path`) skip decoding them to
    configs."""

    def __init__(self, genome: Genome, accuracy_fn: Predictor, metrics: Mapping[str, Predictor]):
        self.genome = genome
        self.accuracy_fn = accuracy_fn
        self.metric_names = tuple(metrics)
        self.metric_fns = tuple(metrics.values())
        self.index: dict[bytes, int] = {}  # `Genome.keys` -> row
        cap = 4096
        self.genes = np.zeros((cap, genome.n_cols), dtype=np.int8)
        self.values = np.zeros((cap, len(self.metric_fns)), dtype=np.float64)
        self.acc = np.full(cap, np.nan)
        self.n = 0
        self.n_acc = 0
        self._fast = _index_path(genome, accuracy_fn)
        self._gene_metrics = tuple(_table_path(genome, fn) for fn in self.metric_fns)
        self._partial = False  # some stored rows lack some metric values (nan)

    def metric_values(self, g: np.ndarray, cols: Sequence[int] | None = None,
                      act: np.ndarray | None = None) -> np.ndarray:
        """(N, len(cols)) values of gene rows for the metrics `cols` (default: all), computed directly (no
        cache). `act`: the rows' active slots, if the caller has them."""
        cols = range(len(self.metric_fns)) if cols is None else cols
        out = np.empty((len(g), len(cols)), dtype=np.float64)
        batch = None
        for j, c in enumerate(cols):
            direct = self._gene_metrics[c]
            if direct is not None:
                act = self.genome.active_slots(g) if act is None else act
                out[:, j] = direct(g, act)
            else:
                batch = self.genome.decode(g) if batch is None else batch
                out[:, j] = np.asarray(self.metric_fns[c](batch), dtype=np.float64).reshape(-1)
        return out

    def rows(self, g: np.ndarray, values: np.ndarray | None = None, act: np.ndarray | None = None) -> np.ndarray:
        """Cache rows of gene rows `g`; configs not seen before are stored. `values`: the caller's metric values
        of `g` (nan for metrics it did not compute, filled by `complete` when asked); without them the new
        configs' values are computed, and every row returned has all its values. `act`: `active_slots(g)`."""
        act = self.genome.active_slots(g) if act is None else act
        keys = self.genome.keys(g, act)
        index = self.index
        rows = list(map(index.get, keys))
        if None in rows:
            miss = [i for i, r in enumerate(rows) if r is None]
            new: dict[bytes, int] = {}
            for i in miss:
                new.setdefault(keys[i], i)
            first = np.fromiter(new.values(), dtype=np.intp, count=len(new))
            start = self._add(g[first], act[first], None if values is None else values[first])
            index.update(zip(new, range(start, start + len(first))))
            for i in miss:
                rows[i] = index[keys[i]]
        rows = np.array(rows, dtype=np.intp)
        if values is None and self._partial:
            self.complete(rows)
        return rows

    def _add(self, g: np.ndarray, act: np.ndarray, values: np.ndarray | None) -> int:
        """Store new configs with their metric values (computed if not given); return the first new row."""
        k = len(g)
        start = self._grow(k)
        canon = self.genome.canonical(g)
        self.genes[start:start + k] = canon
        if values is None:
            self.values[start:start + k] = self.metric_values(canon, act=act)  # same depth, same active slots
        else:
            self.values[start:start + k] = values
            self._partial = self._partial or bool(np.isnan(values).any())
        return start

    def complete(self, rows: np.ndarray) -> None:
        """Compute the metric values still missing (nan) for these rows."""
        if not self._partial:
            return
        rows = np.asarray(rows, dtype=np.intp)
        missing = np.isnan(self.values[rows])
        for c in np.flatnonzero(missing.any(axis=0)):
            need = np.unique(rows[missing[:, c]])
            self.values[need, c] = self.metric_values(self.genes[need], [c])[:, 0]

    def accuracy(self, rows: np.ndarray) -> np.ndarray:
        acc = self.acc[rows]
        todo = np.isnan(acc)
        if todo.any():
            need = np.sort(rows[todo])
            first = np.empty(len(need), dtype=bool)  # np.unique, without its overhead
            first[0] = True
            np.not_equal(need[1:], need[:-1], out=first[1:])
            need = need[first]
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
    S = genome.S

    def predict(g: np.ndarray) -> np.ndarray:
        gi = g.astype(np.intp)
        x = enc.encode_indices(k_map[gi[:, :S]], e_map[gi[:, S:2 * S]], genome.active_slots(g), r_bin[gi[:, -1]])
        return accuracy_fn.forward_features(x)

    return predict


class _GeneTable:
    """A lookup-table latency predictor read from genes: `fixed_ms[r]` plus `block_ms[r, slot, kernel, expand]`
    over the active slots, summed in the predictor's own order (so the same floats), then its calibration."""

    def __init__(self, genome: Genome, fixed_ms: np.ndarray, block_ms: np.ndarray, n_fixed: int, finish,
                 needs_entries: bool):
        R, S, nk, ne = block_ms.shape
        table = np.zeros((R, S, nk * ne + 1))  # per resolution and slot: kernel x expand, then a skipped slot (0)
        table[:, :, :-1] = block_ms.reshape(R, S, nk * ne)
        self.flat = table.reshape(-1)
        self.base = (np.arange(R)[:, None] * S + np.arange(S)) * (nk * ne + 1)
        self.S, self.T = S, genome.T
        self.ne, self.skipped = np.int16(ne), np.int16(nk * ne)
        self.fixed_ms = fixed_ms
        self.n_fixed = n_fixed
        self.d_vals, self.r_vals = genome.d_vals, genome.r_vals
        self.finish = finish  # (r, table sums, entries per subnet) -> values; None: the plain sum
        self.needs_entries = needs_entries

    def __call__(self, g: np.ndarray, act: np.ndarray) -> np.ndarray:
        S, T = self.S, self.T
        ri = g[:, -1].astype(np.intp)
        ke = g[:, :S] * self.ne  # kernel x expand choice, or `skipped`: branch-free (np.where mispredicts)
        ke += g[:, S:2 * S]
        ke -= self.skipped
        ke *= act
        ke += self.skipped
        idx = self.base.take(ri, axis=0)
        idx += ke
        table_sum = self.flat.take(idx).sum(axis=1)
        table_sum += self.fixed_ms[ri]  # fixed + sum, as the predictor adds them (+ commutes exactly)
        if self.finish is None:
            return table_sum
        n_entries = None
        if self.needs_entries:
            n_entries = self.d_vals.take(g[:, 2 * S:2 * S + T].astype(np.intp)).sum(axis=1) + self.n_fixed
        return self.finish(self.r_vals[ri], table_sum, n_entries)


def _table_path(genome: Genome, metric):
    """For a lookup-table latency predictor (ours: `bench.predictor.LatencyPredictor`, or its bound `upper`,
    `predict` or `table_sum`), a function (genes, active slots) -> the same values without decoding genes to
    configs; None for any other callable, for resolutions or choices the table lacks, or when the two disagree
    on a sample (checked here, exactly)."""
    owner = getattr(metric, "__self__", metric)
    how = getattr(metric, "__name__", "") if owner is not metric else "predict"
    cal = getattr(owner, "calibration", None)
    finish = {"upper": getattr(cal, "upper", None), "predict": getattr(cal, "apply", None), "table_sum": None}
    if how not in finish or (how != "table_sum" and finish[how] is None):
        return None
    try:
        block = np.asarray(owner.block_ms, dtype=np.float64)
        fixed = np.asarray(owner.fixed_ms, dtype=np.float64)
        space = owner.space
        ri = [list(owner.resolutions).index(r) for r in genome.r_vals]
        ki = [list(space.ks_list).index(k) for k in genome.ks_vals]
        ei = [list(space.expand_list).index(e) for e in genome.e_vals]
        n_fixed = int(owner.n_fixed)
    except (AttributeError, ValueError, TypeError):
        return None
    if block.ndim != 4 or block.shape[:2] != (len(fixed), genome.S) or fixed.ndim != 1:
        return None
    if how != "table_sum" and getattr(cal, "needs_params", False):
        return None  # a weights term needs each config's parameter count: the plain call computes it
    needs_entries = bool(getattr(cal, "overhead_ms", True))  # the entry count matters with a per-entry overhead
    direct = _GeneTable(genome, fixed[ri], block[np.ix_(ri, range(genome.S), ki, ei)], n_fixed, finish[how],
                        needs_entries)
    sample = np.concatenate([genome.smallest(), genome.random(np.random.default_rng(0), 64)])
    ref = np.asarray(metric(genome.decode(sample)), dtype=np.float64).reshape(-1)
    return direct if np.array_equal(direct(sample, genome.active_slots(sample)), ref) else None


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
    lane_budget = _LaneBudget(cache, np.repeat(limits, R, axis=0))
    offspring = _Offspring(genome, cache, lane_budget, params, L)

    # Population per lane: K parent slots then P child slots; the first population sits in the child slots,
    # the parent slots start empty (accuracy -inf, distinct negative rows).
    Q = K + P
    C = genome.n_cols
    pop_genes = np.zeros((L, Q, C), dtype=np.int8)
    pop_rows = np.broadcast_to(-1 - np.arange(Q), (L, Q)).copy()
    pop_acc = np.full((L, Q), -np.inf)
    first, first_vals = _initial_population(genome, cache, lane_budget, budgets, P, params, rng)  # (L*P, C)
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
    acc, rows = pop_acc, pop_rows

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
        accuracy = float(np.asarray(accuracy_fn(answer), dtype=np.float64).reshape(-1)[0])
        results.append(SearchResult(
            config=answer.to_configs()[0], accuracy=accuracy,
            values={m: float(cache.values[row, k]) for k, m in enumerate(names)},
            limits={m: float(v) for m, v in budget.items()},
            history=history[j].copy(), restart_accuracies=tuple(float(a) for a in lane_best_acc[lanes]),
            n_scored=cache.n_acc, seconds=seconds,
        ))
    return results


class _LaneBudget:
    """The limits of every lane on the metrics that some budget limits: candidates are checked on those
    metrics only (a metric no budget limits, such as MACs beside a latency budget, is computed for the answer
    alone)."""

    def __init__(self, cache: ScoreCache, lane_limits: np.ndarray):
        self.cache = cache
        self.cols = np.flatnonzero(np.isfinite(lane_limits).any(axis=0))
        self.limits = lane_limits[:, self.cols]  # (L, limited metrics)
        self.n_metrics = lane_limits.shape[1]
        one = len(self.cols) == 1
        self._direct = cache._gene_metrics[self.cols[0]] if one else None  # the common case, without wrappers
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


class _Offspring:
    """The children of one generation in every lane, each meeting its lane's budget.

    Following the official finder, each child has its parents (one for a mutation, two for a crossover) and is
    redrawn from them while it breaks the budget: `oversample` candidates per child in the first round, then
    `oversample_retry` for the children still without one, the first feasible candidate kept; after
    `max_resample` rounds the child is a copy of its first parent. Children are laid out lane by lane, the
    first `n_mutations` of each lane mutations; random numbers are drawn in the same order and amounts as the
    straightforward loop this replaced, so a seed gives the same search as before."""

    def __init__(self, genome: Genome, cache: ScoreCache, budget: _LaneBudget, params: SearchParams, L: int):
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


def _feasible(cache: ScoreCache, rows: np.ndarray, lanes: np.ndarray, lane_limits: np.ndarray) -> np.ndarray:
    return (cache.values[rows] <= lane_limits[lanes]).all(axis=1)


def _initial_population(genome, cache, budget, budgets, P, params, rng) -> tuple[np.ndarray, np.ndarray]:
    """P feasible random configs per lane and their values (as `_LaneBudget.full`); lanes short of them are
    filled around the smallest config, and a budget that even the smallest config breaks raises
    `InfeasibleBudgetError`."""
    L = len(budget.limits)
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
        seeds = _smallest_feasible(genome, cache, lane_limits[lane_id], budgets[lane_id // params.restarts])
        slots = todo[lane[todo] == lane_id]
        out[slots] = seeds[rng.integers(0, len(seeds), size=len(slots))]
    return out, budget.full(out_vals)


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
            f"{', '.join(found)} ({cfg.to_string()})", cfg,
            {m: float(vals[k]) for k, m in enumerate(names) if np.isfinite(limits[k])})
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
                 mutate_prob: float = 0.1,
                 initial: Sequence[SubnetConfig] | ConfigBatch | None = None) -> ParetoFront:
    """NSGA-II (pymoo) over accuracy and every metric, our crossover and mutation on genes; the front is taken
    over every config scored (an archive), not only the last population. `initial`: configs that start in the
    first population (the rest is random) and are always in the archive, e.g. the space's extremes and the
    answers of single-budget searches, so the front reaches both ends of the range."""
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
    seeds = np.zeros((0, genome.n_cols), dtype=np.int8)
    if initial is not None and len(initial):
        seed_batch = initial if isinstance(initial, ConfigBatch) else ConfigBatch.from_configs(list(initial))
        seeds = genome.encode(seed_batch)
        cache.accuracy(cache.rows(seeds))  # in the archive whatever the evolution does with them

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
            first = seeds[:n_samples]
            rest = genome.random(random_state, n_samples - len(first))
            return np.concatenate([first, rest]).astype(np.float64)

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
