"""`python -m bench.perf agents`: how faithful and how cheap the measuring harness is, on this CPU.

1. Fidelity: the runner's median for a fixed MBConv block (OFA-MobileNetV3 w1.0, 2nd block of stage index 2, k5 e6)
   vs a bare onnxruntime loop timed in this process with the same session settings and core (target: within 3%).
2. Overhead: the `null` runtime (no inference) through each available transport: wall time of one whole
   measurement (push check, process start, JSON back) and the per-sample cost of the timing loop itself.
3. Repeatability: the same block measured in 5 separate runner invocations: spread of medians (target <= 5%).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def build_block(folder: Path) -> tuple[Path, str]:
    """Export the fixed MBConv block to ONNX (ofa_core's static block; a plain torch MBConv if that is absent)."""
    import torch

    try:
        from ofa_core import SearchSpace
        from ofa_core.blocks import mbconv

        space = SearchSpace.get("ofa-mbv3-w1.0")
        spec = next(b for b in space.blocks() if b.stage == 2 and b.index == 1)
        size = space.feature_size(224)[spec.stage + 1]
        module = mbconv(space, spec, kernel=5, expand=6).eval()
        shape = (1, spec.in_channels, size, size)
        label = f"ofa_core mbconv stage {spec.stage} block {spec.index} k5 e6 {size}x{size}x{spec.in_channels}"
    except Exception:  # the supernet core is not there: an equivalent hand-built block
        mid = 240
        module = torch.nn.Sequential(
            torch.nn.Conv2d(40, mid, 1, bias=False), torch.nn.BatchNorm2d(mid), torch.nn.Hardswish(),
            torch.nn.Conv2d(mid, mid, 5, padding=2, groups=mid, bias=False), torch.nn.BatchNorm2d(mid),
            torch.nn.Hardswish(), torch.nn.Conv2d(mid, 40, 1, bias=False), torch.nn.BatchNorm2d(40)).eval()
        shape = (1, 40, 28, 28)
        label = "hand-built MBConv k5 e6 28x28x40"
    path = folder / "mbconv.onnx"
    torch.manual_seed(0)
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return path, label


def reference_median_ms(path: Path, seconds: float, core: int) -> tuple[float, int]:
    """A bare in-process loop: same session settings, same core, perf_counter_ns around each run."""
    import onnxruntime as ort

    from agents.runtimes.ort import make_inputs, session_options

    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        sess = ort.InferenceSession(str(path), sess_options=session_options(1), providers=["CPUExecutionProvider"])
        feed = make_inputs(sess)
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            sess.run(None, feed)
        samples = []
        pc = time.perf_counter_ns
        stop = pc() + int(seconds * 1e9)
        while True:
            t0 = pc()
            sess.run(None, feed)
            t1 = pc()
            samples.append(t1 - t0)
            if t1 >= stop and len(samples) >= 50:
                break
    finally:
        os.sched_setaffinity(0, saved)
    return statistics.median(samples) / 1e6, len(samples)


def _profile(seconds: float, **changes):
    from devices import get_device

    base = get_device("local-cpu")
    settings = dict(warmup_runs=10, warmup_s=0.3, min_runs=50, min_duration_s=seconds, max_runs=100000,
                    max_duration_s=seconds * 3 + 5, max_remeasure=0, cv_threshold=10.0)
    return base.replace(**{**settings, **changes})


def null_overhead(agent, model: Path, repeats: int = 5) -> dict:
    """Wall time of a whole `measure()` with the null runtime, and the loop's own per-sample cost."""
    walls, loop_ns = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = agent.measure([model])[0]
        walls.append((time.perf_counter() - t0) * 1000.0)
        loop_ns.append(m.median_ms * 1e6)
    return {"measure_wall_ms": statistics.median(walls), "measure_wall_ms_min": min(walls),
            "loop_ns_per_sample": statistics.median(loop_ns)}


def transports_overhead(model: Path, folder: Path) -> dict:
    from agents import connect

    quick = _profile(0.0, runtime="null", warmup_runs=0, warmup_s=0.0, min_runs=100, max_runs=100)
    out = {}
    with connect(quick.replace(workdir=str(folder / "local-dev"))) as agent:
        agent.measure([model])  # first call pushes
        out["local"] = null_overhead(agent, model)
    try:
        from agents.sim.loopback_adbd import LoopbackAdbd
        from devices import get_device

        server = LoopbackAdbd()
        server.start()
        try:
            p = get_device(f"adb:127.0.0.1:{server.port}")
            with connect(quick.replace(name=p.name, kind="adb", address=p.address, workdir="")) as agent:
                agent.measure([model])
                out["adb-loopback"] = null_overhead(agent, model)
        finally:
            server.stop()
    except ImportError as exc:
        out["adb-loopback"] = {"skipped": f"adb transport not available: {exc}"}
    try:
        from agents.sim.local_sshd import start_sshd  # a throwaway sshd on 127.0.0.1 (simulator harness)

        try:
            server = start_sshd(folder / "sshd")
        except Exception as exc:  # LocalSshdUnavailable: OpenSSH missing, sshd not starting, login refused
            out["ssh-localhost"] = {"skipped": " ".join(str(exc).split())[:200]}
        else:
            try:
                p = quick.replace(name="ssh-localhost", kind="ssh", address=f"{server.user}@127.0.0.1:{server.port}",
                                  workdir="")
                with connect(p, transport=server.transport(workdir=str(folder / "ssh-dev"))) as agent:
                    agent.measure([model])
                    out["ssh-localhost"] = null_overhead(agent, model)
            finally:
                server.stop()
    except ImportError as exc:
        out["ssh-localhost"] = {"skipped": f"ssh transport not available: {exc}"}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf agents", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--runs", type=int, default=5, help="separate runner invocations for repeatability")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)

    from agents import connect

    with tempfile.TemporaryDirectory(prefix="ofa-bench-perf-agents-") as tmp:
        folder = Path(tmp)
        model, label = build_block(folder)
        profile = _profile(args.seconds, workdir=str(folder / "dev"))
        core = profile.cores[0] if profile.cores else 0
        with connect(profile) as agent:
            ref_a, n_ref_a = reference_median_ms(model, args.seconds, core)
            runner = agent.measure([model])[0]
            ref_b, n_ref_b = reference_median_ms(model, args.seconds, core)
            reference = (ref_a + ref_b) / 2
            medians = [runner.median_ms] + [agent.measure([model])[0].median_ms for _ in range(args.runs - 1)]
        overhead = transports_overhead(model, folder)

    spread = (max(medians) - min(medians)) / statistics.median(medians)
    doc = {
        "block": label,
        "fidelity": {"runner_median_ms": runner.median_ms, "runner_n": runner.n, "runner_cv": runner.cv,
                     "reference_median_ms": reference, "reference_before_after_ms": [ref_a, ref_b],
                     "reference_n": n_ref_a + n_ref_b, "ratio": runner.median_ms / reference,
                     "within_3pct": abs(runner.median_ms / reference - 1) <= 0.03},
        "null_overhead": overhead,
        "repeatability": {"medians_ms": medians, "spread": spread, "within_5pct": spread <= 0.05},
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    f, r = doc["fidelity"], doc["repeatability"]
    print(f"block: {label}")
    print(f"fidelity: runner {f['runner_median_ms']:.4f} ms (n={f['runner_n']}, cv={f['runner_cv']:.3f}) vs bare "
          f"in-process loop {reference:.4f} ms (before {ref_a:.4f}, after {ref_b:.4f}): ratio {f['ratio']:.4f} "
          f"({'within' if f['within_3pct'] else 'OUTSIDE'} 3%)")
    for name, o in overhead.items():
        if "skipped" in o:
            print(f"null runtime via {name}: skipped ({o['skipped']})")
        else:
            print(f"null runtime via {name}: {o['measure_wall_ms']:.1f} ms per measurement (min "
                  f"{o['measure_wall_ms_min']:.1f}), timing loop {o['loop_ns_per_sample']:.0f} ns per sample")
    print(f"repeatability: {len(medians)} runs, medians {', '.join(f'{m:.4f}' for m in medians)} ms, spread "
          f"{spread * 100:.2f}% ({'within' if r['within_5pct'] else 'OUTSIDE'} 5%)")
    return 0
