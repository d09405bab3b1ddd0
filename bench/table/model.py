"""The table model: one cell's statistics, a device's table of them, and the error every table step raises.

Kept apart from the readers and writers (`bench.table.files`) and the store-to-table step (`bench.table.build`),
which all build on it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from ofa_core.errors import OFABenchError
from ofa_core.space import SearchSpace

from bench.table.candidates import candidates, keys_by_resolution
from bench.measure.stats import DEFAULT_STATISTIC


class LutError(OFABenchError, ValueError):
    """A table that cannot be read, does not fit its space, or does not exist for a device."""


@dataclass(frozen=True)
class EntryStats:
    """One table cell. `latency_ms` is the table statistic (our median; the source mean for imported tables).
    `std_ms` is None where the source did not say (a published table with a mean only): unknown, not zero."""

    latency_ms: float
    mean_ms: float
    std_ms: float | None
    count: int
    normalised_ms: float | None = None
    measurement_id: int | None = None
    measured_at: float | None = None

    @property
    def value_ms(self) -> float:
        """What predictors sum: the drift-normalised latency when measured with a reference, else the raw one."""
        return self.latency_ms if self.normalised_ms is None else self.normalised_ms


@dataclass(frozen=True)
class LatencyTable:
    """The table of one device and space. `subnets` holds measured whole subnets ((r, config string) -> stats)
    of the same fingerprint: the predictor calibrates against them."""

    device: str
    fingerprint_id: str
    space: str
    version: str
    entries: Mapping[tuple[int, str], EntryStats]
    subnets: Mapping[tuple[int, str], EntryStats] = field(default_factory=dict)
    source: str = "store"
    nominal_ms: float | None = None  # reference latency the values are expressed at (None: raw latencies)
    statistic: str = DEFAULT_STATISTIC
    # entries predicted by transfer (`bench.transfer`), not measured: key -> the source devices
    transferred: Mapping[tuple[int, str], tuple[str, ...]] = field(default_factory=dict)
    batch: int = 1  # the batch size every entry was timed at: latencies are the whole batch's
    # the reference subnet's latency the measured subnets are expressed at (None: none timed beside it)
    subnet_nominal_ms: float | None = None

    @property
    def resolutions(self) -> list[int]:
        return sorted({r for r, _ in self.entries})

    @property
    def transferred_share(self) -> float:
        """The share of the table's entries that are transferred from other devices (0: all measured)."""
        return len(self.transferred) / len(self.entries) if self.entries else 0.0

    def provenance(self) -> dict:
        """How much of the table is measured and how much transferred, and from which devices."""
        return {"entries": len(self.entries), "transferred": len(self.transferred),
                "transferred_share": round(self.transferred_share, 4),
                "transferred_from": sorted({d for ds in self.transferred.values() for d in ds})}

    def complete_resolutions(self, space: SearchSpace) -> list[int]:
        """Resolutions at which every candidate entry of `space` has a value."""
        need = keys_by_resolution(candidates(space, [r for r in self.resolutions if r in space.resolutions]))
        have: dict[int, set[str]] = {}
        for r, k in self.entries:
            have.setdefault(r, set()).add(k)
        return [r for r in sorted(need) if need[r] <= have.get(r, set())]

    def missing(self, space: SearchSpace, resolutions) -> list[tuple[int, str]]:
        return [(e.resolution, e.key) for e in candidates(space, resolutions)
                if (e.resolution, e.key) not in self.entries]


def table_version(ids) -> str:
    """Short stable hash of the measurement ids a table is made of (changes whenever any cell changes)."""
    ids = sorted(int(i) for i in ids)
    digest = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:10]
    return f"m{ids[-1] if ids else 0}-n{len(ids)}-{digest}"
