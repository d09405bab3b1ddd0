"""`ofa-bench demo`: the whole loop on this machine with the shipped Fashion-MNIST supernet, into one folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bench.commands._common import JsonOption, emit_json, info


def demo_cmd(
    out: Path = typer.Option(Path("ofa-bench-demo"), "--out", help="folder for report.md, figures, models"),
    store: Optional[str] = typer.Option(None, "--store", help="measurement store (default: store.sqlite "
                                        "inside --out, so the main store is never touched unless asked)"),
    quick: bool = typer.Option(False, "--quick", help="fewer table entries and subnets (tests)"),
    seed: int = typer.Option(0, "--seed"),
    json_out: bool = JsonOption,
) -> None:
    """Profile local-cpu, validate its table, search three latency budgets, draw the Pareto front, export
    and confirm the chosen subnets, and write a report. Takes several minutes; each step shows its progress
    and time on stderr."""
    import dataclasses

    from bench.demo import DemoSettings, run_demo

    settings = DemoSettings.quick() if quick else DemoSettings()
    settings = dataclasses.replace(settings, seed=seed)
    doc = run_demo(out, store, settings, log=info)
    if json_out:
        emit_json(doc)
    else:
        typer.echo(f"report: {doc['report']}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
