"""The score cache of one search call: metric values and accuracies of every config kept, keyed by genes, so
the costly accuracy predictor sees each distinct config once."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ofa_core.search.gene_paths import index_path, table_path
from ofa_core.search.genome import Genome
from ofa_core.search.problem import Predictor


class ScoreCache:
    """Metric values and accuracies of every config kept in one search call, keyed by its genes.

    The key of a config packs its genes with the genes that do not matter (kernel and expand of slots skipped
    by depth) masked, so configs that differ only there are one entry (`Genome.keys`). Lookups are one dict
    access per row: the search asks only for the children it keeps (about a hundred per generation), where a
    dict beats a sorted array of 64-bit hashes searched with numpy (measured) and needs no collision check.
    Values of metrics that no budget limits may be left out (nan) when the search stores a child; `complete`
    computes them for the rows asked for. Accuracy is computed only when asked, once per distinct config.
    Predictors that can read genes directly (ours, see `ofa_core.search.gene_paths`) skip decoding them to
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
        self._fast = index_path(genome, accuracy_fn)
        self.gene_metrics = tuple(table_path(genome, fn) for fn in self.metric_fns)  # None: called on configs
        self._partial = False  # some stored rows lack some metric values (nan)

    def metric_values(self, g: np.ndarray, cols: Sequence[int] | None = None,
                      act: np.ndarray | None = None) -> np.ndarray:
        """(N, len(cols)) values of gene rows for the metrics `cols` (default: all), computed directly (no
        cache). `act`: the rows' active slots, if the caller has them."""
        cols = range(len(self.metric_fns)) if cols is None else cols
        out = np.empty((len(g), len(cols)), dtype=np.float64)
        batch = None
        for j, c in enumerate(cols):
            direct = self.gene_metrics[c]
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
