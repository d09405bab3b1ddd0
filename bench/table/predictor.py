"""Latency of many subnets in one vectorised call, from a device's lookup table, calibrated on whole subnets.

The table is laid out as arrays: `fixed_ms[r]` (first conv, first block, tail) and `block_ms[r, slot, kernel,
expand]`; a batch's latency is a masked sum over slots, no per-config Python loop. Table sums miss what only a
whole graph shows (fused residual adds, per-call overhead counted once per isolated block), so a calibration
with few parameters, fitted on measured whole subnets and monotone in work, corrects them (`Calibration`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ofa_core.errors import InvalidConfigError
from ofa_core.space import ConfigBatch, SearchSpace, SubnetConfig

from bench.table.candidates import fixed_entries, mbconv_key
from bench.table.model import LatencyTable, LutError


class Latencies(np.ndarray):
    """A float array of latencies (ms) that remembers the table version it was predicted from."""

    table_version: str = ""

    def __array_finalize__(self, obj):
        self.table_version = getattr(obj, "table_version", "")


def _tagged(values: np.ndarray, version: str) -> Latencies:
    out = np.asarray(values, dtype=np.float64).view(Latencies)
    out.table_version = version
    return out


# Calibration models, simplest first; `fit` keeps the simplest whose cross-validated error is not beaten clearly.
MODELS = ("ratio", "affine", "overhead", "overhead+weights", "overhead+weights-knee")
MIN_POINTS = {"ratio": 1, "affine": 4, "overhead": 8, "overhead+weights": 10, "overhead+weights-knee": 20}
#: where the knee of the weights term may sit: these quantiles of the measured subnets' weights
KNEE_QUANTILES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ASSUMED_UPPER_REL = 0.10  # prediction interval when too few subnets to estimate it (said so in `interval`)


@dataclass(frozen=True)
class Calibration:
    """Whole-subnet latency from the table: `scale * (table_sum - overhead_ms * n_entries) + per_mparam_ms *
    mparams + offset_ms`.

    Each table entry was timed in isolation and so carries the runtime's per-call overhead, which a whole
    graph pays once: `overhead_ms` (between 0 and the smallest block entry) is taken off each of the
    `n_entries` entries summed, `scale` (> 0) takes what fusion and caching change, and `offset_ms` (>= 0) is
    the whole graph's own cost per inference. `per_mparam_ms` (>= 0, per million weights) is what isolated
    timing hides: a block timed over and over keeps its weights in cache, a whole graph streams all of them,
    so large subnets run slower than the sum of their blocks. `weights_knee_mparams` (> 0 in the
    `overhead+weights-knee` model) counts weights only up to that many millions: past it the extra streaming is
    hidden behind the compute that comes with so many weights (on this host's small space, the linear term
    over-predicted the subnets with the most weights by 10-14%). One set of coefficients for every resolution, so
    more work never
    predicts less time: a larger entry raises the prediction, one more block adds `scale * (its entry -
    overhead_ms) >= 0`, there are no negative offsets, and subnets keep the order of their table sums across
    resolutions. `model` says which terms are in use (`ratio`: the scale alone, which cannot extrapolate below
    what was measured; `affine`: plus the offset; `overhead`: plus the per-entry overhead;
    `overhead+weights`: plus the weights term; `overhead+weights-knee`: weights counted up to a knee), chosen by
    cross-validation on the measured subnets. `upper_rel` is the prediction interval's upper side, the 90%
    quantile of the held-out relative errors: `upper = predicted * (1 + upper_rel)`.
    """

    model: str = "identity"
    scale: float = 1.0
    overhead_ms: float = 0.0
    offset_ms: float = 0.0
    per_mparam_ms: float = 0.0
    weights_knee_mparams: float = 0.0  # weights counted up to this many millions (0: all)
    n_subnets: int = 0
    upper_rel: float = 0.0
    interval: str = "none"           # "cross-validated" | "assumed" (too few subnets) | "none" (identity)
    cv_mape_pct: float | None = None  # held-out mean absolute error of the chosen model (%)
    resolutions: tuple[int, ...] = ()  # where the subnets it rests on were measured

    @property
    def is_identity(self) -> bool:
        return self.model == "identity"

    def apply(self, r: np.ndarray | None, table_sum_ms: np.ndarray, n_entries: np.ndarray | None = None,
              mparams: np.ndarray | None = None) -> np.ndarray:
        """Predicted latency (ms) from table sums, the number of entries each sums and the subnets' weights
        (millions). `r` is accepted for the callers' symmetry; the coefficients are shared by every resolution."""
        x = np.asarray(table_sum_ms, dtype=np.float64)
        if self.is_identity:
            return x
        if self.overhead_ms:
            if n_entries is None:
                raise ValueError("this calibration needs the number of table entries of each subnet")
            x = x - self.overhead_ms * np.asarray(n_entries, dtype=np.float64)
        out = self.scale * x + self.offset_ms
        if self.per_mparam_ms:
            if mparams is None:
                raise ValueError("this calibration needs the subnets' parameter counts")
            mp = np.asarray(mparams, dtype=np.float64)
            out = out + self.per_mparam_ms * (np.minimum(mp, self.weights_knee_mparams) if self.weights_knee_mparams
                                              else mp)
        return out

    def upper(self, r: np.ndarray | None, table_sum_ms: np.ndarray, n_entries: np.ndarray | None = None,
              mparams: np.ndarray | None = None) -> np.ndarray:
        """The prediction interval's upper bound (ms): what a budget must hold."""
        return self.apply(r, table_sum_ms, n_entries, mparams) * (1.0 + self.upper_rel)

    @property
    def needs_params(self) -> bool:
        return bool(self.per_mparam_ms)

    def to_dict(self) -> dict:
        return {"model": self.model, "scale": self.scale, "overhead_ms": self.overhead_ms,
                "offset_ms": self.offset_ms, "per_mparam_ms": self.per_mparam_ms,
                "weights_knee_mparams": self.weights_knee_mparams, "n_subnets": self.n_subnets,
                "upper_rel": self.upper_rel,
                "interval": self.interval, "cv_mape_pct": self.cv_mape_pct, "resolutions": list(self.resolutions)}

    @classmethod
    def from_dict(cls, doc: dict) -> "Calibration":
        """The inverse of `to_dict` (a report's JSON back into a calibration)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})

    def describe(self) -> str:
        if self.is_identity:
            return "no calibration (plain table sums): no measured whole subnets"
        return (f"{self.model} calibration on {self.n_subnets} measured subnet(s)"
                + (f", held-out error {self.cv_mape_pct:.1f}%" if self.cv_mape_pct is not None else "")
                + f", upper bound +{100 * self.upper_rel:.1f}% ({self.interval})")

    @classmethod
    def fit(cls, r: Sequence[int], table_sum_ms: Sequence[float], measured_ms: Sequence[float],
            n_entries: Sequence[int] | None = None, max_overhead_ms: float = 0.0,
            min_points: int = 6, mparams: Sequence[float] | None = None,
            ends: Sequence[bool] | None = None) -> "Calibration":
        """Fit every model the number of subnets allows, score each by leave-one-out (10-fold past 40
        subnets) relative error, keep the simplest within 3% of the best. `max_overhead_ms`: the smallest
        block entry of the table (the per-entry overhead cannot exceed it); `min_points`: fewer subnets fit
        a ratio only. `ends` marks the space's extreme subnets (smallest and largest at the lowest and highest
        resolution): fitted, and in the interval, but not scored when choosing the model, which is for the
        subnets a search asks about (with 8 subnets, half of them ends, the ends' ratios chose a model that
        predicted random subnets worse than the plain table sum). They break ties instead: of the models within
        3% of the best on the other subnets, those within 3% of the best on all of them, the simplest first (on
        one fresh profile the ratio tied the weights model on its 8 inner subnets, 6.5% against 6.4%, missed the
        ends by 16-30%, and predicted 63% of new subnets within 10% where the weights model predicted 93%).
        The interval's upper bound covers both: the larger of the 90% quantiles of the held-out errors of all the
        subnets and of the inner ones (where the ends ran faster than predicted, as on this host's small space,
        counting them had narrowed it: 87% of new subnets within it over seven fresh profiles, 92% now)."""
        r = np.asarray(r, dtype=np.int64)
        x = np.asarray(table_sum_ms, dtype=np.float64)
        y = np.asarray(measured_ms, dtype=np.float64)
        ne = np.zeros(len(x)) if n_entries is None else np.asarray(n_entries, dtype=np.float64)
        mp = np.zeros(len(x)) if mparams is None else np.asarray(mparams, dtype=np.float64)
        end = np.zeros(len(x), dtype=bool) if ends is None else np.asarray(ends, dtype=bool)
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
        r, x, y, ne, mp, end = r[ok], x[ok], y[ok], ne[ok], mp[ok], end[ok]
        n = len(x)
        if n == 0:
            return cls()
        res = tuple(sorted({int(v) for v in r}))
        if n < 3:  # nothing to cross-validate: a ratio with an assumed interval
            coef = _fit_model("ratio", x, ne, mp, y, 0.0)
            rel = np.abs(y / _predict(coef, x, ne, mp) - 1)
            return cls("ratio", *coef, n_subnets=n, upper_rel=max(ASSUMED_UPPER_REL, float(rel.max())),
                       interval="assumed", resolutions=res)
        models = [m for m in MODELS if m == "ratio" or (
            n >= max(MIN_POINTS[m], min_points) and np.ptp(x) > 0
            and not (m.startswith("overhead") and (max_overhead_ms <= 0 or np.ptp(ne) == 0))
            and not (m.startswith("overhead+weights") and np.ptp(mp) == 0))]
        folds = np.arange(n) % 10 if n > 40 else np.arange(n)
        scored = {}
        for m in models:
            held = np.empty(n)
            for f in np.unique(folds):
                test = folds == f
                coef = _fit_model(m, x[~test], ne[~test], mp[~test], y[~test], max_overhead_ms)
                held[test] = _predict(coef, x[test], ne[test], mp[test])
            scored[m] = (y - held) / held  # relative error of each held-out prediction (+: slower than predicted)
        model = choose_model(models, scored, end)
        errs = scored[model]
        upper = max(_upper_quantile(errs), _upper_quantile(errs[~end]) if (~end).sum() >= 3 else 0.0)
        return cls(model, *_fit_model(model, x, ne, mp, y, max_overhead_ms), n_subnets=n, upper_rel=max(upper, 0.0),
                   interval="cross-validated", cv_mape_pct=round(100 * float(np.mean(np.abs(errs))), 3),
                   resolutions=res)


def _upper_quantile(errs: np.ndarray) -> float:
    """The interval's upper relative error from held-out errors: their 90% quantile, the largest below 10."""
    return float(np.quantile(errs, 0.9)) if len(errs) >= 10 else float(errs.max())


def choose_model(models: Sequence[str], scored: dict[str, np.ndarray], end: np.ndarray) -> str:
    """The model to keep from each one's held-out relative errors (`scored`, one per subnet; `models` simplest
    first): the simplest within 3% of the best root-mean-square error on the subnets that are not the space's
    ends (`end`), and of those, within 3% of the best on every subnet (see `Calibration.fit`)."""
    judged = ~end if (~end).sum() >= 3 else np.ones(len(end), dtype=bool)
    rms = {m: float(np.sqrt(np.mean(scored[m][judged] ** 2))) for m in models}
    near = [m for m in models if rms[m] <= min(rms.values()) * 1.03]
    if not judged.all():  # of the models that predict the other subnets as well, one that also fits the ends
        whole = {m: float(np.sqrt(np.mean(scored[m] ** 2))) for m in near}
        near = [m for m in near if whole[m] <= min(whole.values()) * 1.03]
    return near[0]


Coefficients = tuple[float, float, float, float, float]  # scale, overhead_ms, offset_ms, per_mparam_ms, knee


def _fit_model(model: str, x: np.ndarray, ne: np.ndarray, mp: np.ndarray, y: np.ndarray,
               max_overhead_ms: float) -> Coefficients:
    """(scale, overhead_ms, offset_ms, per_mparam_ms, weights_knee_mparams) minimising the squared relative
    error (rows weighted by 1/y) under the model's constraints; a ratio is the median of measured / table sum,
    which one slow outlier does not move."""
    if model == "ratio" or len(x) < 2:
        return float(np.median(y / x)), 0.0, 0.0, 0.0, 0.0
    from scipy.optimize import nnls

    best = None
    grid = np.linspace(0.0, max_overhead_ms, 33) if model.startswith("overhead") else [0.0]
    knees = (sorted({float(np.quantile(mp, q)) for q in KNEE_QUANTILES}) if model == "overhead+weights-knee"
             else [0.0])
    weights = model.startswith("overhead+weights")
    for knee in knees:
        w = np.minimum(mp, knee) if knee else mp
        for o in grid:  # linear in the other coefficients for a given overhead and knee: non-negative least squares
            z = x - o * ne
            cols = [z, np.ones_like(z)] + ([w] if weights else [])
            coef, resid = nnls(np.column_stack(cols) / y[:, None], np.ones_like(y))
            if coef[0] > 0 and (best is None or resid < best[0]):
                best = (resid, (float(coef[0]), float(o), float(coef[1]), float(coef[2]) if weights else 0.0, knee))
    if best is None:  # no positive scale: the data say nothing about how latency grows with work
        return float(np.median(y / x)), 0.0, 0.0, 0.0, 0.0
    return best[1]


def _predict(coef: Coefficients, x: np.ndarray, ne: np.ndarray, mp: np.ndarray) -> np.ndarray:
    w = np.minimum(mp, coef[4]) if coef[4] else mp
    return coef[0] * (x - coef[1] * ne) + coef[2] + coef[3] * w


def space_ends(space: SearchSpace, resolutions: Sequence[int]) -> list[SubnetConfig]:
    """The space's extreme subnets: the smallest and the largest at the lowest and the highest resolution
    (distinct), in the order a profile measures them."""
    lo, hi = min(resolutions), max(resolutions)
    return list(dict.fromkeys([space.smallest(lo), space.largest(hi), space.smallest(hi), space.largest(lo)]))


class LatencyPredictor:
    """Scores ConfigBatches (or lists of SubnetConfig) against one device's table."""

    def __init__(self, space: SearchSpace, resolutions: Sequence[int], fixed_ms: np.ndarray, block_ms: np.ndarray,
                 version: str, calibration: Calibration | None = None, device: str = "", n_fixed: int = 0) -> None:
        self.space = space
        self._res = np.asarray(sorted(resolutions), dtype=np.int64)
        self.fixed_ms = np.asarray(fixed_ms, dtype=np.float64)
        self.block_ms = np.asarray(block_ms, dtype=np.float64)
        self.version = version
        self.calibration = calibration or Calibration()
        self.device = device
        self.n_fixed = n_fixed  # table entries every subnet sums besides its blocks (first conv, tail)
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
        pred = cls(space, res, fixed, blocks, table.version, None, table.device,
                   n_fixed=len(fixed_entries(space, res[0])))
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
        return self.fit(cfgs, [v for _, _, v in pairs], min_points=min_points)

    def fit(self, cfgs: Sequence[SubnetConfig], measured_ms: Sequence[float], min_points: int = 6) -> Calibration:
        """A calibration of this table from whole subnets measured at `measured_ms`."""
        ends = set(space_ends(self.space, [c.r for c in cfgs]))
        return Calibration.fit([c.r for c in cfgs], self.table_sum(cfgs), measured_ms, self.n_entries(cfgs),
                               max_overhead_ms=self.min_block_ms, min_points=min_points,
                               mparams=self.mparams(cfgs), ends=[c in ends for c in cfgs])

    @property
    def min_block_ms(self) -> float:
        """The smallest block entry of the table: no per-call overhead can exceed it."""
        return float(self.block_ms.min()) if self.block_ms.size else 0.0

    def mparams(self, cfgs: ConfigBatch | Sequence[SubnetConfig] | SubnetConfig) -> np.ndarray:
        """Each config's weights, in millions (the calibration's weights term)."""
        return np.asarray(self.space.params(self._batch(cfgs)), dtype=np.float64) / 1e6

    def n_entries(self, cfgs: ConfigBatch | Sequence[SubnetConfig] | SubnetConfig) -> np.ndarray:
        """How many table entries each config's table sum adds up (its blocks plus the fixed entries)."""
        b = self._batch(cfgs)
        return b.d.sum(axis=1) + self.n_fixed

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
        mp = self.mparams(b) if self.calibration.needs_params else None
        return _tagged(self.calibration.apply(b.r, self.table_sum(b), self.n_entries(b), mp), self.version)

    __call__ = predict

    def upper(self, cfgs: ConfigBatch | Sequence[SubnetConfig] | SubnetConfig) -> Latencies:
        """The prediction interval's upper bound per config (ms): the latency a budget must hold."""
        b = self._batch(cfgs)
        mp = self.mparams(b) if self.calibration.needs_params else None
        return _tagged(self.calibration.upper(b.r, self.table_sum(b), self.n_entries(b), mp), self.version)


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
