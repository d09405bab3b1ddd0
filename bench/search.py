"""The search use case: the most accurate subnet (predicted) within a budget on a device, exported as the device
runs it and confirmed there (`search_confirmed`), and what search and the fronts share (the device's table,
the accuracy predictor, the resolutions to search).

    device table ─> LatencyPredictor (calibrated, with its interval) ─┐
    accuracy predictor ───────────────────────────────────────────────┴─> evolution (ofa_core.search)
        ─> export (bench.export) ─> confirm on the device (bench.validate's passes) ─> refit, search again

The answer travels typed: a `SearchAnswer` (the subnet as a SubnetConfig, the figures it was chosen on, then
its export, its `Confirmation` and every round), whose `to_dict()` is the `ofa-bench search --json` document.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ofa_core.errors import OFABenchError
from ofa_core.space import SubnetConfig

if TYPE_CHECKING:
    from bench.table import Calibration


def _note(message: str) -> None:
    """A note for the person at the terminal: stderr, so that stdout stays clean for --json."""
    print(message, file=sys.stderr)


class SearchSetupError(OFABenchError):
    """What a search needs is missing: a table, an accuracy predictor, a usable resolution."""


def device_table(device: str, space_name: str | None, store, batch: int | None = None):
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


# ---- what a search answers ----------------------------------------------------------------------------
@dataclass
class Confirmation:
    """A chosen subnet timed on the device (`confirm_on_device`): the median of its passes at the table's
    reference speed, against the prediction it was chosen on."""
    device: str
    measured_latency_ms: float
    predicted_latency_ms: float
    raw_latency_ms: float  # the same passes before the reference normalisation
    pass_ms: list[float]
    noisy: bool  # the passes' spread is over the validate precision
    invocations_redone: int  # runner calls re-run because the reference block showed a disturbed stretch
    drift_normalised: bool  # False: the table has no reference speed, values are raw
    simulated: bool
    fingerprint_id: str

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted_latency_ms - self.measured_latency_ms) / self.measured_latency_ms

    def to_dict(self) -> dict:
        return {"device": self.device, "measured_latency_ms": self.measured_latency_ms,
                "predicted_latency_ms": self.predicted_latency_ms, "error_pct": self.error_pct,
                "raw_latency_ms": self.raw_latency_ms, "pass_ms": list(self.pass_ms), "n": len(self.pass_ms),
                "noisy": self.noisy, "invocations_redone": self.invocations_redone,
                "drift_normalised": self.drift_normalised, "simulated": self.simulated,
                "fingerprint_id": self.fingerprint_id}


@dataclass
class SearchAnswer:
    """The subnet a search chose and everything it was chosen on; export and confirmation fill the last
    fields. `to_dict()` is the search document (`ofa-bench search --json`)."""
    device: str
    space: str
    config: SubnetConfig
    batch: int
    simulated: bool
    predicted_accuracy: float
    predicted_latency_ms: float
    predicted_upper_ms: float  # the prediction interval's upper bound: what the latency budget holds
    table_sum_ms: float
    macs: int
    budget: dict[str, float]
    search_seconds: float
    restart_accuracies: list[float]
    seed: int
    population: int
    generations: int
    restarts: int
    resolutions: list[int]
    accuracy_predictor: str
    table_version: str
    table_source: str
    table_device: str
    calibration: Calibration  # the latency model's calibration the search ran on
    export: dict | None = None  # `write_subnet`'s document, with "kept" (False: a temporary file for confirm)
    confirm: Confirmation | None = None  # the last round's measurement
    rounds: list[dict] = field(default_factory=list)  # every search-measure round of --confirm

    @property
    def config_string(self) -> str:
        return self.config.to_string()

    @property
    def calibration_text(self) -> str:
        return self.calibration.describe()

    @property
    def budget_margin_ms(self) -> float | None:
        """Latency budget minus the upper bound it holds (None without a latency budget)."""
        b = self.budget.get("latency_ms")
        return None if b is None else float(b) - self.predicted_upper_ms

    @property
    def measured_latency_ms(self) -> float | None:
        return None if self.confirm is None else self.confirm.measured_latency_ms

    @property
    def budget_met(self) -> bool | None:
        """Whether the confirmed measurement is within the latency budget (None: not confirmed)."""
        if self.confirm is None:
            return None
        b = self.budget.get("latency_ms")
        return b is None or self.confirm.measured_latency_ms <= b

    def to_dict(self) -> dict:
        doc = {"device": self.device, "space": self.space, "batch": self.batch, "simulated": self.simulated,
               "config": self.config.to_ofa_dict(), "config_string": self.config_string,
               "predicted_accuracy": self.predicted_accuracy, "predicted_latency_ms": self.predicted_latency_ms,
               "predicted_upper_ms": self.predicted_upper_ms, "table_sum_ms": self.table_sum_ms,
               "macs": self.macs, "budget": dict(self.budget), "search_seconds": self.search_seconds,
               "restart_accuracies": list(self.restart_accuracies), "seed": self.seed,
               "population": self.population, "generations": self.generations, "restarts": self.restarts,
               "resolutions": list(self.resolutions), "accuracy_predictor": self.accuracy_predictor,
               "table_version": self.table_version, "table_source": self.table_source,
               "table_device": self.table_device, "calibrated": not self.calibration.is_identity,
               "calibration": self.calibration.to_dict(), "calibration_text": self.calibration_text}
        if self.budget_margin_ms is not None:
            doc["budget_margin_ms"] = self.budget_margin_ms
        if self.export is not None:
            doc["export"] = self.export
        if self.confirm is not None:
            doc.update(confirm=self.confirm.to_dict(), measured_latency_ms=self.measured_latency_ms,
                       budget_met=self.budget_met, rounds=list(self.rounds))
        return doc


# ---- search -------------------------------------------------------------------------------------------
def run_search(device: str, latency_ms: float | None, macs: float | None, space_name: str | None, store,
               predictor_path: str | None, resolutions: list[int] | None, seed: int, population: int,
               generations: int, restarts: int | None, batch: int | None = None) -> SearchAnswer:
    """The search's answer, before export and confirmation. Latencies (and the budget) are for a whole batch
    of the table's batch size; accuracy does not depend on it."""
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
    return SearchAnswer(
        device=device, space=space.name, config=result.config, batch=table.batch, simulated=simulated_device(device),
        predicted_accuracy=result.accuracy, predicted_latency_ms=float(latency.predict(result.config)[0]),
        predicted_upper_ms=float(result.values["latency_ms"]), table_sum_ms=float(latency.table_sum(result.config)[0]),
        macs=int(result.values["macs"]), budget=limits, search_seconds=round(result.seconds, 4),
        restart_accuracies=list(result.restart_accuracies), seed=seed, population=population,
        generations=generations, restarts=params.restarts, resolutions=res, accuracy_predictor=str(acc_path),
        table_version=latency.version, table_source=table.source, table_device=table.device,
        calibration=latency.calibration)


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


def export_chosen(space_name: str, cfg: SubnetConfig, out: Path, fmt: str, precision: str = "fp32",
                  batch: int = 1) -> dict:
    """The chosen subnet extracted from the supernet (shipped weights if the space has them, else random),
    written to `out` as the device runs it (`fmt` and `precision`, its layout, `batch` images per inference)
    and checked against torch."""
    from bench.export import write_subnet
    from ofa_core.space import SearchSpace

    return write_subnet(SearchSpace.get(space_name), cfg, out, fmt, precision, batch=batch)


def confirm_on_device(device: str, path: Path, space_name: str, cfg: SubnetConfig, predicted_latency_ms: float,
                      store, batch: int = 1, passes: int = 3, min_duration_s: float | None = None) -> Confirmation:
    """Time the exported subnet `cfg` (the file at `path`, taking `batch` images) on the device the way
    `validate` times its subnets (several separate invocations beside the reference subnet of that batch size,
    re-run when the reference shows a disturbed stretch, the median kept, expressed at the reference subnet's
    current speed, as the table's measured subnets are), store the passes as "subnet" measurements, and
    compare with the prediction."""
    import numpy as np

    from agents import connect
    from bench.measure import ReferenceWatch, agent_profile, subnet_reference_nominal_ms
    from bench.store import using_store
    from bench.validate import ValidateSettings, measure_subnets
    from devices import get_device
    from ofa_core.space import SearchSpace

    profile = get_device(device)
    space = SearchSpace.get(space_name)
    settings = ValidateSettings(n=1, passes=passes, max_passes=2 * passes, min_duration_s=min_duration_s)
    ms = settings.measure_settings(profile)
    with using_store(store, create=False) as st:
        with connect(agent_profile(profile, ms)) as agent:
            fp = agent.fingerprint()
            fp_id = st.register_fingerprint(profile.name, fp)
            # the speed the table's measured subnets are expressed at (None: raw values)
            nominal = subnet_reference_nominal_ms(st, fp_id, space, batch)
            with st.running(profile.name, fp_id, space.name, "confirm", {"config": cfg.to_string()},
                            {"predicted_latency_ms": predicted_latency_ms}) as run:
                watch = ReferenceWatch()
                timing = measure_subnets(agent, st, run, fp_id, space, [cfg], settings, 0.01, profile.model_format,
                                         precision=profile.precision, batch=batch,
                                         value_nominal=nominal, rng=np.random.default_rng(0), watch=watch,
                                         paths=[path])[0]
    return Confirmation(device=profile.name, measured_latency_ms=timing.value_ms,
                        predicted_latency_ms=predicted_latency_ms, raw_latency_ms=timing.raw_value_ms,
                        pass_ms=[round(v, 6) for v in timing.values_ms],
                        noisy=bool(timing.precision > settings.precision), invocations_redone=watch.redone,
                        drift_normalised=nominal is not None,
                        simulated=bool(fp.get("simulated", profile.simulated)), fingerprint_id=fp_id)


def search_confirmed(device: str, latency_ms: float | None, macs: float | None, space_name: str | None, store,
                     predictor_path: str | None, resolutions: list[int] | None, seed: int, population: int,
                     generations: int, restarts: int | None, export: Path | None = None, confirm: bool = False,
                     rounds: int = 3, say=None, confirm_min_duration_s: float | None = None,
                     batch: int | None = None) -> SearchAnswer:
    """Search; with `confirm`, export the subnet, time it on the device, and while it measures over the latency
    budget, search again on the calibration refitted with that measurement (the confirm run stores it as a
    measured subnet), up to `rounds` times. The answer is the last round's, with its confirmation and every
    round under `rounds`."""
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
            answer = run_search(device, latency_ms, macs, space_name, store, predictor_path, resolutions, seed,
                                population, generations, restarts, batch)
            say(f"exporting {answer.config_string} to {out}")
            answer.export = export_chosen(answer.space, answer.config, out, fmt, precision=precision,
                                          batch=answer.batch)
            answer.export["kept"] = export is not None
            if answer.export["note"]:
                say(answer.export["note"])
            if not confirm:
                return answer
            say(f"round {n}: measuring {answer.config_string} on {device} (predicted "
                f"{answer.predicted_latency_ms:.4g} ms, upper bound {answer.predicted_upper_ms:.4g} ms) ...")
            answer.confirm = confirm_on_device(device, out, answer.space, answer.config, answer.predicted_latency_ms,
                                               store, batch=answer.batch, min_duration_s=confirm_min_duration_s)
            history.append({"round": n, "config_string": answer.config_string,
                            "predicted_latency_ms": answer.predicted_latency_ms,
                            "predicted_upper_ms": answer.predicted_upper_ms,
                            "measured_latency_ms": answer.measured_latency_ms,
                            "predicted_accuracy": answer.predicted_accuracy, "calibration": answer.calibration_text})
            answer.rounds = history
            if answer.budget_met:
                return answer
            if n < rounds:
                say(f"round {n}: measured {answer.measured_latency_ms:.4g} ms is over the {latency_ms:g} ms budget; "
                    f"refitting the calibration with this measurement and searching again")
    say(f"after {len(history)} round(s) the measured latency {answer.measured_latency_ms:.4g} ms is still over "
        f"the {latency_ms:g} ms budget")
    return answer
