"""The whole loop on this machine, with the shipped Fashion-MNIST supernet: profile `local-cpu`, validate the
table, search at three latency budgets, draw the Pareto front, export and confirm the chosen subnets, and
write `report.md` (with its PNGs) into one folder.

Composes the parts that the commands use (bench.profile, bench.validate, bench.commands.search,
bench.pareto); nothing here measures or predicts by itself.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ofa_core.errors import OFABenchError

SPACE = "ofa-mbv3-fmnist"
DEVICE = "local-cpu"
BUDGET_FRACTIONS = (0.15, 0.4, 0.8)  # of the way from the smallest to the largest subnet's predicted latency


class DemoError(OFABenchError):
    """The demo cannot run (missing shipped model, unusable output folder)."""


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of each step; `quick()` is the test-sized variant."""

    resolutions: tuple[int, ...] = (24, 28, 32, 36)
    profile_min_duration_s: float = 0.3
    profile_rounds: int = 3
    validate_subnets: int = 20
    validate_min_duration_s: float = 0.5
    population: int = 100
    generations: int = 200
    front_population: int = 100
    front_generations: int = 100
    score_accuracy: bool = True  # real test top-1 of the chosen subnets (BN recalibrated)
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(resolutions=(24, 36), profile_min_duration_s=0.03, profile_rounds=1, validate_subnets=4,
                   validate_min_duration_s=0.05, population=30, generations=20, front_population=30,
                   front_generations=10, score_accuracy=False)


def _step(log, name: str):
    log(f"== {name}")
    return time.perf_counter()


def run_demo(out_dir: str | Path, store: str | None = None, settings: DemoSettings = DemoSettings(),
             log=print, predictor_path: str | Path | None = None) -> dict:
    """Run every step, write `report.md`, `report.json` and the figures into `out_dir`; returns the report."""
    from bench.commands.search import confirm_on_device, device_table, export_subnet_onnx, run_search
    from bench.pareto import DeviceFront, device_front, measured_subnets, plot_fronts
    from bench.predictor import LatencyPredictor
    from bench.profile import MeasureSettings, profile_devices
    from bench.validate import ValidateSettings, validate_device
    from ofa_core.accuracy import default_predictor_path
    from ofa_core.checkpoint import shipped_weights_path
    from ofa_core.space import SearchSpace

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"cannot create output folder {out}: {exc.strerror}") from None
    space = SearchSpace.get(SPACE)
    weights = shipped_weights_path(SPACE)
    predictor = Path(predictor_path) if predictor_path else default_predictor_path(SPACE)
    if predictor is None or (settings.score_accuracy and not weights.is_file()):
        raise DemoError(f"the shipped {SPACE} supernet or its accuracy predictor is missing (ofa_core/weights/)")
    store = store or str(out / "store.sqlite")
    res = list(settings.resolutions)
    doc: dict = {"space": SPACE, "device": DEVICE, "store": store, "out": str(out), "settings": settings.__dict__,
                 "weights": str(weights), "predictor": str(predictor), "steps_s": {}}
    t_all = time.perf_counter()

    t = _step(log, f"profiling {DEVICE}: {SPACE} at {res}")
    rep = profile_devices([DEVICE], space, store, res, MeasureSettings(
        rounds=settings.profile_rounds, min_duration_s=settings.profile_min_duration_s, warmup_s=0.05),
        show_progress=True)[0]
    if rep.status == "failed":
        raise DemoError(f"profiling {DEVICE} failed: {rep.error}")
    doc["profile"] = {k: rep.to_dict()[k] for k in ("entries_total", "entries_measured", "entries_reused",
                                                     "entries_noisy", "duration_s", "fingerprint_id")}
    doc["steps_s"]["profile"] = round(time.perf_counter() - t, 1)

    t = _step(log, f"validating the table on {settings.validate_subnets} random subnets")
    val = validate_device(DEVICE, space, store, ValidateSettings(
        n=settings.validate_subnets, seed=settings.seed, resolutions=tuple(res), rounds=1,
        min_duration_s=settings.validate_min_duration_s, folds=min(5, settings.validate_subnets)),
        plot_path=str(out / "validate.png"))
    doc["validate"] = {k: val.get(k) for k in ("n", "mape", "within_5pct", "within_10pct", "kendall_tau",
                                               "duration_s", "simulated")}
    doc["steps_s"]["validate"] = round(time.perf_counter() - t, 1)

    _, table = device_table(DEVICE, SPACE, store)
    latency = LatencyPredictor.from_table(table, space)
    lo = float(latency([space.smallest(min(res))])[0])
    hi = float(latency([space.largest(max(res))])[0])
    budgets = [round(lo + f * (hi - lo), 4) for f in BUDGET_FRACTIONS]
    doc["latency_range_ms"] = [lo, hi]

    t = _step(log, f"searching at latency budgets {budgets} ms, exporting and confirming on {DEVICE}")
    doc["searches"] = []
    for b in budgets:
        s = run_search(DEVICE, b, None, SPACE, store, str(predictor), res, settings.seed, settings.population,
                       settings.generations, None)
        s["export"] = export_subnet_onnx(SPACE, s["config"], out / f"subnet-{b:g}ms.onnx")
        s["confirm"] = confirm_on_device(DEVICE, Path(s["export"]["path"]), s, store,
                                        min_duration_s=settings.validate_min_duration_s)
        doc["searches"].append(s)
        log(f"   budget {b:g} ms: {s['config_string']}  predicted {100 * s['predicted_accuracy']:.2f}% "
            f"{s['predicted_latency_ms']:.3f} ms; measured {s['confirm']['measured_latency_ms']:.3f} ms")
    doc["extremes"] = []
    for name, cfg in (("smallest", space.smallest(min(res))), ("largest", space.largest(max(res)))):
        e = {"name": name, "space": SPACE, "config": cfg.to_ofa_dict(), "config_string": cfg.to_string(),
             "predicted_latency_ms": float(latency([cfg])[0]), "macs": int(space.macs(cfg))}
        e["export"] = export_subnet_onnx(SPACE, e["config"], out / f"{name}.onnx")
        e["confirm"] = confirm_on_device(DEVICE, Path(e["export"]["path"]), e, store,
                                        min_duration_s=settings.validate_min_duration_s)
        doc["extremes"].append(e)
    small, large = (e["confirm"]["measured_latency_ms"] for e in doc["extremes"])
    doc["latency_ratio_largest_to_smallest"] = large / small
    doc["steps_s"]["search"] = round(time.perf_counter() - t, 1)

    if settings.score_accuracy:
        t = _step(log, "scoring the chosen subnets on the Fashion-MNIST test set (BN recalibrated)")
        from ofa_core.data import DatasetError

        try:
            _score_chosen(space, doc["searches"] + doc["extremes"])
        except DatasetError as exc:  # the latency half of the demo stands without the data set
            log(f"   skipped: {exc}")
            doc["accuracy_skipped"] = str(exc)
        doc["steps_s"]["accuracy"] = round(time.perf_counter() - t, 1)

    t = _step(log, "drawing the Pareto front")
    from ofa_core.accuracy import AccuracyPredictor

    acc = AccuracyPredictor.load(predictor)
    front = device_front(space, acc, latency, np.random.default_rng(settings.seed), res,
                         settings.front_population, settings.front_generations)
    measured = measured_subnets(store, table.device, space, acc, latency)
    plot_fronts([DeviceFront(DEVICE, SPACE, front, latency.version, False, measured)], out / "pareto.png",
                title=f"{SPACE} on {DEVICE}")
    doc["front"] = {"n_points": len(front), "latency_ms": [float(front.values["latency_ms"].min()),
                                                           float(front.values["latency_ms"].max())],
                    "accuracy": [float(front.accuracy.min()), float(front.accuracy.max())],
                    "measured_subnets": len(measured)}
    doc["steps_s"]["pareto"] = round(time.perf_counter() - t, 1)
    doc["total_s"] = round(time.perf_counter() - t_all, 1)
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=_plain) + "\n")
    (out / "report.md").write_text(render_report(doc))
    doc["report"] = str(out / "report.md")
    return doc


def _score_chosen(space, searches: list[dict]) -> None:
    from ofa_core.checkpoint import load_supernet
    from ofa_core.data import load_fmnist
    from ofa_core.evaluate import evaluate_subnet
    from ofa_core.space import SubnetConfig

    net = load_supernet(space)
    data = load_fmnist()
    for s in searches:
        cfg = SubnetConfig.from_ofa_dict(s["config"])
        s["test_top1"] = evaluate_subnet(net, cfg, data.test, data.train)


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def render_report(doc: dict) -> str:
    """The markdown report: what was measured, the three chosen subnets, the figures."""
    p, v, f = doc["profile"], doc["validate"], doc["front"]
    lines = [
        f"# ofa-bench demo: {doc['space']} on {doc['device']}", "",
        f"Shipped supernet `{Path(doc['weights']).name}`, accuracy predictor `{Path(doc['predictor']).name}`; "
        f"store `{doc['store']}`. Total {doc['total_s']:.0f} s.", "",
        "## Latency table", "",
        f"{p['entries_total']} entries at resolutions {', '.join(map(str, doc['settings']['resolutions']))}: "
        f"{p['entries_measured']} measured, {p['entries_reused']} reused, {p['entries_noisy']} noisy "
        f"({p['duration_s']:.0f} s).", "",
        "## Table validated on whole subnets", "",
        f"{v['n']} random subnets measured whole: MAPE {100 * v['mape']:.1f}%, within ±10% "
        f"{100 * v['within_10pct']:.0f}%, Kendall τ {v['kendall_tau']:.3f}.", "",
        "![predicted vs measured](validate.png)", "",
        "## Best subnet per latency budget", "",
        "| budget (ms) | subnet | predicted acc. | test top-1 | predicted (ms) | measured (ms) | MACs |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in doc["searches"]:
        top1 = f"{100 * s['test_top1']:.2f}%" if "test_top1" in s else "–"
        cfg = s["config_string"].replace("|", "\\|")  # a table cell: escape the stage separators
        lines.append(f"| {s['budget']['latency_ms']:g} | `{cfg}` | {100 * s['predicted_accuracy']:.2f}% | "
                     f"{top1} | {s['predicted_latency_ms']:.3f} | {s['confirm']['measured_latency_ms']:.3f} | "
                     f"{s['macs'] / 1e6:.2f}M |")
    if doc.get("accuracy_skipped"):
        lines += ["", f"Test top-1 not scored: {doc['accuracy_skipped']}"]
    lines += ["", "| extreme | subnet | test top-1 | measured (ms) | MACs |", "|---|---|---|---|---|"]
    for e in doc["extremes"]:
        top1 = f"{100 * e['test_top1']:.2f}%" if "test_top1" in e else "–"
        cfg = e["config_string"].replace("|", "\\|")
        lines.append(f"| {e['name']} | `{cfg}` | {top1} | {e['confirm']['measured_latency_ms']:.3f} | "
                     f"{e['macs'] / 1e6:.2f}M |")
    lines += [
        "", f"The largest subnet takes {doc['latency_ratio_largest_to_smallest']:.1f}x the smallest's latency.",
        "", "Each chosen subnet was extracted from the supernet, exported to ONNX (`subnet-*.onnx` here) and timed "
        "on the device.", "",
        "## Pareto front", "",
        f"{f['n_points']} points, {f['latency_ms'][0]:.3f}–{f['latency_ms'][1]:.3f} ms, predicted accuracy "
        f"{100 * f['accuracy'][0]:.2f}–{100 * f['accuracy'][1]:.2f}%; {f['measured_subnets']} measured subnets marked.", "",
        "![Pareto front](pareto.png)", "",
        "Steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in doc["steps_s"].items()), "",
    ]
    return "\n".join(lines)
