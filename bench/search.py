"""The search use case: the most accurate subnet (predicted) within a budget on a device, exported as the device
runs it and confirmed there (`search_confirmed`), and what search and the fronts share (the device's table,
the accuracy predictor, the resolutions to search).

    device table ─> LatencyPredictor (calibrated, with its interval) ─┐
    accuracy predictor ───────────────────────────────────────────────┴─> evolution (ofa_core.search)
        ─> export (bench.export) ─> confirm on the device (bench.validate's passes) ─> refit, search again
"""
from __future__ import annotations

import sys
from pathlib import Path

from ofa_core.errors import OFABenchError


def _note(message: str) -> None:
    """A note for the person at the terminal: stderr, so that stdout stays clean for --json."""
    print(message, file=sys.stderr)


class SearchSetupError(OFABenchError):
    """What a search needs is missing: a table, an accuracy predictor, a usable resolution."""


def device_table(device: str, space_name: str | None, store: str, batch: int | None = None):
    """(space, table) for a device: the given space, or the one space the device has a table of, at the given
    batch size, or 1, or the only one it has (the rule every command shares, `bench.table.device_table`)."""
    from bench.table import device_table as shared

    return shared(device, space_name, store, batch=batch)


def accuracy_predictor(space, path: str | None):
    """The accuracy predictor for `space`: `path`, else the space's default; a one-line error if none."""
    from ofa_core.accuracy import AccuracyPredictor, default_predictor_path

    p = Path(path) if path else default_predictor_path(space.name)
    if p is None:
        raise SearchSetupError(f"no accuracy predictor for space {space.name}; pass --predictor PATH "
                               f"(a predictor trained with `ofa-bench train` or the official acc_predictor.pth)")
    pred = AccuracyPredictor.load(p)
    pred.check_space(space)
    if pred.space and pred.space != space.name:
        _note(f"note: accuracy predictor {p} was made for {pred.space}; using it as a proxy for {space.name}")
    return pred, p


def search_resolutions(latency, requested: list[int] | None, device: str) -> list[int]:
    held = list(latency.resolutions)
    if requested is None:
        return held
    missing = [r for r in requested if r not in held]
    if missing:
        raise SearchSetupError(f"resolution {missing[0]} is not in the latency table of {device} "
                               f"(it holds {', '.join(map(str, held))})")
    return sorted(set(requested))


def simulated_device(device: str) -> bool:
    try:
        from devices import get_device

        return bool(get_device(device).simulated)
    except OFABenchError:
        return False


# ---- search -------------------------------------------------------------------------------------------
def run_search(device: str, latency_ms: float | None, macs: float | None, space_name: str | None, store: str,
               predictor_path: str | None, resolutions: list[int] | None, seed: int, population: int,
               generations: int, restarts: int | None, batch: int | None = None) -> dict:
    """Everything `ofa-bench search` reports, before export and confirmation. Latencies (and the budget) are
    for a whole batch of the table's batch size; accuracy does not depend on it."""
    import numpy as np

    from bench.table import LatencyPredictor
    from ofa_core.search import InfeasibleBudgetError, SearchParams, check_budget, evolution_search

    if latency_ms is None and macs is None:
        raise SearchSetupError("give a budget: --latency-ms and/or --macs")
    check_budget({k: v for k, v in (("latency_ms", latency_ms), ("macs", macs)) if v is not None})
    space, table = device_table(device, space_name, store, batch)
    latency = LatencyPredictor.from_table(table, space)
    acc, acc_path = accuracy_predictor(space, predictor_path)
    res = search_resolutions(latency, resolutions, device)
    limits = {}
    if latency_ms is not None:
        limits["latency_ms"] = float(latency_ms)
    if macs is not None:
        limits["macs"] = float(macs)
    # The budget holds the prediction interval's upper bound, not the point prediction.
    metrics = {"latency_ms": latency.upper, "macs": space.macs}
    params = SearchParams(population=population, generations=generations,
                          **({"restarts": restarts} if restarts else {}))
    try:
        result = evolution_search(space, acc, metrics, limits, np.random.default_rng(seed), params, res)
    except InfeasibleBudgetError as exc:
        raise unreachable(exc, latency, device, latency_ms) from None
    cfg = result.config
    upper = float(result.values["latency_ms"])
    doc = {
        "device": device, "space": space.name, "batch": table.batch, "simulated": simulated_device(device),
        "config": cfg.to_ofa_dict(), "config_string": cfg.to_string(),
        "predicted_accuracy": result.accuracy, "predicted_latency_ms": float(latency.predict(cfg)[0]),
        "predicted_upper_ms": upper, "table_sum_ms": float(latency.table_sum(cfg)[0]),
        "macs": int(result.values["macs"]), "budget": limits, "search_seconds": round(result.seconds, 4),
        "restart_accuracies": list(result.restart_accuracies), "seed": seed, "population": population,
        "generations": generations, "restarts": params.restarts, "resolutions": res,
        "accuracy_predictor": str(acc_path), "table_version": latency.version, "table_source": table.source,
        "table_device": table.device, "calibrated": not latency.calibration.is_identity,
        "calibration": latency.calibration.to_dict(), "calibration_text": latency.calibration.describe(),
    }
    if latency_ms is not None:
        doc["budget_margin_ms"] = float(latency_ms) - upper
    return doc


def unreachable(exc, latency, device: str, budget_ms: float | None) -> OFABenchError:
    """The search's own "no subnet meets the budget", said in the terms of the latency budget: the fastest
    subnet's prediction and the upper bound the budget holds, the latency model, what to ask for instead."""
    upper = exc.values.get("latency_ms")
    if exc.config is None or upper is None or budget_ms is None:
        return SearchSetupError(str(exc))
    return SearchSetupError(
        f"no subnet of {latency.space.name} fits {budget_ms:g} ms on {device}: the fastest, "
        f"{exc.config.to_string()}, predicts "
        f"{float(latency.predict(exc.config)[0]):.4g} ms with an upper bound of {upper:.4g} ms "
        f"({latency.calibration.describe()}); ask for at least {upper:.4g} ms")


def device_target(device: str) -> tuple[str, str]:
    """The model format and precision a device runs (its profile's, e.g. .tflite for LiteRT); ONNX fp32 for a
    table that has no profile (one imported from files)."""
    from devices import get_device

    try:
        profile = get_device(device)
    except OFABenchError:
        return "onnx", "fp32"
    return profile.model_format, profile.precision


def device_format(device: str) -> str:
    return device_target(device)[0]


def export_chosen(space_name: str, cfg_dict: dict, out: Path, fmt: str, precision: str = "fp32",
                  batch: int = 1) -> dict:
    """The chosen subnet extracted from the supernet (shipped weights if the space has them, else random),
    written to `out` as the device runs it (`fmt` and `precision`, its layout, `batch` images per inference)
    and checked against torch."""
    from bench.export import write_subnet
    from ofa_core.space import SearchSpace, SubnetConfig

    return write_subnet(SearchSpace.get(space_name), SubnetConfig.from_ofa_dict(cfg_dict), out, fmt, precision,
                        batch=batch)


def confirm_on_device(device: str, path: Path, doc: dict, store: str, passes: int = 3,
                      min_duration_s: float | None = None) -> dict:
    """Time the exported subnet on the device the way `validate` times its subnets (several separate
    invocations beside the reference block, re-run when the reference shows a disturbed stretch, the median
    kept, expressed at the table's reference speed), store the passes as "subnet" measurements, compare. The
    model takes `doc["batch"]` images, and is timed beside the reference block of that batch size."""
    import numpy as np

    from agents import connect
    from bench.measure import ReferenceWatch, agent_profile, reference_nominal_ms
    from bench.store import open_store
    from bench.validate import ValidateSettings, measure_subnets
    from devices import get_device
    from ofa_core.space import SearchSpace

    profile = get_device(device)
    space = SearchSpace.get(doc["space"])
    cfg = space.parse_config(doc["config_string"])
    settings = ValidateSettings(n=1, passes=passes, max_passes=2 * passes, min_duration_s=min_duration_s)
    ms = settings.measure_settings(profile)
    st = open_store(store, create=False)
    try:
        with connect(agent_profile(profile, ms)) as agent:
            fp = agent.fingerprint()
            fp_id = st.register_fingerprint(profile.name, fp)
            batch = int(doc.get("batch", 1))
            nominal = reference_nominal_ms(st, fp_id, space, batch)  # the table's reference speed (None: raw values)
            with st.running(profile.name, fp_id, doc["space"], "confirm", {"config": doc["config_string"]},
                            {"predicted_latency_ms": doc["predicted_latency_ms"]}) as run:
                watch = ReferenceWatch()
                timing = measure_subnets(agent, st, run, fp_id, space, [cfg], settings, 0.01, profile.model_format,
                                         precision=profile.precision, batch=batch,
                                         value_nominal=nominal, rng=np.random.default_rng(0), watch=watch,
                                         paths=[path])[0]
    finally:
        st.close()
    pred = doc["predicted_latency_ms"]
    measured = timing.value_ms
    return {"device": profile.name, "measured_latency_ms": measured, "predicted_latency_ms": pred,
            "error_pct": 100.0 * (pred - measured) / measured, "raw_latency_ms": timing.raw_value_ms,
            "pass_ms": [round(v, 6) for v in timing.values_ms], "n": len(timing.values_ms),
            "noisy": bool(timing.precision > settings.precision), "invocations_redone": watch.redone,
            "drift_normalised": nominal is not None,
            "simulated": bool(fp.get("simulated", profile.simulated)), "fingerprint_id": fp_id}


def search_confirmed(device: str, latency_ms: float | None, macs: float | None, space_name: str | None, store: str,
                     predictor_path: str | None, resolutions: list[int] | None, seed: int, population: int,
                     generations: int, restarts: int | None, export: Path | None = None, confirm: bool = False,
                     rounds: int = 3, say=None, confirm_min_duration_s: float | None = None,
                     batch: int | None = None) -> dict:
    """Search; with `confirm`, export the subnet, time it on the device, and while it measures over the latency
    budget, search again on the calibration refitted with that measurement (the confirm run stores it as a
    measured subnet), up to `rounds` times. The document is the last round's search with `measured_latency_ms`,
    `budget_met` and every round under `rounds`."""
    import tempfile

    say = say or _note
    if export is None and not confirm:
        return run_search(device, latency_ms, macs, space_name, store, predictor_path, resolutions, seed,
                          population, generations, restarts, batch)
    # Without --export, the model lives in a temporary folder only while it is measured.
    with tempfile.TemporaryDirectory(prefix="ofa-bench-search-") as scratch:
        fmt, precision = device_target(device)  # what the device runs: the file it is timed on, the file a user gets
        out = export if export is not None else Path(scratch) / f"subnet.{fmt}"
        history: list[dict] = []
        for n in range(1, max(1, rounds) + 1):
            doc = run_search(device, latency_ms, macs, space_name, store, predictor_path, resolutions, seed,
                             population, generations, restarts, batch)
            say(f"exporting {doc['config_string']} to {out}")
            doc["export"] = export_chosen(doc["space"], doc["config"], out, fmt, precision=precision,
                                          batch=doc.get("batch", 1))
            doc["export"]["kept"] = export is not None
            if doc["export"]["note"]:
                say(doc["export"]["note"])
            if not confirm:
                return doc
            say(f"round {n}: measuring {doc['config_string']} on {device} (predicted "
                f"{doc['predicted_latency_ms']:.4g} ms, upper bound {doc['predicted_upper_ms']:.4g} ms) ...")
            doc["confirm"] = confirm_on_device(device, out, doc, store, min_duration_s=confirm_min_duration_s)
            measured = doc["confirm"]["measured_latency_ms"]
            history.append({"round": n, "config_string": doc["config_string"],
                            "predicted_latency_ms": doc["predicted_latency_ms"],
                            "predicted_upper_ms": doc["predicted_upper_ms"], "measured_latency_ms": measured,
                            "predicted_accuracy": doc["predicted_accuracy"], "calibration": doc["calibration_text"]})
            doc["measured_latency_ms"] = measured
            doc["budget_met"] = latency_ms is None or measured <= latency_ms
            doc["rounds"] = history
            if doc["budget_met"]:
                return doc
            if n < rounds:
                say(f"round {n}: measured {measured:.4g} ms is over the {latency_ms:g} ms budget; refitting the "
                    f"calibration with this measurement and searching again")
    say(f"after {len(history)} round(s) the measured latency {doc['measured_latency_ms']:.4g} ms is still over "
        f"the {latency_ms:g} ms budget")
    return doc
