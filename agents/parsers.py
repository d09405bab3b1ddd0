"""Pure functions from a measuring tool's text output to the runner's samples record.

These tools print summary statistics only, so the record says so: `samples_ms` is empty, `n` is the tool's
count, `env["summary_only"]` is true, and statistics the tool does not print are None.
"""
from __future__ import annotations

import math
import re
from typing import Any

from agents.errors import RunnerOutputError

_PREFIX = re.compile(r"^\s*(?:INFO|WARNING|WARN|ERROR|VERBOSE|DEBUG):\s?")
_MARKER = re.compile(r"Running benchmark for (?:at least |max )?(\d+) iterations")
_STATS = re.compile(r"(?:^|\s|:)count=(\d+)((?:\s+\w+=[-+0-9.eE]+)*)\s*$")
_PAIR = re.compile(r"(\w+)=([-+0-9.eE]+)")
_DELEGATE = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]+)\) node"
                       r"(?:, yielding (\d+) partitions)?")
_GRAPH = re.compile(r"^Graph: \[(.*)\]\s*$")
_THREADS = re.compile(r"^Num threads: \[(\d+)\]")
_INIT = re.compile(r"Initialized session in ([-+0-9.eE]+)\s*ms")
_TIMINGS = re.compile(r"(?:Average )?[Ii]nference timings in us: (.*)$")


class ParseError(RunnerOutputError):
    """A tool's output that holds no usable timing (the tool failed, or this is not its output)."""


def _num(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _lines(text: str) -> list[str]:
    return [_PREFIX.sub("", line.rstrip("\r")) for line in text.splitlines()]


def _record(n: int, median, mean, std, minimum, maximum, p10=None, p90=None, env=None) -> dict[str, Any]:
    return {
        "samples_ms": [], "n": n, "median_ms": median, "p10_ms": p10, "p90_ms": p90, "mean_ms": mean,
        "std_ms": std, "cv": (std / mean) if (std is not None and mean) else None,
        "min_ms": minimum, "max_ms": maximum, "env": {"summary_only": True, **(env or {})},
    }


def _failure(text: str, tool: str) -> ParseError:
    raw = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in raw if re.match(r"(ERROR|E\d|\[E)", ln) or re.search(r"error|fail|exception", ln, re.I)]
    short = [ln for ln in errors if len(ln) <= 200]  # long lines are usually source locations; prefer the gist
    reason = _PREFIX.sub("", (short or errors)[0]) if errors else (raw[0] if raw else "empty output")
    return ParseError(f"{tool} printed no timing line: {reason[:200]}")


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """LiteRT/TFLite `benchmark_model` output (old builds, and new ones with `INFO: ` and p5/median/p95).

    The timed statistics are the first `count=` line after the *last* "Running benchmark for ..." header (the
    one before it is the warm-up); values are microseconds, converted to ms. The median is the tool's
    `median=` where printed, else its mean (`env["median_from"]` says which).
    """
    lines = _lines(text)
    stats: list[tuple[int, dict[str, float]]] = []  # (index of the header before it, values)
    headers = 0
    env: dict[str, Any] = {"tool": "benchmark_model"}
    delegates = []
    for line in lines:
        if _MARKER.search(line):
            headers += 1
            continue
        m = _STATS.search(line)
        if m:
            values = {"count": float(m.group(1))}
            for key, value in _PAIR.findall(m.group(2)):
                values[key] = _num(value)
            if "avg" in values or "curr" in values:  # not e.g. the op profiler's "Memory (bytes): count=0"
                stats.append((headers, values))
            continue
        if (m := _DELEGATE.search(line)):
            delegates.append({"name": m.group(3), "nodes_delegated": int(m.group(1)), "nodes_total": int(m.group(2)),
                              "partitions": int(m.group(4)) if m.group(4) else None})
        elif (m := _GRAPH.match(line.strip())):
            env["graph"] = m.group(1)
        elif (m := _THREADS.match(line.strip())):
            env["threads"] = int(m.group(1))
        elif (m := _INIT.search(line)):
            env["init_ms"] = _num(m.group(1))
        elif (m := _TIMINGS.search(line)):
            for part in m.group(1).split(","):
                key, _, value = part.partition(":")
                try:
                    env.setdefault("timings_us", {})[key.strip()] = _num(value.strip())
                except ValueError:
                    pass
    if headers:
        timed = next((v for h, v in stats if h == headers), None)
        warm = next((v for h, v in stats if h == headers - 1), None) if headers > 1 else None
    else:
        timed, warm = (stats[-1][1] if stats else None), None
    if timed is None:
        raise _failure(text, "benchmark_model")
    ms = {k: v / 1000.0 for k, v in timed.items() if k != "count"}
    n = int(timed["count"])
    mean = ms.get("avg", ms.get("curr"))
    median_from = "median" if "median" in ms else "avg"
    env["format"] = "new" if "median" in ms or any(_PREFIX.match(x) for x in text.splitlines()) else "old"
    env["median_from"] = median_from
    env.update({f"{k}_ms": ms[k] for k in ("first", "p5", "p95") if k in ms})
    if warm is not None:
        env["warmup"] = {"count": int(warm["count"]), "avg_ms": warm.get("avg", warm.get("curr", 0.0)) / 1000.0}
    if delegates:
        env["delegates"] = delegates
        total = max(d["nodes_total"] for d in delegates)
        env["delegate_coverage"] = min(1.0, sum(d["nodes_delegated"] for d in delegates) / total) if total else None
    return _record(n, ms.get("median", mean), mean, ms.get("std"), ms.get("min"), ms.get("max"), env=env)


_ORT = {
    "mean_ms": re.compile(r"Average inference time cost:\s*([-+0-9.eE]+)\s*ms"),
    "requests": re.compile(r"Total inference requests:\s*(\d+)"),
    "runs": re.compile(r"^Runs:\s*(\d+)", re.M),
    "session_s": re.compile(r"Session creation time cost:\s*([-+0-9.eE]+)\s*s"),
    "first_ms": re.compile(r"First inference time cost:\s*([-+0-9.eE]+)\s*ms"),
}
_ORT_LATENCY = re.compile(r"^(Min|Max|P\d+) Latency:\s*([-+0-9.eE]+)\s*s\s*$", re.M)


def parse_onnxruntime_perf_test(text: str) -> dict[str, Any]:
    """`onnxruntime_perf_test` output: the average is printed in ms, the `P50 Latency`-style lines in seconds."""
    found = {k: rx.search(text) for k, rx in _ORT.items()}
    latencies = {name.lower(): _num(value) * 1000.0 for name, value in _ORT_LATENCY.findall(text)}
    if not found["mean_ms"] and "p50" not in latencies:
        raise _failure(text, "onnxruntime_perf_test")
    mean = _num(found["mean_ms"].group(1)) if found["mean_ms"] else None
    count = found["runs"] or found["requests"]
    n = int(count.group(1)) if count else 0
    env: dict[str, Any] = {"tool": "onnxruntime_perf_test", "median_from": "p50" if "p50" in latencies else "average"}
    if found["session_s"]:
        env["init_ms"] = _num(found["session_s"].group(1)) * 1000.0
    if found["first_ms"]:
        env["first_ms"] = _num(found["first_ms"].group(1))
    env.update({f"{k}_ms": v for k, v in latencies.items() if k not in ("min", "max", "p50", "p90")})
    return _record(n, latencies.get("p50", mean), mean, None, latencies.get("min"), latencies.get("max"),
                   p90=latencies.get("p90"), env=env)


PARSERS = {"benchmark_model": parse_benchmark_model, "onnxruntime_perf_test": parse_onnxruntime_perf_test}


def tool_of(binary_name: str) -> str:
    """Which parser a measuring binary needs, from its file name (`onnxruntime_perf_test*` or else LiteRT's)."""
    return "onnxruntime_perf_test" if "perf_test" in binary_name else "benchmark_model"
