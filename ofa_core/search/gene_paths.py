"""Our own predictors read straight from genes, with the same values as calling them on decoded configs.

`index_path`: the accuracy predictor (`ofa_core.accuracy`) fed choice indices; `table_path`: a lookup-table
latency predictor (`bench.table.LatencyPredictor`) summed over gene indices. The score cache uses them
when they apply, and calls any other predictor on configs.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ofa_core.errors import OFABenchError
from ofa_core.search.genome import Genome


def index_path(genome: Genome, accuracy_fn) -> Callable[[np.ndarray], np.ndarray] | None:
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


class GeneTable:
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


def table_path(genome: Genome, metric) -> GeneTable | None:
    """For a lookup-table latency predictor (ours: `bench.table.LatencyPredictor`, or its bound `upper`,
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
    direct = GeneTable(genome, fixed[ri], block[np.ix_(ri, range(genome.S), ki, ei)], n_fixed, finish[how],
                        needs_entries)
    sample = np.concatenate([genome.smallest(), genome.random(np.random.default_rng(0), 64)])
    ref = np.asarray(metric(genome.decode(sample)), dtype=np.float64).reshape(-1)
    return direct if np.array_equal(direct(sample, genome.active_slots(sample)), ref) else None
