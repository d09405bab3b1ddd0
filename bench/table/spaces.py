"""Which search space a table belongs to, found from its keys (a file being imported); for a device, from the
tables it has, see `bench.table.lookup.device_space`.

The official keys carry the layers' shapes, so the spaces' key sets hardly overlap: a table belongs to the
registered space whose candidate entries (`bench.table.candidates`) hold all of its keys. Should several hold them
all, the one whose entries the table equals wins, then the one the table covers most.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ofa_core.space import SearchSpace

from bench.table.candidates import candidates, keys_by_resolution
from bench.table.model import LutError


@dataclass(frozen=True)
class SpaceMatch:
    """How well a table's (resolution, key) cells fit one space."""

    space: SearchSpace
    covered: int          # the table's cells that are entries of the space
    total: int            # the table's cells
    space_entries: int    # the space's entries at the table's resolutions (those the space has)
    first_unknown: tuple[int, str] | None  # the first cell (in sorted order) that is not an entry of the space

    @property
    def fits(self) -> bool:
        return self.covered == self.total

    @property
    def exact(self) -> bool:
        return self.fits and self.covered == self.space_entries

    @property
    def share(self) -> float:
        """The share of the space's entries (at the table's resolutions) that the table holds."""
        return self.covered / self.space_entries if self.space_entries else 0.0


def match_space(cells: Iterable[tuple[int, str]], space: SearchSpace) -> SpaceMatch:
    cells = sorted(set(cells))
    in_space = sorted({r for r, _ in cells if r in space.resolutions})
    known = keys_by_resolution(candidates(space, in_space))
    covered, first_unknown = 0, None
    for r, key in cells:
        if key in known.get(r, ()):
            covered += 1
        elif first_unknown is None:
            first_unknown = (r, key)
    return SpaceMatch(space, covered, len(cells), sum(len(v) for v in known.values()), first_unknown)


def _unknown(m: SpaceMatch) -> str:
    r, key = m.first_unknown
    if r not in m.space.resolutions:
        return f"resolution {r} is not in space {m.space.name}"
    return f"key {key!r} at resolution {r} is not an entry of space {m.space.name}"


def check_fits_space(cells: Iterable[tuple[int, str]], space: SearchSpace, where: str) -> None:
    """Every key must be an entry of `space` at its resolution (catches a table of another space)."""
    m = match_space(cells, space)
    if not m.fits:
        raise LutError(f"{where}: {_unknown(m)}")


def detect_space(cells: Iterable[tuple[int, str]], where: str) -> SearchSpace:
    """The one registered space whose entries hold every key of the table; a one-line LutError naming what
    was found when none does, or when two fit equally well."""
    cells = list(cells)
    matches = [match_space(cells, SearchSpace.get(name)) for name in SearchSpace.names()]
    fitting = sorted((m for m in matches if m.fits), key=lambda m: (m.exact, m.share), reverse=True)
    if not fitting:
        best = max(matches, key=lambda m: m.covered)
        if not best.covered:
            r, key = min(cells)
            raise LutError(f"{where}: these keys match no known space (first key {key!r} at resolution {r}; "
                           f"known: {', '.join(SearchSpace.names())})")
        pct = math.floor(1000 * best.covered / best.total) / 10  # never rounds a near miss up to 100%
        raise LutError(f"{where}: these keys match no known space: closest space {best.space.name} covers "
                       f"{pct:g}% of them, but {_unknown(best)}")
    if len(fitting) > 1 and (fitting[0].exact, fitting[0].share) == (fitting[1].exact, fitting[1].share):
        tied = [m.space.name for m in fitting if (m.exact, m.share) == (fitting[0].exact, fitting[0].share)]
        raise LutError(f"{where}: the keys fit spaces {', '.join(tied)} equally; pass --space NAME")
    return fitting[0].space
