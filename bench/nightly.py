"""The cron job: re-measure sentinel and stale entries of every profiled device, detect drift, rebuild.

Two kinds of drift are told apart. The reference model's raw latency tracks the device's overall speed: a step
there means the whole device got faster or slower (tables rescale through the reference automatically, but the
user is told). A step in a sentinel's speed-normalised latency means some operators changed relative to the
rest (a runtime or OS update): its resolution is re-profiled. History is kept (append-only store); the job
exits non-zero when a device is unreachable or drifted beyond the threshold. Entries of a few-shot table
(`profile --few-shot`) that were transferred from other devices, not measured, are measured first, up to
`max_transferred` a night, so such a table becomes a measured one over a few nights.

Crontab (every night at 03:15, a log per night):
    15 3 * * *  cd /path/to/ofa-bench && ofa-bench nightly --json >> ~/ofa-bench-nightly.log 2>&1
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ofa_core.errors import OFABenchError
from ofa_core.space import SearchSpace

from bench.table import Entry, candidates
from bench.drift import detect_step
from bench.transfer import transferred_entries
from bench.measure import keys
from bench.measure import (MeasureSettings, agent_profile, check_batch_sizes, commit, measure_models,
                           reference_entry, reference_key, reference_nominal_ms, reference_records, to_record)


class NightlyAlert(OFABenchError):
    """A device was unreachable or drifted beyond the threshold: the cron job must fail loudly."""


@dataclass(frozen=True)
class NightlySettings:
    stale_days: float = 30.0
    threshold: float = 0.05        # relative level change that counts as drift
    rebuild: bool = True           # re-profile resolutions whose sentinels drifted
    min_after: int = 2             # points needed after a step (nights) before it is reported
    rounds: int = 3
    spaces: tuple[str, ...] = ()   # () = every space the device was profiled on
    # entries a `profile --few-shot` transferred instead of measuring are measured first, this many a night
    max_transferred: int = 256
    # batch sizes whose tables are refreshed (one table each); () = the device profile's `batch` list (the
    # batch sizes the store has tables of, for a farm device this host has no profile of)
    batches: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.stale_days) and self.stale_days >= 0):
            raise OFABenchError(f"stale_days must be a finite number >= 0, got {self.stale_days}")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise OFABenchError(f"threshold must be a finite number > 0, got {self.threshold}")
        if self.max_transferred < 0:
            raise OFABenchError(f"max_transferred must be >= 0, got {self.max_transferred}")
        if self.rounds < 1 or self.min_after < 1:
            raise OFABenchError(f"rounds and min_after must be >= 1, got {self.rounds} and {self.min_after}")
        check_batch_sizes(self.batches or None, OFABenchError)


def sentinels(space: SearchSpace, resolutions: Sequence[int]) -> list[Entry]:
    """A few entries per resolution that exercise every kind of layer: stem, the largest and smallest block
    of the first and last stages, the head."""
    out = []
    for r in resolutions:
        ents = candidates(space, [r])
        blocks = [e for e in ents if e.kind == "mbconv"]
        first_stage = [e for e in blocks if e.spec.stage == 0]
        last_stage = [e for e in blocks if e.spec.stage == space.n_stages - 1]
        picks = [ents[0], ents[1], max(first_stage, key=lambda e: (e.kernel, e.expand)),
                 min(last_stage, key=lambda e: (e.kernel, e.expand)), max(last_stage, key=lambda e: (e.kernel, e.expand)),
                 next(e for e in ents if e.kind == "final_expand")]
        seen = set()
        out.extend(e for e in picks if not (e.key in seen or seen.add(e.key)))
    return out


def _ratio_series(rows: list[dict]) -> list[float]:
    """Speed-normalised history: latency relative to the reference timed in the same invocation."""
    return [r["latency_ms"] / r["env"][keys.REFERENCE_MS] if (r.get("env") or {}).get(keys.REFERENCE_MS)
            else r["latency_ms"] for r in rows if not r.get("noisy")]


def profiled_spaces(store, device: str, fp_id: str) -> list[str]:
    return sorted({r["space"] for r in store.runs(device) if r["fingerprint_id"] == fp_id
                   and r["kind"] in ("profile", "nightly")})


def nightly_batches(settings: NightlySettings, profile_batches: Sequence[int] | None, store, fp_id: str,
                    space: str) -> list[int]:
    """The batch sizes whose tables a nightly pass refreshes: `settings.batches`, else the device profile's
    list, else (no profile here: a farm device) every batch size the fingerprint has a table of in `space`."""
    if settings.batches:
        return list(settings.batches)
    if profile_batches:
        return list(profile_batches)
    return store.batches(fp_id, space) or [1]


def _table_resolutions(store, fp_id: str, sp: SearchSpace, batch: int) -> tuple[list[dict], list[int]]:
    """The latest block rows of a table (one batch size) and its resolutions, transferred entries included."""
    rows = store.latest_measurements(fp_id, sp.name, kind="block", batch=batch)
    res = sorted({int(r["resolution"]) for r in rows}
                 | {e.resolution for e in transferred_entries(store, fp_id, sp, batch=batch)})
    return rows, res


def nightly_device(device: str, store_target, settings: NightlySettings = NightlySettings()) -> dict:
    """One device's nightly pass over every table (space and batch size) of the store (an open Store or an
    address); returns its report (status ok | drifted | unreachable | failed)."""
    from contextlib import ExitStack

    from agents import connect
    from bench.store import using_store
    from devices import get_device

    report: dict = {"device": device, "status": "ok", "spaces": [], "drift": [], "rebuilt": [], "error": None,
                    "batches": []}
    start = time.monotonic()
    held = ExitStack()
    store = held.enter_context(using_store(store_target, create=False))  # nightly never starts a store
    try:
        profile = get_device(device)
        report["simulated"] = bool(profile.simulated)
        try:
            agent = connect(agent_profile(profile, MeasureSettings()))
        except OFABenchError as exc:
            report.update(status="unreachable", error=" ".join(str(exc).split()))
            return report
        with agent:
            try:
                fp = agent.fingerprint()
            except OFABenchError as exc:
                report.update(status="unreachable", error=" ".join(str(exc).split()))
                return report
            rebuild = _check_tables(agent, store, profile, fp, settings, report)
        if settings.rebuild:
            for (name, batch), res in sorted(rebuild.items()):
                rep = _rebuild(profile, SearchSpace.get(name), store, sorted(res), report["fingerprint_id"], batch)
                report["rebuilt"].append(rep)
        return report
    except OFABenchError as exc:
        report.update(status="failed", error=" ".join(str(exc).split()))
        return report
    finally:
        report["duration_s"] = round(time.monotonic() - start, 1)
        held.close()


def _check_tables(agent, store, profile, fp: dict, settings: NightlySettings, report: dict
                  ) -> dict[tuple[str, int], set[int]]:
    """Register the fingerprint, then check every table (space, batch size) of the device into `report`;
    returns the resolutions to rebuild per (space, batch size)."""
    old = store.latest_fingerprint(profile.name)
    fp_id = store.register_fingerprint(profile.name, fp)
    report["fingerprint_id"] = fp_id
    new_build = old is not None and old["id"] != fp_id
    if new_build:
        report["drift"].append({"kind": "fingerprint", "from": old["id"], "to": fp_id})
        report["status"] = "drifted"
    src_fp = old["id"] if new_build else fp_id
    spaces = profiled_spaces(store, profile.name, src_fp)
    if settings.spaces:
        spaces = [s for s in spaces if s in settings.spaces]
    rebuild: dict[tuple[str, int], set[int]] = {}
    report["batches"] = []
    for name in spaces:
        sp = SearchSpace.get(name)
        for batch in nightly_batches(settings, profile.batch, store, src_fp, name):
            rows, res = _table_resolutions(store, src_fp, sp, batch)
            if not res:  # no table of this batch size to refresh (nightly makes none)
                continue
            report["batches"] = sorted({*report["batches"], batch})
            if new_build:  # a new build: rebuild everything under the new fingerprint
                rebuild[(name, batch)] = set(res)
                continue
            sp_report = _check_space(agent, store, profile, fp_id, sp, res, rows, settings, batch)
            report["spaces"].append(sp_report)
            report["drift"].extend(sp_report["drift"])
            if sp_report["drift"]:
                report["status"] = "drifted"
            drifted_res = {d["resolution"] for d in sp_report["drift"] if d["kind"] == "entry"}
            if drifted_res:
                rebuild[(name, batch)] = drifted_res
    return rebuild


def _check_space(agent, store, profile, fp_id: str, sp: SearchSpace, res: list[int], rows: list[dict],
                 settings: NightlySettings, batch: int = 1) -> dict:
    """Re-measure one table's (batch size `batch`) sentinels, stale and transferred entries; its drift."""
    from bench.export import export_entry

    watch = sentinels(sp, res)
    stale = stale_entries(sp, rows, res, settings.stale_days)
    moved = transferred_entries(store, fp_id, sp, res, batch=batch)[:settings.max_transferred]  # measured first
    todo = list({(e.resolution, e.key): e for e in moved + watch + stale}.values())
    fmt = profile.model_format
    ref_path = export_entry(sp, reference_entry(sp), fmt, precision=profile.precision, batch=batch)
    nominal = reference_nominal_ms(store, fp_id, sp, batch)
    run_settings = {**settings.__dict__, "batch": batch}
    with store.running(profile.name, fp_id, sp.name, "nightly", run_settings,
                       {"sentinels": len(watch), "stale": len(stale), "transferred": len(moved)}) as run_id:
        _measure_entries(agent, store, run_id, fp_id, sp, todo, ref_path, nominal, settings.rounds, fmt,
                         profile.precision, batch)
    drift = detect_drift(store, fp_id, sp, watch, settings, batch)
    return {"space": sp.name, "batch": batch, "resolutions": res, "remeasured": len(todo), "sentinels": len(watch),
            "stale": len(stale), "transferred_measured": len(moved), "drift": drift}


def detect_drift(store, fp_id: str, sp: SearchSpace, watch: list[Entry], settings: NightlySettings,
                 batch: int = 1) -> list[dict]:
    """Steps in the reference's raw latency (device speed) and in each sentinel's speed-normalised history, in
    the table of batch size `batch` (each batch size has a reference speed of its own)."""
    drift = []
    ref_rows = [r for r in store.history(fp_id, sp.name, key=reference_key(sp), kind="reference", batch=batch)
                if not r["noisy"]]
    step = detect_step([r["latency_ms"] for r in ref_rows], min_size=settings.min_after,
                       min_rel_change=settings.threshold)
    if step is not None:
        drift.append({"kind": "speed", "key": reference_key(sp), "resolution": reference_entry(sp).resolution,
                      "rel_change": step.rel_change, "at": ref_rows[step.index]["measured_at"], "batch": batch})
    for e in watch:
        hist = store.history(fp_id, sp.name, key=e.key, resolution=e.resolution, batch=batch)
        series = _ratio_series(hist)
        step = detect_step(series, min_size=settings.min_after, min_rel_change=settings.threshold)
        if step is not None:
            drift.append({"kind": "entry", "key": e.key, "resolution": e.resolution, "rel_change": step.rel_change,
                          "points": len(series), "step_index": step.index, "batch": batch})
    return drift


def stale_entries(sp: SearchSpace, rows: list[dict], res: list[int], stale_days: float) -> list[Entry]:
    now = time.time()
    latest = {(int(r["resolution"]), r["key"]): r for r in rows}
    return [e for e in candidates(sp, res) if (e.resolution, e.key) in latest
            and now - float(latest[(e.resolution, e.key)]["measured_at"]) > stale_days * 86400]


def _enqueue_device(store, device: str, settings: NightlySettings) -> dict:
    """One farm device: queue each table's (space, batch size) sentinel, stale and transferred entries as jobs
    at that batch size, and report the drift over what the workers measured so far."""
    from bench.farm import enqueue

    fp = store.latest_fingerprint(device)
    rep = {"device": device, "status": "ok", "queued": 0, "drift": [], "error": None, "batches": [], "tables": []}
    if fp is None:
        rep.update(status="failed", error=f"device {device!r} has never been profiled in this store")
        return rep
    from devices import profile_batches

    batches_here = profile_batches(device)
    for name in profiled_spaces(store, device, fp["id"]):
        if settings.spaces and name not in settings.spaces:
            continue
        sp = SearchSpace.get(name)
        for batch in nightly_batches(settings, batches_here, store, fp["id"], name):
            rows = store.latest_measurements(fp["id"], name, kind="block", batch=batch)
            moved = transferred_entries(store, fp["id"], sp, batch=batch)[:settings.max_transferred]
            res = sorted({int(r["resolution"]) for r in rows} | {e.resolution for e in moved})
            if not res:  # no table of this batch size
                continue
            watch = sentinels(sp, res)
            todo = list({(e.resolution, e.key): e for e in moved + watch
                         + stale_entries(sp, rows, res, settings.stale_days)}.values())
            got = enqueue(store, device, sp, todo, fingerprint_id=fp["id"], batch=batch)
            drift = detect_drift(store, fp["id"], sp, watch, settings, batch)
            rep["queued"] += got.queued
            rep["drift"] += drift
            rep["batches"] = sorted({*rep["batches"], batch})
            rep["tables"].append({"space": name, "batch": batch, "resolutions": res, "queued": got.queued,
                                  "drift": len(drift)})
    if rep["drift"]:
        rep["status"] = "drifted"
    return rep


def enqueue_nightly(store_target, devices: Sequence[str] | None, settings: NightlySettings) -> dict | None:
    """With a PostgreSQL store (a farm), queue the sentinel and stale entries of every table (space and batch
    size) as jobs for the hosts' workers instead of measuring here, and report drift over what the workers
    measured so far. None for SQLite."""
    from bench.store import is_postgres_url, store_address, using_store

    if not is_postgres_url(store_address(store_target)):
        return None
    with using_store(store_target) as store:
        if not devices:
            devices = sorted({r["device"] for r in store.runs() if r["kind"] in ("profile", "nightly")})
        reports = [_enqueue_device(store, device, settings) for device in devices]
    bad = [r["device"] for r in reports if r["status"] == "failed"]
    drifted = [r["device"] for r in reports if r["status"] == "drifted"]
    return {"mode": "farm", "devices": reports, "unreachable": bad, "drifted": drifted,
            "ok": not bad and not drifted, "threshold": settings.threshold}


def _rebuild(profile, sp: SearchSpace, store, res: list[int], fp_id: str, batch: int = 1) -> dict:
    """Re-measure every entry of the drifted resolutions of the table of batch size `batch`: a fresh profile
    pass whose rows become the latest."""
    from bench.profile import profile_device

    # profile_device measures only what is missing for the fingerprint; for a drifted table everything is
    # "present", so the drifted resolutions are re-measured explicitly here.
    rep = remeasure_entries(profile, sp, store, fp_id, candidates(sp, res), batch=batch)
    if rep is None:
        rep = profile_device(profile, sp, store, res, batch=batch).to_dict()
    return {"space": sp.name, "batch": batch, "resolutions": res,
            **({k: rep[k] for k in ("entries_measured", "status") if k in rep})}


def remeasure_entries(profile, sp: SearchSpace, store, fp_id: str, entries: list[Entry], rounds: int = 3,
                      batch: int = 1) -> dict | None:
    """Measure `entries` again at batch size `batch` (new rows, history kept). None if the fingerprint has no
    rows at that batch size yet."""
    from agents import connect
    from bench.export import export_entry

    if not store.latest_measurements(fp_id, sp.name, kind="block", batch=batch):
        return None
    fmt = profile.model_format
    with connect(agent_profile(profile, MeasureSettings())) as agent:
        ref_path = export_entry(sp, reference_entry(sp), fmt, precision=profile.precision, batch=batch)
        nominal = reference_nominal_ms(store, fp_id, sp, batch)
        with store.running(profile.name, fp_id, sp.name, "rebuild", {"entries": len(entries), "batch": batch},
                           {}) as run_id:
            measured = _measure_entries(agent, store, run_id, fp_id, sp, entries, ref_path, nominal, rounds, fmt,
                                        profile.precision, batch)
    return {"entries_measured": measured, "status": "done"}


def _measure_entries(agent, store, run_id: int, fp_id: str, sp: SearchSpace, entries: list[Entry], ref_path,
                     nominal: float | None, rounds: int, fmt: str, precision: str = "fp32", batch: int = 1) -> int:
    """Time `entries` 16 to an invocation, the reference first in each, each model taking `batch` images, and
    append every result as new rows (history kept: no reuse of earlier ones); returns how many rows were
    written."""
    from bench.export import export_entry

    written = 0
    for i in range(0, len(entries), 16):
        chunk = entries[i:i + 16]
        paths = [export_entry(sp, e, fmt, precision=precision, batch=batch) for e in chunk]
        timed, refs = measure_models(agent, paths, ref_path, rounds, 0.01, 1)
        nominal = nominal or (refs[0].latency_ms if refs else None)
        records = reference_records(sp, refs, nominal, batch)
        records += [to_record(t, e.resolution, e.key, "block", nominal, batch) for t, e in zip(timed, chunk)]
        written += len(commit(store, run_id, fp_id, sp, records, dedupe=False, batch=batch))
    return written


def nightly(devices: Sequence[str] | None, store_target, settings: NightlySettings = NightlySettings()) -> dict:
    """Every named device (default: every device the store has profiled); a summary with an exit status."""
    from bench.store import using_store
    from devices import get_device

    for d in devices or ():
        get_device(d)  # an unknown name is the user's error: one line, before the store is opened
    with using_store(store_target, create=False) as store:  # one handle for every device's pass
        if not devices:
            devices = sorted({r["device"] for r in store.runs() if r["kind"] in ("profile", "nightly")})
        reports = [nightly_device(d, store, settings) for d in devices]
    bad = [r for r in reports if r["status"] in ("unreachable", "failed")]
    drifted = [r for r in reports if r["status"] == "drifted"
               and any(abs(d.get("rel_change", 1.0)) >= settings.threshold for d in r["drift"])]
    return {"devices": reports, "unreachable": [r["device"] for r in bad], "drifted": [r["device"] for r in drifted],
            "ok": not bad and not drifted, "threshold": settings.threshold}


def plot_drift(doc: dict, store_target, folder) -> list:
    """A drift-history PNG for every drifted entry of a nightly report (speed-normalised for entries)."""
    import hashlib
    from pathlib import Path

    from bench.plots import drift_history
    from bench.store import using_store

    out = []
    with using_store(store_target, create=False) as store:
        for dev in doc.get("devices", []):
            fp = store.latest_fingerprint(dev["device"])
            if fp is None:
                continue
            for sp_rep in dev.get("spaces", []):
                batch = int(sp_rep.get("batch", 1))
                for d in sp_rep.get("drift", []):
                    kind = "reference" if d["kind"] == "speed" else "block"
                    rows = [r for r in store.history(fp["id"], sp_rep["space"], key=d["key"],
                                                     resolution=d["resolution"], kind=kind, batch=batch)
                            if not r["noisy"]]
                    values = [r["latency_ms"] for r in rows] if kind == "reference" else _ratio_series(rows)
                    step = detect_step(values, min_size=2)
                    name = hashlib.sha256(d["key"].encode()).hexdigest()[:10]
                    device = re.sub(r"[^A-Za-z0-9._-]", "_", dev["device"]).lstrip(".")  # a name, never a path
                    at, said = (f"-b{batch}", f" batch {batch}") if batch != 1 else ("", "")
                    path = Path(folder) / f"{device}-{d['resolution']}{at}-{name}.png"
                    out.append(drift_history([r["measured_at"] for r in rows], values, path,
                                             None if step is None else step.index,
                                             title=f"{dev['device']} r{d['resolution']}{said} {d['key'][:70]}"))
    return out


def run_nightly(devices: Sequence[str] | None, store_target: str, settings: NightlySettings = NightlySettings(),
                plots=None) -> dict:
    """What `ofa-bench nightly` does: with a farm's store (PostgreSQL), queue the work for its workers, else
    measure here; with `plots`, draw the drift history of every drifted entry into that folder."""
    queued = enqueue_nightly(store_target, devices, settings)
    doc = queued if queued is not None else nightly(devices, store_target, settings)
    if plots:
        doc["plots"] = [str(p) for p in plot_drift(doc, store_target, plots)]
    return doc


def check_alert(doc: dict) -> None:
    """Raise NightlyAlert, naming the unreachable and drifted devices, for a report that is not ok."""
    if doc.get("ok", True):
        return
    parts = []
    if doc.get("unreachable"):
        parts.append("unreachable: " + ", ".join(doc["unreachable"]))
    if doc.get("drifted"):
        parts.append(f"drifted beyond {100 * doc['threshold']:.0f}%: " + ", ".join(doc["drifted"]))
    raise NightlyAlert("nightly: " + "; ".join(parts))
