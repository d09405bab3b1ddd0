"""A device's table out of the store into files and back (`ofa-bench lut export|import`): what is written and
what the command reports about it."""
from __future__ import annotations

from pathlib import Path

from bench.measure.stats import DEFAULT_STATISTIC
from bench.table.build import export_table, import_table, read_table
from bench.table.lookup import device_table
from bench.table.model import LutError

TABLE_FORMATS = ("yaml", "parquet", "csv")


def check_table_format(fmt: str) -> None:
    """A table file format `lut export` writes: yaml, parquet or csv."""
    if fmt not in TABLE_FORMATS:
        raise LutError(f"unknown table format {fmt!r}; use yaml, parquet or csv")


def export_device_table(device: str, space: str | None, store, fmt: str, out: Path,
                        statistic: str = DEFAULT_STATISTIC, partial: bool = False) -> dict:
    """Write the device's table (latest good measurement per key) as `fmt` to `out`; a table that misses
    entries is refused unless `partial`. The report names the files and how many entries are missing."""
    check_table_format(fmt)
    sp, table = device_table(device, space, store, statistic=statistic)
    missing = table.missing(sp, [r for r in table.resolutions if r in sp.resolutions])
    if missing and not partial:
        at = sorted({r for r, _ in missing})
        raise LutError(f"the table of {device} ({sp.name}) misses {len(missing)} of "
                       f"{len(missing) + len(table.entries)} entries (at {', '.join(map(str, at))}); "
                       f"profile it again to measure them, or pass --partial to export what there is")
    paths = export_table(table, fmt, out)
    return {"device": device, "space": sp.name, "format": fmt, "table_version": table.version,
            "entries": len(table.entries), "missing": len(missing), "complete": not missing,
            "resolutions": table.resolutions, "files": [str(p) for p in paths]}


def import_device_table(device: str, source: Path, space: str | None, store_target: str) -> dict:
    """Read a published table (checked completely before the store is even opened) and file it in the store
    under `device`, in one transaction."""
    from bench.store import open_store

    sp, entries = read_table(source, space)
    st = open_store(store_target)
    try:
        return import_table(st, device, sp, source, entries=entries)
    finally:
        st.close()
