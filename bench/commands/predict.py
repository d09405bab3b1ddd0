"""`ofa-bench predict --device D [--space S] --config CONFIG`: table sum and calibrated latency of one subnet."""
from __future__ import annotations

from typing import Optional

import typer

from bench.commands._common import (FIGURE_SUFFIXES, BatchOption, JsonOption, SpaceOption, StoreOption,
                                    check_output_path, check_space, emit_json, resolve_store)


def predict_cmd(
    device: str = typer.Option(..., "--device", help="device whose table predicts"),
    config: str = typer.Option("largest", "--config", help="official dict as JSON, the string form, largest or smallest"),
    space: Optional[str] = SpaceOption,
    batch: Optional[int] = BatchOption,
    store: str = StoreOption,
    statistic: str = typer.Option("median", "--statistic", help="median | p25 | p10 | min of the raw samples"),
    breakdown: str = typer.Option(None, "--breakdown", help="write a per-stage latency breakdown PNG here"),
    json_out: bool = JsonOption,
) -> None:
    """Predict a subnet's latency on a device from its lookup table (calibrated on measured subnets)."""
    from bench.predict import predict_subnet
    from bench.transfer import transferred_line

    check_space(space)
    if breakdown:
        check_output_path(breakdown, "--breakdown", FIGURE_SUFFIXES)
    target = resolve_store(store, must_exist=True, default_may_be_missing=True)
    doc, table = predict_subnet(device, space, target, config, statistic=statistic, breakdown=breakdown,
                                batch=batch)
    if json_out:
        emit_json(doc)
    else:
        typer.echo(f"{device} {doc['config']} (batch {doc['batch']}): table sum {doc['table_sum_ms']:.3f} ms, "
                   f"calibrated {doc['latency_ms']:.3f} ms, upper bound {doc['upper_ms']:.3f} ms "
                   f"(table {doc['table_version']}; {doc['calibration_text']})")
        if table.transferred:
            typer.echo(transferred_line(table))


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_cmd)
