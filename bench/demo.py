"""The whole loop on this machine, with the shipped Fashion-MNIST supernet: profile `local-cpu`, validate the
table, search at three latency budgets, draw the Pareto front, export and confirm the chosen subnets, and
write `report.md` (with its PNGs) into one folder. Each step reports on stderr: its name when it starts, its
time when it ends, and a progress bar (or, off a terminal, a line every few seconds) while it runs.

Composes the parts that the commands use (bench.profile, bench.validate, bench.search,
bench.pareto); nothing here measures or predicts by itself.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ofa_core.errors import OFABenchError

from bench.progress import StderrProgress
from bench.store import Store, open_store

SPACE = "ofa-mbv3-fmnist"
DEVICE = "local-cpu"
BUDGET_FRACTIONS = (0.15, 0.4, 0.8)  # of the way from the smallest subnet's upper bound to the largest's prediction


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
    confirm_rounds: int = 3  # search-measure rounds while a chosen subnet measures over its budget

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(resolutions=(24, 36), profile_min_duration_s=0.03, profile_rounds=1, validate_subnets=4,
                   validate_min_duration_s=0.05, population=30, generations=20, front_population=30,
                   front_generations=10, score_accuracy=False)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class DemoSteps:
    """The demo's steps as they run: `with steps("validate", "validating ..."):` logs the title, then the
    step's elapsed time when it ends, and keeps that time in `times` (the report's `steps_s`)."""

    def __init__(self, log=_stderr):
        self.log = log
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str, title: str):
        self.log(f"== {title}")
        t = time.perf_counter()
        yield
        self.times[key] = round(time.perf_counter() - t, 1)
        self.log(f"   {key}: done in {self.times[key]:.1f} s")


def run_demo(out_dir: str | Path, store: str | None = None, settings: DemoSettings = DemoSettings(),
             log=_stderr, predictor_path: str | Path | None = None) -> dict:
    """Run every step, write `report.md`, `report.json` and the figures into `out_dir`; returns the report.
    `log` takes the step lines (stderr by default); progress bars always go to stderr."""
    from ofa_core.accuracy import AccuracyPredictor, default_predictor_path
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
    acc = AccuracyPredictor.load(predictor)
    steps = DemoSteps(log)
    doc: dict = {"space": SPACE, "device": DEVICE, "store": store, "out": str(out), "settings": settings.__dict__,
                 "weights": str(weights), "predictor": str(predictor), "steps_s": steps.times}
    t_all = time.perf_counter()
    with open_store(store) as st:  # one handle for every step that measures or reads the table
        _profile_step(doc, steps, space, st, settings)
        _validate_step(doc, steps, space, st, settings, out)
        _search_step(doc, steps, space, st, settings, out, predictor, log)
        measured, latency = _one_measured_number(doc, space, st, acc)
    if settings.score_accuracy:
        _accuracy_step(doc, steps, space, log)
    _front_step(doc, steps, space, settings, acc, latency, measured, out)
    doc["accuracy_predictor"] = accuracy_summary(acc, space, list(settings.resolutions))
    doc["total_s"] = round(time.perf_counter() - t_all, 1)
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=_plain) + "\n")
    (out / "report.md").write_text(render_report(doc))
    doc["report"] = str(out / "report.md")
    log(f"== demo done in {doc['total_s']:.1f} s: {doc['report']}")
    return doc


def _profile_step(doc: dict, steps: DemoSteps, space, store: Store, settings: DemoSettings) -> None:
    """The table of the default device, and the calibration its whole subnets (12 by default) give it."""
    from bench.profile import MeasureSettings, profile_devices
    from bench.table import Calibration

    res = list(settings.resolutions)
    with steps("profile", f"profiling {DEVICE}: {SPACE} at {res}"):  # profile_devices draws its own bar
        rep = profile_devices([DEVICE], space, store, res, MeasureSettings(
            rounds=settings.profile_rounds, min_duration_s=settings.profile_min_duration_s, warmup_s=0.05),
            show_progress=True)[0]
    if rep.status == "failed":
        raise DemoError(f"profiling {DEVICE} failed: {rep.error}")
    doc["profile"] = {k: rep.to_dict()[k] for k in ("entries_total", "entries_measured", "entries_reused",
                                                     "entries_noisy", "subnets_measured", "calibration",
                                                     "duration_s", "fingerprint_id")}
    doc["calibration_after_profile"] = (Calibration.from_dict(rep.calibration) if rep.calibration
                                        else Calibration()).describe()  # what profile fitted, not a refit


def _validate_step(doc: dict, steps: DemoSteps, space, store: Store, settings: DemoSettings, out: Path) -> None:
    from bench.validate import ValidateSettings, validate_device

    with steps("validate", f"validating the table on {settings.validate_subnets} random subnets"), \
            StderrProgress(unit="subnet timings") as bar:
        val = validate_device(DEVICE, space, store, ValidateSettings(
            n=settings.validate_subnets, seed=settings.seed, resolutions=tuple(settings.resolutions), rounds=1,
            min_duration_s=settings.validate_min_duration_s, folds=min(5, settings.validate_subnets)),
            plot_path=str(out / "validate.png"), progress=bar.callback("validate"))
    doc["validate"] = {k: val.get(k) for k in ("n", "mape", "within_5pct", "within_10pct", "kendall_tau",
                                               "duration_s", "simulated")}


def _search_step(doc: dict, steps: DemoSteps, space, store: Store, settings: DemoSettings, out: Path,
                 predictor: Path, log) -> None:
    """A subnet per budget (spread over the device's range), then the smallest and the largest: each searched,
    exported in the device's format and confirmed on the device."""
    from bench.search import confirm_on_device, device_table, device_target, export_chosen, search_confirmed
    from bench.table import LatencyPredictor

    res = list(settings.resolutions)
    _, table = device_table(DEVICE, SPACE, store)
    latency = LatencyPredictor.from_table(table, space)
    doc["calibration"] = latency.calibration.describe()
    lo = float(latency.upper([space.smallest(min(res))])[0])  # budgets hold upper bounds: start where one fits
    hi = float(latency([space.largest(max(res))])[0])
    budgets = [round(lo + f * (hi - lo), 4) for f in BUDGET_FRACTIONS]
    fmt, precision = device_target(DEVICE)  # chosen subnets go out as the device runs them
    doc["model_format"] = fmt
    doc["latency_range_ms"] = [lo, hi]
    n_chosen = len(budgets) + 2  # a subnet per budget, then the smallest and the largest
    with steps("search", f"searching at latency budgets {budgets} ms, exporting and confirming on {DEVICE}"), \
            StderrProgress(unit="subnets searched/exported/confirmed") as bar:
        doc["searches"] = []
        for b in budgets:
            s = search_confirmed(DEVICE, b, None, SPACE, store, str(predictor), res, settings.seed,
                                 settings.population, settings.generations, None, out / f"subnet-{b:g}ms.{fmt}",
                                 confirm=True, rounds=settings.confirm_rounds, say=lambda m: log(f"   {m}"),
                                 confirm_min_duration_s=settings.validate_min_duration_s).to_dict()
            doc["searches"].append(s)
            log(f"   budget {b:g} ms: {s['config_string']}  predicted {100 * s['predicted_accuracy']:.2f}% "
                f"{s['predicted_latency_ms']:.3f} ms (upper {s['predicted_upper_ms']:.3f}); measured "
                f"{s['measured_latency_ms']:.3f} ms after {len(s['rounds'])} round(s)"
                + ("" if s["budget_met"] else ", OVER the budget"))
            bar.set("search", len(doc["searches"]), n_chosen)
        doc["extremes"] = []
        for name, cfg in (("smallest", space.smallest(min(res))), ("largest", space.largest(max(res)))):
            e = {"name": name, "space": SPACE, "config": cfg.to_ofa_dict(), "config_string": cfg.to_string(),
                 "predicted_latency_ms": float(latency([cfg])[0]), "macs": int(space.macs(cfg))}
            e["export"] = export_chosen(SPACE, cfg, out / f"{name}.{fmt}", fmt, precision=precision)
            e["confirm"] = confirm_on_device(DEVICE, Path(e["export"]["path"]), SPACE, cfg, e["predicted_latency_ms"],
                                             store, min_duration_s=settings.validate_min_duration_s).to_dict()
            doc["extremes"].append(e)
            bar.set("search", len(doc["searches"]) + len(doc["extremes"]), n_chosen)


def _one_measured_number(doc: dict, space, store: Store, acc) -> tuple[list, object]:
    """Every measured number from here on comes from one place: the final table's value of each measured subnet
    (median of the passes of the latest run that timed it, at the table's reference speed), the value the
    calibration fits on. The confirm step's own reading stays under each subnet's "confirm"."""
    from bench.search import device_table
    from bench.pareto import measured_subnets
    from bench.table import LatencyPredictor

    _, table = device_table(DEVICE, SPACE, store)
    latency = LatencyPredictor.from_table(table, space)
    measured = measured_subnets(store, table.device, space, acc, latency, table=table)
    one_source(doc, measured)
    doc["calibration_final"] = latency.calibration.describe()
    small, large = (e["measured_latency_ms"] for e in doc["extremes"])
    doc["latency_ratio_largest_to_smallest"] = large / small
    return measured, latency


def _accuracy_step(doc: dict, steps: DemoSteps, space, log) -> None:
    from ofa_core.data import DatasetError

    with steps("accuracy", "scoring the chosen subnets on the Fashion-MNIST test set (BN recalibrated)"), \
            StderrProgress(unit="subnets") as bar:
        try:
            _score_chosen(space, doc["searches"] + doc["extremes"], bar.callback("accuracy"))
        except DatasetError as exc:  # the latency half of the demo stands without the data set
            log(f"   skipped: {exc}")
            doc["accuracy_skipped"] = str(exc)


def _front_step(doc: dict, steps: DemoSteps, space, settings: DemoSettings, acc, latency, measured: list,
                out: Path) -> None:
    """The Pareto front from both ends of the range, the measured and chosen subnets on it, and its CSV."""
    from bench.pareto import build_device_front, chosen_subnets, plot_fronts, write_csv
    from ofa_core.search import SearchParams

    with steps("pareto", "drawing the Pareto front from both ends of the range"):
        chosen = chosen_subnets([dict(s, label=f"budget {s['budget']['latency_ms']:g} ms") for s in doc["searches"]]
                                + [dict(e, label=e["name"], predicted_accuracy=float(acc([space.parse_config(
                                    e["config_string"])])[0])) for e in doc["extremes"]], measured)
        dev = build_device_front(DEVICE, space, acc, latency, np.random.default_rng(settings.seed),
                                 list(settings.resolutions), settings.front_population, settings.front_generations,
                                 measured=measured, chosen=chosen,
                                 end_params=SearchParams(population=settings.population,
                                                         generations=settings.generations))
        plot_fronts([dev], out / "pareto.png", title=f"{SPACE} on {DEVICE}")
        csv_path = write_csv([dev], out / "front.csv")
    whole = dev.to_dict()
    doc["front"] = {"n_points": whole["n_points"], "latency_ms": whole["latency_ms"], "accuracy": whole["accuracy"],
                    "measured_subnets": len(measured), "chosen": len(chosen), "ends": whole["ends"],
                    "floor": whole["floor"], "csv": str(csv_path), "points": whole["points"]}


def _score_chosen(space, searches: list[dict], progress=None) -> None:
    """Test top-1 of each chosen subnet (BN recalibrated) into its dict; `progress(done, total)` after each."""
    from ofa_core.checkpoint import load_supernet
    from ofa_core.data import load_fmnist
    from ofa_core.evaluate import evaluate_many
    from ofa_core.space import SubnetConfig

    net = load_supernet(space)
    data = load_fmnist()
    cfgs = [SubnetConfig.from_ofa_dict(s["config"]) for s in searches]

    def scored(i: int, top1: float) -> None:
        searches[i]["test_top1"] = top1
        if progress is not None:
            progress(i + 1, len(cfgs))

    evaluate_many(net, cfgs, data.test, data.train, progress=False, on_result=scored)


def one_source(doc: dict, measured: list[dict]) -> None:
    """Give every chosen subnet of the report the measured latency of its `measured_subnets` record, the one
    number that report.md, report.json and front.csv show for it, and judge its budget by it (the confirm
    step's own readings stay under "confirm" and "rounds"); keep the records as `measured_subnets`."""
    from bench.pareto import MEASURED_STATISTIC

    meas = {m["config_string"]: m["measured_latency_ms"] for m in measured}
    for s in doc.get("searches", []) + doc.get("extremes", []):
        if s["config_string"] in meas:
            s["measured_latency_ms"] = meas[s["config_string"]]
            budget = (s.get("budget") or {}).get("latency_ms")
            if budget is not None and "budget_met" in s:  # met or not by the number shown beside it
                s["budget_met"] = s["measured_latency_ms"] <= budget
    doc["measured_subnets"] = measured
    doc["measured_statistic"] = MEASURED_STATISTIC


def accuracy_summary(acc, space, resolutions) -> dict:
    """The accuracy predictor at both ends of the searched range: its prediction, the MLP's alone, and the
    validation top-1 measured for that subnet where the predictor's anchors hold it."""
    corr = getattr(acc, "correction", None)
    known = ((corr.metadata.get("ends_before_correction") or {}) if corr is not None else {})
    ends = []
    for name, cfg in (("smallest", space.smallest(min(resolutions))), ("largest", space.largest(max(resolutions)))):
        tag = f"{name} r{cfg.r}"
        e = {"name": tag, "config_string": cfg.to_string(), "predicted": float(acc([cfg])[0])}
        if corr is not None:
            e["mlp_alone"] = float(acc.predict_mlp([cfg])[0])
        if "val_top1" in known.get(tag, {}):
            e["measured_val_top1"] = float(known[tag]["val_top1"])
        ends.append(e)
    return {"corrected": corr is not None, "correction": corr.describe() if corr is not None else None, "ends": ends}


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
        f"{p['entries_measured']} measured, {p['entries_reused']} reused, {p['entries_noisy']} noisy; "
        f"{p.get('subnets_measured', 0)} whole subnets measured for the calibration ({p['duration_s']:.0f} s).", "",
        f"Latency model after profiling: {doc.get('calibration_after_profile', '–')}.", "",
        "## Table validated on whole subnets", "",
        f"{v['n']} random subnets measured whole, each predicted by a calibration that never saw it: MAPE "
        f"{100 * v['mape']:.1f}%, within ±5% {100 * v['within_5pct']:.0f}%, within ±10% "
        f"{100 * v['within_10pct']:.0f}%, Kendall τ {v['kendall_tau']:.3f}.", "",
        f"Latency model from here on: {doc.get('calibration', '–')}.", "",
        "![predicted vs measured](validate.png)", "",
        "## Best subnet per latency budget", "",
        "The budget holds the prediction's upper bound; a subnet that measures over its budget is measured into "
        "the calibration and the search runs again (rounds).", "",
        "| budget (ms) | subnet | predicted acc. | test top-1 | predicted (ms) | upper (ms) | measured (ms) | "
        "rounds | MACs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in doc["searches"]:
        top1 = f"{100 * s['test_top1']:.2f}%" if "test_top1" in s else "–"
        cfg = s["config_string"].replace("|", "\\|")  # a table cell: escape the stage separators
        over = "" if s.get("budget_met", True) else " (over)"
        lines.append(f"| {s['budget']['latency_ms']:g} | `{cfg}` | {100 * s['predicted_accuracy']:.2f}% | "
                     f"{top1} | {s['predicted_latency_ms']:.3f} | {s['predicted_upper_ms']:.3f} | "
                     f"{s['measured_latency_ms']:.3f}{over} | {len(s.get('rounds', []))} | {s['macs'] / 1e6:.2f}M |")
    if doc.get("accuracy_skipped"):
        lines += ["", f"Test top-1 not scored: {doc['accuracy_skipped']}"]
    lines += ["", "| extreme | subnet | test top-1 | measured (ms) | MACs |", "|---|---|---|---|---|"]
    for e in doc["extremes"]:
        top1 = f"{100 * e['test_top1']:.2f}%" if "test_top1" in e else "–"
        cfg = e["config_string"].replace("|", "\\|")
        ms = e.get("measured_latency_ms", e["confirm"]["measured_latency_ms"])
        lines.append(f"| {e['name']} | `{cfg}` | {top1} | {ms:.3f} | {e['macs'] / 1e6:.2f}M |")
    lines += [
        "", f"The largest subnet takes {doc['latency_ratio_largest_to_smallest']:.1f}x the smallest's latency.",
        "", f"Each chosen subnet was extracted from the supernet, exported in the device's format "
        f"(`subnet-*.{doc.get('model_format', 'onnx')}` here) and timed on the device.", "",
        f"Measured latencies here, in `report.json` and in `front.csv` are one number per subnet: "
        f"{doc.get('measured_statistic', 'the table value of the subnet')}.", "",
    ]
    lines += _accuracy_lines(doc.get("accuracy_predictor"))
    lines += ["## Pareto front", "",
              f"{f['n_points']} points, {f['latency_ms'][0]:.3f}–{f['latency_ms'][1]:.3f} ms, predicted accuracy "
              f"{100 * f['accuracy'][0]:.2f}–{100 * f['accuracy'][1]:.2f}%; {f['measured_subnets']} measured "
              f"subnets marked (hollow circle: predicted latency, star: measured, linked), {f.get('chosen', 0)} "
              f"chosen subnets ringed in red. Points: `front.csv`.", ""]
    if doc.get("calibration_final"):
        lines += [f"Latency model of the front and of the measured subnets below (every measurement in): "
                  f"{doc['calibration_final']}.", ""]
    lines += _front_lines(f)
    lines += ["![Pareto front](pareto.png)", ""]
    lines += _measured_lines(doc.get("measured_subnets") or [])
    lines += ["Steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in doc["steps_s"].items()), ""]
    return "\n".join(lines)


def _accuracy_lines(a: dict | None) -> list[str]:
    if not a:
        return []
    lines = ["## Accuracy predictor at the ends", ""]
    c = a.get("correction")
    if c:
        h = c.get("held_out") or {}
        lines += [f"The MLP (fitted on random subnets) plus a correction of its residuals on {c.get('n_pairs')} "
                  f"measured (subnet, validation top-1) pairs that include the largest and smallest subnets and their "
                  f"neighbours (`{c.get('source')}`; leave-one-out error {c.get('loo_rmse_points', 0):.2f} points)."
                  + (f" On {h['n']} end-region subnets it never saw: RMSE {h['corrected_rmse_points']:.2f} points, "
                     f"against {h['mlp_rmse_points']:.2f} for the MLP alone (which predicts them "
                     f"{h['mlp_bias_points']:.2f} points low on average)." if h else ""), ""]
    else:
        lines += ["The MLP alone, no anchor correction: it is fitted on random subnets and may predict the largest "
                  "and smallest subnets towards the mean.", ""]
    lines += ["| subnet | predicted | MLP alone | measured (validation) |", "|---|---|---|---|"]
    for e in a["ends"]:
        mlp = f"{100 * e['mlp_alone']:.2f}%" if "mlp_alone" in e else "–"
        val = f"{100 * e['measured_val_top1']:.2f}%" if "measured_val_top1" in e else "–"
        lines.append(f"| {e['name']} | {100 * e['predicted']:.2f}% | {mlp} | {val} |")
    return lines + ["", "Predicted and measured accuracies here are validation top-1 (10,000 held-out training "
                        "images); test top-1 of the chosen subnets is in the tables above.", ""]


def _front_lines(f: dict) -> list[str]:
    lines = []
    ends, floor = f.get("ends") or {}, f.get("floor") or {}
    if ends:
        top, bottom = ends["top"], ends["bottom"]
        lines += [f"The front starts from both ends: the smallest subnet `{ends['smallest']['config']}` "
                  f"({ends['smallest']['latency_ms']:.3f} ms) and the largest "
                  f"({ends['largest']['latency_ms']:.3f} ms), "
                  f"with what a single-budget search finds at each one's latency. Within the largest's latency the "
                  f"front reaches {100 * top['front_accuracy']:.2f}% (single-budget search: "
                  f"{100 * top['search_accuracy']:.2f}%); within the smallest's, {100 * bottom['front_accuracy']:.2f}% "
                  f"(search: {100 * bottom['search_accuracy']:.2f}%).", ""]
    if floor.get("fastest_measured_ms") is not None:
        n, beyond = floor.get("n_points_floored", 0), floor.get("n_points_beyond_interval", 0)
        lines += [f"A front point's latency is the calibrated prediction, but never under the measured latency of a "
                  f"measured subnet it contains (it does at least that subnet's work); the fastest measured subnet "
                  f"took {floor['fastest_measured_ms']:.3f} ms, the dotted line. "
                  + (f"{n} point(s) were predicted faster than that and are drawn at the measured latency instead"
                     + (f"; for {beyond} of them even the prediction's upper bound was below it (the calibration "
                        f"disagrees with the device there)." if beyond else ".") if n else
                     "No point was predicted faster than a measured subnet it contains."), ""]
    return lines


def _measured_lines(measured: list[dict]) -> list[str]:
    if not measured:
        return []
    lines = ["## Measured subnets", "", "Predicted by the final calibration (every measurement in), against the "
             "measured value.", "", "| subnet | predicted (ms) | upper (ms) | measured (ms) | error |",
             "|---|---|---|---|---|"]
    for m in measured:
        cfg = m["config_string"].replace("|", "\\|")
        pred, up = m.get("predicted_latency_ms"), m.get("predicted_upper_ms")
        err = f"{100 * (pred / m['measured_latency_ms'] - 1):+.1f}%" if pred is not None else "–"
        pred_s, up_s = ("–" if v is None else f"{v:.3f}" for v in (pred, up))
        lines.append(f"| `{cfg}` | {pred_s} | {up_s} | {m['measured_latency_ms']:.3f} | {err} |")
    return lines + [""]
