"""Latency of many subnets in one vectorised call, from a device's lookup table, calibrated on whole subnets.

The table is laid out as arrays: `fixed_ms[r]` (first conv, first block, tail) and `block_ms[r, slot, kernel,
expand]`; a batch's latency is a masked sum over slots, no per-config Python loop. Table sums miss what only a
whole graph shows (fused residual adds, per-call overhead counted once per isolated block), so a per-resolution
linear fit of measured whole subnets against their table sums corrects them (`Calibration`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ofa_core.errors import InvalidConfigError
from ofa_core.space import ConfigBatch, SearchSpace, SubnetConfig

from bench.candidates import fixed_entries, mbconv_key
from bench.lut import LatencyTable, LutError


class Latencies(np.ndarray):
    """A float array of latencies (ms) that remembers the table version it was predicted from."""

    table_version: str = ""

    def __array_finalize__(self, obj):
        self.table_version = getattr(obj, "table_version", "")


def _tagged(values: np.ndarray, version: str) -> Latencies:
    out = np.asarray(values, dtype=np.float64).view(Latencies)
    out.table_version = version
    return out


@dataclass(frozen=True)
class Calibration:
    """Per resolution `latency = scale * table_sum + per_block_ms * n_blocks + offset_ms`.

    `n_blocks` counts the elastic blocks a subnet runs: each isolated block measurement pays the runtime's
    per-call overhead and misses the whole graph's fusions once, so the error of a plain sum grows with it.
    The block term is kept only where leave-one-out error says it helps. Between and beyond the calibrated
    resolutions the coefficients are interpolated (clamped at the ends).
    """

    resolutions: tuple[int, ...] = ()
    scale: tuple[float, ...] = ()
    offset_ms: tuple[float, ...] = ()
    per_block_ms: tuple[float, ...] = ()
    n_subnets: int = 0

    @property
    def is_identity(self) -> bool:
        return not self.resolutions

    def apply(self, r: np.ndarray, table_sum_ms: np.ndarray, n_blocks: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(table_sum_ms, dtype=np.float64)
        if self.is_identity:
            return x
        rr = np.asarray(r, dtype=np.float64)
        xs = np.asarray(self.resolutions, dtype=np.float64)
        out = np.interp(rr, xs, np.asarray(self.scale)) * x + np.interp(rr, xs, np.asarray(self.offset_ms))
        if n_blocks is not None and self.per_block_ms and any(self.per_block_ms):
            out = out + np.interp(rr, xs, np.asarray(self.per_block_ms)) * np.asarray(n_blocks, dtype=np.float64)
        return out

    def to_dict(self) -> dict:
        return {"resolutions": list(self.resolutions), "scale": list(self.scale), "offset_ms": list(self.offset_ms),
                "per_block_ms": list(self.per_block_ms), "n_subnets": self.n_subnets}

    @classmethod
    def fit(cls, r: Sequence[int], table_sum_ms: Sequence[float], measured_ms: Sequence[float],
            n_blocks: Sequence[int] | None = None, min_points: int = 6) -> "Calibration":
        """Fit per resolution: a line with `min_points` or more subnets (plus the block term when it lowers the
        leave-one-out error), else a ratio (scale only)."""
        r = np.asarray(r, dtype=np.int64)
        x = np.asarray(table_sum_ms, dtype=np.float64)
        y = np.asarray(measured_ms, dtype=np.float64)
        nb = np.zeros(len(r)) if n_blocks is None else np.asarray(n_blocks, dtype=np.float64)
        if len(r) == 0:
            return cls()
        res, scales, offsets, blocks = [], [], [], []
        for rv in sorted(set(r.tolist())):
            m = r == rv
            a, c, b = _fit_one(x[m], nb[m], y[m], min_points)
            res.append(int(rv))
            scales.append(a)
            blocks.append(c)
            offsets.append(b)
        return cls(tuple(res), tuple(scales), tuple(offsets), tuple(blocks), int(len(r)))


def _loo_mse(X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Least squares and its leave-one-out mean squared error (from the hat matrix, no refits)."""
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    h = np.einsum("ij,ji->i", X, np.linalg.pinv(X.T @ X) @ X.T)
    loo = resid / np.clip(1.0 - h, 1e-6, None)
    return float(np.mean(loo ** 2)), coef


def _fit_one(x: np.ndarray, nb: np.ndarray, y: np.ndarray, min_points: int) -> tuple[float, float, float]:
    """(scale, per_block_ms, offset_ms) for one resolution; outliers beyond 3 robust sigmas are dropped once."""
    ratio = float(np.median(y / x))
    if len(x) < min_points or np.ptp(x) < 0.05 * np.mean(x):
        return ratio, 0.0, 0.0
    keep = np.ones(len(x), dtype=bool)
    for _ in range(2):
        X2 = np.column_stack([x[keep], np.ones(keep.sum())])
        mse2, c2 = _loo_mse(X2, y[keep])
        coef = (float(c2[0]), 0.0, float(c2[1]))
        if keep.sum() >= max(min_points, 10) and np.ptp(nb[keep]) > 0:
            X3 = np.column_stack([x[keep], nb[keep], np.ones(keep.sum())])
            mse3, c3 = _loo_mse(X3, y[keep])
            if mse3 < mse2 and c3[0] > 0:
                coef = (float(c3[0]), float(c3[1]), float(c3[2]))
        resid = y - (coef[0] * x + coef[1] * nb + coef[2])
        mad = float(np.median(np.abs(resid - np.median(resid)))) * 1.4826
        new_keep = np.abs(resid) <= max(3 * mad, 1e-9)
        if new_keep.sum() < min_points or (new_keep == keep).all():
            break
        keep = new_keep
    if coef[0] <= 0:  # a fit that falls with the table sum cannot be right: keep the ratio
        return ratio, 0.0, 0.0
    return coef


class LatencyPredictor:
    """Scores ConfigBatches (or lists of SubnetConfig) against one device's table."""

    def __init__(self, space: SearchSpace, resolutions: Sequence[int], fixed_ms: np.ndarray, block_ms: np.ndarray,
                 version: str, calibration: Calibration | None = None, device: str = "") -> None:
        self.space = space
        self._res = np.asarray(sorted(resolutions), dtype=np.int64)
        self.fixed_ms = np.asarray(fixed_ms, dtype=np.float64)
        self.block_ms = np.asarray(block_ms, dtype=np.float64)
        self.version = version
        self.calibration = calibration or Calibration()
        self.device = device
        self._k_index = _index_map(space.ks_list)
        self._e_index = _index_map(space.expand_list)

    @property
    def resolutions(self) -> list[int]:
        return [int(r) for r in self._res]

    # ---- construction --------------------------------------------------------------------------------
    @classmethod
    def from_table(cls, table: LatencyTable, space: SearchSpace, calibration: Calibration | None = None,
                   min_points: int = 6) -> "LatencyPredictor":
        """Arrays from a table. `calibration=None` fits one from the table's measured subnets (if any);
        pass `Calibration()` for plain table sums."""
        if table.space != space.name:
            raise LutError(f"table of device {table.device!r} is for space {table.space}, not {space.name}")
        res = table.complete_resolutions(space)
        if not res:
            some = sorted({r for r, _ in table.entries})
            raise LutError(f"table of device {table.device!r} ({space.name}) has no complete resolution "
                           f"({len(table.missing(space, some[:1]))} entries missing at {some[0] if some else '-'})")
        specs = space.blocks()
        fixed = np.zeros(len(res))
        blocks = np.zeros((len(res), space.n_slots, len(space.ks_list), len(space.expand_list)))
        for i, r in enumerate(res):
            fixed[i] = sum(table.entries[(r, e.key)].value_ms for e in fixed_entries(space, r))
            for spec in specs:
                for ki, k in enumerate(space.ks_list):
                    for ei, e in enumerate(space.expand_list):
                        blocks[i, spec.slot, ki, ei] = table.entries[(r, mbconv_key(space, spec, r, k, e))].value_ms
        pred = cls(space, res, fixed, blocks, table.version, None, table.device)
        if calibration is None:
            calibration = pred.fit_calibration(table, min_points=min_points)
        pred.calibration = calibration
        return pred

    def fit_calibration(self, table: LatencyTable, exclude: set[tuple[int, str]] | None = None,
                        min_points: int = 6) -> Calibration:
        """Calibration from the table's measured subnets (those at the predictor's resolutions)."""
        pairs = [(r, s, st.value_ms) for (r, s), st in sorted(table.subnets.items())
                 if r in self.resolutions and not (exclude and (r, s) in exclude)]
        if not pairs:
            return Calibration()
        cfgs = [SubnetConfig.from_string(s, self.space.max_depth) for _, s, _ in pairs]
        sums = self.table_sum(cfgs)
        return Calibration.fit([c.r for c in cfgs], sums, [v for _, _, v in pairs], n_blocks=[sum(c.d) for c in cfgs],
                               min_points=min_points)

    # ---- prediction ----------------------------------------------------------------------------------
    def _batch(self, cfgs) -> ConfigBatch:
        if isinstance(cfgs, SubnetConfig):
            cfgs = [cfgs]
        return self.space.encode(cfgs)

    def table_sum(self, cfgs: ConfigBatch | Sequence[SubnetConfig] | SubnetConfig) -> Latencies:
        """Plain sum of table entries per config (ms), shape (N,)."""
        b = self._batch(cfgs)
        if b.ks.shape[1] != self.space.n_slots or b.d.shape[1] != self.space.n_stages:
            raise InvalidConfigError(f"{self.space.name}: configs have {b.ks.shape[1]} slots, the space has {self.space.n_slots}")
        ri = np.searchsorted(self._res, b.r)
        ri_c = np.minimum(ri, len(self._res) - 1)
        bad = self._res[ri_c] != b.r
        if bad.any():
            r = int(b.r[np.argmax(bad)])
            raise InvalidConfigError(f"resolution {r} is not in the latency table of {self.device or 'this device'} "
                                     f"(it holds {', '.join(map(str, self.resolutions))})")
        act = b.active
        ki = _lookup(self._k_index, b.ks, act, "kernel")
        ei = _lookup(self._e_index, b.e, act, "expand")
        slots = np.arange(self.space.n_slots)[None, :]
        per_slot = self.block_ms[ri_c[:, None], slots, ki, ei]
        return _tagged(self.fixed_ms[ri_c] + np.where(act, per_slot, 0.0).sum(axis=1), self.version)

    def predict(self, cfgs: ConfigBatch | Sequence[SubnetConfig] | SubnetConfig) -> Latencies:
        """Calibrated latency per config (ms), shape (N,)."""
        b = self._batch(cfgs)
        return _tagged(self.calibration.apply(b.r, self.table_sum(b), b.d.sum(axis=1)), self.version)

    __call__ = predict


def _index_map(values: Sequence[int]) -> np.ndarray:
    m = np.full(max(values) + 1, -1, dtype=np.int64)
    m[list(values)] = np.arange(len(values))
    return m


def _lookup(index: np.ndarray, values: np.ndarray, active: np.ndarray, what: str) -> np.ndarray:
    clipped = np.clip(values, 0, len(index) - 1)
    idx = np.where(values == clipped, index[clipped], -1)
    bad = (idx < 0) & active
    if bad.any():
        raise InvalidConfigError(f"{what} {int(values[bad][0])} is not a choice of the space")
    return np.maximum(idx, 0)
