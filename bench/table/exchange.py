"""A device's table out of the store into files and back (`ofa-bench lut export|import`): what is written and
what the command reports about it.

A table is of one batch size. The frame formats (CSV, Parquet) have a column per piece of metadata, so an
export writes the batch size in a `batch` column and an import reads it back; the official YAML files have no
place for it (they are batch 1 tables by origin), so `lut import --batch B` says it for them."""
from __future__ import annotations

from pathlib import Path

from bench.measure.stats import DEFAULT_STATISTIC
from bench.table.build import export_table, import_table, read_table
from bench.table.files import FRAME_SUFFIXES
from bench.table.lookup import device_table
from bench.table.model import LutError

TABLE_FORMATS = ("yaml", "parquet", "csv")
#: the column of a CSV or Parquet table that holds its batch size
BATCH_COLUMN = "batch"


def check_table_format(fmt: str) -> None:
    """A table file format `lut export` writes: yaml, parquet or csv."""
    if fmt not in TABLE_FORMATS:
        raise LutError(f"unknown table format {fmt!r}; use yaml, parquet or csv")


def export_device_table(device: str, space: str | None, store, fmt: str, out: Path,
                        statistic: str = DEFAULT_STATISTIC, partial: bool = False, batch: int | None = None) -> dict:
    """Write the device's table of batch size `batch` (default: 1, or the only batch size it has; latest good
    measurement per key) as `fmt` to `out`; a table that misses entries is refused unless `partial`. The report
    names the files, the batch size and how many entries are missing."""
    check_table_format(fmt)
    sp, table = device_table(device, space, store, statistic=statistic, batch=batch)
    missing = table.missing(sp, [r for r in table.resolutions if r in sp.resolutions])
    if missing and not partial:
        at = sorted({r for r, _ in missing})
        of = f", batch {table.batch}" if table.batch != 1 else ""
        raise LutError(f"the table of {device} ({sp.name}{of}) misses {len(missing)} of "
                       f"{len(missing) + len(table.entries)} entries (at {', '.join(map(str, at))}); "
                       f"profile it again to measure them, or pass --partial to export what there is")
    paths = export_table(table, fmt, out)
    return {"device": device, "space": sp.name, "format": fmt, "table_version": table.version,
            "entries": len(table.entries), "missing": len(missing), "complete": not missing,
            "resolutions": table.resolutions, "files": [str(p) for p in paths], "batch": int(table.batch)}


def recorded_batch(source: Path) -> int | None:
    """The batch size a CSV or Parquet table file records in its `batch` column (one value for every row);
    None for a file without that column and for the official YAML/JSON files, which have no place for it."""
    import pandas as pd

    source = Path(source)
    if source.is_dir() or source.suffix.lower() not in FRAME_SUFFIXES:
        return None
    try:
        df = pd.read_parquet(source) if source.suffix.lower() == ".parquet" else pd.read_csv(source)
    except Exception as exc:  # read_table has read it already; anything now is a file changed meanwhile
        raise LutError(f"{source}: not a readable table file ({exc.__class__.__name__})") from None
    if BATCH_COLUMN not in df.columns:
        return None
    values = set(df[BATCH_COLUMN].dropna().tolist())
    if not values:
        return None
    ok = all(not isinstance(v, bool) and isinstance(v, (int, float)) and v == int(v) and v >= 1 for v in values)
    if not ok or len(values) != 1:
        raise LutError(f"{source}: the batch column must hold one batch size (an integer >= 1) for every row, "
                       f"got {', '.join(map(str, sorted(values, key=str)))}")
    return int(values.pop())


def import_device_table(device: str, source: Path, space: str | None, store_target: str,
                        batch: int | None = None) -> dict:
    """Read a published table (checked completely before the store is even opened) and file it in the store
    under `device`, in one transaction, as its table of batch size `batch` (default: the batch size a CSV or
    Parquet file records, else 1; a `batch` that contradicts the file's is refused)."""
    from bench.store import using_store

    if batch is not None and (isinstance(batch, bool) or int(batch) != batch or batch < 1):
        raise LutError(f"--batch must be an integer >= 1, got {batch}")
    sp, entries = read_table(source, space)
    found = recorded_batch(source)
    if batch is not None and found is not None and found != batch:
        raise LutError(f"{source} is a table of batch size {found} (its batch column), not {batch}: leave "
                       f"--batch out or pass --batch {found}")
    b = int(batch if batch is not None else found or 1)
    with using_store(store_target) as st:
        doc = import_table(st, device, sp, source, entries=entries, batch=b)
    return {**doc, "batch": b}
