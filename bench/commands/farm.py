"""`ofa-bench farm submit|worker|status`: a job queue in the store, shared by the hosts of a measuring farm."""
from __future__ import annotations

from typing import Optional

import typer

from bench.commands._common import (DEFAULT_SPACE, JsonOption, NewTableSpaceOption, StoreOption, at_least_one,
                                    check_space, emit_json, info, non_negative, parse_batches, parse_resolutions,
                                    positive, resolve_store)


def submit_cmd(
    devices: list[str] = typer.Argument(..., help="device names"),
    space: Optional[str] = NewTableSpaceOption,
    resolutions: str = typer.Option(None, "--resolutions", help="R1,R2,... (default: all of the space's)"),
    max_attempts: int = typer.Option(3, "--max-attempts", callback=at_least_one,
                                     help="a job fails for good after this many tries"),
    batch: Optional[str] = typer.Option(None, "--batch", help="batch sizes B1,B2,..., a table each: jobs measure "
                                        "the entry taking B images (default: the device profile's `batch`)"),
    store: str = StoreOption,
    json_out: bool = JsonOption,
) -> None:
    """Queue one job per table entry not yet measured (nor queued) for each device, at each batch size."""
    from bench.farm import submit_devices

    check_space(space)
    res = parse_resolutions(resolutions)
    batches = parse_batches(batch)
    doc = submit_devices(resolve_store(store), devices, space, res, max_attempts=max_attempts,
                         default_space=DEFAULT_SPACE, batches=batches)
    if json_out:
        emit_json(doc)
    else:
        for d in doc["devices"]:
            sizes = ",".join(str(b["batch"]) for b in d.get("batches", []))
            info(f"{d['device']}: {d['queued']} queued, {d['already_queued']} already queued, "
                 f"{d['measured']} measured ({doc['entries']} entries in {doc['space']}"
                 + (f", batch {sizes}" if sizes and sizes != "1" else "") + ")")


def _device_names(text: str) -> tuple[str, ...]:
    """`--devices D[,D...]`: the names in order, each once."""
    from bench.farm import FarmError

    names = tuple(dict.fromkeys(d.strip() for d in text.split(",") if d.strip()))
    if not names:
        raise FarmError("--devices is empty")
    return names


def worker_cmd(
    devices: str = typer.Option(..., "--devices", help="D[,D...]: the devices attached to this host"),
    store: str = StoreOption,
    lease_s: float = typer.Option(60.0, "--lease-s", callback=positive,
                                  help="lease of a claimed job, renewed while measuring"),
    poll_s: float = typer.Option(1.0, "--poll-s", callback=positive, help="wait between looks at an empty queue"),
    exit_when_idle: bool = typer.Option(False, "--exit-when-idle", help="stop once no job is queued or running"),
    max_jobs: int = typer.Option(None, "--max-jobs", callback=at_least_one,
                                 help="stop a device after this many jobs"),
    measurer: str = typer.Option("agent", "--measurer",
                                 help="agent (measure on the device) | null (simulated: time an empty call)"),
    null_min_duration_s: float = typer.Option(0.0, "--null-min-duration-s", callback=non_negative,
                                              help="null measurer: measure for at least this long per job"),
    json_out: bool = JsonOption,
) -> None:
    """Claim and measure jobs for these devices, one measurement at a time per device."""
    from bench.farm import WorkerSettings, run_worker, worker_sessions

    names = _device_names(devices)
    factory, label = worker_sessions(measurer, names, null_min_duration_s)
    settings = WorkerSettings(devices=names, lease_s=lease_s, poll_s=poll_s, exit_when_idle=exit_when_idle,
                              max_jobs=max_jobs)
    report = run_worker(resolve_store(store, must_exist=True), settings, factory, label)
    if json_out:
        emit_json(report.to_json())
    else:
        for d in report.devices.values():
            info(f"{d.device}: {d.done} done, {d.failed_attempts} failed attempts, {d.lost} lost"
                 + (f", error: {d.error}" if d.error else ""))


def status_cmd(store: str = StoreOption, json_out: bool = JsonOption) -> None:
    """Per device: queued, running, done and failed jobs, and the workers serving it."""
    from bench.farm import farm_status
    from bench.store import open_store

    with open_store(resolve_store(store, must_exist=True), create=False) as s:
        doc = farm_status(s)
    if json_out:
        emit_json(doc)
        return
    if not doc["devices"]:
        info("no jobs and no workers")
    for d in doc["devices"]:
        workers = ", ".join(f"{w['name']} ({w['status']}, {w['heartbeat_age_s']:.0f} s ago)" for w in d["workers"])
        info(f"{d['device']}: {d['queued']} queued, {d['running']} running, {d['done']} done, "
             f"{d['failed']} failed; workers: {workers or 'none'}")


def register(app: typer.Typer) -> None:
    farm = typer.Typer(help="Queue table entries as jobs and measure them on workers across hosts.",
                       no_args_is_help=True)
    app.add_typer(farm, name="farm")
    farm.command("submit")(submit_cmd)
    farm.command("worker")(worker_cmd)
    farm.command("status")(status_cmd)
