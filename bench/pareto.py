"""Accuracy-latency Pareto fronts per device: the front itself, measured subnets to mark on it, CSV and a figure.

The front comes from `ofa_core.search.pareto_front` (NSGA-II over predicted accuracy and latency, optionally
MACs), started from both ends of the space (`FrontEnds`: the smallest and largest subnets and what a
single-budget search finds at their latencies), so it spans the range and its top is never below the
single-budget answer. Its latency is the calibrated prediction, but never faster than the device has shown
(`LatencyFloor`). Whole subnets measured on the device are drawn at their predicted and their measured latency,
linked, so a reader sees how far the table's predictions are from the device; every measured number comes from
one place (`measured_subnets`: the table's value of the subnet, as the calibration uses it).
"""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ofa_core.search import ParetoFront, SearchParams, SearchResult, evolution_search_many, pareto_front
from ofa_core.space import ConfigBatch, SearchSpace, SubnetConfig

MEASURED_STATISTIC = ("the table's value of the subnet: the median over the passes of the latest run that timed it, "
                      "drift-normalised to the table's reference speed when it was timed beside the reference")


# ---- never faster than the device has shown ---------------------------------------------------------------

@dataclass(frozen=True)
class LatencyFloor:
    """What the device has shown it runs: measured whole subnets and their latency.

    A front point's latency is a prediction. Honest limit: a config that does at least the work of a measured
    subnet (same or higher resolution, every stage at least as deep, every block that subnet runs with at least
    its kernel and expand ratio) cannot run faster than that subnet measured. So the front's latency of a
    config is `max(prediction, floor)`, where the floor is the slowest measured subnet it contains (0 if it
    contains none). Profile measures the smallest subnet at the lowest resolution, which every config contains:
    no front point is then faster than the fastest measured subnet. The floor is a measurement (median of
    passes), not a bound with an interval: a prediction that falls under it is replaced, and counted
    (`summary`); one whose upper bound also falls under it means the calibration disagrees with the device
    beyond its own interval there, which the report says.
    """

    configs: ConfigBatch
    measured_ms: np.ndarray
    strings: tuple[str, ...] = ()

    @classmethod
    def from_measured(cls, measured: Sequence[Mapping], space: SearchSpace) -> "LatencyFloor | None":
        """From `measured_subnets` records (config string, measured latency); None when there are none."""
        rows = [m for m in measured if np.isfinite(m.get("measured_latency_ms", np.nan))]
        if not rows:
            return None
        cfgs = [space.parse_config(m["config_string"]) for m in rows]
        return cls(space.encode(cfgs), np.array([float(m["measured_latency_ms"]) for m in rows]),
                   tuple(c.to_string() for c in cfgs))

    @property
    def fastest_ms(self) -> float:
        return float(self.measured_ms.min())

    def contains(self, batch: ConfigBatch) -> np.ndarray:
        """(N, M): config i does at least the work of measured subnet j."""
        m = self.configs
        act = m.active[None]
        ok = batch.r[:, None] >= m.r[None, :]
        ok &= (batch.d[:, None, :] >= m.d[None]).all(-1)
        ok &= ((batch.ks[:, None, :] >= m.ks[None]) | ~act).all(-1)
        ok &= ((batch.e[:, None, :] >= m.e[None]) | ~act).all(-1)
        return ok

    def __call__(self, batch: ConfigBatch) -> np.ndarray:
        """The floor of each config (ms): the slowest measured subnet it contains, 0 if none."""
        return np.where(self.contains(batch), self.measured_ms[None, :], 0.0).max(axis=1, initial=0.0)


class FlooredLatency:
    """A latency predictor whose values never go under a `LatencyFloor`: `max(latency(cfg), floor(cfg))`."""

    def __init__(self, latency, floor: LatencyFloor, space: SearchSpace):
        self.latency, self.floor, self.space = latency, floor, space
        self.resolutions = list(getattr(latency, "resolutions", []) or [])

    def __call__(self, cfgs) -> np.ndarray:
        b = cfgs if isinstance(cfgs, ConfigBatch) else self.space.encode(cfgs)
        return np.maximum(np.asarray(self.latency(b), dtype=np.float64), self.floor(b))


# ---- both ends of the range ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrontEnds:
    """The two ends a front must reach: the smallest subnet (lowest resolution searched) and the largest
    (highest), and the best subnet a single-budget evolutionary search finds at each one's latency. NSGA-II
    starts from all of them and keeps every config it scored, so the front's top point is at least as
    accurate as the single-budget answer at the largest's latency, and it starts at the smallest's latency."""

    smallest: SubnetConfig
    largest: SubnetConfig
    bottom: SearchResult  # best under the smallest's latency
    top: SearchResult  # best under the largest's latency

    def seeds(self) -> list[SubnetConfig]:
        return [self.smallest, self.largest, self.bottom.config, self.top.config]

    def check(self, front: ParetoFront) -> dict:
        """The front against the single-budget answers at both ends (accuracy in points; gap > 0: the front
        is worse than the single-budget search there)."""
        lat = front.values["latency_ms"]
        out: dict = {}
        for name, res in (("bottom", self.bottom), ("top", self.top)):
            budget = res.limits["latency_ms"]
            within = lat <= budget * (1 + 1e-12)
            best = float(front.accuracy[within].max()) if within.any() else float("nan")
            out[name] = {"budget_latency_ms": budget, "search_config": res.config.to_string(),
                         "search_accuracy": res.accuracy, "front_accuracy": best,
                         "gap_points": round(100 * (res.accuracy - best), 4)}
        out["smallest"] = {"config": self.smallest.to_string(), "latency_ms": self.bottom.limits["latency_ms"]}
        out["largest"] = {"config": self.largest.to_string(), "latency_ms": self.top.limits["latency_ms"]}
        out["front_latency_ms"] = [float(lat.min()), float(lat.max())] if len(lat) else []
        return out


def front_ends(space: SearchSpace, accuracy, latency, rng: np.random.Generator, resolutions: Sequence[int],
               params: SearchParams | None = None) -> FrontEnds:
    """Single-budget searches at the smallest's and the largest's latency (one call, side by side)."""
    lo_cfg, hi_cfg = space.smallest(min(resolutions)), space.largest(max(resolutions))
    lo, hi = (float(v) for v in np.asarray(latency(space.encode([lo_cfg, hi_cfg])), dtype=np.float64))
    params = params or SearchParams(population=50, generations=60)
    bottom, top = evolution_search_many(space, accuracy, {"latency_ms": latency},
                                        [{"latency_ms": lo}, {"latency_ms": hi}], rng, params, resolutions)
    return FrontEnds(lo_cfg, hi_cfg, bottom, top)


def device_front(space: SearchSpace, accuracy, latency, rng: np.random.Generator,
                 resolutions: Sequence[int] | None = None, population: int = 100, generations: int = 150,
                 with_macs: bool = False, ends: FrontEnds | None = None,
                 end_params: SearchParams | None = None) -> ParetoFront:
    """NSGA-II front of predicted accuracy vs `latency` (a predictor over ConfigBatch; pass a `FlooredLatency`
    to keep it above what the device has shown), optionally MACs too, seeded with `ends` (searched here when
    not given) so that it spans the smallest to the largest subnet."""
    res = list(resolutions or getattr(latency, "resolutions", None) or space.resolutions)
    ends = ends or front_ends(space, accuracy, latency, rng, res, end_params)
    metrics = {"latency_ms": latency}
    if with_macs:
        metrics["macs"] = space.macs
    return pareto_front(space, accuracy, metrics, rng, population=population, generations=generations,
                        resolutions=res, initial=ends.seeds())


# ---- one device's front, with what was measured and chosen ---------------------------------------------------

@dataclass(frozen=True)
class DeviceFront:
    """One device's front, the measured subnets and the chosen ones that go with it. `front.values
    ["latency_ms"]` is the front's latency (the prediction, floored); `predicted_ms`, `upper_ms` and
    `floor_ms` give, per front point, the calibrated prediction, its interval's upper bound and the floor."""

    device: str
    space: str
    front: ParetoFront
    table_version: str = ""
    simulated: bool = False
    measured: list[dict] = field(default_factory=list)
    chosen: list[dict] = field(default_factory=list)
    predicted_ms: tuple[float, ...] = ()
    upper_ms: tuple[float, ...] = ()
    floor_ms: tuple[float, ...] = ()
    ends: dict = field(default_factory=dict)
    floor: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)  # the table's `provenance()`: how much of it is transferred

    @property
    def transferred_share(self) -> float:
        return float(self.provenance.get("transferred_share", 0.0))

    def measured_by_config(self) -> dict[str, float]:
        return {m["config_string"]: float(m["measured_latency_ms"]) for m in self.measured}

    def points(self) -> list[dict]:
        """The front's rows, each with its prediction, floor and (if that subnet was measured) measurement."""
        meas = self.measured_by_config()
        rows = self.front.rows()
        for i, row in enumerate(rows):
            for key, vals in (("predicted_latency_ms", self.predicted_ms), ("predicted_upper_ms", self.upper_ms),
                              ("floor_ms", self.floor_ms)):
                if i < len(vals) and np.isfinite(vals[i]):
                    row[key] = float(vals[i])
            if row["config_string"] in meas:
                row["measured_latency_ms"] = meas[row["config_string"]]
        return rows

    def to_dict(self) -> dict:
        lat = self.front.values["latency_ms"]
        return {"device": self.device, "space": self.space, "simulated": self.simulated,
                "table_version": self.table_version, "n_points": len(self.front),
                "n_evaluated": self.front.n_evaluated, "seconds": round(self.front.seconds, 3),
                "latency_ms": [float(lat.min()), float(lat.max())] if len(lat) else [],
                "accuracy": [float(self.front.accuracy.min()), float(self.front.accuracy.max())] if len(lat) else [],
                "ends": self.ends, "floor": self.floor, "measured_statistic": MEASURED_STATISTIC,
                "transferred_share": self.transferred_share, "provenance": self.provenance,
                "points": self.points(), "measured": self.measured, "chosen": self.chosen}


def build_device_front(device: str, space: SearchSpace, accuracy, latency, rng: np.random.Generator,
                       resolutions: Sequence[int] | None = None, population: int = 100, generations: int = 150,
                       with_macs: bool = False, measured: Sequence[dict] = (), chosen: Sequence[dict] = (),
                       simulated: bool = False, end_params: SearchParams | None = None,
                       provenance: dict | None = None) -> DeviceFront:
    """The whole step: floor from the measured subnets, ends, NSGA-II, and per point its prediction, upper
    bound and floor. `measured`: `measured_subnets` records; `chosen`: `chosen_subnets` records;
    `provenance`: the table's (`LatencyTable.provenance`), shown when part of it is transferred."""
    res = list(resolutions or getattr(latency, "resolutions", None) or space.resolutions)
    floor = LatencyFloor.from_measured(measured, space)
    objective = FlooredLatency(latency, floor, space) if floor is not None else latency
    ends = front_ends(space, accuracy, objective, rng, res, end_params)
    front = device_front(space, accuracy, objective, rng, res, population, generations, with_macs, ends)
    batch = space.encode(front.configs) if len(front) else None
    pred = np.asarray(latency(batch), dtype=np.float64) if batch is not None else np.zeros(0)
    upper_fn = getattr(latency, "upper", None)
    upper = (np.asarray(upper_fn(batch), dtype=np.float64) if batch is not None and upper_fn
             else np.full(len(pred), np.nan))
    floors = floor(batch) if floor is not None and batch is not None else np.zeros(len(pred))
    summary: dict = {"rule": "front latency = max(calibrated prediction, measured latency of the slowest measured "
                             "subnet the config contains)"}
    if floor is not None:
        lifted = pred < floors
        summary.update({"fastest_measured_ms": floor.fastest_ms, "n_measured": int(len(floor.measured_ms)),
                        "n_points_floored": int(lifted.sum()),
                        "n_points_beyond_interval": int((lifted & (upper < floors)).sum()),
                        "min_predicted_ms": float(pred.min()) if len(pred) else None})
    return DeviceFront(device, space.name, front, getattr(latency, "version", ""), simulated, list(measured),
                       list(chosen), tuple(pred.tolist()), tuple(upper.tolist()),
                       tuple(floors.tolist()), ends.check(front), summary, dict(provenance or {}))


# ---- measured and chosen subnets ---------------------------------------------------------------------------

def measured_subnets(store, device: str, space: SearchSpace, accuracy, latency=None, table=None) -> list[dict]:
    """Whole subnets of `space` measured on `device` (latest fingerprint), each with its measured latency
    (`MEASURED_STATISTIC`: the value in `table.subnets`, computed from the store when no table is given, so
    the same number the calibration fits on), its predicted accuracy and, given a predictor, its predicted
    latency and upper bound. `store` is an open Store or a path; a store path that does not exist holds
    nothing."""
    stats = dict(table.subnets) if table is not None else _subnet_stats(store, device, space)
    out, cfgs = [], []
    for (r, text), st in sorted(stats.items()):
        try:
            cfg = space.validate(SubnetConfig.from_string(str(text).removeprefix("subnet:"), space.max_depth))
        except Exception:  # noqa: BLE001 - a row of another layout is skipped, not fatal
            continue
        cfgs.append(cfg)
        out.append({"config_string": cfg.to_string(), "resolution": cfg.r,
                    "measured_latency_ms": float(st.value_ms), "measured_at": st.measured_at})
    if cfgs:
        batch = ConfigBatch.from_configs(cfgs)
        accs = np.asarray(accuracy(batch), dtype=np.float64)
        pred = upper = None
        if latency is not None:
            held = set(getattr(latency, "resolutions", []) or [])
            idx = [i for i, c in enumerate(cfgs) if not held or c.r in held]
            pred, upper = np.full(len(cfgs), np.nan), np.full(len(cfgs), np.nan)
            if idx:
                sub = ConfigBatch.from_configs([cfgs[i] for i in idx])
                pred[idx] = np.asarray(latency(sub), dtype=np.float64)
                if hasattr(latency, "upper"):
                    upper[idx] = np.asarray(latency.upper(sub), dtype=np.float64)
        for i, rec in enumerate(out):
            rec["predicted_accuracy"] = float(accs[i])
            if pred is not None and np.isfinite(pred[i]):
                rec["predicted_latency_ms"] = float(pred[i])
            if upper is not None and np.isfinite(upper[i]):
                rec["predicted_upper_ms"] = float(upper[i])
    return out


def _subnet_stats(store, device: str, space: SearchSpace) -> dict:
    """The measured subnets of the device's latest fingerprint (a store path that does not exist: none)."""
    from bench.measure import current_reference_ms, subnet_reference_key  # the table's own reading of the store
    from bench.store import using_store
    from bench.table import subnet_stats

    with using_store(store, if_exists=True) as st:
        fp = st.latest_fingerprint(device) if st is not None else None
        if fp is None:
            return {}
        nominal, _ = current_reference_ms(st, fp["id"], space)
        subnet_nominal, _ = current_reference_ms(st, fp["id"], space, key=subnet_reference_key(space))
        return subnet_stats(st, fp["id"], space, nominal, subnet_nominal=subnet_nominal)[0]


def chosen_subnets(docs: Sequence[Mapping], measured: Sequence[Mapping] = ()) -> list[dict]:
    """The subnets a run chose (search or extreme documents: `config_string`, optional `label`/`name`/
    `budget`). Where the subnet was measured, its measured latency and predictions are those of its `measured`
    record (the one source: the same numbers as its measured row), else the document's own predictions."""
    by_config = {m["config_string"]: m for m in measured}
    out = []
    for d in docs:
        label = d.get("label") or d.get("name")
        if not label and isinstance(d.get("budget"), Mapping) and "latency_ms" in d["budget"]:
            label = f"budget {d['budget']['latency_ms']:g} ms"
        rec = {"label": label or d["config_string"], "config_string": d["config_string"],
               "resolution": int(d["config_string"].split(":")[0].removeprefix("r"))}
        src = by_config.get(d["config_string"], d)
        for key in ("predicted_accuracy", "predicted_latency_ms", "predicted_upper_ms", "measured_latency_ms"):
            if src.get(key) is not None:
                rec[key] = float(src[key])
        out.append(rec)
    return out


# ---- CSV and figure ----------------------------------------------------------------------------------------

CSV_COLUMNS = ("device", "space", "kind", "label", "config", "resolution", "predicted_accuracy", "front_latency_ms",
               "predicted_latency_ms", "predicted_upper_ms", "floor_ms", "measured_latency_ms")


def write_csv(fronts: Sequence[DeviceFront], path: str | Path) -> Path:
    """One row per front point (kind "front"), per measured subnet ("measured") and per chosen subnet
    ("chosen"). A measured latency, wherever it appears, is the measured subnet's one value."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = sorted({m for f in fronts for m in f.front.values} - {"latency_ms"})

    def num(v) -> str:
        return "" if v is None or not np.isfinite(v) else f"{float(v):.6g}"

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*CSV_COLUMNS, *[f"predicted_{m}" for m in extra]])
        for f in fronts:
            meas = f.measured_by_config()
            for p in f.points():
                w.writerow([f.device, f.space, "front", "", p["config_string"], p["config"]["r"][0],
                            f"{p['accuracy']:.6f}", num(p["latency_ms"]), num(p.get("predicted_latency_ms")),
                            num(p.get("predicted_upper_ms")), num(p.get("floor_ms")),
                            num(meas.get(p["config_string"])), *[num(p.get(m)) for m in extra]])
            for kind, recs in (("measured", f.measured), ("chosen", f.chosen)):
                for rec in recs:
                    acc = rec.get("predicted_accuracy")
                    w.writerow([f.device, f.space, kind, rec.get("label", ""), rec["config_string"],
                                rec["resolution"], "" if acc is None else f"{acc:.6f}", "",
                                num(rec.get("predicted_latency_ms")), num(rec.get("predicted_upper_ms")), "",
                                num(meas.get(rec["config_string"])), *["" for _ in extra]])
    return path


def figure_data(fronts: Sequence[DeviceFront]) -> list[dict]:
    """What `plot_fronts` draws, per device (accuracy in %): the front line; each measured subnet as a pair
    (predicted latency, measured latency) at its predicted accuracy, linked; the chosen subnets, at their
    measured latency where measured, else their predicted one; the floor."""
    out = []
    for f in fronts:
        label = (f"{f.device} ({f.space})" + (" [simulated]" if f.simulated else "")
                 + (f" [{100 * f.transferred_share:.0f}% of table transferred]" if f.transferred_share else ""))
        pairs = [{"config": m["config_string"], "predicted": (m["predicted_latency_ms"], 100 * m["predicted_accuracy"]),
                  "measured": (m["measured_latency_ms"], 100 * m["predicted_accuracy"])}
                 for m in f.measured if "predicted_latency_ms" in m]
        unpaired = [(m["measured_latency_ms"], 100 * m["predicted_accuracy"]) for m in f.measured
                    if "predicted_latency_ms" not in m]
        chosen = []
        for c in f.chosen:
            x = c.get("measured_latency_ms", c.get("predicted_latency_ms"))
            if x is None or c.get("predicted_accuracy") is None:
                continue
            chosen.append({"label": c["label"], "config": c["config_string"], "xy": (x, 100 * c["predicted_accuracy"]),
                           "at": "measured" if "measured_latency_ms" in c else "predicted"})
        out.append({"label": label, "front": {"latency_ms": f.front.values["latency_ms"].tolist(),
                                              "accuracy_pct": (100 * f.front.accuracy).tolist()},
                    "pairs": pairs, "unpaired": unpaired, "chosen": chosen,
                    "floor_ms": f.floor.get("fastest_measured_ms"), "n_floored": f.floor.get("n_points_floored", 0)})
    return out


def plot_fronts(fronts: Sequence[DeviceFront], path: str | Path, title: str = "") -> Path:
    """One figure: a front per device (predicted accuracy vs the front's latency); each measured subnet drawn
    at its predicted latency (hollow circle) and its measured latency (star), linked by a thin line; the
    chosen subnets ringed and labelled; the fastest measured subnet as the floor. Simulated devices say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 6.5))
    data = figure_data(fronts)
    for i, d in enumerate(data):
        color = f"C{i % 10}"
        fl = d["floor_ms"]
        note = f"; {d['n_floored']} point(s) lifted to a measured floor" if d["n_floored"] else ""
        ax.plot(d["front"]["latency_ms"], d["front"]["accuracy_pct"], "-o", ms=2.5, lw=1.2, color=color,
                label=f"{d['label']}: front{note}")
        for j, p in enumerate(d["pairs"]):
            (px, py), (mx, my) = p["predicted"], p["measured"]
            ax.plot([px, mx], [py, my], "-", lw=0.6, color="0.4", zorder=2,
                    label="predicted → measured latency, one subnet" if i == 0 and j == 0 else None)
        if d["pairs"]:
            ax.scatter([p["predicted"][0] for p in d["pairs"]], [p["predicted"][1] for p in d["pairs"]], s=28,
                       facecolors="none", edgecolors=color, linewidths=1.0, zorder=3,
                       label=f"{d['label']}: measured subnets at predicted latency")
        stars = [p["measured"] for p in d["pairs"]] + d["unpaired"]
        if stars:
            ax.scatter([s[0] for s in stars], [s[1] for s in stars], marker="*", s=90, color=color,
                       edgecolors="black", linewidths=0.5, zorder=4,
                       label=f"{d['label']}: measured subnets at measured latency")
        if d["chosen"]:
            ax.scatter([c["xy"][0] for c in d["chosen"]], [c["xy"][1] for c in d["chosen"]], s=220,
                       facecolors="none", edgecolors="red", linewidths=1.6, zorder=5,
                       label=f"{d['label']}: chosen subnets (at measured latency)")
            for c in d["chosen"]:
                ax.annotate(c["label"], c["xy"], textcoords="offset points", xytext=(6, -12), fontsize=7, color="red")
        if fl is not None:
            ax.axvline(fl, color=color, ls=":", lw=0.9,
                       label=f"{d['label']}: fastest measured subnet {fl:.3g} ms (no front point faster)")
    xs = [x for d in data for x in d["front"]["latency_ms"]] + [p["measured"][0] for d in data for p in d["pairs"]]
    log_x = bool(xs) and max(xs) / max(min(xs), 1e-9) > 20  # devices of very different speeds: log axis
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("latency (ms)" + (", log scale" if log_x else ""))
    ax.set_ylabel("predicted top-1 accuracy (%)")
    ax.set_title(title or "Accuracy-latency Pareto fronts")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)  # off the data
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def device_fronts(devices: Sequence[str], space_name: str | None, store, batch: int | None,
                  predictor_path: str | None, resolutions: list[int] | None, seed: int, population: int,
                  generations: int, with_macs: bool = False, say=None) -> tuple[list[DeviceFront], list[int]]:
    """One front per device (its table, the space's accuracy predictor, both ends searched as `ofa-bench search`
    does by default, so the front's top is checked against it), and each table's batch size."""
    from bench.search import simulated_device, accuracy_predictor, device_table, search_resolutions
    from bench.table import LatencyPredictor

    fronts, batches = [], []
    for dev in devices:
        sp, table = device_table(dev, space_name, store, batch)
        batches.append(table.batch)
        latency = LatencyPredictor.from_table(table, sp)
        acc, _ = accuracy_predictor(sp, predictor_path)
        res = search_resolutions(latency, resolutions, dev)
        if say:
            say(f"{dev}: NSGA-II over {sp.name} at {len(res)} resolution(s), from both ends ...")
        measured = measured_subnets(store, table.device, sp, acc, latency, table=table)
        fronts.append(build_device_front(dev, sp, acc, latency, np.random.default_rng(seed), res, population,
                                         generations, with_macs, measured, simulated=simulated_device(dev),
                                         end_params=SearchParams(), provenance=table.provenance()))
    return fronts, batches
