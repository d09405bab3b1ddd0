"""`python -m bench.perf latency`: the latency a user is promised against the latency the device delivers, on a
freshly profiled device, in one run.

1. `profile` the device (the table, then the whole subnets it measures for its calibration); nothing else.
2. Fresh predictions: `--holdout` random subnets (a seed the calibration never saw) predicted from that table,
   then measured the way `validate` measures them, into a copy of the store (so that they do not calibrate
   step 3). Side by side: the plain table sum and the calibrated prediction. Target: within 10% for >= 90%.
3. Validating helps: `validate` adds `--validate` subnets (another seed) to the calibration; the held-out subnets
   are predicted again. It must not make them worse.
4. Budgets kept: `--budgets` budgets spread from the fastest subnet's upper bound to the largest subnet's
   prediction, each searched and confirmed on the device (`search --confirm`, re-searching while over budget).
   Targets: every confirmed subnet measures at most 5% over its budget; predicted within 10% of measured for
   at least 4 of 5 budgets.

The load average is printed with the figures: on a shared host they move with it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def fresh_predictions(device: str, space, store: str, n: int, seed: int) -> dict:
    """Predict `n` random subnets from the freshly profiled table, then measure them (into `store`)."""
    import numpy as np

    from agents import connect
    from bench.table import Calibration, LatencyPredictor, load_device_table
    from bench.measure import ReferenceWatch, agent_profile
    from bench.store import open_store
    from bench.validate import ValidateSettings, accuracy_metrics, measure_subnets
    from devices import get_device

    profile = get_device(device)
    table = load_device_table(profile.name, space, store)
    pred = LatencyPredictor.from_table(table, space)
    plain = LatencyPredictor.from_table(table, space, calibration=Calibration())
    cfgs = space.sample(np.random.default_rng(seed), n, pred.resolutions)
    predicted, upper, sums = pred(cfgs), pred.upper(cfgs), plain.table_sum(cfgs)
    settings = ValidateSettings(n=n, seed=seed)
    t0 = time.monotonic()
    st = open_store(store)
    try:
        with connect(agent_profile(profile, settings.measure_settings(profile))) as agent:
            fp_id = st.register_fingerprint(profile.name, agent.fingerprint())
            with st.running(profile.name, fp_id, space.name, "benchmark", {"holdout": n, "seed": seed}, {}) as run:
                timed = measure_subnets(agent, st, run, fp_id, space, cfgs, settings, 0.01, profile.model_format,
                                        value_nominal=table.subnet_nominal_ms, rng=np.random.default_rng(seed),
                                        watch=ReferenceWatch())
    finally:
        st.close()
    measured = np.array([t.value_ms for t in timed])
    return {"n": n, "seed": seed, "calibration": pred.calibration.describe(), "_cfgs": cfgs, "_measured": measured,
            "_nominal": table.subnet_nominal_ms,
            "calibrated": accuracy_metrics(predicted, measured), "table_sum": accuracy_metrics(sums, measured),
            "measured_within_upper": float(np.mean(measured <= upper)), "measure_s": round(time.monotonic() - t0, 1),
            "loadavg": _load()}


def after_validate(device: str, space, store: str, fresh: dict, n: int, seed: int) -> dict:
    """`validate` adds `n` subnets (another seed) to the table's calibration; the held-out subnets of `fresh` are
    predicted again with it. Validating must not make those predictions worse. The held-out values are expressed
    at the reference subnet's speed of the fresh table; validating moves the device's current speed (its latest
    reference timings), so the new predictions are rescaled to the fresh table's speed before comparing."""
    from bench.table import LatencyPredictor, load_device_table
    from bench.validate import ValidateSettings, accuracy_metrics, validate_device

    t0 = time.monotonic()
    val = validate_device(device, space, store, ValidateSettings(n=n, seed=seed))
    table = load_device_table(device, space, store)
    pred = LatencyPredictor.from_table(table, space)
    speed = (fresh["_nominal"] / table.subnet_nominal_ms) if fresh["_nominal"] and table.subnet_nominal_ms else 1.0
    after = accuracy_metrics(pred(fresh["_cfgs"]) * speed, fresh["_measured"])
    before = fresh["calibrated"]
    return {"n": n, "seed": seed, "calibration": pred.calibration.describe(), "calibrated": after,
            "speed_rescale": round(speed, 4), "validate_s": round(time.monotonic() - t0, 1),
            "validate_cv": {k: val[k] for k in ("within_5pct", "within_10pct", "mape")},
            "not_worse": bool(after["mape"] <= before["mape"] + 0.001 and after["within_10pct"] >= before["within_10pct"]),
            "loadavg": _load()}


def budgets_kept(device: str, space, store: str, n_budgets: int, seed: int) -> dict:
    """Search and confirm `n_budgets` budgets spread over the device's range."""
    import numpy as np

    from bench.search import device_table, search_confirmed
    from bench.table import LatencyPredictor
    from ofa_core.accuracy import default_predictor_path
    from ofa_core.search import smallest_achievable

    _, table = device_table(device, space.name, store)
    pred = LatencyPredictor.from_table(table, space)
    res = pred.resolutions
    lo = smallest_achievable(space, pred.upper, res)[1]
    hi = float(pred([space.largest(max(res))])[0])
    budgets = [round(float(b), 4) for b in np.linspace(lo * 1.02, hi, n_budgets)]
    acc_path = default_predictor_path(space.name)
    if acc_path is None:  # no predictor of its own (w1.0): the official w1.2 one stands in, as in the tests
        from ofa_core.accuracy import anchors_root

        acc_path = anchors_root() / "ofa-mbv3-w12-note10" / "acc_predictor.pth"
    rows = []
    for b in budgets:
        t0 = time.monotonic()
        doc = search_confirmed(device, b, None, space.name, store, str(acc_path) if acc_path else None, res, seed,
                               100, 200, None, confirm=True, rounds=3, say=lambda m: print(f"   {m}", file=sys.stderr))
        measured, predicted = doc.measured_latency_ms, doc.predicted_latency_ms
        rows.append({"budget_ms": b, "config": doc.config_string, "predicted_ms": predicted,
                     "upper_ms": doc.predicted_upper_ms, "measured_ms": measured,
                     "over_budget_pct": 100 * (measured / b - 1), "error_pct": 100 * (predicted / measured - 1),
                     "rounds": len(doc.rounds), "seconds": round(time.monotonic() - t0, 1)})
    worst = max(r["over_budget_pct"] for r in rows)
    within = sum(abs(r["error_pct"]) <= 10 for r in rows)
    return {"budgets": rows, "worst_over_budget_pct": worst, "predicted_within_10pct": within,
            "targets": {"worst_over_budget_pct <= 5": worst <= 5, f"within 10% >= {max(1, n_budgets - 1)} of {n_budgets}":
                        within >= max(1, n_budgets - 1)},
            "loadavg": _load()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf latency", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="local-cpu")
    parser.add_argument("--space", default="ofa-mbv3-fmnist")
    parser.add_argument("--resolutions", default=None, help="R1,R2,... (default: profile's default)")
    parser.add_argument("--holdout", type=int, default=30, help="random subnets predicted fresh, then measured")
    parser.add_argument("--budgets", type=int, default=5)
    parser.add_argument("--validate", type=int, default=20,
                        help="subnets `validate` adds before the held-out ones are predicted again (0: skip)")
    parser.add_argument("--seed", type=int, default=101, help="seed of the held-out subnets and the searches")
    parser.add_argument("--store", default=None, help="keep the store here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from bench.commands._common import parse_resolutions
    from bench.measure import MeasureSettings
    from bench.profile import profile_devices
    from ofa_core.space import SearchSpace

    space = SearchSpace.get(args.space)
    tmp = Path(tempfile.mkdtemp(prefix="ofa-bench-perf-latency-"))
    store = args.store or str(tmp / "store.sqlite")
    try:
        doc = {"device": args.device, "space": space.name, "loadavg_start": _load()}
        t0 = time.monotonic()
        rep = profile_devices([args.device], space, store, parse_resolutions(args.resolutions), MeasureSettings())[0]
        doc["profile"] = {"status": rep.status, "entries": rep.entries_total, "noisy": rep.entries_noisy,
                          "subnets_measured": rep.subnets_measured, "seconds": round(time.monotonic() - t0, 1),
                          "calibration": rep.calibration, "loadavg": _load()}
        holdout_store = str(tmp / "holdout.sqlite")
        shutil.copyfile(store, holdout_store)
        doc["fresh"] = fresh_predictions(args.device, space, holdout_store, args.holdout, args.seed)
        if args.validate:
            doc["after_validate"] = after_validate(args.device, space, store, doc["fresh"], args.validate,
                                                   args.seed + 1000)
        for key in ("_cfgs", "_measured", "_nominal"):
            doc["fresh"].pop(key)
        doc["budgets"] = budgets_kept(args.device, space, store, args.budgets, args.seed)
    finally:
        if args.store is None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    f, b, p = doc["fresh"], doc["budgets"], doc["profile"]
    print(f"{doc['device']} {doc['space']}: profile {p['seconds']} s ({p['entries']} entries, {p['noisy']} noisy, "
          f"{p['subnets_measured']} calibration subnets), load {p['loadavg']}")
    print(f"fresh predictions on {f['n']} held-out subnets (seed {f['seed']}), {f['calibration']}:")
    for name in ("table_sum", "calibrated"):
        m = f[name]
        print(f"  {name:10s} within 5% {100 * m['within_5pct']:5.1f}%  within 10% {100 * m['within_10pct']:5.1f}%  "
              f"MAPE {100 * m['mape']:5.1f}%  tau {m['kendall_tau']:.3f}")
    print(f"  measured <= upper bound: {100 * f['measured_within_upper']:.1f}% (target within 10% >= 90%: "
          f"{'met' if f['calibrated']['within_10pct'] >= 0.9 else 'NOT met'}), load {f['loadavg']}")
    if "after_validate" in doc:
        a = doc["after_validate"]
        m = a["calibrated"]
        print(f"after validate added {a['n']} subnets ({a['validate_s']} s), {a['calibration']}: the same held-out "
              f"subnets within 5% {100 * m['within_5pct']:5.1f}%  within 10% {100 * m['within_10pct']:5.1f}%  "
              f"MAPE {100 * m['mape']:5.1f}%  tau {m['kendall_tau']:.3f}; not worse: {a['not_worse']}, "
              f"load {a['loadavg']}")
    print("budgets (search --confirm):")
    for r in b["budgets"]:
        print(f"  {r['budget_ms']:8.4f} ms: predicted {r['predicted_ms']:.4f} upper {r['upper_ms']:.4f} measured "
              f"{r['measured_ms']:.4f} ({r['over_budget_pct']:+.1f}% vs budget, prediction {r['error_pct']:+.1f}%), "
              f"{r['rounds']} round(s)")
    print(f"  worst {b['worst_over_budget_pct']:+.1f}% vs budget; predicted within 10%: {b['predicted_within_10pct']} "
          f"of {len(b['budgets'])}; targets {b['targets']}; load {b['loadavg']}")
    return 0
