"""The published tables shipped beside the repository (the Note10 one), read in memory as a device's table.

A device that has one (`KNOWN_ANCHORS`) has a table before it is ever profiled: `load_device_table` falls back
on it, and `device_space` counts it among the device's tables.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ofa_core.accuracy import ANCHORS_ENV, anchors_root
from ofa_core.space import SearchSpace

from bench.table.files import read_yaml_dir
from bench.table.model import LatencyTable
from bench.table.spaces import check_fits_space


#: published tables shipped beside the repository: device name -> (space, folder below the anchors root)
KNOWN_ANCHORS = {"note10": ("ofa-mbv3-w1.2", Path("ofa-mbv3-w12-note10") / "latency_table_note10")}


def anchors_missing(path: Path) -> str:
    """One line for a missing published anchor: what to fetch and where to put it."""
    return (f"{path} not found: fetch the published anchors folder ofa-mbv3-w12-note10 (in the project's shared "
            f"anchors; a checkout has a copy in tests/data/anchors) into {anchors_root()}, or set ${ANCHORS_ENV} "
            f"to a folder holding it")


def anchor_table(device: str, space: SearchSpace) -> LatencyTable | None:
    """A published table shipped beside the repo (the Note10 one), read in memory; None if absent."""
    known = KNOWN_ANCHORS.get(device)
    if known is None or known[0] != space.name:
        return None
    folder = anchors_root() / known[1]
    if not folder.is_dir():
        return None
    entries = read_yaml_dir(folder)
    check_fits_space(entries, space, str(folder))
    h = hashlib.sha256()
    for (r, k), st in sorted(entries.items()):
        h.update(f"{r}|{k}|{st.mean_ms!r}\n".encode())
    return LatencyTable(device=device, fingerprint_id="anchors", space=space.name,
                        version=f"anchors-{h.hexdigest()[:10]}", entries=entries, source=str(folder))
