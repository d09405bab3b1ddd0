"""`python -m bench.perf fewshot`: few-shot tables by transfer (`profile --few-shot K`), validated the way the
research reports it: leave one device out, build its table from K of its entries plus the other devices'
tables, and score whole-subnet predictions against subnets measured on it.

Every device is profiled once in full (timed: the device time of a full profile, exports and conversions
left out) with the calibration subnets `profile` measures (12 by default), N random subnets are measured on it
once (validate's passes), and the calibration subnets once more as a few-shot profile times them
(`bench.profile.calibration_timing`: two or three short passes); then, per held-out device and K, the K entries
`choose_entries` picks are taken from its full table (the same protocol measured them), the rest transferred
from the others (`bench.transfer`), the calibration fitted on the few-shot timings of the calibration subnets,
and the N subnets predicted: within 5% / 10% and Kendall tau. Two source sets: every other device, and only
devices of another runtime (the hard case). The device time of a few-shot profile is K times the full
profile's time per entry plus the few-shot timing of the calibration subnets. Simplification: the calibration
subnets are those the full table chose (a real few-shot profile picks them from its transferred table, by the
same rule). Published tables (note10, table only) are sources, and held out at table level when named.

    python -m bench.perf fewshot                       # ofa-mbv3-fmnist at 28: this CPU (onnxruntime 1 and 2
                                                       # threads, torch), the two FPGA models
    python -m bench.perf fewshot --space ofa-mbv3-w1.2 --resolutions 160 --devices local-cpu,note10,...
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_DEVICES = ("local-cpu", "local-cpu-2t", "local-torch", "local-litert", "fpga-zu9eg-model",
                   "fpga-zu3eg-model")
DEFAULT_KS = (8, 16, 24, 32, 64)
#: published figures, for the README table beside ours (not measured here)
PUBLISHED = ("LitePred (NSDI 2024), Pixel5 CPU TFLite: 3,400 samples in 0.13 h, 79.6% of predictions within 5%, "
             "99.2% within 10%; HELP (NeurIPS 2021) and MAPLE-Edge (2022) adapt from about 10 measurements")


def _user_profiles(folder: Path) -> dict[str, str]:
    """Device profiles this benchmark adds (a temp folder on $OFA_BENCH_DEVICES); returns name -> why skipped."""
    from devices.registry import BUILTIN_DIR

    base = (BUILTIN_DIR / "local-cpu.toml").read_text()
    body = "\n".join(line for line in base.splitlines()
                     if not line.startswith(("name", "description", "threads", "cores", "runtime")))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "local-cpu-2t.toml").write_text(
        'name = "local-cpu-2t"\ndescription = "this host\'s CPU, onnxruntime, 2 threads on cores 0,1"\n'
        'runtime = "onnxruntime"\nthreads = 2\ncores = [0, 1]\n' + body + "\n")
    (folder / "local-torch.toml").write_text(
        'name = "local-torch"\ndescription = "this host\'s CPU, torch (eager ExportedProgram), 1 thread"\n'
        'runtime = "torch"\nthreads = 1\ncores = [0]\n' + body + "\n")
    (folder / "local-litert.toml").write_text(
        'name = "local-litert"\ndescription = "this host\'s CPU, LiteRT fp32 through the Python runner"\n'
        'runtime = "litert"\nthreads = 1\ncores = [0]\n' + body + "\n")
    skipped = {}
    import importlib.util

    from bench.export import FORMATS

    if "pt2" not in FORMATS:
        skipped["local-torch"] = ("the torch runtime times .pt2 programs and bench.export writes no .pt2 table "
                                  f"entries (formats: {', '.join(FORMATS)}): torch skipped")
    if importlib.util.find_spec("litert_torch") is None:
        skipped["local-litert"] = ("litert-torch (the `convert` extra) is not installed, so no .tflite models: "
                                   "LiteRT skipped")
    return skipped


@dataclass
class DeviceData:
    """One device's full table, its timings and its measured subnets."""

    name: str
    runtime: str
    simulated: bool
    values_ms: dict = field(default_factory=dict)       # (r, key) -> ms, the full measured table
    calibration: dict = field(default_factory=dict)     # (r, config string) -> ms
    validation: dict = field(default_factory=dict)      # (r, config string) -> ms
    entries_s: float = 0.0                             # device time of measuring every entry
    calibration_s: float = 0.0                         # device time of the calibration subnets
    published: bool = False
    measured: str = ""                                 # when, and the load average (1 min) before and after
    # the same calibration subnets timed as a few-shot profile times them (`calibration_timing`), and the
    # device time of that; empty in caches written before (the full profile's are used then)
    fs_calibration: dict = field(default_factory=dict)
    fs_calibration_s: float | None = None
    subnet_nominal_ms: float | None = None  # the reference subnet's speed the subnets' values are expressed at

    def few_shot_calibration(self) -> tuple[dict, float]:
        """(calibration subnets, their device time) of a few-shot profile of this device."""
        if self.fs_calibration and self.fs_calibration_s is not None:
            return self.fs_calibration, self.fs_calibration_s
        return self.calibration, self.calibration_s


def _profile(name: str, space, store_path: str, res: list[int], n_val: int, seed: int, log) -> DeviceData:
    """Full profile (timed without exports), calibration subnets (timed), N validation subnets."""
    from bench.measure import MeasureSettings
    from bench.profile import profile_device
    from bench.table import load_device_table
    from bench.validate import ValidateSettings, timed_subnet_run
    from devices import get_device

    prof = get_device(name)
    when, load0 = time.strftime("%Y-%m-%d %H:%M %Z"), os.getloadavg()[0]
    rep = profile_device(prof, space, store_path, res, MeasureSettings(calibration_subnets=0))
    if rep.status != "done":
        raise RuntimeError(f"{name}: profile {rep.status}: {rep.error}")
    entries_s = rep.duration_s - rep.export_s
    rep2 = profile_device(prof, space, store_path, res, MeasureSettings())  # the calibration subnets a profile measures
    calib_s = rep2.duration_s - rep2.export_s
    table = load_device_table(prof.name, space, store_path)
    calibration = {k: v.value_ms for k, v in table.subnets.items()}
    cfgs = space.sample(np.random.default_rng(seed), n_val, res)
    timed = timed_subnet_run(prof, store_path, space, cfgs, ValidateSettings(n=n_val, seed=seed), "validate",
                             {"fewshot_bench": True}, table.subnet_nominal_ms, np.random.default_rng([seed, 1]))
    fs_calibration, fs_s = _time_few_shot_calibration(name, space, store_path, calibration, table.subnet_nominal_ms)
    log(f"{name}: table {len(table.entries)} entries in {entries_s:.1f} s, calibration subnets {calib_s:.1f} s "
        f"({fs_s:.1f} s timed as a few-shot profile times them), {n_val} validation subnets measured")
    return DeviceData(prof.name, prof.runtime, bool(prof.simulated), {k: v.value_ms for k, v in table.entries.items()},
                      calibration, {(c.r, c.to_string()): t.value_ms for c, t in zip(cfgs, timed)},
                      entries_s, calib_s, measured=f"{when}, load {load0:.1f} -> {os.getloadavg()[0]:.1f}",
                      fs_calibration=fs_calibration, fs_calibration_s=fs_s, subnet_nominal_ms=table.subnet_nominal_ms)


def _time_few_shot_calibration(name: str, space, store_path: str, calibration: dict,
                               nominal: float | None) -> tuple[dict, float]:
    """The calibration subnets timed again as `profile --few-shot` times them (`calibration_timing`; the models
    exported before the clock starts, as the profile's queue has them ready): their values, expressed at the
    reference speed `nominal` the other subnets' values are (the device's speed moves between runs), and the
    device time. After the validation subnets, so that the table keeps the full profile's values."""
    from bench.export import export_subnet
    from bench.measure import MeasureSettings
    from bench.profile import calibration_timing
    from bench.validate import timed_subnet_run
    from devices import get_device
    from ofa_core.space import SubnetConfig

    prof = get_device(name)
    cfgs = [SubnetConfig.from_string(s, space.max_depth) for _, s in sorted(calibration)]
    timing = calibration_timing(prof, MeasureSettings(), len(cfgs), few_shot=True)
    paths = [export_subnet(space, c, prof.model_format, precision=prof.precision) for c in cfgs]
    start = time.monotonic()
    timed = timed_subnet_run(prof, store_path, space, cfgs, timing, "validate", {"fewshot_bench": "calibration"},
                             nominal, np.random.default_rng(1), paths=paths)
    return {(c.r, c.to_string()): t.value_ms for c, t in zip(cfgs, timed)}, time.monotonic() - start


def _published(name: str, space, res: list[int]) -> DeviceData | None:
    from bench.table import anchor_table, candidates

    table = anchor_table(name, space)
    if table is None or any((e.resolution, e.key) not in table.entries for e in candidates(space, res)):
        return None
    return DeviceData(name, "published", False, {k: v.value_ms for k, v in table.entries.items() if k[0] in res},
                      published=True)


def _few_shot_table(space, res, target: DeviceData, sources: list[DeviceData], k: int, picks=None):
    """(transfer model, the few-shot table's values) for `target` from `sources` with `k` measured entries."""
    from bench.table import candidates
    from bench.transfer import SourceTable, choose_entries, transfer_table

    src = [SourceTable(s.name, s.values_ms) for s in sources]
    if picks is None:
        picks = choose_entries(space, res, src, k)
    measured = {(e.resolution, e.key): target.values_ms[(e.resolution, e.key)] for e in picks}
    keys = [(e.resolution, e.key) for e in candidates(space, res)]
    model, moved = transfer_table(measured, src, keys)
    return model, {**measured, **moved}


def _score(space, values: dict, target: DeviceData, calibration: dict | None = None) -> dict:
    """Whole-subnet scores of a table (values) calibrated on the target's calibration subnets (`calibration`:
    those values instead, e.g. timed as a few-shot profile times them)."""
    from bench.table import EntryStats, LatencyPredictor, LatencyTable
    from bench.validate import accuracy_metrics
    from ofa_core.space import SubnetConfig

    st = {k: EntryStats(v, v, None, 1) for k, v in values.items()}
    cal = {k: EntryStats(v, v, None, 1) for k, v in (calibration or target.calibration).items()}
    table = LatencyTable(target.name, "bench", space.name, "bench", st, cal)
    pred = LatencyPredictor.from_table(table, space)
    keys = sorted(target.validation)
    cfgs = [SubnetConfig.from_string(s, space.max_depth) for _, s in keys]
    m = accuracy_metrics(pred(cfgs), [target.validation[k] for k in keys])
    return {"within_5pct": m["within_5pct"], "within_10pct": m["within_10pct"], "kendall_tau": m["kendall_tau"],
            "mape": m["mape"], "calibration": pred.calibration.model}


def _table_score(space, res, values: dict, target: DeviceData, n: int, seed: int) -> dict:
    """A published table held out (no measured subnets): entries within 10% and Kendall tau of table sums."""
    from bench.table import Calibration, EntryStats, LatencyPredictor, LatencyTable
    from bench.validate import accuracy_metrics

    def sums(vals):
        cells = {k: EntryStats(v, v, None, 1) for k, v in vals.items()}
        t = LatencyTable(target.name, "bench", space.name, "bench", cells)
        return LatencyPredictor.from_table(t, space, calibration=Calibration()).table_sum(cfgs)

    cfgs = space.sample(np.random.default_rng(seed), n, res)
    a, b = sums(values), sums(target.values_ms)
    scale = float(np.median(b / a))  # no calibration subnets: compare after one scale, as a calibration would
    m = accuracy_metrics(a * scale, b)
    rel = np.array([values[k] / target.values_ms[k] - 1 for k in target.values_ms])
    return {"within_5pct": m["within_5pct"], "within_10pct": m["within_10pct"], "kendall_tau": m["kendall_tau"],
            "mape": m["mape"], "entries_within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
            "calibration": "table sum x one scale"}


def _log(line: str) -> None:
    print(f"[fewshot] {line}", file=sys.stderr, flush=True)


def _gather(space, res: list[int], names: list[str], skipped: dict, work: Path, subnets: int,
            seed: int) -> list[DeviceData]:
    """Every device's data: published tables as they are, earlier runs from `work`'s cache, else profiled now."""
    cache = work / f"data-{space.name}-{'-'.join(map(str, res))}.json"
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    data: list[DeviceData] = []
    for name in names:
        if name in skipped:
            _log(f"{name}: skipped: {skipped[name]}")
            continue
        pub = _published(name, space, res)
        if pub is not None:
            data.append(pub)
            continue
        if name in saved:
            d = saved[name]
            data.append(DeviceData(d["name"], d["runtime"], d["simulated"],
                                   *[{(int(r), k): v for r, k, v in d[f]}
                                     for f in ("values", "calibration", "validation")],
                                   d["entries_s"], d["calibration_s"], measured=d.get("measured", ""),
                                   fs_calibration={(int(r), k): v for r, k, v in d.get("fs_calibration", [])},
                                   fs_calibration_s=d.get("fs_calibration_s"),
                                   subnet_nominal_ms=d.get("subnet_nominal_ms")))
            dd = data[-1]
            if not dd.fs_calibration and (work / "store.sqlite").exists() and (dd.simulated or dd.subnet_nominal_ms):
                dd.fs_calibration, dd.fs_calibration_s = _time_few_shot_calibration(  # a cache from before
                    name, space, str(work / "store.sqlite"), dd.calibration, dd.subnet_nominal_ms)
                _log(f"{name}: calibration subnets timed as a few-shot profile times them: {dd.fs_calibration_s:.1f} s")
                d.update(fs_calibration_s=dd.fs_calibration_s,
                         fs_calibration=[[r, k, v] for (r, k), v in dd.fs_calibration.items()])
                cache.write_text(json.dumps(saved))
            continue
        try:
            dd = _profile(name, space, str(work / "store.sqlite"), res, subnets, seed, _log)
        except Exception as exc:  # noqa: BLE001 - a device that cannot run here is reported and skipped
            skipped[name] = " ".join(str(exc).split())[:200]
            _log(f"{name}: skipped: {skipped[name]}")
            continue
        data.append(dd)
        saved[name] = {"name": dd.name, "runtime": dd.runtime, "simulated": dd.simulated,
                       "entries_s": dd.entries_s, "calibration_s": dd.calibration_s, "measured": dd.measured,
                       "fs_calibration_s": dd.fs_calibration_s, "subnet_nominal_ms": dd.subnet_nominal_ms,
                       **{f: [[r, k, v] for (r, k), v in getattr(dd, a).items()]
                          for f, a in (("values", "values_ms"), ("calibration", "calibration"),
                                       ("validation", "validation"), ("fs_calibration", "fs_calibration"))}}
        cache.write_text(json.dumps(saved))
    return data


def _scored(space, res, target: DeviceData, values, subnets: int, seed: int, few_shot: bool = False) -> dict:
    return (_table_score(space, res, values, target, subnets, seed) if target.published
            else _score(space, values, target, target.few_shot_calibration()[0] if few_shot else None))


def _k_row(space, res, target: DeviceData, sources: list[DeviceData], k, subnets: int, seed: int) -> dict | None:
    """One few-shot table of `target` from `sources` with K entries (chosen, or "24 random": the mean of 5
    random picks, what choosing entries is worth), scored; None where K covers the table."""
    full_n = len(target.values_ms)
    kk = int(str(k).split()[0])
    if kk >= full_n:
        return None
    if str(k).endswith("random"):
        from bench.table import candidates
        ents = candidates(space, res)
        scores = []
        for s in range(5):
            pick = [ents[i] for i in np.random.default_rng(s).choice(len(ents), kk, replace=False)]
            model, vals = _few_shot_table(space, res, target, sources, kk, pick)
            scores.append(_scored(space, res, target, vals, subnets, seed, few_shot=True))
        sc = {m: float(np.mean([x[m] for x in scores])) for m in ("within_5pct", "within_10pct", "kendall_tau", "mape")}
        sc["calibration"] = scores[0]["calibration"]
        picks = "random (mean of 5)"
    else:
        model, vals = _few_shot_table(space, res, target, sources, kk)
        sc = _scored(space, res, target, vals, subnets, seed, few_shot=True)
        picks = "chosen"
    dev_s = kk * target.entries_s / full_n + target.few_shot_calibration()[1]
    return {"device": target.name, "runtime": target.runtime, "simulated": target.simulated,
            "sources": [s.name for s in sources], "k": kk, "picks": picks,
            "model": model.kind, "loo_rel_rmse": model.loo_rel_rmse, **sc,
            "time_share": dev_s / (target.entries_s + target.calibration_s) if not target.published else None,
            "device_s": round(dev_s, 1) if not target.published else None}


def _rows(space, res, data: list[DeviceData], ks: list[int], subnets: int, seed: int) -> list[dict]:
    """Leave one device out: each device's fully measured table, then few-shot tables from all the others and
    from the others of another runtime."""
    rows = []
    for target in data:
        for mode in ("all others", "other runtimes"):
            sources = [s for s in data if s is not target and (mode == "all others" or s.runtime != target.runtime)]
            if not sources or (mode == "other runtimes" and len(sources) == len(data) - 1):
                continue  # no source, or the same set as "all others"
            rows.append({"device": target.name, "runtime": target.runtime, "simulated": target.simulated,
                         "sources": [s.name for s in sources], "mode": mode, "k": len(target.values_ms),
                         "picks": "all", "model": "measured",
                         **_scored(space, res, target, target.values_ms, subnets, seed), "time_share": 1.0,
                         "device_s": round(target.entries_s + target.calibration_s, 1)})
            for k in [k for k in ks if k < len(target.values_ms)] + ["24 random"]:
                row = _k_row(space, res, target, sources, k, subnets, seed)
                if row is not None:
                    rows.append({**row, "mode": mode})
    return rows


def _print(space, res, subnets: int, started: str, load_before, load_after, uptime: str, skipped: dict,
           data: list[DeviceData], rows: list[dict]) -> None:
    print(f"few-shot transfer, leave one device out: {space.name} at {','.join(map(str, res))}, "
          f"{subnets} validation subnets per device; {started}; load before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f} ({uptime})")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    for d in data:
        if not d.published:
            fs_s = d.few_shot_calibration()[1]
            print(f"{d.name}: measured {d.measured}; full profile {d.entries_s:.0f} s of entries + "
                  f"{d.calibration_s:.0f} s of calibration subnets; a few-shot profile's calibration subnets "
                  f"{fs_s:.0f} s" + ("" if d.fs_calibration else " (not timed apart: the full profile's)")
                  + (" (simulated device)" if d.simulated else ""))
    print(f"{'held out':18} {'runtime':12} {'sources':15} {'K':>4} {'picks':9} {'model':22} {'±5%':>5} "
          f"{'±10%':>5} {'tau':>6} {'MAPE':>6} {'time':>6} {'dev s':>6}")
    for r in rows:
        tshare = f"{100 * r['time_share']:5.0f}%" if r.get("time_share") is not None else "   n/a"
        tshare += f" {r['device_s']:6.0f}" if r.get("device_s") is not None else "    n/a"
        print(f"{r['device'] + (' (sim)' if r['simulated'] else ''):18} {r['runtime']:12} {r['mode']:15} "
              f"{r['k']:>4} {r['picks'][:9]:9} {r['model'][:22]:22} {100 * r['within_5pct']:4.0f}% "
              f"{100 * r['within_10pct']:4.0f}% {r['kendall_tau']:6.3f} {100 * r['mape']:5.1f}% {tshare}")
    print(f"published, not ours: {PUBLISHED}")


def main(argv: list[str]) -> int:
    from ofa_core.space import SearchSpace

    ap = argparse.ArgumentParser(prog="python -m bench.perf fewshot")
    ap.add_argument("--space", default="ofa-mbv3-fmnist")
    ap.add_argument("--resolutions", default="28")
    ap.add_argument("--devices", default=",".join(DEFAULT_DEVICES))
    ap.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)))
    ap.add_argument("--subnets", type=int, default=30, help="validation subnets measured per device")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for the store, profiles and cached device data "
                                                  "(reused when it has them); default a temp folder")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    space = SearchSpace.get(args.space)
    res = [int(r) for r in args.resolutions.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    work = Path(args.work or __import__("tempfile").mkdtemp(prefix="fewshot-"))
    work.mkdir(parents=True, exist_ok=True)
    prof_dir = work / "devices"
    skipped = _user_profiles(prof_dir)
    os.environ["OFA_BENCH_DEVICES"] = os.pathsep.join([str(prof_dir)] + [p for p in os.environ.get(
        "OFA_BENCH_DEVICES", "").split(os.pathsep) if p])
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    data = _gather(space, res, [d for d in args.devices.split(",") if d], skipped, work, args.subnets, args.seed)
    rows = _rows(space, res, data, ks, args.subnets, args.seed)
    load_after = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    _print(space, res, args.subnets, started, load_before, load_after, uptime, skipped, data, rows)
    doc = {"space": space.name, "resolutions": res, "subnets": args.subnets, "date": started,
           "load_before": load_before, "load_after": load_after, "uptime": uptime, "skipped": skipped, "rows": rows,
           "published": PUBLISHED, "work": str(work)}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=1))
    return 0
