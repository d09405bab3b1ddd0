"""The measuring program that runs on the device (stdlib plus one runtime; pushed as one zipapp).

For each model: load, warm up (by count and by time), then time single inferences with `perf_counter_ns`
until both a minimum count and a minimum duration are reached (capped by a maximum count and time). Prints one
JSON line per model with every raw sample in ms, summary statistics and the environment. With `--rounds K`
the models are interleaved round-robin K times, each round taking 1/K of the budget, which spreads slow
machine drift evenly over the models. `--fingerprint` and `--temperature` print one JSON line about the device.

On a GPU (torch on `--device cuda`, onnxruntime with `--provider cuda|tensorrt`) the warm-up goes on until the
clocks settle (the median of each window of runs stops falling, within `--settle-s`), a run is timed with its
outputs synchronised (CUDA events for torch, I/O binding for onnxruntime), and the GPU's name, driver and
clocks (nvidia-smi) go into the fingerprint and the environment.
"""
import argparse
import gc
import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a plain script: make `agents.runtimes` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agents.runtimes import ModelLoadError, RuntimeUnavailable, get_runtime  # noqa: E402

#: execution providers, for runtimes that have them (onnxruntime); the others run on `cpu` only
PROVIDERS = ("cpu", "cuda", "tensorrt")

EXIT_USAGE, EXIT_RUNTIME, EXIT_MODEL = 2, 3, 4


# ---------------------------------------------------------------- statistics

def quantile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarise(samples_ms):
    """Median, p10, p90, mean, sample std and coefficient of variation of the samples (ms)."""
    n = len(samples_ms)
    s = sorted(samples_ms)
    mean = sum(s) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in s) / (n - 1)) if n > 1 else 0.0 if n else None
    return {
        "n": n, "median_ms": quantile(s, 0.5), "p10_ms": quantile(s, 0.1), "p90_ms": quantile(s, 0.9),
        "mean_ms": mean, "std_ms": std, "cv": (std / mean) if n and mean > 0 else None,
        "min_ms": s[0] if s else None, "max_ms": s[-1] if s else None,
    }


# ---------------------------------------------------------------- timing

def warm_up(run, min_runs, min_ns):
    """Run until both `min_runs` runs and `min_ns` nanoseconds are done; returns the count."""
    pc = time.perf_counter_ns
    end = pc() + min_ns
    n = 0
    while n < min_runs or pc() < end:
        run()
        n += 1
    return n


CLOCKS = {
    # wall: what a user of the device waits. thread: CPU time of the measuring thread, which leaves out time
    # the thread spent preempted on a shared host (valid where the runtime computes on the calling thread,
    # e.g. onnxruntime with one intra-op thread).
    "wall": time.perf_counter_ns,
    "thread": time.thread_time_ns,
}


#: on a GPU, warm-up goes on in windows of this many runs until a window's median is no more than
#: SETTLE_TOLERANCE below the one before (boost clocks ramp up over the first runs), for at most --settle-s
SETTLE_WINDOW = 16
SETTLE_TOLERANCE = 0.01


def settle(sample_ns, max_ns, window=SETTLE_WINDOW, tolerance=SETTLE_TOLERANCE):
    """Warm up until the clocks settle: windows of `window` runs (`sample_ns()` times one, in ns) until a
    window's median stops falling, or `max_ns` has passed. Returns the runs done."""
    pc = time.perf_counter_ns
    end = pc() + max_ns
    previous, n = None, 0
    while True:
        values = sorted(sample_ns() for _ in range(window))
        n += window
        median = values[window // 2]
        if (previous is not None and median >= previous * (1.0 - tolerance)) or pc() >= end:
            return n
        previous = median


def _wall_sample(run):
    pc = time.perf_counter_ns

    def sample():
        t0 = pc()
        run()
        return pc() - t0

    return sample


def time_runs(run, min_runs, min_ns, max_runs, max_ns, clock=time.perf_counter_ns):
    """The timing loop: one `clock` pair around each call, nothing else inside; the budget runs in wall time.
    Returns ns samples."""
    pc = time.perf_counter_ns
    ck = clock
    out = [0] * max_runs
    start = pc()
    min_end, max_end = start + min_ns, start + max_ns
    i = 0
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        if ck is pc:
            while True:
                t0 = pc()
                run()
                t1 = pc()
                out[i] = t1 - t0
                i += 1
                if i >= max_runs or t1 >= max_end or (i >= min_runs and t1 >= min_end):
                    break
        else:
            while True:
                c0 = ck()
                run()
                c1 = ck()
                out[i] = c1 - c0
                i += 1
                t1 = pc()
                if i >= max_runs or t1 >= max_end or (i >= min_runs and t1 >= min_end):
                    break
    finally:
        if gc_was_on:
            gc.enable()
    del out[i:]
    return out


#: a run counts as preempted when its wall time exceeds the measuring thread's CPU time by more than this
#: share of it (and by PREEMPT_MIN_NS): the thread was off the CPU while the clock ran
PREEMPT_SHARE = 0.02
PREEMPT_MIN_NS = 20_000
#: fewer clean runs than this and the runs are kept whole (and counted), rather than timed from a handful
MIN_CLEAN_RUNS = 5
#: clean runs are waited for up to this many times the planned effort (runs and duration): on a saturated
#: core hardly a run of a long model is clean, and the time budget must not turn into max_duration_s
PATIENCE = 3


def time_runs_on_cpu(run, min_runs, min_ns, max_runs, max_ns):
    """Wall-clock timing for a model that computes on the calling thread (one thread, a CPU runtime), with the
    runs during which the thread was preempted left out: the wall pair sits inside a pair of the thread's CPU
    clock, so a run that took longer in wall time than in CPU time spent the difference off the CPU (another
    process had the core). A long model is hit by nearly every time slice another process takes, a short one
    rarely, so keeping those runs skews long models and the reference block apart; the budget counts clean
    runs, up to PATIENCE times the planned runs and duration. Returns (ns samples, preempted runs left out)."""
    pc, tc = time.perf_counter_ns, time.thread_time_ns
    clean, dirty = [], []
    start = pc()
    min_end, max_end = start + min_ns, start + max_ns
    patience_runs, patience_end = PATIENCE * min_runs, start + PATIENCE * min_ns
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        while True:
            c0 = tc()
            t0 = pc()
            run()
            t1 = pc()
            c1 = tc()
            wall = t1 - t0
            if wall - (c1 - c0) > max(PREEMPT_MIN_NS, wall * PREEMPT_SHARE):
                dirty.append(wall)
            else:
                clean.append(wall)
            done = len(clean) + len(dirty)
            if (done >= max_runs or t1 >= max_end or (len(clean) >= min_runs and t1 >= min_end)
                    or (done >= patience_runs and t1 >= patience_end)):
                break
    finally:
        if gc_was_on:
            gc.enable()
    if len(clean) < MIN_CLEAN_RUNS:  # hardly a clean run: keep them all; the count says why it is slow
        return clean + dirty, len(dirty)
    return clean, len(dirty)


def time_events(event_timer, min_runs, min_ns, max_runs, max_ns):
    """Like `time_runs` for runtimes with their own clock (CUDA events): samples come from the device."""
    pc = time.perf_counter_ns
    start = pc()
    out = []
    while True:
        out.extend(event_timer(1))
        now = pc()
        if len(out) >= max_runs or now - start >= max_ns or (len(out) >= min_runs and now - start >= min_ns):
            return out


# ---------------------------------------------------------------- environment

def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def temperature():
    """Hottest thermal zone in degrees C, or None where none is readable."""
    temps = []
    for zone in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        raw = _read(zone)
        try:
            value = int(raw) / 1000.0
        except (TypeError, ValueError):
            continue
        if -40.0 < value < 200.0:
            temps.append(value)
    return max(temps) if temps else None


def affinity():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def nvidia_smi(fields):
    """{field: value} of the GPU that CUDA calls device 0 (the first of CUDA_VISIBLE_DEVICES), from
    `nvidia-smi --query-gpu=...`; None where nvidia-smi is missing or fails."""
    if not shutil.which("nvidia-smi"):
        return None
    index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    argv = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", index]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        return None
    values = [v.strip() for v in lines[0].split(",")]
    return dict(zip(fields, values)) if len(values) == len(fields) else None


def on_gpu(args):
    """Whether the models run on a GPU: torch on cuda, onnxruntime with a GPU provider."""
    return args.device == "cuda" or getattr(args, "provider", "cpu") != "cpu"


def environment(runtime_name, runtime_module, threads):
    """What was true while measuring: runtime, threads, affinity, governor and frequency, temperature, load."""
    cores = affinity() or []
    governors, freqs = {}, {}
    for c in cores:
        g = _read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")
        f = _read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq")
        if g:
            governors[str(c)] = g
        if f and f.isdigit():
            freqs[str(c)] = int(f)
    try:
        load = list(os.getloadavg())
    except (AttributeError, OSError):
        load = None
    return {
        "runtime": runtime_name, "runtime_version": runtime_module.version(), "threads": threads,
        "affinity": cores or None, "governor": governors or None, "cur_freq_khz": freqs or None,
        "temperature_c": temperature(), "loadavg": load, "python": platform.python_version(),
        "timer": "perf_counter_ns", "simulated": simulated_device(),
    }


def simulated_device():
    """True on a stand-in device (the loopback ADB endpoint says so in its properties and environment)."""
    return bool(os.environ.get("OFA_BENCH_LOOPBACK_ROOT")) or _getprop("ro.ofa_bench.simulated") == "1"


def _getprop(name):
    if not shutil.which("getprop"):
        return None
    try:
        out = subprocess.run(["getprop", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _cpuinfo_field(*names):
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in names and value.strip():
            return value.strip()
    return None


def fingerprint(runtime_name, runtime_module, threads, provider="cpu", gpu=False):
    """Identity of the device and software build: no volatile values (no frequency, temperature, load). An
    execution provider other than the CPU and the GPU's name and driver (`gpu`) are part of it."""
    model = (_getprop("ro.product.model") or _read("/sys/firmware/devicetree/base/model")
             or _read("/sys/devices/virtual/dmi/id/product_name"))
    soc = _getprop("ro.soc.model") or _getprop("ro.board.platform") or _cpuinfo_field("hardware")
    android = _getprop("ro.build.version.release")
    uname = platform.uname()
    out = {
        "model": (model or "").replace("\x00", "") or None,
        "cpu": _cpuinfo_field("model name", "cpu model", "processor name") or uname.processor or None,
        "soc": soc,
        "cpu_count": os.cpu_count(),
        "arch": uname.machine,
        "os": f"Android {android}" if android else f"{uname.system} {uname.release}",
        "python": platform.python_version(),
        "runtime": runtime_name,
        "runtime_version": runtime_module.version(),
        "runtime_build": runtime_module.build(),
        "threads": threads,
        "simulated": simulated_device(),
    }
    if provider != "cpu":  # CPU tables keep the fingerprint they had before providers existed
        out["provider"] = provider
    if gpu:
        found = nvidia_smi(("name", "driver_version"))
        out["gpu"] = {"name": found["name"], "driver": found["driver_version"]} if found else None
    return out


# ---------------------------------------------------------------- main

def _parse(argv):
    p = argparse.ArgumentParser(prog="runner", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*")
    p.add_argument("--runtime", default="onnxruntime")
    p.add_argument("--device", default="cpu")
    p.add_argument("--provider", default="cpu", choices=PROVIDERS,
                   help="execution provider of a runtime that has them (onnxruntime)")
    p.add_argument("--cache-dir", default="", help="folder for the runtime's caches (TensorRT engines)")
    p.add_argument("--settle-s", type=float, default=2.0,
                   help="on a GPU, the longest warm-up spent waiting for the clocks to settle (s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cores", default="", help="comma-separated CPU numbers to pin to")
    p.add_argument("--warmup-runs", type=int, default=10)
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--min-runs", type=int, default=50)
    p.add_argument("--min-duration-s", type=float, default=1.0)
    p.add_argument("--max-runs", type=int, default=10000)
    p.add_argument("--max-duration-s", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    p.add_argument("--keep-preempted", action="store_true",
                   help="keep runs during which the measuring thread was preempted (left out by default)")
    p.add_argument("--fingerprint", action="store_true")
    p.add_argument("--temperature", action="store_true")
    return p.parse_args(argv)


def _emit(doc):
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def _pin(cores):
    if not cores:
        return None
    wanted = [int(c) for c in cores.split(",") if c.strip()]
    try:
        os.sched_setaffinity(0, wanted)
    except AttributeError:
        return "CPU pinning is not supported on this platform"
    except (OSError, ValueError) as exc:
        return f"cannot pin to cores {wanted}: {_one_line(exc)}"
    return None


def preemption_filter(args):
    """Whether preempted runs are left out: wall clock, one thread, on the CPU, not turned off."""
    return (args.clock == "wall" and args.threads == 1 and args.device in (None, "", "cpu") and not on_gpu(args)
            and not args.keep_preempted)


def load_options(args, runtime):
    """Keyword arguments of `runtime.load` beyond path, threads and device: the execution provider and the
    cache folder for a runtime that has providers. Raises RuntimeUnavailable (one line) for a provider this
    runtime or this build of it does not have."""
    providers = getattr(runtime, "PROVIDERS", None)
    if providers is None:
        if args.provider != "cpu":
            raise RuntimeUnavailable(f"runtime {args.runtime!r} has no execution providers; --provider "
                                     f"{args.provider} is for onnxruntime")
        return {}
    runtime.check_provider(args.provider)
    return {"provider": args.provider, "cache_dir": args.cache_dir or None}


def measure(args, runtime):
    """Load every model, then warm up and time them round-robin; returns one record per model."""
    loaded, records = [], []
    options = load_options(args, runtime)
    for path in args.models:
        t0 = time.perf_counter_ns()
        model = runtime.load(path, args.threads, args.device, **options)
        loaded.append(model)
        records.append({"model": path, "load_ms": (time.perf_counter_ns() - t0) / 1e6, "inputs": model.inputs,
                        "samples_ns": [], "warmup_runs": 0, "preempted_runs": 0, "settle_runs": 0})
    k = max(1, args.rounds)
    # runs the measuring thread spent partly off the CPU are left out where the thread does all the work
    skip_preempted = preemption_filter(args)
    per = {
        "warm_runs": max(1, -(-args.warmup_runs // k)) if args.warmup_runs > 0 else 0,
        "warm_ns": int(args.warmup_s * 1e9 / k),
        "min_runs": max(1, -(-args.min_runs // k)), "min_ns": int(args.min_duration_s * 1e9 / k),
        "max_runs": max(1, args.max_runs // k), "max_ns": int(args.max_duration_s * 1e9 / k),
    }
    settle_ns = int(max(0.0, args.settle_s) * 1e9) if on_gpu(args) else 0
    for r in range(k):
        for model, rec in zip(loaded, records):
            rec["warmup_runs"] += warm_up(model.run, per["warm_runs"], per["warm_ns"])
            if settle_ns and r == 0:  # after the warm-up, whose first run builds (or loads) a TensorRT engine
                sample = (lambda m=model: m.event_timer(1)[0]) if model.event_timer else _wall_sample(model.run)
                rec["settle_runs"] += settle(sample, settle_ns)
            if model.event_timer is not None:
                samples = time_events(model.event_timer, per["min_runs"], per["min_ns"], per["max_runs"], per["max_ns"])
            elif skip_preempted:
                samples, preempted = time_runs_on_cpu(model.run, per["min_runs"], per["min_ns"], per["max_runs"],
                                                      per["max_ns"])
                rec["preempted_runs"] += preempted
            else:
                samples = time_runs(model.run, per["min_runs"], per["min_ns"], per["max_runs"], per["max_ns"],
                                    clock=CLOCKS[args.clock])
            rec["samples_ns"].extend(samples)
    if any(m.event_timer for m in loaded):
        return records, "cuda-events"
    return records, "thread_time_ns" if args.clock == "thread" else "perf_counter_ns"


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        runtime = get_runtime(args.runtime)
    except RuntimeUnavailable as exc:
        _emit({"error": _one_line(exc), "kind": "runtime"})
        return EXIT_RUNTIME
    if args.temperature:
        _emit({"temperature_c": temperature()})
        return 0
    pin_error = _pin(args.cores)
    if pin_error:
        _emit({"error": pin_error, "kind": "pin"})
        return EXIT_USAGE
    try:
        load_options(args, runtime)
    except RuntimeUnavailable as exc:
        _emit({"error": _one_line(exc), "kind": "runtime"})
        return EXIT_RUNTIME
    if args.fingerprint:
        _emit({"fingerprint": fingerprint(args.runtime, runtime, args.threads, args.provider, on_gpu(args))})
        return 0
    if not args.models:
        _emit({"error": "no model files given", "kind": "usage"})
        return EXIT_USAGE
    try:
        records, timer = measure(args, runtime)
    except ModelLoadError as exc:
        _emit({"error": _one_line(exc), "kind": "model"})
        return EXIT_MODEL
    except RuntimeUnavailable as exc:  # a provider whose libraries fail to load shows only when a model does
        _emit({"error": _one_line(exc), "kind": "runtime"})
        return EXIT_RUNTIME
    env = environment(args.runtime, runtime, args.threads)
    env["timer"] = timer
    env["device"] = args.device
    if args.provider != "cpu":
        env["provider"] = args.provider
    if on_gpu(args):
        env["gpu_clocks"] = nvidia_smi(("clocks.sm", "clocks.mem", "temperature.gpu", "power.draw"))
    for rec in records:
        samples_ms = [v / 1e6 for v in rec.pop("samples_ns")]
        out = {"model": rec["model"], "samples_ms": samples_ms}
        out.update(summarise(samples_ms))
        out.update({"load_ms": rec["load_ms"], "warmup_runs": rec["warmup_runs"], "settle_runs": rec["settle_runs"],
                    "rounds": max(1, args.rounds),
                    "inputs": rec["inputs"], "preempted_runs": rec["preempted_runs"],
                    "preemption_filter": preemption_filter(args), "env": env})
        _emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
