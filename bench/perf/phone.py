"""`python -m bench.perf phone`: the phone stack end to end on the loopback adb device (simulated: it runs on
this host), fp32 and int8 side by side.

1. The loopback adbd is started as a user starts it (`python -m agents.sim.loopback_adbd`), with RSA
   authentication on (`--auth always`), and one LiteRT device profile per precision points at it.
2. `ofa-bench profile` of each (cold model cache: every .tflite converted, int8 ones quantised and calibrated)
   on the small space at one resolution, timed. Target: <= 300 s per precision.
3. The two tables side by side: the int8/fp32 latency ratio per block type (median, p10, p90).
4. The fp32 table's front (`ofa-bench pareto`), up to `--front` of its subnets spread along it, scored on the
   Fashion-MNIST test set as the float subnet (onnxruntime), its fp32 .tflite and its int8 .tflite (LiteRT):
   the int8 accuracy drop a phone would show.

The load average is printed with the figures: on a shared host they move with it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PROFILE = """name = "{name}"
kind = "adb"
description = "the loopback adb device (simulated: this host), LiteRT {precision}, 1 thread on core 0"
address = "{address}"
python = "{python}"
runtime = "litert"
precision = "{precision}"
threads = 1
cores = [0]
timeout_s = 60.0
"""


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def profile(name: str, space: str, res: int, store: str, env: dict) -> dict:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bench.cli", "profile", name, "--space", space, "--resolutions",
                        str(res), "--store", store, "--json"], capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"profile {name} failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}")
    doc = json.loads(r.stdout)
    return {"seconds": round(time.monotonic() - t0, 1), "entries": doc["entries_measured"],
            "noisy": doc.get("entries_noisy", 0), "subnets": doc.get("subnets_measured", 0),
            "status": doc.get("status"), "loadavg": _load()}


def block_type(key: str) -> str:
    """A table key's block type: its operator, and for an inverted-residual block its kernel and stride."""
    kind = key.split("-", 1)[0]
    if kind == "expanded_conv":
        fields = dict(f.split(":", 1) for f in key.split("-")[1:] if ":" in f)
        return f"mbconv k{fields.get('kernel')} s{fields.get('stride')}"
    return kind


def ratios(space, store: str, fp32: str, int8: str) -> dict:
    """int8 / fp32 latency of each entry both tables have, per block type: count, median, p10, p90."""
    from bench.table import load_device_table

    a, b = load_device_table(fp32, space, store), load_device_table(int8, space, store)
    by_type: dict[str, list[float]] = {}
    for key, cell in a.entries.items():
        if key in b.entries:
            by_type.setdefault(block_type(key[1]), []).append(b.entries[key].latency_ms / cell.latency_ms)
    allv = [v for vs in by_type.values() for v in vs]
    by_type["all"] = allv
    return {t: {"n": len(v), "median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
                "p90": float(np.percentile(v, 90))} for t, v in by_type.items()}


def front_subnets(device: str, space: str, store: str, n: int, env: dict) -> list[dict]:
    """`n` points spread along the device's front (`ofa-bench pareto --json`), smallest to largest."""
    out = Path(tempfile.mkdtemp(prefix="ofa-bench-perf-phone-front-"))
    try:
        r = subprocess.run([sys.executable, "-m", "bench.cli", "pareto", "--device", device, "--space", space,
                            "--store", store, "--out", str(out / "front.png"), "--json"], capture_output=True, text=True,
                           env=env, cwd=REPO)
        if r.returncode != 0:
            raise SystemExit(f"pareto failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}")
        doc = json.loads(r.stdout)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    points = sorted(doc["devices"][0]["points"], key=lambda p: p["latency_ms"])
    pick = np.unique(np.linspace(0, len(points) - 1, min(n, len(points))).round().astype(int))
    return [points[i] for i in pick]


def accuracy_drop(space: str, configs: list[str], images: int) -> list[dict]:
    from bench.deployed import evaluate_deployed

    rows = []
    for config in configs:
        row = {"config": config}
        for precision, runtime in (("fp32", "onnxruntime"), ("fp32", "litert"), ("int8", "litert")):
            doc = evaluate_deployed(space, config, split="test", precision=precision, runtime=runtime,
                                    limit=images)
            row[f"{precision}_{runtime}"] = doc["top1"]
            row["macs"] = doc["macs"]
        row["int8_drop_points"] = 100 * (row["fp32_onnxruntime"] - row["int8_litert"])
        rows.append(row)
        print(f"  {config}: fp32 {100 * row['fp32_onnxruntime']:.2f}% (LiteRT fp32 {100 * row['fp32_litert']:.2f}%)"
              f", int8 {100 * row['int8_litert']:.2f}%: drop {row['int8_drop_points']:+.2f} points",
              file=sys.stderr)
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf phone", description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="ofa-mbv3-fmnist")
    ap.add_argument("--resolution", type=int, default=24)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--front", type=int, default=5, help="front subnets scored at fp32 and int8 (0: skip)")
    ap.add_argument("--images", type=int, default=0, help="test images scored (0: all 10,000)")
    ap.add_argument("--work", default=None, help="keep the store, cache and device here (default: temporary)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    from agents.sim.loopback_adbd import LoopbackAdbdError, spawn
    from ofa_core.space import SearchSpace

    space = SearchSpace.get(args.space)
    work = Path(args.work or tempfile.mkdtemp(prefix="ofa-bench-perf-phone-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OFA_BENCH_DEVICES=str(work / "devices"), HOME=str(work / "home"))  # a fresh adb key, asked for
    (work / "devices").mkdir(exist_ok=True)
    (work / "home" / ".android").mkdir(parents=True, exist_ok=True)
    if not (work / "home" / ".android" / "adbkey").is_file():  # as a user would: `adb keygen ~/.android/adbkey`
        from adb_shell.auth.keygen import keygen

        keygen(str(work / "home" / ".android" / "adbkey"))
    store = str(work / "store.sqlite")
    precisions = [p for p in args.precisions.split(",") if p]
    doc: dict = {"space": space.name, "resolution": args.resolution, "loadavg_start": _load(),
                 "date": time.strftime("%Y-%m-%d %H:%M %Z"), "profiles": {}}
    try:  # authenticating (`--auth always`: the first key offered is accepted, as a user taps Allow)
        adbd = spawn(work / "phone", "--auth", "always", env=env, timeout_s=30)
    except LoopbackAdbdError as exc:
        raise SystemExit(str(exc)) from None
    serial = adbd.serial
    try:
        for precision in precisions:
            name = f"loopback-litert-{precision}"
            (work / "devices" / f"{name}.toml").write_text(
                PROFILE.format(name=name, precision=precision, address=serial, python=sys.executable))
            cold = dict(env, OFA_BENCH_CACHE=str(work / f"cache-{precision}"))
            doc["profiles"][precision] = p = profile(name, space.name, args.resolution, store, cold)
            print(f"{name}: {p['entries']} entries, {p['subnets']} calibration subnets in {p['seconds']} s, cold "
                  f"cache (target <= 300 s: {'met' if p['seconds'] <= 300 else 'NOT met'}), load {p['loadavg']}",
                  file=sys.stderr)
    finally:
        adbd.stop()
    if {"fp32", "int8"} <= set(precisions):
        doc["int8_over_fp32"] = ratios(space, store, "loopback-litert-fp32", "loopback-litert-int8")
    if args.front and "fp32" in precisions:
        points = front_subnets("loopback-litert-fp32", space.name, store, args.front, env)
        doc["front"] = accuracy_drop(space.name, [p["config_string"] for p in points], args.images)
    doc["loadavg_end"] = _load()
    _print(doc)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _print(doc: dict) -> None:
    print(f"{doc['space']} at {doc['resolution']} px on the loopback adb device (simulated: this host), "
          f"{doc['date']}, load {doc['loadavg_start']} -> {doc['loadavg_end']}")
    for precision, p in doc["profiles"].items():
        print(f"  profile {precision}: {p['seconds']} s, {p['entries']} entries ({p['noisy']} noisy), "
              f"{p['subnets']} calibration subnets, status {p['status']}, load {p['loadavg']}")
    if "int8_over_fp32" in doc:
        print("  int8 / fp32 latency per block type:    n  median    p10    p90")
        for t, s in sorted(doc["int8_over_fp32"].items(), key=lambda kv: kv[0] == "all"):
            print(f"    {t:32s} {s['n']:4d}  {s['median']:6.2f} {s['p10']:6.2f} {s['p90']:6.2f}")
    if "front" in doc:
        print("  front subnets, test top-1: float (onnxruntime) | fp32 .tflite | int8 .tflite | int8 drop")
        for r in doc["front"]:
            print(f"    {r['config']:60s} {100 * r['fp32_onnxruntime']:6.2f}% {100 * r['fp32_litert']:6.2f}% "
                  f"{100 * r['int8_litert']:6.2f}% {r['int8_drop_points']:+6.2f}")
        drops = [r["int8_drop_points"] for r in doc["front"]]
        print(f"    int8 drop: mean {np.mean(drops):+.2f}, worst {max(drops):+.2f} points")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
