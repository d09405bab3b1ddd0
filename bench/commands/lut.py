"""`ofa-bench lut export|import`: a device's lookup table as official YAML files, Parquet or CSV."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bench.commands._common import (BatchOption, JsonOption, SpaceOption, StoreOption, check_output_folder,
                                    check_output_path, check_space, emit_json, info, number_check, resolve_store)


def export_cmd(
    device: str = typer.Argument(..., help="device name"),
    out: Path = typer.Option(..., "--out", help="folder (yaml) or file (parquet, csv)"),
    fmt: str = typer.Option("yaml", "--format", help="yaml | parquet | csv"),
    space: Optional[str] = SpaceOption,
    store: str = StoreOption,
    statistic: str = typer.Option("median", "--statistic", help="median | p25 | p10 | min of the raw samples"),
    partial: bool = typer.Option(False, "--partial", help="write a table that misses entries (say how many) "
                                 "instead of refusing it"),
    batch: Optional[int] = BatchOption,
    json_out: bool = JsonOption,
) -> None:
    """Write the device's table of one batch size (latest good measurement per key); an incomplete table only
    with --partial. CSV and Parquet files record the batch size in a `batch` column."""
    from bench.table import check_table_format, export_device_table

    check_table_format(fmt)
    check_space(space)
    if fmt == "yaml":
        check_output_folder(out, "--out")
    else:
        check_output_path(out, "--out")
    target = resolve_store(store, must_exist=True, default_may_be_missing=True)
    doc = export_device_table(device, space, target, fmt, out, statistic=statistic, partial=partial, batch=batch)
    if json_out:
        emit_json(doc)
    else:
        missing = doc["missing"]
        of = f", batch {doc['batch']}" if doc["batch"] != 1 else ""
        info(f"wrote {doc['entries']} entries of {device} ({doc['space']}{of}) to {len(doc['files'])} file(s) under "
             f"{out}" + (f"; {missing} entries missing (partial table)" if missing else ""))


def import_cmd(
    device: str = typer.Argument(..., help="device name to file the table under"),
    source: Path = typer.Argument(..., help="folder of {R}_lookup_table.yaml/.json files, one such file, "
                                  "or a .csv/.parquet file (columns resolution, key, mean_ms, optional "
                                  "std_ms or var, count)"),
    space: Optional[str] = typer.Option(None, "--space", help="search space name (default: the one space "
                                        "whose entries the table's keys are)"),
    store: str = StoreOption,
    batch: Optional[int] = typer.Option(None, "--batch", callback=number_check(ge=1),
                                        help="the batch size the table was measured at: it becomes the device's "
                                             "table of that batch size (default: the file's `batch` column, "
                                             "else 1)"),
    json_out: bool = JsonOption,
) -> None:
    """Read a published table (checked completely before anything is written) into the store."""
    from bench.table import import_device_table

    doc = import_device_table(device, source, space, resolve_store(store), batch=batch)
    if json_out:
        emit_json(doc)
    else:
        of = f" batch {doc['batch']}" if doc["batch"] != 1 else ""
        info(f"imported {doc['entries']} entries as device {device}{of} ({doc['space']}), resolutions "
             f"{doc['resolutions'][0]}..{doc['resolutions'][-1]}")


def register(app: typer.Typer) -> None:
    lut = typer.Typer(help="Export or import latency lookup tables.", no_args_is_help=True)
    app.add_typer(lut, name="lut")
    lut.command("export")(export_cmd)
    lut.command("import")(import_cmd)
