"""`ofa-bench predict --device D [--space S] --config CONFIG`: table sum and calibrated latency of one subnet."""
from __future__ import annotations

from typing import Optional

import typer

from bench.commands._common import (FIGURE_SUFFIXES, JsonOption, SpaceOption, StoreOption, check_output_path,
                                    check_space, emit_json, resolve_store)


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_cmd(
        device: str = typer.Option(..., "--device", help="device whose table predicts"),
        config: str = typer.Option("largest", "--config", help="official dict as JSON, the string form, largest or smallest"),
        space: Optional[str] = SpaceOption,
        store: str = StoreOption,
        statistic: str = typer.Option("median", "--statistic", help="median | p25 | p10 | min of the raw samples"),
        breakdown: str = typer.Option(None, "--breakdown", help="write a per-stage latency breakdown PNG here"),
        json_out: bool = JsonOption,
    ) -> None:
        """Predict a subnet's latency on a device from its lookup table (calibrated on measured subnets)."""
        from bench.table import LatencyPredictor, device_table
        from bench.transfer import transferred_line

        check_space(space)
        if breakdown:
            check_output_path(breakdown, "--breakdown", FIGURE_SUFFIXES)
        target = resolve_store(store, must_exist=True, default_may_be_missing=True)
        sp, table = device_table(device, space, target, statistic=statistic)
        pred = LatencyPredictor.from_table(table, sp)
        text = config.strip()
        if text in ("largest", "smallest"):
            r = max(pred.resolutions) if text == "largest" else min(pred.resolutions)
            cfg = sp.largest(r) if text == "largest" else sp.smallest(r)
        else:
            cfg = sp.parse_config(text)
        doc = {
            "device": device, "space": sp.name, "config": cfg.to_string(), "config_dict": cfg.to_ofa_dict(),
            "resolution": cfg.r, "table_sum_ms": float(pred.table_sum([cfg])[0]),
            "latency_ms": float(pred([cfg])[0]), "upper_ms": float(pred.upper([cfg])[0]),
            "table_version": pred.version, "calibration": pred.calibration.to_dict(),
            "calibration_text": pred.calibration.describe(), "table_source": table.source,
            "fingerprint_id": table.fingerprint_id,
            "transferred_share": table.transferred_share, "provenance": table.provenance(),
        }
        if breakdown:
            from bench.plots import subnet_stage_breakdown

            doc["breakdown"] = str(subnet_stage_breakdown(sp, table, cfg, breakdown))
        if json_out:
            emit_json(doc)
        else:
            typer.echo(f"{device} {cfg.to_string()}: table sum {doc['table_sum_ms']:.3f} ms, "
                       f"calibrated {doc['latency_ms']:.3f} ms, upper bound {doc['upper_ms']:.3f} ms "
                       f"(table {pred.version}; {doc['calibration_text']})")
            if table.transferred:
                typer.echo(transferred_line(table))
