"""Devices without Python (a stock phone): a user-supplied measuring binary (LiteRT `benchmark_model` or
`onnxruntime_perf_test`) is pushed once (content-hash cache), run with quoted flags, and its text parsed."""
from __future__ import annotations

import math
import os
from pathlib import Path

from agents.errors import AgentError, RunnerOutputError
from agents.host import Agent
from agents.measurement import Measurement
from agents.parsers import PARSERS, ParseError, tool_of
from agents.registry import register_agent
from agents.transports import TRANSPORT_KINDS
from agents.transports.base import TransportError, file_sha256


class BinaryAgent(Agent):
    """Measures with the profile's `binary`; one invocation per model and round (rounds interleave models)."""

    binary_remote: str | None = None

    def open(self) -> None:
        local = Path(os.path.expanduser(self.profile.binary))
        if not local.is_file():
            raise AgentError(f"{self.name}: measuring binary not found on this host: {local}")
        self.tool = tool_of(local.name)
        self.binary_name = local.name
        self.binary_sha256 = file_sha256(local)
        try:
            self.binary_remote = self.transport.push(local, timeout_s=self.profile.timeout_s)
            res = self.transport.run(["chmod", "755", self.binary_remote], timeout_s=self.profile.timeout_s)
        except TransportError as exc:
            raise TransportError(f"{self.name}: cannot push {local.name}: {self._strip(exc)}") from None
        if res.returncode != 0:
            raise AgentError(f"{self.name}: cannot make {local.name} executable: {res.stderr.strip()[:200]}")

    def _argv(self, model: str, rounds: int) -> list[str]:
        p = self.profile
        runs = max(1, math.ceil(p.min_runs / rounds))
        if self.tool == "onnxruntime_perf_test":
            argv = [self.binary_remote, "-m", "times", "-r", str(runs), "-x", str(p.threads), "-y", "1", "-e", "cpu",
                    *p.binary_args, model]
        else:
            argv = [self.binary_remote, f"--graph={model}", f"--num_threads={p.threads}",
                    f"--warmup_runs={p.warmup_runs}", f"--warmup_min_secs={p.warmup_s:g}", f"--num_runs={runs}",
                    f"--min_secs={p.min_duration_s / rounds:g}", f"--max_secs={p.max_duration_s / rounds:g}",
                    *p.binary_args]
        if p.cores:
            argv = ["taskset", format(sum(1 << c for c in p.cores), "x"), *argv]
        return argv

    def _measure_once(self, models: list[Path], rounds: int) -> list[Measurement]:
        p = self.profile
        remote = []
        for m in models:
            try:
                remote.append(self.transport.push(m, timeout_s=p.timeout_s))
            except TransportError as exc:
                raise TransportError(f"{self.name}: cannot push {m}: {self._strip(exc)}") from None
        parse = PARSERS[self.tool]
        per_model: list[list[dict]] = [[] for _ in models]
        budget = p.timeout_s + (p.max_duration_s + p.warmup_s) / rounds + 2.0
        for _ in range(rounds):
            for i, (local, path) in enumerate(zip(models, remote)):
                try:
                    res = self.transport.run(self._argv(path, rounds), timeout_s=budget)
                except TransportError as exc:
                    raise TransportError(f"{self.name}: {self._strip(exc)} (while measuring {local})") from None
                try:
                    rec = parse(res.stdout + "\n" + res.stderr)
                except ParseError as exc:
                    raise RunnerOutputError(f"{self.name}: {local}: {exc} (exit status {res.returncode})") from None
                per_model[i].append(rec)
        out = []
        for local, recs in zip(models, per_model):
            rec = merge_summaries(recs)
            rec["env"].update({"binary": self.binary_name, "binary_sha256": self.binary_sha256[:16],
                               "threads": p.threads, "affinity": list(p.cores) or None, "runtime": p.runtime,
                               "rounds": rounds})
            out.append(Measurement.from_record(rec, model=str(local)))
        return out

    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            from devices.fingerprint import shell_fingerprint

            self._fingerprint = shell_fingerprint(self.transport, self.profile, self.binary_name, self.binary_sha256)
        return dict(self._fingerprint)

    def read_temperature(self) -> float | None:
        listing = self.transport.run(["ls", "/sys/class/thermal"], timeout_s=self.profile.timeout_s)
        zones = [z for z in listing.stdout.split() if z.startswith("thermal_zone")] if listing.returncode == 0 else []
        if not zones:
            return None
        res = self.transport.run(["cat", *(f"/sys/class/thermal/{z}/temp" for z in zones)],
                                 timeout_s=self.profile.timeout_s)
        temps = []
        for word in res.stdout.split():
            try:
                value = int(word) / 1000.0
            except ValueError:
                continue
            if -40.0 < value < 200.0:
                temps.append(value)
        return max(temps) if temps else None


register_agent("binary", BinaryAgent, lambda p: p.kind in TRANSPORT_KINDS and bool(p.binary),
               serves=f"a {'/'.join(TRANSPORT_KINDS)} device whose profile names a measuring binary")


def merge_summaries(records: list[dict]) -> dict:
    """Combine summary-only records of several rounds: counts add, means are count-weighted, std is pooled;
    the median becomes the count-weighted mean of the rounds' medians (said so in `env`)."""
    if len(records) == 1:
        return {**records[0], "env": dict(records[0]["env"])}
    ns = [max(1, r["n"]) for r in records]
    total = sum(ns)

    def weighted(key):
        values = [r.get(key) for r in records]
        return None if any(v is None for v in values) else sum(v * n for v, n in zip(values, ns)) / total

    mean = weighted("mean_ms")
    std = None
    if mean is not None and all(r.get("std_ms") is not None for r in records) and total > 1:
        ss = sum((n - 1) * r["std_ms"] ** 2 + n * (r["mean_ms"] - mean) ** 2 for r, n in zip(records, ns))
        std = math.sqrt(ss / (total - 1))
    mins = [r["min_ms"] for r in records if r.get("min_ms") is not None]
    maxs = [r["max_ms"] for r in records if r.get("max_ms") is not None]
    env = dict(records[-1]["env"])
    for key in ("p5_ms", "p95_ms"):  # the tool's own percentiles, count-weighted like the median
        values = [r["env"].get(key) for r in records]
        if all(isinstance(v, (int, float)) for v in values):
            env[key] = sum(v * n for v, n in zip(values, ns)) / total
    env["median_from"] = f"{env.get('median_from', 'median')}, count-weighted over {len(records)} rounds"
    return {"samples_ms": [], "n": sum(r["n"] for r in records), "median_ms": weighted("median_ms"),
            "p10_ms": weighted("p10_ms"), "p90_ms": weighted("p90_ms"), "mean_ms": mean, "std_ms": std,
            "cv": std / mean if std is not None and mean else None, "min_ms": min(mins) if mins else None,
            "max_ms": max(maxs) if maxs else None, "env": env}
