"""`ofa-bench pareto`: accuracy-latency fronts of one or more devices on one figure. Parses the options, calls
`bench.pareto.device_fronts`, prints."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bench.commands._common import (FIGURE_SUFFIXES, BatchOption, JsonOption, SpaceOption, StoreOption, at_least_one,
                                    check_output_path, emit_json, info, non_negative, number_check, parse_resolutions,
                                    resolve_store)
from bench.commands.search import PredictorOption, ResolutionsOption


def pareto_cmd(
    device: List[str] = typer.Option(..., "--device", help="device (repeat for several fronts on one figure)"),
    out: Path = typer.Option(..., "--out", help="figure to write (.png, .pdf, .svg)"),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="also write the points as CSV"),
    space: Optional[str] = SpaceOption,
    batch: Optional[int] = BatchOption,
    predictor: Optional[str] = PredictorOption,
    resolutions: Optional[str] = ResolutionsOption,
    seed: int = typer.Option(0, "--seed", callback=non_negative, help="seed of each device's NSGA-II run"),
    population: int = typer.Option(100, "--population", callback=number_check(ge=2), help="NSGA-II population"),
    generations: int = typer.Option(150, "--generations", callback=at_least_one, help="NSGA-II generations"),
    with_macs: bool = typer.Option(False, "--macs", help="MACs as a third objective"),
    store: str = StoreOption,
    json_out: bool = JsonOption,
) -> None:
    """Accuracy-latency Pareto fronts (NSGA-II), one per device, measured subnets marked."""
    from bench.pareto import device_fronts, plot_fronts, write_csv

    check_output_path(out, "--out", FIGURE_SUFFIXES)
    if csv_path is not None:
        check_output_path(csv_path, "--csv")
    target = resolve_store(store, must_exist=True, default_may_be_missing=True)
    fronts, batches = device_fronts(device, space, target, batch, predictor, parse_resolutions(resolutions), seed,
                                    population, generations, with_macs, say=info)
    plot_fronts(fronts, out)
    doc = {"out": str(out), "devices": [{**f.to_dict(), "batch": b} for f, b in zip(fronts, batches)]}
    if csv_path is not None:
        doc["csv"] = str(write_csv(fronts, csv_path))
    if json_out:
        emit_json(doc)
    else:
        for f in fronts:
            lat = f.front.values["latency_ms"]
            top = f.ends["top"]
            typer.echo(f"{f.device} ({f.space}): {len(f.front)} points, {lat.min():.2f}-{lat.max():.2f} ms, "
                       f"accuracy {100 * f.front.accuracy.min():.2f}-{100 * f.front.accuracy.max():.2f}%, "
                       f"{len(f.measured)} measured subnet(s), {f.front.seconds:.1f} s")
            if f.transferred_share:
                typer.echo(f"  {100 * f.transferred_share:.0f}% of its table transferred from "
                           f"{', '.join(f.provenance.get('transferred_from', []))}, not measured")
            typer.echo(f"  top: {100 * top['front_accuracy']:.2f}% on the front within the largest subnet's "
                       f"{top['budget_latency_ms']:.3g} ms; single-budget search there "
                       f"{100 * top['search_accuracy']:.2f}%")
            if f.floor.get("n_points_floored"):
                typer.echo(f"  {f.floor['n_points_floored']} point(s) predicted faster than a measured subnet they "
                           f"contain, drawn at its measured latency (fastest measured "
                           f"{f.floor['fastest_measured_ms']:.3g} ms)")
        typer.echo(f"figure: {out}" + (f", points: {doc['csv']}" if csv_path is not None else ""))


def register(app: typer.Typer) -> None:
    app.command("pareto")(pareto_cmd)
