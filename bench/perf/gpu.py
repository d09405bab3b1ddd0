"""`python -m bench.perf gpu`: the GPU check a person runs on a GPU host, in one command.

1. Probe: the GPU's name, driver and clocks (`nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem
   --format=csv`, and torch.cuda where torch has CUDA). Without a CUDA GPU: one line saying so, exit 2.
2. Tables: the device `cuda-ort` (onnxruntime's CUDA execution provider, I/O binding; `--provider tensorrt`
   for TensorRT) profiled at batch sizes 1 and 64 (`--batches`), one table each, with their calibration subnets.
3. Validation: 20 random subnets per batch size (`--subnets`), timed end to end as `ofa-bench validate` does.
4. Search and confirm: per batch size, a budget halfway between the fastest subnet's upper bound and the largest
   subnet's prediction, searched, exported and timed on the GPU (`ofa-bench search --confirm`).
5. Overhead: the largest subnet timed by the runner against a bare loop in this process on the same provider
   (plain `session.run`, which copies inputs and outputs between host and GPU, and `run_with_iobinding`, which
   times what the runner times): the ratios say what the harness adds.

What is profiled: the small space `ofa-mbv3-fmnist` at one resolution (its largest, 36 px): 96 table entries
per batch size. A table entry costs about half a second of timing whatever its size (the protocol times each
for a fixed duration), so two tables, 2 x 20 validated subnets in 3 passes each, two searches with their
confirmations and the overhead loops come to about 5 minutes, inside the 8 minutes this check may take; the
small space also has shipped weights and an accuracy predictor, so the search runs end to end. A resolution of
w1.0 (`--space ofa-mbv3-w1.0 --resolution 224`, as the paper's GPU figures) also has 96 entries and takes about
as long to time, but exports larger models on the CPU (about a second per whole subnet at batch 64).

Every figure is printed with the GPU's name, driver and its clocks read when the figure was taken.
`--provider cpu` runs the same steps on this host's CPU (labelled so), to check the script without a GPU.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXIT_NO_GPU = 2
#: the steps above took about 5 minutes in the plan; this is the limit the check is held to
TIME_LIMIT_S = 8 * 60
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem", "--format=csv"]


# ---- the GPU -----------------------------------------------------------------------------------------------
def nvidia_smi_rows(argv: list[str] = NVIDIA_SMI_QUERY) -> list[dict[str, str]]:
    """The rows of `nvidia-smi --query-gpu=... --format=csv` as dicts keyed by its header; [] without it."""
    if not shutil.which(argv[0]):
        return []
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return []
    if res.returncode != 0:
        return []
    return parse_nvidia_smi_csv(res.stdout)


def parse_nvidia_smi_csv(text: str) -> list[dict[str, str]]:
    """`name, driver_version, clocks.current.sm [MHz], ...` and one line per GPU -> one dict per GPU."""
    rows = list(csv.reader(io.StringIO(text.strip()), skipinitialspace=True))
    if len(rows) < 2:
        return []
    header = [h.strip() for h in rows[0]]
    return [dict(zip(header, (v.strip() for v in row))) for row in rows[1:] if len(row) == len(header)]


def torch_cuda() -> dict | None:
    """torch's view of CUDA device 0, or None where torch is missing or sees no CUDA device."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda, "torch": torch.__version__}


def probe() -> dict | None:
    """The GPU: nvidia-smi's first row (name, driver, clocks) and torch.cuda; None when neither sees one."""
    rows = nvidia_smi_rows()
    tc = torch_cuda()
    if not rows and tc is None:
        return None
    row = rows[0] if rows else {}
    return {"name": row.get("name") or (tc or {}).get("name"), "driver": row.get("driver_version"),
            "clocks": _clocks(row), "gpus": len(rows) or None, "torch_cuda": tc}


def _clocks(row: dict[str, str]) -> dict[str, str | None]:
    def pick(prefix: str) -> str | None:
        return next((v for k, v in row.items() if k.startswith(prefix)), None)

    return {"sm": pick("clocks.current.sm") or pick("clocks.sm"), "mem": pick("clocks.current.memory")
            or pick("clocks.mem")}


class GpuLabel:
    """The GPU's name and driver, and its clocks read anew each time a figure is printed."""

    def __init__(self, gpu: dict | None, provider: str):
        self.gpu, self.provider = gpu, provider

    def __call__(self) -> str:
        if self.gpu is None:
            return f"[this host's CPU, provider {self.provider}: not a GPU figure]"
        rows = nvidia_smi_rows()
        clocks = _clocks(rows[0]) if rows else self.gpu["clocks"]
        return (f"[{self.gpu['name']}, driver {self.gpu['driver'] or '?'}, SM {clocks['sm'] or '?'}, "
                f"memory {clocks['mem'] or '?'}, provider {self.provider}]")


# ---- the device -----------------------------------------------------------------------------------------
def check_profile(provider: str, batches: list[int], folder: Path):
    """The `cuda-ort` example profile with this run's provider and batch sizes, written as a user profile in
    `folder` (made the user profile folder for this process) so that every command finds it by name."""
    from devices import get_device, write_user_profile
    from devices.registry import DEVICES_ENV

    os.environ[DEVICES_ENV] = str(folder)
    base = get_device("cuda-ort")
    name = f"gpu-check-{provider}"
    changes = dict(name=name, provider=provider, batch=tuple(batches), example=False, aliases=(), min_runs=50,
                   warmup_runs=10, description=f"bench.perf gpu: onnxruntime {provider} provider")
    if provider == "cpu":
        changes.update(cores=(0,))
    profile = base.replace(**changes)
    write_user_profile(profile)
    return get_device(name)


# ---- the steps ---------------------------------------------------------------------------------------------
def profile_tables(profile, space, res: int, store: str, batches: list[int]) -> list[dict]:
    from bench.profile import MeasureSettings, profile_devices

    reports = profile_devices([profile.name], space, store, [res], MeasureSettings(), show_progress=False,
                              batches=batches)
    return [{"batch": r.batch, "status": r.status, "entries": r.entries_total, "measured": r.entries_measured,
             "noisy": r.entries_noisy, "subnets": r.subnets_measured, "seconds": r.duration_s, "error": r.error,
             "fingerprint_id": r.fingerprint_id} for r in reports]


def validate_table(profile, space, store: str, batch: int, n: int) -> dict:
    from bench.validate import ValidateSettings, validate_device

    doc = validate_device(profile.name, space, store, ValidateSettings(n=n, seed=0, batch=batch))
    return {k: doc[k] for k in ("batch", "within_5pct", "within_10pct", "mape", "kendall_tau", "duration_s")}


def search_and_confirm(profile, space, store: str, batch: int) -> dict:
    """A budget halfway between the fastest subnet's upper bound and the largest subnet's prediction, searched
    and confirmed on the device."""
    from bench.search import search_confirmed
    from bench.table import LatencyPredictor, load_device_table

    table = load_device_table(profile.name, space, store, batch=batch)
    latency = LatencyPredictor.from_table(table, space)
    r = max(latency.resolutions)
    low = float(latency.upper([space.smallest(min(latency.resolutions))])[0])
    high = float(latency.predict(space.largest(r))[0])
    budget = low + 0.5 * max(high - low, 0.0)
    doc = search_confirmed(profile.name, budget, None, space.name, store, None, None, 0, 100, 500, None,
                           confirm=True, say=lambda line: None, batch=batch)
    return {"batch": batch, "budget_ms": budget, "config": doc.config_string,
            "predicted_ms": doc.predicted_latency_ms, "upper_ms": doc.predicted_upper_ms,
            "measured_ms": doc.measured_latency_ms, "budget_met": doc.budget_met, "rounds": len(doc.rounds)}


def _timed_loop(run, seconds: float) -> float:
    """Median of single runs (ms) over `seconds`, after a second of warm-up and at least 50 runs."""
    pc = time.perf_counter_ns
    end = pc() + 1_000_000_000
    while pc() < end:
        run()
    samples = []
    end = pc() + int(seconds * 1e9)
    while True:
        t0 = pc()
        run()
        t1 = pc()
        samples.append(t1 - t0)
        if t1 >= end and len(samples) >= 50:
            return statistics.median(samples) / 1e6


def overhead(profile, space, res: int, batch: int, seconds: float = 2.0) -> dict:
    """The largest subnet at `batch`: the runner's median against bare loops in this process on the same
    provider (plain `session.run`; `run_with_iobinding` with inputs bound on the device, as the runner does)."""
    import onnxruntime as ort

    from agents import connect
    from agents.runtimes.ort import bound_run, make_inputs, provider_list, session_options
    from bench.export import export_subnet
    from bench.measure import MeasureSettings, agent_profile

    path = export_subnet(space, space.largest(res), "onnx", batch=batch)
    settings = MeasureSettings(rounds=1, warmup_s=1.0, min_duration_s=seconds)
    with connect(agent_profile(profile, settings)) as agent:
        runner_ms = agent.measure([path])[0].median_ms
    session = ort.InferenceSession(str(path), sess_options=session_options(profile.threads),
                                   providers=provider_list(profile.provider))
    feed = make_inputs(session)
    plain_ms = _timed_loop(lambda: session.run(None, feed), seconds)
    bound_ms = (_timed_loop(bound_run(session, feed, "cuda"), seconds) if profile.provider != "cpu"
                else plain_ms)
    return {"batch": batch, "model": space.largest(res).to_string(), "runner_ms": runner_ms,
            "session_run_ms": plain_ms, "iobinding_ms": bound_ms,
            "runner_over_session_run": runner_ms / plain_ms, "runner_over_iobinding": runner_ms / bound_ms}


# ---- main --------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=("cuda", "tensorrt", "cpu"), default="cuda",
                        help="onnxruntime execution provider (cpu: the same steps on this CPU, to check the script)")
    parser.add_argument("--space", default="ofa-mbv3-fmnist")
    parser.add_argument("--resolution", type=int, default=None, help="default: the space's largest")
    parser.add_argument("--batches", default="1,64", help="batch sizes, one table each")
    parser.add_argument("--subnets", type=int, default=20, help="subnets validated per batch size")
    parser.add_argument("--store", default=None, help="keep the store here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    args = parser.parse_args(argv)

    gpu = probe()
    if gpu is None and args.provider != "cpu":
        print("bench.perf gpu: no CUDA GPU is present (nvidia-smi lists none and torch sees no CUDA device); "
              "run this on a GPU host", file=sys.stderr)
        return EXIT_NO_GPU
    from agents.runtimes import RuntimeUnavailable
    from agents.runtimes.ort import check_provider
    from ofa_core.space import SearchSpace

    try:
        check_provider(args.provider)
    except RuntimeUnavailable as exc:
        print(f"bench.perf gpu: {exc}", file=sys.stderr)
        return EXIT_NO_GPU
    space = SearchSpace.get(args.space)
    res = args.resolution or max(space.resolutions)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    label = GpuLabel(gpu if args.provider != "cpu" else None, args.provider)
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    tmp = Path(tempfile.mkdtemp(prefix="ofa-bench-perf-gpu-"))
    store = args.store or str(tmp / "store.sqlite")
    start = time.monotonic()
    doc = {"gpu": gpu, "provider": args.provider, "space": space.name, "resolution": res, "batches": batches}
    try:
        profile = check_profile(args.provider, batches, tmp / "devices")
        say(f"GPU {label()}; torch.cuda: {gpu.get('torch_cuda') if gpu else None}")
        doc["tables"] = profile_tables(profile, space, res, store, batches)
        for t in doc["tables"]:
            say(f"table batch {t['batch']}: {t['status']}, {t['measured']}/{t['entries']} entries "
                f"({t['noisy']} noisy), {t['subnets']} calibration subnets, {t['seconds']:.1f} s "
                f"{label()}" + (f"; error: {t['error']}" if t["error"] else ""))
        doc["validate"], doc["search"], doc["overhead"] = [], [], []
        for b in batches:
            v = validate_table(profile, space, store, b, args.subnets)
            doc["validate"].append(v)
            say(f"validate batch {b}: {args.subnets} subnets, within 5% {100 * v['within_5pct']:.1f}%, within 10% "
                f"{100 * v['within_10pct']:.1f}%, MAPE {100 * v['mape']:.1f}%, tau {v['kendall_tau']:.3f}, "
                f"{v['duration_s']} s {label()}")
            s = search_and_confirm(profile, space, store, b)
            doc["search"].append(s)
            say(f"search batch {b}: budget {s['budget_ms']:.4f} ms (whole batch), {s['config']}: predicted "
                f"{s['predicted_ms']:.4f} ms (upper {s['upper_ms']:.4f}), measured {s['measured_ms']:.4f} ms, "
                f"budget {'met' if s['budget_met'] else 'NOT met'} in {s['rounds']} round(s) {label()}")
            o = overhead(profile, space, res, b)
            doc["overhead"].append(o)
            say(f"overhead batch {b} ({o['model']}): runner {o['runner_ms']:.4f} ms, bare session.run "
                f"{o['session_run_ms']:.4f} ms (ratio {o['runner_over_session_run']:.3f}), bare run_with_iobinding "
                f"{o['iobinding_ms']:.4f} ms (ratio {o['runner_over_iobinding']:.3f}) {label()}")
    finally:
        doc["seconds"] = round(time.monotonic() - start, 1)
        if args.store is None:
            shutil.rmtree(tmp, ignore_errors=True)
    kept = "kept" if doc["seconds"] <= TIME_LIMIT_S else "EXCEEDED"
    say(f"done in {doc['seconds']:.0f} s (limit {TIME_LIMIT_S} s: {kept}) {label()}")
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
