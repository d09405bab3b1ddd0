"""`ofa-bench lut export|import`: a device's lookup table as official YAML files, Parquet or CSV."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bench.commands._common import (JsonOption, SpaceOption, StoreOption, check_output_folder, check_output_path,
                                    check_space, emit_json, info, resolve_store)


def register(app: typer.Typer) -> None:
    lut = typer.Typer(help="Export or import latency lookup tables.", no_args_is_help=True)
    app.add_typer(lut, name="lut")

    @lut.command("export")
    def export_cmd(
        device: str = typer.Argument(..., help="device name"),
        out: Path = typer.Option(..., "--out", help="folder (yaml) or file (parquet, csv)"),
        fmt: str = typer.Option("yaml", "--format", help="yaml | parquet | csv"),
        space: Optional[str] = SpaceOption,
        store: str = StoreOption,
        statistic: str = typer.Option("median", "--statistic", help="median | p25 | p10 | min of the raw samples"),
        partial: bool = typer.Option(False, "--partial", help="write a table that misses entries (say how many) "
                                     "instead of refusing it"),
        json_out: bool = JsonOption,
    ) -> None:
        """Write the device's table (latest good measurement per key); an incomplete table only with --partial."""
        from bench.table import LutError, device_table, export_table

        if fmt not in ("yaml", "parquet", "csv"):
            raise LutError(f"unknown table format {fmt!r}; use yaml, parquet or csv")
        check_space(space)
        if fmt == "yaml":
            check_output_folder(out, "--out")
        else:
            check_output_path(out, "--out")
        target = resolve_store(store, must_exist=True, default_may_be_missing=True)
        sp, table = device_table(device, space, target, statistic=statistic)
        missing = table.missing(sp, [r for r in table.resolutions if r in sp.resolutions])
        if missing and not partial:
            at = sorted({r for r, _ in missing})
            raise LutError(f"the table of {device} ({sp.name}) misses {len(missing)} of "
                           f"{len(missing) + len(table.entries)} entries (at {', '.join(map(str, at))}); "
                           f"profile it again to measure them, or pass --partial to export what there is")
        paths = export_table(table, fmt, out)
        doc = {"device": device, "space": sp.name, "format": fmt, "table_version": table.version,
               "entries": len(table.entries), "missing": len(missing), "complete": not missing,
               "resolutions": table.resolutions, "files": [str(p) for p in paths]}
        if json_out:
            emit_json(doc)
        else:
            info(f"wrote {len(table.entries)} entries of {device} ({sp.name}) to {len(paths)} file(s) under {out}"
                 + (f"; {len(missing)} entries missing (partial table)" if missing else ""))

    @lut.command("import")
    def import_cmd(
        device: str = typer.Argument(..., help="device name to file the table under"),
        source: Path = typer.Argument(..., help="folder of {R}_lookup_table.yaml/.json files, one such file, "
                                      "or a .csv/.parquet file (columns resolution, key, mean_ms, optional "
                                      "std_ms or var, count)"),
        space: Optional[str] = typer.Option(None, "--space", help="search space name (default: the one space "
                                            "whose entries the table's keys are)"),
        store: str = StoreOption,
        json_out: bool = JsonOption,
    ) -> None:
        """Read a published table (checked completely before anything is written) into the store."""
        from bench.table import import_table, read_table
        from bench.store import open_store

        sp, entries = read_table(source, space)  # fail on a corrupt table before the store is even opened
        st = open_store(resolve_store(store))
        try:
            doc = import_table(st, device, sp, source, entries=entries)
        finally:
            st.close()
        if json_out:
            emit_json(doc)
        else:
            info(f"imported {doc['entries']} entries as device {device} ({sp.name}), resolutions "
                 f"{doc['resolutions'][0]}..{doc['resolutions'][-1]}")
