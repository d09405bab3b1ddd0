"""`ofa-bench validate DEVICE [--space S] --subnets N`: measure random subnets end to end, score the table."""
from __future__ import annotations

from typing import Optional

import typer

from bench.commands._common import (FIGURE_SUFFIXES, BatchOption, JsonOption, SpaceOption, StoreOption, at_least_one,
                                    check_output_path, check_space, emit_json, info, non_negative, number_check,
                                    parse_resolutions, resolve_store)


def _scores_line(doc: dict, space_name: str) -> str:
    """The report in one line: the scores, before-this-run figures, the remeasure agreement, time and load."""
    line = (f"{doc['device']}{' (simulated)' if doc.get('simulated') else ''} {space_name} batch "
            f"{doc.get('batch', 1)}: n={doc['n']} "
            f"MAPE {100 * doc['mape']:.2f}%  RMSE {doc['rmse_ms']:.3f} ms  within ±5% "
            f"{100 * doc['within_5pct']:.0f}%  ±10% {100 * doc['within_10pct']:.0f}%  "
            f"Kendall tau {doc['kendall_tau']:.3f}")
    if "before" in doc:
        b = doc["before"]
        line += (f"  (before this run: ±5% {100 * b['within_5pct']:.0f}%  ±10% {100 * b['within_10pct']:.0f}%"
                 f"  MAPE {100 * b['mape']:.2f}%)")
    if "remeasure_within_5pct" in doc:
        line += f"  remeasure within ±5% {100 * doc['remeasure_within_5pct']:.0f}%"
    if "duration_s" in doc:
        line += f"  ({doc['duration_s']:.0f} s, load {doc.get('loadavg_1min')})"
    return line


def _print_report(doc: dict, space_name: str) -> None:
    typer.echo(_scores_line(doc, space_name))
    prov = doc.get("provenance") or {}
    if prov.get("transferred"):
        typer.echo(f"{doc['device']}: {100 * prov['transferred_share']:.0f}% of the table "
                   f"({prov['transferred']} of {prov['entries']} entries) transferred from "
                   f"{', '.join(prov['transferred_from'])}, not measured")


def validate_cmd(
    device: str = typer.Argument(..., help="device profile name or address"),
    space: Optional[str] = SpaceOption,
    subnets: int = typer.Option(60, "--subnets", callback=number_check(ge=2), help="random subnets to measure"),
    seed: int = typer.Option(0, "--seed", callback=non_negative),
    resolutions: str = typer.Option(None, "--resolutions", help="R1,R2,... (default: the table's)"),
    remeasure: bool = typer.Option(False, "--remeasure", help="time every subnet twice (noise floor)"),
    rounds: int = typer.Option(3, "--rounds", callback=at_least_one),
    batch: Optional[int] = BatchOption,
    per_call: int = typer.Option(6, "--per-call", callback=at_least_one, help="subnets per runner invocation"),
    min_duration_s: float = typer.Option(None, "--min-duration-s", callback=non_negative,
                                         help="timing budget per subnet and pass"),
    warmup_s: float = typer.Option(0.1, "--warmup-s", callback=non_negative,
                                   help="warm-up per subnet and pass (s, all rounds)"),
    passes: int = typer.Option(3, "--passes", callback=at_least_one,
                               help="separate invocations that time each subnet (at least)"),
    max_passes: int = typer.Option(6, "--max-passes", callback=at_least_one,
                                   help="more passes, up to this, while a subnet's disagree"),
    no_reference: bool = typer.Option(False, "--no-reference", help="no drift reference model"),
    plot: str = typer.Option(None, "--plot", help="write a predicted-vs-measured PNG here"),
    statistic: str = typer.Option("median", "--statistic", help="median | p25 | p10 | min of the raw samples"),
    rescore: bool = typer.Option(False, "--rescore", help="score the subnets already in the store; measure nothing"),
    store: str = StoreOption,
    json_out: bool = JsonOption,
) -> None:
    """Predicted vs measured latency on N random subnets: MAPE, RMSE, share within ±5%/±10%, Kendall tau."""
    from bench.table import device_batch, device_space
    from bench.validate import ValidateError, ValidateSettings, validate_device
    from devices import get_device

    check_space(space)
    res = parse_resolutions(resolutions)
    if max_passes < passes:
        raise ValidateError(f"--max-passes ({max_passes}) must be at least --passes ({passes})")
    if plot:
        check_output_path(plot, "--plot", FIGURE_SUFFIXES)
    target = resolve_store(store, must_exist=True)
    get_device(device)  # an unknown device is said as such, before its tables are looked for
    sp = device_space(device, space, target)
    b = device_batch(device, sp, batch, target)
    if rescore:
        from bench.validate import rescore as rescore_fn

        doc = rescore_fn(device, sp, target, statistic, seed, plot_path=plot, batch=b)
    else:
        settings = ValidateSettings(n=subnets, seed=seed, resolutions=tuple(res) if res else None,
                                    remeasure=remeasure, rounds=rounds, per_call=per_call,
                                    min_duration_s=min_duration_s, warmup_s=warmup_s, reference=not no_reference,
                                    statistic=statistic, passes=passes, max_passes=max_passes, batch=b)
        doc = validate_device(device, sp, target, settings, plot_path=plot,
                              progress=lambda done, total: info(f"validate {device}: {done}/{total} subnet "
                                                                f"timings (subnets x passes)"))
    if json_out:
        emit_json(doc)
    else:
        _print_report(doc, sp.name)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_cmd)
