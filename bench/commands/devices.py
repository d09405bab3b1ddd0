"""`ofa-bench devices list|show|probe|add`: the device profiles, a quick end-to-end check of one device, and
writing a new profile."""
from __future__ import annotations

from typing import Optional

import typer

from bench.commands._common import (JsonOption, at_least_one, emit_json, finite, info, non_negative, parse_batches,
                                    positive)

KIND_HELP = "local | adb | ssh | fpga"


def _parse_cores(text: Optional[str]) -> tuple[int, ...]:
    from devices import DeviceProfileError

    if not text:
        return ()
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise DeviceProfileError(f"--cores must be CPU numbers separated by commas, got {text!r}") from None


def list_cmd(json_out: bool = JsonOption) -> None:
    """Every known device profile (built-in and the user's); examples and simulated devices are marked."""
    from devices import list_devices

    rows = [p.summary() for p in list_devices()]
    if json_out:
        emit_json({"devices": rows})
        return
    for r in rows:
        tags = "".join([" [example]" if r["example"] else "", " [simulated]" if r["simulated"] else ""])
        where = r["address"] or "this host"
        typer.echo(f"{r['name']:<20} {r['kind']:<6} {r['runtime']:<12} {where:<24} {r['description']}{tags}")


def show_cmd(device: str = typer.Argument(..., help="profile name or ad-hoc address"),
             json_out: bool = JsonOption) -> None:
    """Every setting of one device profile."""
    from devices import get_device

    p = get_device(device)
    if json_out:
        emit_json(p.to_dict())
    else:
        typer.echo(p.to_toml().rstrip())


def probe_cmd(
    device: str = typer.Argument("local-cpu", help="profile name or ad-hoc address (adb:HOST:PORT, ...)"),
    json_out: bool = JsonOption,
) -> None:
    """Connect, push the runner, time a tiny model built here, and print the fingerprint and a latency."""
    from bench.probe import probe_device

    doc = probe_device(device, log=info)
    if json_out:
        emit_json(doc)
        return
    fp = doc["fingerprint"]
    what = fp.get("model") or fp.get("cpu") or fp.get("soc") or "?"
    typer.echo(f"{doc['device']}: {what}, {fp.get('os') or ''} {fp.get('runtime')} {fp.get('runtime_version')}"
               f" (fingerprint {doc['fingerprint_id']})")
    typer.echo(f"{doc['model']}: {doc['latency_ms']:.4f} ms median over {doc['n']} runs"
               + (" (SIMULATED)" if doc["simulated"] else ""))


def add_cmd(
    name: str = typer.Argument(..., help="profile name: letters, digits, '.', '_' and '-' (the file NAME.toml)"),
    kind: str = typer.Option(..., "--kind", help=KIND_HELP),
    address: str = typer.Option("", "--address", help="adb: HOST:PORT or serial; ssh: USER@HOST[:PORT]; fpga: board"),
    runtime: str = typer.Option("onnxruntime", "--runtime", help="onnxruntime | litert | torch | null | fpga-model"),
    model_format: str = typer.Option("", "--model-format", help="onnx | tflite | pt2 (default: the runtime's)"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | int8 (static int8 .tflite: LiteRT devices)"),
    provider: str = typer.Option("cpu", "--provider", help="cpu | cuda | tensorrt: the onnxruntime execution "
                                 "provider (runtime onnxruntime only)"),
    batch: Optional[str] = typer.Option(None, "--batch", help="batch sizes B1,B2,... `profile` makes a table of "
                                        "each by default (default: 1)"),
    threads: int = typer.Option(1, "--threads", callback=at_least_one),
    cores: Optional[str] = typer.Option(None, "--cores", help="CPU numbers to pin to, e.g. 4,5,6,7"),
    python: str = typer.Option("python3", "--python", help="interpreter on the device"),
    workdir: str = typer.Option("", "--workdir", help="folder on the device for pushed files"),
    binary: str = typer.Option("", "--binary", help="measuring binary on this host (benchmark_model, ...)"),
    key_path: str = typer.Option("", "--key-path", help="ssh private key"),
    adb_server: bool = typer.Option(False, "--adb-server", help="adb: go through the adb command and server"),
    cooldown_s: float = typer.Option(0.0, "--cooldown-s", callback=non_negative),
    cooldown_temp_c: Optional[float] = typer.Option(None, "--cooldown-temp-c", callback=finite),
    cv_threshold: float = typer.Option(0.05, "--cv-threshold", callback=positive),
    description: str = typer.Option("", "--description"),
    force: bool = typer.Option(False, "--force", help="replace an existing user profile"),
    json_out: bool = JsonOption,
) -> None:
    """Write a device profile to the user's profile folder ($OFA_BENCH_DEVICES or ~/.config/ofa-bench/devices)."""
    from devices import DeviceProfile, check_profile_name, write_user_profile

    check_profile_name(name)  # a name, never a path: the profile is written as NAME.toml in the user's folder
    profile = DeviceProfile(
        name=name, kind=kind, address=address, runtime=runtime, model_format=model_format, precision=precision,
        provider=provider, batch=tuple(parse_batches(batch) or (1,)), threads=threads,
        cores=_parse_cores(cores), python=python, workdir=workdir, binary=binary, key_path=key_path,
        adb_server=adb_server, cooldown_s=cooldown_s, cooldown_temp_c=cooldown_temp_c,
        cv_threshold=cv_threshold, description=description)
    path = write_user_profile(profile, force=force)
    if json_out:
        emit_json({"written": str(path), "profile": profile.summary()})
    else:
        info(f"wrote {path}")


def register(app: typer.Typer) -> None:
    dev_app = typer.Typer(help="Device profiles: list, show, probe, add.", no_args_is_help=True)
    app.add_typer(dev_app, name="devices")
    dev_app.command("list")(list_cmd)
    dev_app.command("show")(show_cmd)
    dev_app.command("probe")(probe_cmd)
    dev_app.command("add")(add_cmd)
