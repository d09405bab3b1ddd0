"""`ofa-bench profile DEVICE... [--space S] --resolutions R,... [--batch B1,B2]`: measure every missing table
entry, resumably; one table per batch size."""
from __future__ import annotations

from typing import Optional

import typer

from bench.commands._common import (DEFAULT_SPACE, JsonOption, NewTableSpaceOption, StoreOption, at_least_one,
                                    check_space, emit_json, info, non_negative, number_check, parse_batches,
                                    parse_resolutions, resolve_store)


def profile_cmd(
    devices: list[str] = typer.Argument(..., help="device profile names or addresses (one worker each)"),
    space: Optional[str] = NewTableSpaceOption,
    resolutions: str = typer.Option(None, "--resolutions", help="R1,R2,... (default: all for small spaces; "
                                    "160,192,224 for ImageNet spaces)"),
    store: str = StoreOption,
    batch: Optional[str] = typer.Option(None, "--batch", help="batch sizes B1,B2,..., one table each: every "
                                        "model takes B images and its latency is the whole batch's (default: "
                                        "the device profile's `batch`, [1] unless it says otherwise)"),
    rounds: int = typer.Option(3, "--rounds", callback=at_least_one,
                               help="interleave each runner invocation's models round-robin this many times"),
    per_call: int = typer.Option(16, "--per-call", callback=at_least_one,
                                 help="entries per runner invocation (committed together)"),
    min_duration_s: float = typer.Option(0.3, "--min-duration-s", callback=non_negative,
                                         help="timing budget per entry (s, all rounds); "
                                         "the profile's min_runs still holds"),
    warmup_s: float = typer.Option(0.1, "--warmup-s", callback=non_negative,
                                   help="warm-up per entry (s, all rounds)"),
    no_reference: bool = typer.Option(False, "--no-reference", help="do not time the drift reference model"),
    remeasure_raw: bool = typer.Option(False, "--remeasure-raw", help="measure again, beside the reference "
                                       "block, entries whose cell was timed without it"),
    calibration_subnets: int = typer.Option(12, "--calibration-subnets", callback=number_check(ge=0),
                                            help="whole subnets measured once the table is complete (smallest, "
                                                 "largest, a spread between), so that predictions are "
                                                 "calibrated from the start; 0: leave it to validate"),
    few_shot: Optional[int] = typer.Option(None, "--few-shot", callback=number_check(ge=1),
                                           help="measure only K informative entries and transfer the rest "
                                                "from other devices' tables of the space in the store (a "
                                                "later profile without --few-shot measures them)"),
    json_out: bool = JsonOption,
) -> None:
    """Profile devices: export, measure and store every table entry not yet measured (resumes after a crash)."""
    from bench.table import device_space
    from bench.profile import MeasureSettings, ProfileError, profile_devices

    check_space(space)
    batches = parse_batches(batch)
    settings = MeasureSettings(rounds=rounds, per_call=per_call, min_duration_s=min_duration_s,
                               warmup_s=warmup_s, reference=not no_reference,
                               calibration_subnets=calibration_subnets, remeasure_raw=remeasure_raw)
    target = resolve_store(store)
    sp = device_space(devices, space, target, default=DEFAULT_SPACE)  # resumes the table a device has
    reports = profile_devices(devices, sp, target, parse_resolutions(resolutions), settings,
                              few_shot=few_shot, batches=batches)
    failed = [r for r in reports if r.status == "failed"]
    if json_out:
        emit_json(_document(reports, target))
    else:
        for r in reports:
            _say(r)
    if failed:
        raise ProfileError(f"{len(failed)} device(s) failed: " + "; ".join(f"{r.device}: {r.error}" for r in failed))


def _document(reports: list, target: str) -> dict:
    """One JSON document: the device's report (one device), every report, the totals."""
    doc = reports[0].to_dict() if len(reports) == 1 else {}
    doc.update({"store": target, "devices": [r.to_dict() for r in reports]})
    for k in ("entries_total", "entries_measured", "entries_reused", "entries_noisy"):
        doc[k] = sum(getattr(r, k) for r in reports)
    return doc


def _say(r) -> None:
    from bench.table import Calibration

    sim = " (simulated)" if r.simulated else ""
    info(f"{r.device}{sim} batch {r.batch}: {r.status}; {r.entries_total} entries, {r.entries_measured} measured, "
         f"{r.entries_reused} reused, {r.entries_noisy} noisy, {r.subnets_measured} whole subnets "
         f"measured, {r.duration_s:.1f} s" + (f"; error: {r.error}" if r.error else ""))
    if r.transfer:
        t = r.transfer
        info(f"{r.device}: {r.entries_transferred} of {r.entries_total} entries transferred from "
             f"{', '.join(t['sources'])} ({t['model']} model on {t['n_measured']} measured entries, "
             f"leave-one-out error {100 * t['loo_rel_rmse']:.1f}%)")
    if r.calibration:
        info(f"{r.device}: latency model: {Calibration.from_dict(r.calibration).describe()}")


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_cmd)
