"""Configs as genes: a row of choice indices (int8) per config, for one space and resolution list.

Columns: kernel per slot, expand per slot, depth per stage, resolution. Searches keep whole populations as
such arrays, so sampling, crossover and mutation, and the keys of the score cache are a few numpy calls each.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ofa_core.errors import OFABenchError
from ofa_core.space import ConfigBatch, SearchSpace


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
