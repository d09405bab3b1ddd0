"""Few-shot tables by transfer: a new device's table from K measured entries plus the tables that other devices
already have of the same space (`ofa-bench profile DEVICE --few-shot K`).

Where it sits: `profile` asks `plan_few_shot` which entries to measure (spread over block types and
resolutions, leaning toward entries the other devices disagree on), measures them as usual, then
`fill_by_transfer` predicts every other entry and stores it in the same run as a measurement of kind
"transferred" whose env names the source devices and the model. `bench.table` builds the table from both, a
measured entry always winning over a transferred one, so a later full profile (or `nightly`, which measures
transferred entries first) replaces them; the table says which entries are transferred (`transferred_share`).

The model has few parameters per source device (`fit_transfer`): per source, log-latency of the new device as
`a + b * log-latency of the source` (or `b = 1`, a pure scale, when leave-one-out says the slope does not pay),
combined over sources with weights from their leave-one-out error; or a non-negative mix of the source tables
plus a per-entry constant (what differs in per-call overhead). Beside the source devices, three columns computed
from the keys enter every fit like sources: the operator count, the multiply-adds and those of the depthwise
convolution of each entry (`STRUCTURAL_TABLES`). The model with the lower leave-one-out relative error on the
measured entries is kept; a factor per group of blocks on top of it (by depthwise kernel size, or by kernel size
and whether the kernel is wider than the map: `GROUPINGS`) is kept only when it lowers that error by a tenth
(`GROUP_GAIN`). The calibration on whole subnets that profile measures afterwards then corrects the table sum as
for any table.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ofa_core.space import SearchSpace

from bench.measure import keys
from bench.measure import STATISTICS, ProfileError
from bench.table import Entry, candidates

TRANSFERRED_KIND = "transferred"
PROTOCOL_TRANSFER = "transfer/1"
#: below this many measured entries the slope and the mixture are not fitted (a scale per source only)
MIN_FOR_SLOPE = 4
#: smallest latency taken into a logarithm (ms)
FLOOR_MS = 1e-6

Key = tuple[int, str]


# ---- the other devices' tables ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceTable:
    """One other device's measured values (ms, as its table sums them) at the resolutions being profiled."""

    device: str
    values_ms: Mapping[Key, float]


def source_tables(store, space: SearchSpace, resolutions: Sequence[int], exclude: str,
                  batch: int = 1) -> list[SourceTable]:
    """Every other device (latest fingerprint) whose measured entries at batch size `batch` cover the space at
    `resolutions`, and (batch 1 only: they are of one image) published tables of the space shipped beside the
    repository that the store does not hold. Entries a source itself got by transfer are not used: errors
    would compound."""
    from bench.table import KNOWN_ANCHORS, LutError, anchor_table, table_from_store

    need = [(e.resolution, e.key) for e in candidates(space, resolutions)]
    out: list[SourceTable] = []
    names = store.devices()
    for device in names:
        if device == exclude:
            continue
        try:
            table = table_from_store(store, device, space, batch=batch)
        except LutError:  # a table that mixes raw and normalised cells is no source
            continue
        if table is None:
            continue
        moved = table.transferred
        if all(k in table.entries and k not in moved for k in need):
            out.append(SourceTable(device, {k: table.entries[k].value_ms for k in need}))
    for device, (space_name, _) in sorted(KNOWN_ANCHORS.items()):
        if batch != 1 or device == exclude or device in names or space_name != space.name:
            continue
        table = anchor_table(device, space)
        if table is not None and all(k in table.entries for k in need):
            out.append(SourceTable(device, {k: table.entries[k].value_ms for k in need}))
    return out


def no_sources_error(space: SearchSpace, resolutions: Sequence[int], device: str, where: str,
                     batch: int = 1) -> ProfileError:
    at, flag = (f" of batch {batch}", f" --batch {batch}") if batch != 1 else ("", "")
    return ProfileError(f"--few-shot needs another device's measured table{at} of {space.name} at resolutions "
                        f"{','.join(map(str, resolutions))} in {where}, and there is none besides {device}'s: "
                        f"profile one device fully first (`ofa-bench profile DEVICE --space {space.name}{flag}`)")


# ---- the structural columns --------------------------------------------------------------------------------
#: the names of the columns every fit has beside the source devices (no device can be named so)
OPERATORS = "(operators)"
MULTIPLY_ADDS = "(multiply-adds)"
DEPTHWISE_MULTIPLY_ADDS = "(depthwise multiply-adds)"
#: ms per operator, per multiply-add, of those columns (their scale does not matter to the fits; their shape does)
OPERATOR_MS = 0.01
MULTIPLY_ADD_MS = 1e-7
_MBCONV = re.compile(r"^expanded_conv-input:(\d+)x(\d+)x(\d+)-output:(\d+)x(\d+)x(\d+)-expand:(\d+)-kernel:(\d+)"
                     r"-stride:\d+-idskip:(\d)-se:(\d)-hs:\d$")
_OTHER = re.compile(r"^(\w+)-input:(\d+)x(\d+)x(\d+)-output:(?:(\d+)x(\d+)x)?(\d+)$")
_OTHER_OPERATORS = {"Conv": 3, "Conv_1": 3, "AvgPool2D": 1, "Conv_2": 2, "Logits": 2}


class _Block(NamedTuple):
    """An elastic block's shape, as its table key spells it."""

    hi: int
    wi: int
    cin: int
    ho: int
    wo: int
    cout: int
    mid: int
    kernel: int
    skip: int
    se: int


def _block(key: Key) -> _Block | None:
    """The shape of the block an entry times (None for the entries of the fixed layers)."""
    m = _MBCONV.match(key[1])
    return _Block(*(int(g) for g in m.groups())) if m else None


def operator_count(key: Key) -> int:
    """The operators an entry runs, from its key: convolution, normalisation and activation of the expansion
    (when there is one) and of the depthwise convolution, the projection and its normalisation, the
    squeeze-excite's six (pool, two convolutions, two activations, the product), the residual add."""
    b = _block(key)
    if b is None:
        return _OTHER_OPERATORS.get(key[1].split("-", 1)[0], 1)
    return (3 if b.mid != b.cin else 0) + 3 + 2 + 6 * b.se + b.skip


def depthwise_multiply_adds(key: Key) -> int:
    """The multiply-adds of a block's depthwise convolution alone (0 for the entries without one): the kernel
    whose implementation differs most between runtimes (LiteRT's 7x7 here)."""
    b = _block(key)
    return b.ho * b.wo * b.mid * b.kernel ** 2 if b else 0


def multiply_adds(key: Key) -> int:
    """The multiply-adds an entry computes, from its key: a block's expansion (1x1, when there is one),
    depthwise k x k convolution, squeeze-excite (two 1x1 convolutions to a quarter of the width) and projection;
    the first convolution (3x3), the 1x1 convolutions and the classifier of the tail, the pooling's reads."""
    b = _block(key)
    if b is not None:
        return ((b.hi * b.wi * b.cin * b.mid if b.mid != b.cin else 0) + depthwise_multiply_adds(key)
                + b.ho * b.wo * b.mid * b.cout + b.se * 2 * b.mid * max(b.mid // 4, 1))
    m = _OTHER.match(key[1])
    if m is None:
        raise ValueError(f"no multiply-add count for table key {key[1]!r}")
    name, hi, wi, cin, ho, wo, cout = m.groups()
    hi, wi, cin, cout = int(hi), int(wi), int(cin), int(cout)
    out = int(ho or 1) * int(wo or 1)
    return hi * wi * cin if name == "AvgPool2D" else out * cin * cout * (9 if name == "Conv" else 1)


class _StructuralColumn(Mapping):
    """A count computed from any key (`count`), times `ms`, as a source table's values."""

    def __init__(self, count: Callable[[Key], int], ms: float) -> None:
        self.count, self.ms = count, ms

    def __getitem__(self, key: Key) -> float:
        return self.ms * self.count(key)

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


#: beside the source devices, every fit may lean on three counts of the block's work: the operators (a device
#: that runs a graph op by op, the torch runtime on this CPU: its blocks take 0.25-0.39 ms, mostly dispatch,
#: follows them more closely than any compute-bound source), the multiply-adds, and those of the depthwise
#: convolution alone (a device with a depthwise kernel no source shares, LiteRT's 7x7 here at 7-26x its 3x3,
#: grows with them). Leave-one-out weighs them like sources; they are not devices and no provenance names them.
OPERATOR_TABLE = SourceTable(OPERATORS, _StructuralColumn(operator_count, OPERATOR_MS))
MULTIPLY_ADD_TABLE = SourceTable(MULTIPLY_ADDS, _StructuralColumn(multiply_adds, MULTIPLY_ADD_MS))
DEPTHWISE_TABLE = SourceTable(DEPTHWISE_MULTIPLY_ADDS, _StructuralColumn(depthwise_multiply_adds, MULTIPLY_ADD_MS))
STRUCTURAL_TABLES = (OPERATOR_TABLE, MULTIPLY_ADD_TABLE, DEPTHWISE_TABLE)
STRUCTURAL = tuple(t.device for t in STRUCTURAL_TABLES)


def _log_matrix(entries: Sequence[Entry], sources: Sequence[SourceTable]) -> np.ndarray:
    """log(ms) of every entry (rows) on every source (columns)."""
    return np.log(np.maximum(np.array([[s.values_ms[(e.resolution, e.key)] for s in sources] for e in entries],
                                      dtype=np.float64), FLOOR_MS))


# ---- which entries to measure -------------------------------------------------------------------------------
def stratum(e: Entry) -> tuple[int, str]:
    """The group an entry is spread over: its resolution and its block type (the stage for elastic blocks)."""
    return e.resolution, (f"stage{e.spec.stage}" if e.kind == "mbconv" and e.spec is not None else e.kind)


#: weights of disagreement, distance in position and size in an entry's pick score (beside the coverage bonus)
PICK_WEIGHTS = (1.0, 1.0, 0.0)


def choose_entries(space: SearchSpace, resolutions: Sequence[int], sources: Sequence[SourceTable], k: int,
                   have: Iterable[Key] = ()) -> list[Entry]:
    """Up to `k` entries to measure (those in `have`, already measured, count toward `k` and are not returned).

    Each source's log-latencies are normalised by its median (a shared per-device scale); an entry's
    *disagreement* is the spread of its normalised values across sources (capped, relative to the mean, so
    that the smallest entries, where per-call overheads differ most, do not take every pick), its *position*
    their mean. A greedy pick maximises disagreement + distance in position to what is picked + a bonus for
    block types, resolutions and bands of position (quantiles) with few picks yet, so the fit sees every kind
    of block over the whole latency range; the fastest and the slowest entry come first. Deterministic."""
    ents = candidates(space, resolutions)
    picked_keys = [key for key in dict.fromkeys(have) if key[0] in set(resolutions)]
    n_new = max(0, k - len(picked_keys))
    if n_new == 0 or not sources:
        return []
    z = _log_matrix(ents, sources)
    z = z - np.median(z, axis=0, keepdims=True)
    pos = z.mean(axis=1)
    dis = z.std(axis=1) if z.shape[1] > 1 else np.zeros(len(ents))
    dis = np.minimum(dis / dis.mean(), 2.0) / 2.0 if dis.mean() > 0 else dis
    spread = max(float(pos.std()), 1e-9)
    size = (pos - pos.min()) / max(float(np.ptp(pos)), 1e-9)  # 0 for the fastest entry, 1 for the slowest
    n_bands = int(np.clip(k // 4, 2, 8))
    band = np.searchsorted(np.quantile(pos, np.linspace(0, 1, n_bands + 1)[1:-1]), pos, side="right")
    groups = [(stratum(e), ("res", e.resolution), ("band", int(b))) for e, b in zip(ents, band)]
    counts: dict = {}
    index = {(e.resolution, e.key): i for i, e in enumerate(ents)}
    chosen = [index[key] for key in picked_keys if key in index]
    free = np.ones(len(ents), dtype=bool)
    out: list[int] = []

    def count(i: int) -> None:
        free[i] = False
        for g in groups[i]:
            counts[g] = counts.get(g, 0) + 1

    for i in chosen:
        count(i)
    for first in (int(np.argmin(pos)), int(np.argmax(pos))):
        if len(out) < n_new and free[first] and not chosen:
            out.append(first)
            count(first)
    while len(out) < n_new and free.any():
        taken = chosen + out
        dist = (np.min(np.abs(pos[:, None] - pos[None, taken]), axis=1) / spread if taken
                else np.zeros(len(ents)))
        bonus = np.array([sum(1.0 / (1 + counts.get(g, 0)) for g in gs) for gs in groups])
        score = PICK_WEIGHTS[0] * dis + PICK_WEIGHTS[1] * np.minimum(dist, 1.0) + PICK_WEIGHTS[2] * size + bonus
        i = int(np.argmax(np.where(free, score, -np.inf)))
        out.append(i)
        count(i)
    return [ents[i] for i in sorted(out)]


# ---- the transfer model --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceFit:
    """log(new) = a + b * log(source) for one source, its leave-one-out RMS log error and its weight."""

    device: str
    a: float
    b: float
    loo_rmse: float
    weight: float

    def to_dict(self) -> dict:
        return {"device": self.device, "a": round(self.a, 6), "b": round(self.b, 6),
                "loo_rmse": round(self.loo_rmse, 6), "weight": round(self.weight, 6)}


@dataclass(frozen=True)
class TransferModel:
    """The fitted map from the source tables to the new device. `kind` is "log-linear" (per-source fits,
    weighted) or "mixture" (`intercept_ms + sum(mix_s * source_s)`, non-negative mix). `loo_rel_rmse` is the
    leave-one-out RMS relative error on the measured entries."""

    kind: str
    sources: tuple[str, ...]
    fits: tuple[SourceFit, ...] = ()
    mix: tuple[float, ...] = ()
    intercept_ms: float = 0.0
    floor_ms: float = 0.0
    n_measured: int = 0
    loo_rel_rmse: float = float("nan")
    alternatives: Mapping[str, float] = field(default_factory=dict)
    # per block group (`key_group`): a factor on top of the model, log-scale, kept only where leave-one-out
    # says it helps (a device whose 7x7 depthwise convolutions are relatively slower than on every source)
    group_log_factor: Mapping[str, float] = field(default_factory=dict)
    grouping: str = "kernel"  # how the factors' groups are drawn (`key_group`)

    @property
    def devices(self) -> list[str]:
        """The source devices (the columns but the structural counts)."""
        return [n for n in self.sources if n not in STRUCTURAL]

    def predict(self, x_ms: np.ndarray, keys: Sequence[Key] | None = None) -> np.ndarray:
        """Latencies (ms) from the source values `x_ms` (rows: entries, columns: `sources` in order); `keys`
        (the entries' keys) for the per-group factors."""
        x_ms = np.asarray(x_ms, dtype=np.float64)
        if self.kind.startswith("mixture"):
            out = np.maximum(self.intercept_ms + x_ms @ np.asarray(self.mix), self.floor_ms)
        else:
            lx = np.log(np.maximum(x_ms, FLOOR_MS))
            w = np.array([f.weight for f in self.fits])
            per = np.column_stack([f.a + f.b * lx[:, j] for j, f in enumerate(self.fits)])
            out = np.exp(per @ w)
        if self.group_log_factor:
            if keys is None:
                raise ValueError("this transfer model has per-group factors: pass the entries' keys")
            out = out * np.exp([self.group_log_factor.get(key_group(k, self.grouping), 0.0) for k in keys])
        return out

    def to_dict(self) -> dict:
        doc = {"model": self.kind, "sources": self.devices, "n_measured": self.n_measured,
               "loo_rel_rmse": round(self.loo_rel_rmse, 6),
               "alternatives": {k: round(v, 6) for k, v in self.alternatives.items()}}
        if self.kind.startswith("mixture"):
            doc.update(mix=[round(m, 6) for m in self.mix], intercept_ms=round(self.intercept_ms, 6))
        else:
            doc["fits"] = [f.to_dict() for f in self.fits]
        if self.group_log_factor:
            doc["group_factor"] = {g: round(float(np.exp(v)), 6) for g, v in sorted(self.group_log_factor.items())}
        return doc


#: how entries are grouped for per-group factors: by depthwise kernel size, or by kernel size and whether the
#: kernel is wider than twice the block's output map (most of its window then falls on padding, and runtimes
#: take other paths: the torch runtime here runs a 7x7 kernel on a 2x2 map 8-60% slower than a 3x3, on 4x4 to
#: 7x7 maps within 10% of it). Leave-one-out picks one per fit.
GROUPINGS = ("kernel", "kernel-wide")


def key_group(key: Key, grouping: str = "kernel") -> str:
    """The group an entry's per-group factor is shared by under `grouping` (`GROUPINGS`): "k{kernel size}" of a
    block, with "-wide" under "kernel-wide" where the kernel is wider than twice the output map; else "other"."""
    b = _block(key)
    if b is None:
        return "other"
    return f"k{b.kernel}" + ("-wide" if grouping == "kernel-wide" and b.kernel > 2 * b.ho else "")


#: shrinkage of a per-group factor toward 1 (as if each group had this many more entries with no residual)
GROUP_SHRINK = 2.0
#: per-group factors are tried from this many measured entries, and kept when they lower the leave-one-out
#: relative error by at least `GROUP_GAIN`
MIN_FOR_GROUPS = 12
GROUP_GAIN = 0.9


def _group_factors(keys: Sequence[Key], y: np.ndarray, fitted: np.ndarray, loo: np.ndarray, grouping: str
                   ) -> tuple[dict[str, float], np.ndarray]:
    """Per-group log factors from the in-sample residuals (shrunk), and leave-one-out predictions with them
    (each entry's factor from the other entries' leave-one-out residuals of its group)."""
    groups = np.array([key_group(k, grouping) for k in keys])
    r_in = np.log(y) - np.log(fitted)
    r_loo = np.log(y) - np.log(loo)
    factors, out = {}, loo.copy()
    for g in np.unique(groups):
        m = groups == g
        factors[str(g)] = float(r_in[m].sum() / (m.sum() + GROUP_SHRINK))
        out[m] = loo[m] * np.exp((r_loo[m].sum() - r_loo[m]) / (m.sum() - 1 + GROUP_SHRINK))
    return factors, out


def _fit_one_source(x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(a, b, leave-one-out log predictions) for y = a + b x, or y = a + x when the slope does not pay
    (too few points, no spread, a slope <= 0, or a leave-one-out error not clearly below the scale's)."""
    n = len(x)
    a1 = float(np.mean(y - x))
    loo1 = x + (a1 * n - (y - x)) / (n - 1) if n > 1 else x + a1
    if n < MIN_FOR_SLOPE or np.ptp(x) <= 0:
        return a1, 1.0, loo1
    xm = x.mean()
    sxx = float(np.sum((x - xm) ** 2))
    b = float(np.sum((x - xm) * (y - y.mean())) / sxx)
    a = float(y.mean() - b * xm)
    h = 1.0 / n + (x - xm) ** 2 / sxx
    resid = y - (a + b * x)
    loo2 = y - resid / np.maximum(1.0 - h, 1e-9)
    if b <= 0 or np.mean((loo2 - y) ** 2) >= 0.97 * np.mean((loo1 - y) ** 2):
        return a1, 1.0, loo1
    return a, b, loo2


def _fit_log_linear(lx: np.ndarray, ly: np.ndarray, names: Sequence[str]) -> tuple[TransferModel, np.ndarray]:
    fits, loos, mses = [], [], []
    for j in range(lx.shape[1]):
        a, b, loo = _fit_one_source(lx[:, j], ly)
        fits.append((a, b))
        loos.append(loo)
        mses.append(max(float(np.mean((loo - ly) ** 2)), 1e-12))
    inv = 1.0 / np.asarray(mses)
    w = inv / inv.sum()
    loo_pred = np.column_stack(loos) @ w
    model = TransferModel("log-linear", tuple(names),
                          tuple(SourceFit(n, a, b, float(np.sqrt(m)), float(wi))
                                for n, (a, b), m, wi in zip(names, fits, mses, w)))
    return model, np.exp(loo_pred)


def _mixture_coef(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """intercept (either sign) and non-negative mix minimising the squared relative error."""
    from scipy.optimize import nnls

    cols = np.column_stack([np.ones(len(y)), -np.ones(len(y)), x]) / y[:, None]
    coef, _ = nnls(cols, np.ones(len(y)))
    return float(coef[0] - coef[1]), coef[2:]


def _fit_mixture(x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> tuple[TransferModel, np.ndarray]:
    floor = 0.1 * float(y.min())
    loo = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        c, mix = _mixture_coef(x[keep], y[keep])
        loo[i] = max(c + float(x[i] @ mix), floor)
    c, mix = _mixture_coef(x, y)
    return TransferModel("mixture", tuple(names), mix=tuple(float(m) for m in mix), intercept_ms=c,
                         floor_ms=floor), loo


def fit_transfer(measured_ms: Mapping[Key, float], sources: Sequence[SourceTable]) -> TransferModel:
    """The transfer model from the measured entries (ms) of the new device and the sources' values of them.
    Both candidate models are scored by leave-one-out relative error; the mixture needs more measured entries
    than it has coefficients (sources + 2) and at least `MIN_FOR_SLOPE`."""
    keys = sorted(measured_ms)
    if not keys:
        raise ProfileError("no measured entry to transfer from")
    if not sources:
        raise ProfileError("no source table to transfer from")
    sources = [*sources, *STRUCTURAL_TABLES]
    names = [s.device for s in sources]
    y = np.maximum(np.array([measured_ms[k] for k in keys], dtype=np.float64), FLOOR_MS)
    x = np.array([[s.values_ms[k] for s in sources] for k in keys], dtype=np.float64)
    def rel_rmse(pred: np.ndarray) -> float:
        return float(np.sqrt(np.mean((pred / y - 1) ** 2)))

    scored: dict[str, tuple[TransferModel, np.ndarray]] = {}
    model, loo = _fit_log_linear(np.log(np.maximum(x, FLOOR_MS)), np.log(y), names)
    scored[model.kind] = (model, loo)
    if len(keys) >= max(MIN_FOR_SLOPE, len(sources) + 3):
        model, loo = _fit_mixture(x, y, names)
        scored[model.kind] = (model, loo)
    errors = {k: rel_rmse(loo) for k, (_, loo) in scored.items()}
    kind = min(errors, key=errors.get)
    best, loo = scored[kind]
    factors: dict[str, float] = {}
    base, grouping = kind, GROUPINGS[0]
    for g in GROUPINGS if len(keys) >= MIN_FOR_GROUPS else ():
        if len({key_group(k, g) for k in keys}) < 2:
            continue
        f, loo_g = _group_factors(keys, y, best.predict(x), loo, g)
        errors[f"{base}+{g}"] = rel_rmse(loo_g)
        if errors[f"{base}+{g}"] <= GROUP_GAIN * errors[kind]:  # a finer grouping, only where it pays again
            kind, factors, grouping = f"{base}+{g}", f, g
    return TransferModel(kind, best.sources, best.fits, best.mix, best.intercept_ms, best.floor_ms,
                         len(keys), errors[kind], errors, factors, grouping)


def transfer_values(model: TransferModel, sources: Sequence[SourceTable], keys: Sequence[Key]) -> dict[Key, float]:
    """The model's latency (ms) of each key."""
    if not keys:
        return {}
    by_name = {s.device: s for s in [*sources, *STRUCTURAL_TABLES]}
    x = np.array([[by_name[n].values_ms[k] for n in model.sources] for k in keys], dtype=np.float64)
    return dict(zip(keys, (float(v) for v in model.predict(x, keys))))


def transfer_table(measured_ms: Mapping[Key, float], sources: Sequence[SourceTable],
                   keys: Sequence[Key]) -> tuple[TransferModel, dict[Key, float]]:
    """Fit on `measured_ms`, predict every key of `keys` that was not measured."""
    model = fit_transfer(measured_ms, sources)
    return model, transfer_values(model, sources, [k for k in keys if k not in measured_ms])


# ---- with profile and the store ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FewShotPlan:
    """What `profile --few-shot K` does on one device's table of batch size `batch`: measure `measure` (beside
    what it has), transfer the rest (from the sources' tables of the same batch size)."""

    k: int
    sources: tuple[SourceTable, ...]
    measure: tuple[Entry, ...]
    batch: int = 1


def plan_few_shot(store, space: SearchSpace, resolutions: Sequence[int], device: str, have: Iterable[Key],
                  k: int, batch: int = 1) -> FewShotPlan:
    """The entries to measure of the device's table at batch size `batch` (`have`: its measured entries at that
    batch size), and the other devices' tables of that batch size to transfer from."""
    sources = source_tables(store, space, resolutions, device, batch)
    if not sources:
        raise no_sources_error(space, resolutions, device, f"store {store.target}", batch)
    return FewShotPlan(k, tuple(sources), tuple(choose_entries(space, resolutions, sources, k, have)), int(batch))


def check_few_shot(store_target: str, space: SearchSpace, resolutions: Sequence[int], devices: Sequence[str],
                   k: int, say: Callable[[str], None], batch: int = 1) -> int | None:
    """Before anything is measured: every device must have a source table of batch size `batch` in the store (a
    one-line ProfileError otherwise). Returns `k`, or None (with a note through `say`) when `k` covers the
    whole table: a full profile."""
    from bench.store import store_address, using_store

    total = len(candidates(space, resolutions))
    if k >= total:
        say(f"--few-shot {k}: the table has {total} entries at {','.join(map(str, resolutions))}, so every one "
            f"is measured (a full profile)")
        return None
    with using_store(store_target) as store:
        for device in devices:
            if not source_tables(store, space, resolutions, device, batch):
                raise no_sources_error(space, resolutions, device, f"store {store_address(store_target)}", batch)
    return k


def transferred_record(key: Key, value_ms: float, nominal_ms: float | None, provenance: dict,
                       batch: int = 1) -> dict:
    """A store record of a transferred entry of the table of batch size `batch`. It is expressed at the table's
    reference speed `nominal_ms` (as the measured entries it was fitted on), so later speed changes rescale it
    like them."""
    r, k = key
    return {"resolution": int(r), "key": k, "kind": TRANSFERRED_KIND, "batch": int(batch),
            "latency_ms": value_ms, "mean_ms": value_ms,
            "std_ms": None, "n": 0, "samples_ms": [], "noisy": False,
            "normalised_ms": value_ms if nominal_ms else None,
            "env": {keys.TRANSFER: provenance, keys.PROTOCOL: PROTOCOL_TRANSFER, keys.REFERENCE_MS: nominal_ms,
                    keys.REFERENCE_STATS: {s: nominal_ms for s in STATISTICS} if nominal_ms else None}}


def fill_by_transfer(store, device: str, space: SearchSpace, resolutions: Sequence[int], run_id: int,
                     plan: FewShotPlan) -> dict:
    """Predict every entry of the device's table (of the plan's batch size) that has no good measurement and
    store it, in run `run_id`, as kind "transferred" (env: the sources, the model). Returns the model's summary
    and the count."""
    from bench.table import table_from_store

    batch = getattr(plan, "batch", 1)
    table = table_from_store(store, device, space, batch=batch)
    if table is None:
        at = f" at batch {batch}" if batch != 1 else ""
        raise ProfileError(f"{device} has no measured entry of {space.name}{at} to transfer from")
    measured = {key: st.value_ms for key, st in table.entries.items()
                if key not in table.transferred and key[0] in set(resolutions)}
    keys = [(e.resolution, e.key) for e in candidates(space, resolutions)]
    model, values = transfer_table(measured, plan.sources, keys)
    provenance = {"sources": model.devices, "model": model.kind, "few_shot": plan.k,
                  "measured_entries": len(measured), "run_id": int(run_id), "batch": batch}
    records = [transferred_record(key, v, table.nominal_ms, provenance, batch) for key, v in values.items()]
    with store.transaction():
        store.insert_measurements(run_id, records)
    return {"entries_transferred": len(records), **model.to_dict(), "batch": batch}


def transferred_line(table) -> str:
    """One line for reports: how much of a table is transferred, and from which devices."""
    p = table.provenance()
    return (f"{table.device}: {100 * p['transferred_share']:.0f}% of the table ({p['transferred']} of {p['entries']} "
            f"entries) transferred from {', '.join(p['transferred_from']) or 'other devices'}, not measured; "
            f"`ofa-bench profile {table.device} --space {table.space}` measures them")


def transferred_entries(store, fingerprint_id: str, space: SearchSpace, resolutions: Sequence[int] | None = None,
                        batch: int = 1) -> list[Entry]:
    """Entries of the fingerprint's table of batch size `batch` that are transferred (no good measurement at
    that batch size yet), in table order."""
    moved = {(int(r["resolution"]), r["key"])
             for r in store.latest_measurements(fingerprint_id, space.name, kind=TRANSFERRED_KIND, batch=batch)}
    if not moved:
        return []
    moved -= store.measured_keys(fingerprint_id, space.name, batch=batch)
    res = sorted({r for r, _ in moved} if resolutions is None else set(resolutions) & {r for r, _ in moved})
    return [e for e in candidates(space, res) if (e.resolution, e.key) in moved]
