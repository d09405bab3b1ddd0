"""`ofa-bench search`: the best subnet under a budget on a device, optionally exported as the device runs it
and confirmed there. Parses the options, calls `bench.search.search_confirmed`, prints."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bench.commands._common import (BatchOption, JsonOption, SpaceOption, StoreOption, at_least_one, check_output_path,
                                    emit_json, non_negative, number_check, parse_resolutions, positive, resolve_store)
from bench.search import SearchSetupError, device_format, search_confirmed

PredictorOption = typer.Option(None, "--predictor", help="accuracy predictor (.safetensors of ours or the official .pth); "
                                                         "default: the one of the space, if it has one")
ResolutionsOption = typer.Option(None, "--resolutions", help="resolutions to search, e.g. 160,176,192,208,224 "
                                                             "(default: those the device's table holds)")


def search_cmd(
    device: str = typer.Option(..., "--device", help="device whose latency table constrains the search"),
    latency_ms: Optional[float] = typer.Option(None, "--latency-ms", callback=positive,
                                               help="latency budget (ms, for the whole batch of --batch)"),
    macs: Optional[float] = typer.Option(None, "--macs", callback=positive, help="MACs budget (e.g. 3e8)"),
    space: Optional[str] = SpaceOption,
    batch: Optional[int] = BatchOption,
    predictor: Optional[str] = PredictorOption,
    resolutions: Optional[str] = ResolutionsOption,
    seed: int = typer.Option(0, "--seed", callback=non_negative, help="seed of the evolution"),
    population: int = typer.Option(100, "--population", callback=number_check(ge=2), help="evolution population"),
    generations: int = typer.Option(500, "--generations", callback=non_negative, help="evolution generations"),
    restarts: Optional[int] = typer.Option(None, "--restarts", callback=at_least_one,
                                           help="independent searches side by side, best kept (default 1)"),
    export: Optional[Path] = typer.Option(None, "--export", help="write the subnet here, as the device runs it "
                                                             "(.tflite for a LiteRT device, else .onnx)"),
    confirm: bool = typer.Option(False, "--confirm", help="measure the subnet on the device and compare; "
                                 "over the budget, refit with that measurement and search again"),
    confirm_rounds: int = typer.Option(3, "--confirm-rounds", callback=at_least_one,
                                       help="most search-measure rounds of --confirm"),
    store: str = StoreOption,
    json_out: bool = JsonOption,
) -> None:
    """Find the most accurate subnet (predicted) within a latency and/or MACs budget on a device. The budget
    holds the prediction interval's upper bound; --confirm measures the answer on the device."""
    if latency_ms is None and macs is None:
        raise SearchSetupError("give a budget: --latency-ms and/or --macs")
    if export is not None:
        check_output_path(export, "--export", (f".{device_format(device)}",))
    target = resolve_store(store, must_exist=True, default_may_be_missing=True)
    doc = search_confirmed(device, latency_ms, macs, space, target, predictor, parse_resolutions(resolutions),
                           seed, population, generations, restarts, export, confirm, confirm_rounds,
                           batch=batch).to_dict()
    if json_out:
        emit_json(doc)
        return
    sim = " [simulated device]" if doc["simulated"] else ""
    typer.echo(f"{doc['device']}{sim} ({doc['space']}, batch {doc['batch']}), budget "
               + ", ".join(f"{k} <= {v:g}" for k, v in doc["budget"].items()))
    typer.echo(f"best: {doc['config_string']}")
    typer.echo(f"      {doc['config']}")
    typer.echo(f"predicted accuracy {100 * doc['predicted_accuracy']:.2f}%, predicted latency "
               f"{doc['predicted_latency_ms']:.3f} ms (upper bound {doc['predicted_upper_ms']:.3f} ms), "
               f"{doc['macs'] / 1e6:.1f}M MACs (search {doc['search_seconds']:.2f} s)")
    typer.echo(f"latency model: {doc['calibration_text']}")
    if doc.get("export", {}).get("kept"):
        typer.echo(f"exported to {doc['export']['path']} ({doc['export']['weights']} weights)")
    for r in doc.get("rounds", []):
        sim = " (simulated)" if doc["confirm"]["simulated"] else ""
        typer.echo(f"round {r['round']}: {r['config_string']} measured{sim} {r['measured_latency_ms']:.3f} ms vs "
                   f"predicted {r['predicted_latency_ms']:.3f} ms "
                   f"({100 * (r['predicted_latency_ms'] / r['measured_latency_ms'] - 1):+.1f}%)")
    if "budget_met" in doc and latency_ms is not None:
        typer.echo(f"budget {latency_ms:g} ms " + ("met" if doc["budget_met"] else "NOT met") +
                   f": measured {doc['measured_latency_ms']:.3f} ms")


def register(app: typer.Typer) -> None:
    app.command("search")(search_cmd)
