"""Accuracy-latency Pareto fronts per device: the front itself, measured subnets to mark on it, CSV and a figure.

The front comes from `ofa_core.search.pareto_front` (NSGA-II over predicted accuracy and predicted latency,
optionally MACs). Whole subnets measured on the device (store rows of kind "subnet") are drawn at their
measured latency, so a reader sees how far the table's predictions are from the device.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ofa_core.search import ParetoFront, pareto_front
from ofa_core.space import ConfigBatch, SearchSpace, SubnetConfig


@dataclass(frozen=True)
class DeviceFront:
    """One device's front and the measured subnets that go with it."""

    device: str
    space: str
    front: ParetoFront
    table_version: str = ""
    simulated: bool = False
    measured: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"device": self.device, "space": self.space, "simulated": self.simulated,
                "table_version": self.table_version, "n_points": len(self.front),
                "n_evaluated": self.front.n_evaluated, "seconds": round(self.front.seconds, 3),
                "points": self.front.rows(), "measured": self.measured}


def device_front(space: SearchSpace, accuracy, latency, rng: np.random.Generator,
                 resolutions: Sequence[int] | None = None, population: int = 100, generations: int = 150,
                 with_macs: bool = False) -> ParetoFront:
    """NSGA-II front of predicted accuracy vs `latency` (a predictor over ConfigBatch), optionally MACs too."""
    metrics = {"latency_ms": latency}
    if with_macs:
        metrics["macs"] = space.macs
    return pareto_front(space, accuracy, metrics, rng, population=population, generations=generations,
                        resolutions=resolutions)


def measured_subnets(store, device: str, space: SearchSpace, accuracy, latency=None) -> list[dict]:
    """Whole subnets of `space` measured on `device` (latest good one per config, latest fingerprint), with
    their predicted accuracy and, given a predictor, predicted latency. `store` is an open Store or a path;
    a store path that does not exist holds nothing."""
    rows = _subnet_rows(store, device, space)
    out, cfgs = [], []
    for row in rows:
        text = str(row["key"]).removeprefix("subnet:")
        try:
            cfg = space.validate(SubnetConfig.from_string(text, space.max_depth))
        except Exception:  # noqa: BLE001 - a row of another layout is skipped, not fatal
            continue
        cfgs.append(cfg)
        out.append({"config_string": cfg.to_string(), "resolution": cfg.r,
                    "measured_latency_ms": float(row["latency_ms"]), "measured_at": row.get("measured_at")})
    if cfgs:
        batch = ConfigBatch.from_configs(cfgs)
        accs = np.asarray(accuracy(batch), dtype=np.float64)
        pred = None
        if latency is not None:
            held = set(getattr(latency, "resolutions", []) or [])
            ok = [c.r in held for c in cfgs] if held else [True] * len(cfgs)
            pred = np.full(len(cfgs), np.nan)
            if any(ok):
                idx = [i for i, v in enumerate(ok) if v]
                pred[idx] = np.asarray(latency(ConfigBatch.from_configs([cfgs[i] for i in idx])), dtype=np.float64)
        for i, rec in enumerate(out):
            rec["predicted_accuracy"] = float(accs[i])
            if pred is not None and np.isfinite(pred[i]):
                rec["predicted_latency_ms"] = float(pred[i])
    return out


def _subnet_rows(store, device: str, space: SearchSpace) -> list[dict]:
    if isinstance(store, (str, Path)):
        if "://" not in str(store) and not Path(store).exists():
            return []
        from bench.store import open_store

        st = open_store(str(store))
        try:
            return _subnet_rows(st, device, space)
        finally:
            st.close()
    fp = store.latest_fingerprint(device)
    if fp is None:
        return []
    return list(store.latest_measurements(fp["id"], space.name, kind="subnet"))


def write_csv(fronts: Sequence[DeviceFront], path: str | Path) -> Path:
    """One row per front point (kind "front") and per measured subnet (kind "measured")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = sorted({m for f in fronts for m in f.front.values})
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["device", "space", "kind", "config", "resolution", "predicted_accuracy",
                    *[f"predicted_{m}" for m in metrics], "measured_latency_ms"])
        for f in fronts:
            for i, cfg in enumerate(f.front.configs):
                w.writerow([f.device, f.space, "front", cfg.to_string(), cfg.r, f"{f.front.accuracy[i]:.6f}",
                            *[f"{f.front.values[m][i]:.6g}" if m in f.front.values else "" for m in metrics], ""])
            for rec in f.measured:
                w.writerow([f.device, f.space, "measured", rec["config_string"], rec["resolution"],
                            f"{rec['predicted_accuracy']:.6f}",
                            *[f"{rec['predicted_latency_ms']:.6g}" if m == "latency_ms" and "predicted_latency_ms" in rec
                              else "" for m in metrics],
                            f"{rec['measured_latency_ms']:.6g}"])
    return path


def plot_fronts(fronts: Sequence[DeviceFront], path: str | Path, title: str = "") -> Path:
    """One figure: a front per device (predicted accuracy vs predicted latency), measured subnets marked at
    their measured latency. Simulated devices say so in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, f in enumerate(fronts):
        color = f"C{i % 10}"
        lat = f.front.values["latency_ms"]
        label = f"{f.device} ({f.space})" + (" [simulated]" if f.simulated else "")
        ax.plot(lat, 100 * f.front.accuracy, "-o", ms=2.5, lw=1.2, color=color, label=f"{label}: front")
        if f.measured:
            ax.scatter([m["measured_latency_ms"] for m in f.measured],
                       [100 * m["predicted_accuracy"] for m in f.measured],
                       marker="*", s=90, color=color, edgecolors="black", linewidths=0.5, zorder=3,
                       label=f"{label}: measured subnets")
    all_lat = np.concatenate([f.front.values["latency_ms"] for f in fronts if len(f.front)] or [np.ones(1)])
    log_x = all_lat.max() / max(all_lat.min(), 1e-9) > 20  # devices of very different speeds: log axis
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("latency (ms)" + (", log scale" if log_x else ""))
    ax.set_ylabel("predicted top-1 accuracy (%)")
    ax.set_title(title or "Accuracy-latency Pareto fronts")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
