"""The measuring protocol: models timed in runner invocations beside the reference block, re-measured until
their medians settle, and turned into store records that say how they were taken.

Every writer of measurements (profile, validate, nightly, confirm, the farm worker) measures through
`measure_models` and records through `to_record`, so every cell of a table was taken the same way. A record's
`protocol` metadata (`keys.PROTOCOL`) names it: `reference/1` (timed beside the reference block, so normalisable),
`subnet-reference/1` (a whole subnet timed beside the reference subnet) or `raw/1` (no reference:
`--no-reference`, published tables); a table's entries never mix reference and raw.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ofa_core.space import SearchSpace

from bench.measure import keys
from bench.measure.reference import (REFERENCE_PREFIX, ReferenceWatch, reference_entry, reference_subnet,
                                     subnet_reference_key)
from bench.measure.stats import is_settled, median_rel_se, sample_stats

PROTOCOL_REFERENCE = "reference/1"
PROTOCOL_SUBNET_REFERENCE = "subnet-reference/1"
PROTOCOL_RAW = "raw/1"


@dataclass
class Timed:
    """One model's result with the reference latency of the invocation it came from."""

    measurement: object
    ref_ms: float | None
    attempts: int = 1
    settled: bool = True
    value_ms: float | None = None  # normalised latency once recorded
    ref_stats: dict | None = None  # the reference's statistics in the same invocation


def _measure_once(agent, batch: Sequence[Path], ref_path: Path | None, rounds: int, refs: list,
                  watch: ReferenceWatch | None) -> tuple[list, float | None, dict | None]:
    """One invocation of `batch` (with the reference first, when given); with a `watch`, run again while the
    reference says the invocation ran in a slow stretch, keeping the attempt with the fastest reference."""
    tries = watch.max_tries if watch is not None and ref_path is not None else 1
    best = None
    for k in range(tries):
        got = agent.measure(([ref_path] if ref_path is not None else []) + list(batch), rounds=rounds)
        if ref_path is None:
            return got, None, None
        refs.append(got[0])
        ref_ms = got[0].latency_ms
        if best is None or ref_ms < best[0].latency_ms:
            best = got
        if watch is None or not watch.disturbed(ref_ms):
            break
        if k + 1 < tries:
            watch.redone += 1
    got = best
    ref_ms = got[0].latency_ms
    if watch is not None:
        for m in refs[-(k + 1):]:
            watch.add(m.latency_ms)
    ref_stats = sample_stats(got[0].samples_ms) if got[0].samples_ms else {"median": ref_ms}
    return got[1:], ref_ms, ref_stats


def measure_models(agent, paths: Sequence[Path], ref_path: Path | None, rounds: int, threshold: float,
                   max_remeasure: int, watch: ReferenceWatch | None = None) -> tuple[list[Timed], list]:
    """Measure `paths` (with the reference first, when given); re-measure unsettled ones with the reference
    again, keeping each model's tightest attempt. With a `watch`, an invocation whose reference was disturbed
    is run again. Returns per-model results and every reference measurement."""
    refs = []
    best: dict[int, Timed] = {}
    pending = list(range(len(paths)))
    for attempt in range(1 + max(0, max_remeasure)):
        got, ref_ms, ref_stats = _measure_once(agent, [paths[i] for i in pending], ref_path, rounds, refs, watch)
        still = []
        for i, m in zip(pending, got):
            settled = is_settled(m, threshold)
            prev = best.get(i)
            if prev is None or median_rel_se(m) < median_rel_se(prev.measurement):
                best[i] = Timed(m, ref_ms, attempt + 1, settled, ref_stats=ref_stats)
            else:
                best[i].attempts = attempt + 1
            if not settled:
                still.append(i)
        pending = still
        if not pending:
            break
    out = [best[i] for i in range(len(paths))]
    for t in out:
        # after every attempt: noisy only if even the best attempt is far off (4x the threshold)
        t.settled = t.settled or is_settled(t.measurement, 4 * threshold)
    return out, refs


def to_record(t: Timed, resolution: int, key: str, kind: str, nominal_ms: float | None, batch: int = 1,
              protocol: str = PROTOCOL_REFERENCE) -> dict:
    """The store record of one timed model; `batch` is the batch size it was exported with (its latency is the
    whole batch's); `protocol`: what it was timed beside, when it was timed beside a reference."""
    rec = t.measurement.to_record()
    rec.pop("model", None)
    rec.update({"resolution": int(resolution), "key": key, "kind": kind, "noisy": not t.settled,
                "batch": int(batch)})
    rec["env"] = {**rec.get("env", {}), keys.ATTEMPTS: t.attempts, keys.REFERENCE_MS: t.ref_ms,
                  keys.REFERENCE_STATS: t.ref_stats, keys.PROTOCOL: protocol if t.ref_ms else PROTOCOL_RAW}
    keys.check_env(rec["env"], key)
    if nominal_ms is not None and t.ref_ms:
        rec["normalised_ms"] = rec["latency_ms"] * nominal_ms / t.ref_ms
    return rec


def reference_records(space: SearchSpace, refs: list, nominal_ms: float | None, batch: int = 1,
                      subnet: bool = False) -> list[dict]:
    """The records of the reference block's timings (the reference subnet's with `subnet`)."""
    if subnet:
        cfg = reference_subnet(space)
        resolution, key, protocol = cfg.r, subnet_reference_key(space), PROTOCOL_SUBNET_REFERENCE
    else:
        ent = reference_entry(space)
        resolution, key, protocol = ent.resolution, REFERENCE_PREFIX + ent.key, PROTOCOL_REFERENCE
    out = []
    for m in refs:
        t = Timed(m, m.latency_ms, ref_stats=sample_stats(m.samples_ms) if m.samples_ms else None)
        out.append(to_record(t, resolution, key, "reference", nominal_ms, batch, protocol))
    return out


def commit(store, run_id: int, fp_id: str, space: SearchSpace, records: list[dict], dedupe: bool = True,
           batch: int = 1) -> list[dict]:
    """Write one invocation's records in one transaction; with `dedupe`, entries another profiler committed
    meanwhile (at the same batch size) are dropped. Reference records always go in. Returns the block records
    actually written."""
    with store.transaction():
        if dedupe:
            done = store.measured_keys(fp_id, space.name, batch=batch)
            records = [r for r in records if r["kind"] != "block" or r["noisy"]
                       or (r["resolution"], r["key"]) not in done]
        store.insert_measurements(run_id, records)
    return [r for r in records if r["kind"] == "block"]
