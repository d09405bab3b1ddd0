"""`ofa-bench nightly [DEVICE...]`: the cron job (re-measure sentinels and stale entries, detect drift, rebuild).

Crontab line (03:15 every night):
    15 3 * * *  cd /path/to/ofa-bench && ofa-bench nightly --json >> ~/ofa-bench-nightly.log 2>&1
"""
from __future__ import annotations

from typing import Optional

import typer

from bench.commands._common import (JsonOption, StoreOption, check_output_folder, emit_json, info, non_negative,
                                    parse_batches, positive, resolve_store)


def _print_devices(doc: dict) -> None:
    for d in doc.get("devices", []):
        drift = ", ".join(f"{x['kind']} {x.get('key', '')}"
                          + (f" batch {x['batch']}" if x.get("batch", 1) != 1 else "")
                          + f" {100 * x.get('rel_change', 0):+.1f}%" for x in d.get("drift", []))
        info(f"{d['device']}: {d['status']}" + (f" ({drift})" if drift else "")
             + (f"; error: {d['error']}" if d.get("error") else ""))


def nightly_cmd(
    devices: list[str] = typer.Argument(None, help="devices (default: every device profiled in the store)"),
    store: str = StoreOption,
    space: list[str] = typer.Option(None, "--space", help="only these spaces (repeatable)"),
    stale_days: float = typer.Option(30.0, "--stale-days", callback=non_negative,
                                     help="re-measure entries older than this"),
    threshold: float = typer.Option(0.05, "--threshold", callback=positive,
                                    help="relative change that counts as drift"),
    no_rebuild: bool = typer.Option(False, "--no-rebuild", help="report drift without re-profiling"),
    batch: Optional[str] = typer.Option(None, "--batch", help="batch sizes B1,B2,... whose tables are refreshed "
                                        "(default: each device profile's `batch` list)"),
    plots: str = typer.Option(None, "--plots", help="folder for drift-history PNGs of drifted entries"),
    json_out: bool = JsonOption,
) -> None:
    """Re-measure sentinel and stale entries, detect drift, rebuild; exit non-zero if unreachable or drifted."""
    from bench.nightly import NightlySettings, check_alert, run_nightly
    from devices import get_device

    for d in devices or ():
        get_device(d)  # unknown names: one line, before any store is opened
    batches = tuple(parse_batches(batch) or ())
    if plots:
        check_output_folder(plots, "--plots")
    target = resolve_store(store, must_exist=True)  # a mistyped --store is an error, not a new empty store
    settings = NightlySettings(stale_days=stale_days, threshold=threshold, rebuild=not no_rebuild,
                               spaces=tuple(space or ()), batches=batches)
    doc = run_nightly(devices, target, settings, plots=plots)
    if json_out:
        emit_json(doc)
    else:
        _print_devices(doc)
    check_alert(doc)


def register(app: typer.Typer) -> None:
    app.command("nightly")(nightly_cmd)
