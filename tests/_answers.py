"""Search answers and confirmations made by hand, for tests that stand in for the search or the device."""
from __future__ import annotations

from bench.search import Confirmation, SearchAnswer
from bench.table import Calibration


def search_answer(space, cfg, **fields) -> SearchAnswer:
    """A `SearchAnswer` for `cfg` of `space` with neutral figures; `fields` override any of them."""
    doc = dict(device="d", space=space.name, config=cfg, batch=1, simulated=True, predicted_accuracy=0.5,
               predicted_latency_ms=1.0, predicted_upper_ms=1.0, table_sum_ms=1.0, macs=int(space.macs(cfg)),
               budget={}, search_seconds=0.0, restart_accuracies=[], seed=0, population=2, generations=0,
               restarts=1, resolutions=[cfg.r], accuracy_predictor="", table_version="v", table_source="test",
               table_device="d", calibration=Calibration())
    doc.update(fields)
    return SearchAnswer(**doc)


def confirmation(measured_ms: float, predicted_ms: float = 1.0, **fields) -> Confirmation:
    """A `Confirmation` that measured `measured_ms` (one pass) on a simulated device."""
    doc = dict(device="d", measured_latency_ms=measured_ms, predicted_latency_ms=predicted_ms,
               raw_latency_ms=measured_ms, pass_ms=[measured_ms], noisy=False, invocations_redone=0,
               drift_normalised=True, simulated=True, fingerprint_id="f")
    doc.update(fields)
    return Confirmation(**doc)
