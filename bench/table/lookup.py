"""A device's table as a command asks for it: the name it is stored under, the spaces it has tables of, and
the (space, table) to work on when `--space` is left out (`device_space` is the one place that decides), and
the batch size when `--batch` is left out (`device_batch`).
"""
from __future__ import annotations

from collections.abc import Sequence

from ofa_core.accuracy import anchors_root
from ofa_core.errors import OFABenchError
from ofa_core.space import SearchSpace

from bench.measure.stats import DEFAULT_STATISTIC
from bench.store.handle import using_store
from bench.table.anchors import KNOWN_ANCHORS
from bench.table.build import load_device_table
from bench.table.model import LutError


def table_device_name(device: str) -> str:
    """The name tables are stored under: a profile's canonical name for an alias, else the name as given."""
    if device in KNOWN_ANCHORS:
        return device
    try:
        from devices import get_device

        return get_device(device).name
    except OFABenchError:
        return device


def table_spaces(device: str, store) -> list[str]:
    """The registered spaces the device has a table of: in the store (its latest fingerprint's block
    measurements) or published beside the repository (`KNOWN_ANCHORS`)."""
    found = set()
    with using_store(store, if_exists=True) as st:
        fp = st.latest_fingerprint(device) if st is not None else None
        if fp is not None:
            found.update(st.spaces(fp["id"]))
    known = KNOWN_ANCHORS.get(device)
    if known is not None and (anchors_root() / known[1]).is_dir():
        found.add(known[0])
    return sorted(found & set(SearchSpace.names()))


def _where(store) -> str:
    if store is None:
        return "no store"
    return f"store {getattr(store, 'target', store)}"


def device_space(devices: str | Sequence[str], space: str | None, store, default: str | None = None) -> SearchSpace:
    """The space a command works on: `space` when given (--space), else the one space the devices' tables are
    of. No table: `default` (commands that make tables) or a one-line error; tables of several spaces: a
    one-line error that lists them and asks for --space."""
    if space:
        return SearchSpace.get(space)
    names = [devices] if isinstance(devices, str) else list(devices)
    with using_store(store, if_exists=True) as st:  # opened once for all the devices
        found = sorted({s for d in names for s in table_spaces(table_device_name(d), st)})
    who = f"device {names[0]!r}" if len(names) == 1 else f"devices {', '.join(map(repr, names))}"
    if len(found) > 1:
        raise LutError(f"{who} {'has' if len(names) == 1 else 'have'} tables of several spaces "
                       f"({', '.join(found)}); pass --space NAME")
    if found:
        return SearchSpace.get(found[0])
    if default:
        return SearchSpace.get(default)
    raise LutError(f"no latency table for {who} in {_where(store)}; run `ofa-bench profile {names[0]} "
                   f"--space NAME` or `ofa-bench lut import {names[0]} TABLE` first")


def table_batches(device: str, space: SearchSpace, store) -> list[int]:
    """The batch sizes the device has a table of in `space` (its latest fingerprint's block measurements in the
    store; [1] for a published table alone)."""
    with using_store(store, if_exists=True) as st:
        fp = st.latest_fingerprint(device) if st is not None else None
        found = st.batches(fp["id"], space.name) if fp is not None else []
    if not found and space.name in table_spaces(device, None):
        return [1]
    return found


def device_batch(device: str, space: SearchSpace, batch: int | None, store) -> int:
    """The batch size a command works at: `batch` when given (--batch), else 1, or the only batch size the
    device's table has. Tables of several batch sizes without one of 1: a one-line error that lists them."""
    if batch is not None:
        if batch < 1:
            raise LutError(f"--batch must be at least 1, got {batch}")
        return int(batch)
    found = table_batches(table_device_name(device), space, store)
    if len(found) == 1:
        return found[0]
    if len(found) > 1 and 1 not in found:
        raise LutError(f"device {device!r} has tables of batch sizes {', '.join(map(str, found))} in {space.name} "
                       f"and none of 1; pass --batch B")
    return 1


def device_table(device: str, space: str | None, store, statistic: str = DEFAULT_STATISTIC,
                 batch: int | None = None):
    """(space, table) of a device: `device_space`, `device_batch`, then its table from the store or the
    published anchors."""
    name = table_device_name(device)
    sp = device_space(name, space, store)
    return sp, load_device_table(name, sp, store, statistic=statistic, batch=device_batch(name, sp, batch, store))
