"""Figures as PNG files (matplotlib, Agg backend): predicted vs measured, drift history, per-stage breakdown."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def predicted_vs_measured(predicted_ms: Sequence[float], measured_ms: Sequence[float], resolutions: Sequence[int],
                          path, title: str = "") -> Path:
    """Scatter of predicted against measured latency, coloured by resolution, with the ±5% and ±10% bands."""
    plt = _pyplot()
    p, m, r = np.asarray(predicted_ms), np.asarray(measured_ms), np.asarray(resolutions)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo, hi = 0.95 * min(p.min(), m.min()), 1.05 * max(p.max(), m.max())
    xs = np.array([lo, hi])
    ax.plot(xs, xs, "k-", lw=1, label="y = x")
    for f, style in ((0.05, "--"), (0.10, ":")):
        ax.plot(xs, xs * (1 + f), "k" + style, lw=0.8, label=f"±{f:.0%}")
        ax.plot(xs, xs * (1 - f), "k" + style, lw=0.8)
    for rv in sorted(set(r.tolist())):
        sel = r == rv
        ax.scatter(m[sel], p[sel], s=16, label=f"r={rv}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def drift_history(times_s: Sequence[float], values_ms: Sequence[float], path, step_index: int | None = None,
                  title: str = "") -> Path:
    """One entry's latency over time; a detected step is marked with a vertical line."""
    plt = _pyplot()
    t = np.asarray(times_s, dtype=float)
    v = np.asarray(values_ms, dtype=float)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = (t - t[0]) / 3600.0 if len(t) else t
    ax.plot(x, v, "o-", ms=3, lw=1)
    if step_index is not None and 0 < step_index < len(v):
        ax.axvline(x[step_index], color="r", ls="--", lw=1, label="step")
        ax.hlines([np.median(v[:step_index]), np.median(v[step_index:])], [x[0], x[step_index]],
                  [x[step_index], x[-1]], colors="r", lw=1)
        ax.legend(fontsize=7)
    ax.set_xlabel("hours since first measurement")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def stage_breakdown(labels: Sequence[str], latencies_ms: Sequence[float], path, title: str = "") -> Path:
    """Horizontal bars: how much of a subnet's predicted latency each stage (or layer group) takes."""
    plt = _pyplot()
    v = np.asarray(latencies_ms, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(v) + 1.2))
    ax.barh(range(len(v)), v)
    ax.set_yticks(range(len(v)), labels, fontsize=8)
    ax.invert_yaxis()
    total = v.sum()
    for i, x in enumerate(v):
        ax.text(x, i, f" {x:.2f} ms ({x / total:.0%})", va="center", fontsize=7)
    ax.set_xlabel("latency (ms)")
    ax.set_title(title or f"total {total:.2f} ms", fontsize=9)
    return _save(fig, path)


def subnet_stage_breakdown(space, table, cfg, path) -> Path:
    """Per-stage latency of one subnet from a device's table (stem, stages 1..n, head)."""
    from bench.table import subnet_entries

    groups: dict[str, float] = {}
    for e in subnet_entries(space, cfg):
        if e.kind in ("first_conv", "first_block"):
            g = "stem"
        elif e.kind == "mbconv":
            g = f"stage {e.spec.stage + 1}"
        else:
            g = "head"
        groups[g] = groups.get(g, 0.0) + table.entries[(cfg.r, e.key)].value_ms
    order = ["stem"] + [f"stage {i + 1}" for i in range(space.n_stages)] + ["head"]
    labels = [g for g in order if g in groups]
    return stage_breakdown(labels, [groups[g] for g in labels], path,
                           title=f"{table.device} {cfg.to_string()}: {sum(groups.values()):.2f} ms (table sum)")
