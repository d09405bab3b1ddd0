"""Measurement and run rows: checking a record before it is written, and decoding rows read back.

Samples, environments, settings and metadata are stored as JSON text (the same in SQLite and PostgreSQL, so a
copy between them is exact); a bad record raises StoreError before anything is written.
"""
from __future__ import annotations

import json
import math
import operator
import time
import uuid
from typing import Any

from bench.store.errors import StoreError

#: "transferred": a table entry predicted from other devices' tables (`profile --few-shot`), not measured
MEASUREMENT_KINDS = ("block", "subnet", "reference", "transferred")
_STAT_FIELDS = ("mean_ms", "std_ms", "p10_ms", "p90_ms", "cv")
MEASUREMENT_COLUMNS = ("uuid", "run_id", "fingerprint_id", "device", "space", "kind", "resolution", "key",
                       "latency_ms", "mean_ms", "std_ms", "p10_ms", "p90_ms", "cv", "n", "samples_ms", "noisy",
                       "env", "normalised_ms", "measured_at", "batch")


def to_json(value: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _number(rec: dict, field: str, index: int, required: bool) -> float | None:
    value = rec.get(field)
    if value is None:
        if required:
            raise StoreError(f"measurement {index} has no {field}")
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise StoreError(f"measurement {index}: {field} is not a number ({value!r})") from None
    if math.isnan(out) and required:
        raise StoreError(f"measurement {index}: {field} is NaN")
    return out


def measurement_row(run_id: int, run: dict, rec: dict, index: int) -> tuple:
    if not isinstance(rec, dict):
        raise StoreError(f"measurement {index} is not a dict")
    try:
        resolution = int(rec["resolution"])
    except (KeyError, TypeError, ValueError):
        raise StoreError(f"measurement {index} has no integer resolution") from None
    key = rec.get("key")
    if not isinstance(key, str) or not key:
        raise StoreError(f"measurement {index} has no key")
    kind = rec.get("kind", "block")
    if kind not in MEASUREMENT_KINDS:
        raise StoreError(f"measurement {index}: kind must be one of {', '.join(MEASUREMENT_KINDS)}, got {kind!r}")
    latency = _number(rec, "latency_ms", index, True)
    samples = rec.get("samples_ms", [])
    try:
        samples = [float(s) for s in samples]
    except (TypeError, ValueError):
        raise StoreError(f"measurement {index}: samples_ms must be a list of numbers") from None
    stats = [_number(rec, f, index, False) for f in _STAT_FIELDS]
    n = rec.get("n", len(samples))
    env = rec.get("env") or {}
    if not isinstance(env, dict):
        raise StoreError(f"measurement {index}: env must be a dict")
    measured_at = _number(rec, "measured_at", index, False) or time.time()
    try:
        batch = None if isinstance(rec.get("batch"), bool) else operator.index(rec.get("batch", 1))
    except TypeError:
        batch = None
    if batch is None or batch < 1:
        raise StoreError(f"measurement {index}: batch must be an integer >= 1, got {rec.get('batch')!r}")
    return (str(rec.get("uuid") or uuid.uuid4()), int(run_id), run["fingerprint_id"], run["device"],
            run["space"], kind, resolution, key, latency, *stats, int(n), to_json(samples),
            int(bool(rec.get("noisy", False))), to_json(env), _number(rec, "normalised_ms", index, False),
            measured_at, batch)


def decode_measurement(row: dict) -> dict:
    row["samples_ms"] = json.loads(row["samples_ms"])
    row["env"] = json.loads(row["env"])
    row["noisy"] = bool(row["noisy"])
    row["resolution"] = int(row["resolution"])
    row["batch"] = int(row.get("batch") or 1)
    row["n"] = int(row["n"])
    row["id"] = int(row["id"])
    row["run_id"] = int(row["run_id"])
    return row


def decode_run(row: dict) -> dict:
    row["settings"] = json.loads(row["settings"])
    row["metadata"] = json.loads(row["metadata"])
    row["id"] = int(row["id"])
    return row
