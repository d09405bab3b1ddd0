"""The references: fixed models timed in every runner invocation beside what is measured.

A reference's latency in that invocation, against the device's current speed (the median reference latency of
the latest invocations, `current_reference_ms`), says how fast the machine was at that moment: a value's
`normalised_ms` is its latency at the nominal speed, so slow drift and load between batches cancel out.
`ReferenceWatch` spots invocations that ran in a slow stretch and has them run again.

A reference only speaks for work of its own size. Table entries (single blocks) are timed beside the
reference *block* (`reference_entry`); whole subnets beside the reference *subnet* (`reference_subnet`, a
fixed subnet in the middle of the space), each with a speed of its own. On the small space the block takes
about 8 us, mostly call overhead: across a subnet's repeated invocations its latency correlated with the
subnet's at only 0.2-0.3, dividing by it doubled their spread (log-sd 0.022 -> 0.056), and one profile's
calibration subnets came out 8% fast because the block happened to run slow then. The other subnets of the
same invocation, by contrast, tracked a subnet at 0.4-0.8, which is what the reference subnet measures.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ofa_core.space import SearchSpace, SubnetConfig

from bench.measure import keys
from bench.measure.stats import DEFAULT_STATISTIC, sample_statistic

if TYPE_CHECKING:
    from bench.table.candidates import Entry

REFERENCE_PREFIX = "reference:"
#: whole subnets' reference: "reference:subnet:<config>" at its resolution
SUBNET_REFERENCE_PREFIX = REFERENCE_PREFIX + "subnet:"
#: the device's current speed is the median reference latency of its most recent invocations
REFERENCE_WINDOW = 9


def reference_entry(space: SearchSpace) -> Entry:
    """A fixed mid-sized block (third stage, second slot, k5 e4, middle resolution) timed in every batch."""
    from bench.table.candidates import candidates, mbconv_key

    r = sorted(space.resolutions)[len(space.resolutions) // 2]
    spec = space.blocks()[2 * space.max_depth + 1]
    key = mbconv_key(space, spec, r, 5 if 5 in space.ks_list else space.ks_list[0],
                     4 if 4 in space.expand_list else space.expand_list[0])
    return next(e for e in candidates(space, [r]) if e.key == key)


def reference_key(space: SearchSpace) -> str:
    return REFERENCE_PREFIX + reference_entry(space).key


def reference_subnet(space: SearchSpace) -> SubnetConfig:
    """The whole subnets' reference: the middle kernel, expand ratio and depth everywhere, at the middle
    resolution (a subnet of typical size, so it meets the same caches and the same scheduling as those it
    runs beside)."""
    def mid(values):
        return sorted(values)[len(values) // 2]

    return SubnetConfig((mid(space.ks_list),) * space.n_slots, (mid(space.expand_list),) * space.n_slots,
                        (mid(space.depth_list),) * space.n_stages, mid(space.resolutions))


def subnet_reference_key(space: SearchSpace) -> str:
    return SUBNET_REFERENCE_PREFIX + reference_subnet(space).to_string()


def reference_nominal_ms(store, fp_id: str, space: SearchSpace, batch: int = 1) -> float | None:
    """The device's current speed: median reference latency of its latest invocations (None before any). The
    reference is timed at the batch size of what it runs beside, so each batch has a speed of its own."""
    return current_reference_ms(store, fp_id, space, batch=batch)[0]


def subnet_reference_nominal_ms(store, fp_id: str, space: SearchSpace, batch: int = 1) -> float | None:
    """The device's current speed for whole subnets: median latency of the reference subnet (None before any)."""
    return current_reference_ms(store, fp_id, space, batch=batch, key=subnet_reference_key(space))[0]


def current_reference_ms(store, fingerprint_id: str, space: SearchSpace, statistic: str = DEFAULT_STATISTIC,
                         batch: int = 1, key: str | None = None) -> tuple[float | None, list[int]]:
    """Median of the latest reference latencies at `batch` (and their ids): the speed the table is expressed at.
    `key`: which reference (default the reference block; `subnet_reference_key` for whole subnets)."""
    rows = store.history(fingerprint_id, space.name, key=key or reference_key(space), kind="reference", batch=batch)
    rows = [r for r in rows if not r.get("noisy")][-REFERENCE_WINDOW:]
    if not rows:
        return None, []
    values = sorted(row_value(r, statistic)[0] for r in rows)
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])
    return median, [int(r["id"]) for r in rows]


def row_value(row: Mapping, statistic: str = DEFAULT_STATISTIC) -> tuple[float, float | None]:
    """(the row's latency under `statistic`, its reference's latency under the same statistic or None)."""
    value = sample_statistic(row.get("samples_ms"), statistic) if statistic != "median" else None
    value = float(row["latency_ms"]) if value is None else value
    env = row.get("env") or {}
    ref = (env.get(keys.REFERENCE_STATS) or {}).get(statistic)
    if ref is None and statistic == "median":
        ref = env.get(keys.REFERENCE_MS)
    return value, (float(ref) if ref else None)


class ReferenceWatch:
    """The reference latencies of a run so far, and which invocations to run again.

    On this kind of shared host a runner process is, for stretches of 10-20 s, either fast or slow: the
    reference block takes 0.165 ms or about 0.20 ms (+20%), and a whole subnet in the same invocation is
    ~15% slower, so normalising by the reference leaves several percent of error in the slow stretches. Half
    of a profile's invocations were slow on a bad afternoon, so the median of recent references is no baseline;
    the fast mode is: `baseline` is a low quantile (20%) of the last `window` references. An invocation whose
    reference is more than `tolerance` above it is run again, up to `max_tries` attempts in all, and the
    fastest attempt is kept; a lasting change of speed moves the baseline after a few invocations."""

    def __init__(self, tolerance: float = 0.02, window: int = 16, min_history: int = 3, max_tries: int = 3,
                 quantile: float = 0.2) -> None:
        self.tolerance, self.window, self.min_history = tolerance, window, min_history
        self.max_tries, self.quantile = max_tries, quantile
        self.recent: list[float] = []
        self.redone = 0

    def baseline(self) -> float | None:
        if len(self.recent) < self.min_history:
            return None
        xs = sorted(self.recent)
        return xs[int(self.quantile * (len(xs) - 1))]

    def excess(self, ref_ms: float) -> float:
        """How far `ref_ms` is above the baseline (ref / baseline - 1); 0 until `min_history` are known."""
        base = self.baseline()
        return 0.0 if base is None else ref_ms / base - 1.0

    def disturbed(self, ref_ms: float) -> bool:
        return self.excess(ref_ms) > self.tolerance

    def add(self, ref_ms: float) -> None:
        self.recent = (self.recent + [float(ref_ms)])[-self.window:]
