"""A subnet's latency on a device from its lookup table (`ofa-bench predict`): the table sum, the calibrated
latency and its upper bound, with the calibration and the table's provenance."""
from __future__ import annotations

from typing import TYPE_CHECKING

from bench.measure.stats import DEFAULT_STATISTIC

if TYPE_CHECKING:
    from bench.table import LatencyTable


def _subnet(space, predictor, text: str):
    """`largest` / `smallest` (at the table's largest / smallest resolution), or any form `parse_config` reads."""
    text = text.strip()
    if text in ("largest", "smallest"):
        r = max(predictor.resolutions) if text == "largest" else min(predictor.resolutions)
        return space.largest(r) if text == "largest" else space.smallest(r)
    return space.parse_config(text)


def predict_subnet(device: str, space: str | None, store, config: str = "largest",
                   statistic: str = DEFAULT_STATISTIC, breakdown: str | None = None,
                   batch: int | None = None) -> tuple[dict, LatencyTable]:
    """(report, the device's table) for one subnet; with `breakdown`, also a per-stage latency figure there.
    `batch`: the batch size's table (default: 1, or the only one the device has); latencies are the batch's."""
    from bench.table import LatencyPredictor, device_table

    sp, table = device_table(device, space, store, statistic=statistic, batch=batch)
    pred = LatencyPredictor.from_table(table, sp)
    cfg = _subnet(sp, pred, config)
    doc = {
        "device": device, "space": sp.name, "batch": table.batch, "config": cfg.to_string(),
        "config_dict": cfg.to_ofa_dict(),
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
    return doc, table
