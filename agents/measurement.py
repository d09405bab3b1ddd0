"""One model's measurement on one device: every raw sample plus its summary and environment."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Measurement:
    """Raw samples (ms) with their summary. `noisy` marks a measurement whose (robust) coefficient of variation
    never fell under the profile's threshold. Where a tool reports only summary statistics, `samples_ms` is empty,
    `n` is its count and `env["summary_only"]` is true; missing statistics are None."""

    model: str
    samples_ms: tuple[float, ...]
    median_ms: float
    p10_ms: float | None
    p90_ms: float | None
    mean_ms: float | None
    std_ms: float | None
    cv: float | None
    n: int
    noisy: bool = False
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def robust_cv(self) -> float | None:
        """Spread that preemption outliers cannot inflate: the normal-equivalent sigma from p10..p90 over the
        median, or from p5..p95 where a tool prints those (LiteRT `benchmark_model`). Falls back to `cv` where a
        tool gave no percentiles."""
        if not self.median_ms:
            return self.cv
        if self.p10_ms is not None and self.p90_ms is not None:
            return (self.p90_ms - self.p10_ms) / (2 * 1.2816 * self.median_ms)
        p5, p95 = self.env.get("p5_ms"), self.env.get("p95_ms")
        if isinstance(p5, (int, float)) and isinstance(p95, (int, float)) and p95 >= p5:
            return (p95 - p5) / (2 * 1.6449 * self.median_ms)
        return self.cv

    @property
    def latency_ms(self) -> float:
        """The statistic lookup tables use: the median."""
        return self.median_ms

    def to_record(self) -> dict[str, Any]:
        """The store's measurement fields (the caller adds resolution, key and kind)."""
        return {
            "latency_ms": self.median_ms, "mean_ms": self.mean_ms, "std_ms": self.std_ms, "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms, "cv": self.cv, "robust_cv": self.robust_cv, "n": self.n, "samples_ms": list(self.samples_ms),
            "noisy": self.noisy, "env": dict(self.env), "model": self.model,
        }

    def with_(self, **changes) -> "Measurement":
        return replace(self, **changes)

    @classmethod
    def from_record(cls, rec: dict[str, Any], model: str, env_extra: dict[str, Any] | None = None) -> "Measurement":
        """From a runner/parser record (`median_ms`, `samples_ms`, ...)."""
        env = dict(rec.get("env") or {})
        env.update(env_extra or {})
        median = rec.get("median_ms")
        if median is None or not math.isfinite(float(median)):
            raise ValueError("record has no median")
        return cls(
            model=model, samples_ms=tuple(float(v) for v in rec.get("samples_ms") or ()),
            median_ms=float(median), p10_ms=_opt(rec.get("p10_ms")), p90_ms=_opt(rec.get("p90_ms")),
            mean_ms=_opt(rec.get("mean_ms")), std_ms=_opt(rec.get("std_ms")), cv=_opt(rec.get("cv")),
            n=int(rec.get("n") or 0), noisy=bool(rec.get("noisy", False)), env=env,
        )


def _opt(value) -> float | None:
    return None if value is None else float(value)
