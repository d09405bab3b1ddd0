"""Profile a device: measure every missing table entry of a space, in small committed batches, resumably.

Each batch goes to the device as one runner invocation holding a fixed *reference* model next to the entries,
interleaved round-robin (`rounds`). The reference's latency in that invocation, against its first-ever latency
on this fingerprint, gives the machine's speed at that moment; every measurement stores `normalised_ms`, its
latency at the nominal speed, so slow drift and load between batches (and between profiling and validation)
cancel out. Entries whose spread stays high are re-measured (with the reference again); a batch is committed
in one transaction, so after a crash or kill -9 the same command measures exactly what is missing.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agents.transports.base import clear_interrupt, interrupt_calls
from ofa_core.errors import OFABenchError
from ofa_core.space import SearchSpace, SubnetConfig

from bench.candidates import Entry, candidates, mbconv_key
from bench.lut import sample_stats
from bench.progress import StderrProgress
from bench.workers import Workers

REFERENCE_PREFIX = "reference:"
#: an ImageNet space has 25 resolutions (2400 entries); without --resolutions these three are profiled
DEFAULT_IMAGENET_RESOLUTIONS = (160, 192, 224)
#: spaces with at most this many resolutions are profiled whole by default
SMALL_SPACE_RESOLUTIONS = 8
#: absolute spread (ms) below which an entry is never called noisy: timer and scheduler granularity
SPREAD_FLOOR_MS = 0.004


class ProfileError(OFABenchError):
    """Profiling could not proceed (bad resolutions, device failed after retries)."""


@dataclass(frozen=True)
class MeasureSettings:
    """How batches are measured. None means: take the device profile's value."""

    rounds: int = 3
    batch_size: int = 16
    warmup_s: float | None = 0.1        # per entry over all rounds; None = the device profile's
    min_duration_s: float | None = 0.3  # per entry over all rounds (min_runs of the profile still holds)
    max_remeasure: int | None = None
    precision: float = 0.01  # re-measure while the median's relative standard error exceeds this
    retries: int = 2
    reference: bool = True
    # Whole subnets measured once the table is complete (smallest, largest, a spread between), so that a
    # freshly profiled device already has a calibration; 0 leaves it to `validate`.
    calibration_subnets: int = 8

    def __post_init__(self) -> None:
        """Bad settings fail here, before a store is opened or a model exported."""
        if self.rounds < 1 or self.batch_size < 1 or self.retries < 0:
            raise ProfileError(f"need rounds >= 1, batch_size >= 1 and retries >= 0, got {self.rounds}, "
                               f"{self.batch_size} and {self.retries}")
        if self.calibration_subnets < 0:
            raise ProfileError(f"calibration_subnets must be >= 0, got {self.calibration_subnets}")
        if self.max_remeasure is not None and self.max_remeasure < 0:
            raise ProfileError(f"max_remeasure must be >= 0, got {self.max_remeasure}")
        for name in ("warmup_s", "min_duration_s", "precision"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ProfileError(f"{name} must be a finite number >= 0, got {value}")


@dataclass
class DeviceReport:
    device: str
    space: str
    resolutions: list[int]
    fingerprint_id: str = ""
    run_id: int | None = None
    entries_total: int = 0
    entries_measured: int = 0
    entries_reused: int = 0
    entries_noisy: int = 0
    entries_remeasured: int = 0
    batches_redone: int = 0  # invocations run again because their reference was disturbed
    subnets_measured: int = 0  # whole subnets measured for the calibration
    calibration: dict | None = None  # the calibration the table has after this run
    duration_s: float = 0.0
    export_s: float = 0.0
    status: str = "running"
    error: str | None = None
    simulated: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ---- the reference model ---------------------------------------------------------------------------------
def reference_entry(space: SearchSpace) -> Entry:
    """A fixed mid-sized block (third stage, second slot, k5 e4, middle resolution) timed in every batch."""
    r = sorted(space.resolutions)[len(space.resolutions) // 2]
    spec = space.blocks()[2 * space.max_depth + 1]
    key = mbconv_key(space, spec, r, 5 if 5 in space.ks_list else space.ks_list[0],
                     4 if 4 in space.expand_list else space.expand_list[0])
    return next(e for e in candidates(space, [r]) if e.key == key)


def reference_key(space: SearchSpace) -> str:
    return REFERENCE_PREFIX + reference_entry(space).key


def reference_nominal_ms(store, fp_id: str, space: SearchSpace) -> float | None:
    """The device's current speed: median reference latency of its latest invocations (None before any)."""
    from bench.lut import current_reference_ms

    return current_reference_ms(store, fp_id, space)[0]


# ---- measuring -------------------------------------------------------------------------------------------
def spread_ms(m) -> float:
    """Robust standard deviation from the 10-90% range (a normal's p90 - p10 is 2.563 sigma)."""
    if m.p10_ms is None or m.p90_ms is None:
        return m.std_ms or 0.0
    return (m.p90_ms - m.p10_ms) / 2.563


def median_rel_se(m) -> float:
    """Relative standard error of the median: how precise the table value is, which is what matters, rather
    than how wide single runs spread. Distribution-free (order statistics n/2 -+ sqrt(n)/2 bound a one-sigma
    interval of the median), so the heavy tail of preempted runs on a loaded machine does not inflate it."""
    xs = sorted(m.samples_ms)
    n = len(xs)
    if n >= 8:
        h = math.sqrt(n) / 2
        lo, hi = xs[max(0, int(math.floor(n / 2 - h)))], xs[min(n - 1, int(math.ceil(n / 2 + h)))]
        return (hi - lo) / 2 / max(m.latency_ms, 1e-9)
    return 1.2533 * spread_ms(m) / math.sqrt(max(m.n, 1)) / max(m.latency_ms, 1e-9)


def is_settled(m, threshold: float) -> bool:
    return median_rel_se(m) <= threshold or spread_ms(m) <= SPREAD_FLOOR_MS


@dataclass
class Timed:
    """One model's result with the reference latency of the invocation it came from."""

    measurement: object
    ref_ms: float | None
    attempts: int = 1
    settled: bool = True
    value_ms: float | None = None  # normalised latency once recorded
    ref_stats: dict | None = None  # the reference's statistics in the same invocation


class ReferenceWatch:
    """The reference latencies of a run so far, and which invocations to run again.

    On this kind of shared host a runner process is, for stretches of 10-20 s, either fast or slow: the
    reference block takes 0.165 ms or about 0.20 ms (+20%), and a whole subnet in the same invocation is
    ~15% slower, so normalising by the reference leaves several percent of error in the slow stretches. Half
    of a profile's invocations were slow on a bad afternoon, so the median of recent references is no baseline;
    the fast mode is: `baseline` is a low quantile (20%) of the last `window` references. An invocation whose
    reference is more than `tolerance` above it is run again, up to `max_tries` attempts in all, and the
    fastest attempt is kept; a lasting change of speed moves the baseline after a few invocations."""

    def __init__(self, tolerance: float = 0.02, window: int = 16, min_history: int = 3, max_tries: int = 3,
                 quantile: float = 0.2) -> None:
        self.tolerance, self.window, self.min_history = tolerance, window, min_history
        self.max_tries, self.quantile = max_tries, quantile
        self.recent: list[float] = []
        self.redone = 0

    def baseline(self) -> float | None:
        if len(self.recent) < self.min_history:
            return None
        xs = sorted(self.recent)
        return xs[int(self.quantile * (len(xs) - 1))]

    def excess(self, ref_ms: float) -> float:
        """How far `ref_ms` is above the baseline (ref / baseline - 1); 0 until `min_history` are known."""
        base = self.baseline()
        return 0.0 if base is None else ref_ms / base - 1.0

    def disturbed(self, ref_ms: float) -> bool:
        return self.excess(ref_ms) > self.tolerance

    def add(self, ref_ms: float) -> None:
        self.recent = (self.recent + [float(ref_ms)])[-self.window:]


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


def to_record(t: Timed, resolution: int, key: str, kind: str, nominal_ms: float | None) -> dict:
    rec = t.measurement.to_record()
    rec.pop("model", None)
    rec.update({"resolution": int(resolution), "key": key, "kind": kind, "noisy": not t.settled})
    rec["env"] = {**rec.get("env", {}), "attempts": t.attempts, "reference_ms": t.ref_ms,
                  "reference_stats": t.ref_stats}
    if nominal_ms is not None and t.ref_ms:
        rec["normalised_ms"] = rec["latency_ms"] * nominal_ms / t.ref_ms
    return rec


def reference_records(space: SearchSpace, refs: list, nominal_ms: float | None) -> list[dict]:
    ent = reference_entry(space)
    out = []
    for m in refs:
        t = Timed(m, m.latency_ms, ref_stats=sample_stats(m.samples_ms) if m.samples_ms else None)
        out.append(to_record(t, ent.resolution, REFERENCE_PREFIX + ent.key, "reference", nominal_ms))
    return out


def agent_profile(profile, settings: MeasureSettings):
    """The device profile with this run's overrides; re-measuring is done here (with the reference), not by the agent."""
    changes = {"max_remeasure": 0}
    if settings.warmup_s is not None:
        changes["warmup_s"] = settings.warmup_s
    if settings.min_duration_s is not None:
        changes["min_duration_s"] = settings.min_duration_s
    return profile.replace(**changes)


def commit(store, run_id: int, fp_id: str, space: SearchSpace, records: list[dict], dedupe: bool = True) -> list[dict]:
    """Write a batch in one transaction; with `dedupe`, entries another profiler committed meanwhile are dropped.
    Reference records always go in. Returns the block records actually written."""
    with store.transaction():
        if dedupe:
            done = store.measured_keys(fp_id, space.name)
            records = [r for r in records if r["kind"] != "block" or r["noisy"]
                       or (r["resolution"], r["key"]) not in done]
        store._insert_measurements(run_id, records)
    return [r for r in records if r["kind"] == "block"]


# ---- profiling -------------------------------------------------------------------------------------------
def default_resolutions(space: SearchSpace) -> list[int]:
    if len(space.resolutions) <= SMALL_SPACE_RESOLUTIONS:
        return list(space.resolutions)
    return [r for r in DEFAULT_IMAGENET_RESOLUTIONS if r in space.resolutions] or [max(space.resolutions)]


def check_resolutions(space: SearchSpace, resolutions: Sequence[int] | None) -> list[int]:
    if resolutions is None:
        return default_resolutions(space)
    bad = [r for r in resolutions if r not in space.resolutions]
    if bad:
        raise ProfileError(f"resolution {bad[0]} is not in space {space.name} "
                           f"({min(space.resolutions)}..{max(space.resolutions)})")
    return sorted(set(int(r) for r in resolutions))


def _with_retries(fn: Callable, retries: int, what: str):
    from agents.errors import AgentError
    from agents.transports.base import TransportError

    for attempt in range(retries + 1):
        try:
            return fn()
        except (TransportError, AgentError) as exc:
            if attempt >= retries:
                raise ProfileError(f"{what}: {' '.join(str(exc).split())} (after {retries + 1} attempts)") from None
            time.sleep(min(2.0 ** attempt, 5.0))


def profile_device(device, space: SearchSpace, store_target: str, resolutions: Sequence[int] | None,
                   settings: MeasureSettings = MeasureSettings(), progress=None,
                   stop: threading.Event | None = None) -> DeviceReport:
    """Measure every missing entry of `space` at `resolutions` on one device; returns what was done.

    `progress(device, advanced, total)` is called after each committed batch.
    """
    from agents import connect
    from bench.export import export_entry
    from bench.store import open_store
    from devices import get_device

    profile = get_device(device) if isinstance(device, str) else device
    res = check_resolutions(space, resolutions)
    report = DeviceReport(device=profile.name, space=space.name, resolutions=res, simulated=bool(profile.simulated))
    start = time.monotonic()
    entries = candidates(space, res)
    report.entries_total = len(entries)
    store = open_store(store_target)
    agent = None
    try:
        agent = _with_retries(lambda: connect(agent_profile(profile, settings)), settings.retries,
                              f"device {profile.name}")
        fp = _with_retries(agent.fingerprint, settings.retries, f"device {profile.name}")
        report.simulated = report.simulated or bool(fp.get("simulated"))
        fp_id = store.register_fingerprint(profile.name, fp)
        report.fingerprint_id = fp_id
        done = store.measured_keys(fp_id, space.name, res)
        todo = [e for e in entries if (e.resolution, e.key) not in done]
        report.entries_reused = len(entries) - len(todo)
        if progress:
            progress(profile.name, 0, len(todo))
        if not todo:
            measure_calibration_subnets(profile, space, res, store, fp_id, settings, report, stop)
            report.status = "done"
            return report
        report.run_id = store.start_run(profile.name, fp_id, space.name, "profile",
                                        {"resolutions": res, **settings.__dict__},
                                        {"entries_total": len(entries), "entries_todo": len(todo),
                                         "profile": profile.to_dict()})
        threshold = settings.precision
        max_rem = settings.max_remeasure if settings.max_remeasure is not None else profile.max_remeasure
        fmt = profile.model_format
        ref = reference_entry(space)
        ref_path = export_entry(space, ref, fmt) if settings.reference else None
        nominal = reference_nominal_ms(store, fp_id, space)
        watch = ReferenceWatch() if settings.reference else None
        for i in range(0, len(todo), settings.batch_size):
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            chunk = todo[i:i + settings.batch_size]
            t0 = time.monotonic()
            paths = [export_entry(space, e, fmt) for e in chunk]
            report.export_s = round(report.export_s + time.monotonic() - t0, 2)
            timed, refs = _with_retries(
                lambda: measure_models(agent, paths, ref_path, settings.rounds, threshold, max_rem, watch),
                settings.retries, f"device {profile.name}")
            if refs and nominal is None:
                nominal = refs[0].latency_ms
            records = reference_records(space, refs, nominal)
            records += [to_record(t, e.resolution, e.key, "block", nominal) for t, e in zip(timed, chunk)]
            written = commit(store, report.run_id, fp_id, space, records)
            report.entries_measured += sum(1 for r in written if not r["noisy"])
            report.entries_noisy += sum(1 for r in written if r["noisy"])
            report.entries_reused += len(chunk) - len(written)
            report.entries_remeasured += sum(1 for t in timed if t.attempts > 1)
            report.batches_redone = watch.redone if watch is not None else 0
            if progress:
                progress(profile.name, len(chunk), len(todo))
        if report.entries_noisy == 0:
            measure_calibration_subnets(profile, space, res, store, fp_id, settings, report, stop)
        store.finish_run(report.run_id, "done")
        report.status = "done" if report.entries_noisy == 0 else "incomplete"
        return report
    except KeyboardInterrupt:
        if report.run_id is not None:
            store.finish_run(report.run_id, "interrupted")
        report.status = "interrupted"
        raise
    except OFABenchError as exc:
        if report.run_id is not None:
            store.finish_run(report.run_id, "failed")
        report.status = "failed"
        report.error = " ".join(str(exc).split())
        return report
    finally:
        report.duration_s = round(time.monotonic() - start, 2)
        if agent is not None:
            agent.close()
        store.close()


def calibration_configs(space: SearchSpace, resolutions: Sequence[int], table_sum, n: int,
                        rng: np.random.Generator) -> list[SubnetConfig]:
    """`n` whole subnets that span the table: the smallest and the largest at the lowest and the highest
    resolution, then subnets at evenly spaced quantiles of the table sum of 512 random ones (distinct)."""
    lo, hi = min(resolutions), max(resolutions)
    ends = [space.smallest(lo), space.largest(hi), space.smallest(hi), space.largest(lo)]
    out = list(dict.fromkeys(ends))[:n]
    if len(out) < n:
        pool = space.sample(rng, 512, list(resolutions))
        sums = np.asarray(table_sum(pool))
        order = np.argsort(sums)
        for q in np.linspace(0, len(pool) - 1, n - len(out) + 2)[1:-1]:
            cfg = pool[int(order[int(round(q))])]
            if cfg not in out:
                out.append(cfg)
    return out


def measure_calibration_subnets(profile, space: SearchSpace, res: Sequence[int], store, fp_id: str,
                                settings: MeasureSettings, report: DeviceReport,
                                stop: threading.Event | None = None) -> None:
    """Measure the calibration subnets the table does not have yet, the way `validate` measures (passes beside
    the reference block, a fresh agent with validate's timing settings), into the profile's run."""
    if settings.calibration_subnets <= 0:
        return
    from agents import connect
    from bench.lut import load_device_table
    from bench.predictor import Calibration, LatencyPredictor
    from bench.validate import ValidateSettings, measure_subnets

    table = load_device_table(profile.name, space, store)
    plain = LatencyPredictor.from_table(table, space, calibration=Calibration())
    usable = [r for r in res if r in plain.resolutions]
    if not usable:
        return
    cfgs = calibration_configs(space, usable, plain.table_sum, settings.calibration_subnets,
                               np.random.default_rng(len(usable)))
    todo = [c for c in cfgs if (c.r, c.to_string()) not in table.subnets]
    if todo:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        if report.run_id is None:
            report.run_id = store.start_run(profile.name, fp_id, space.name, "profile",
                                            {"resolutions": list(res), **settings.__dict__},
                                            {"calibration_subnets": len(todo), "profile": profile.to_dict()})
        vs = ValidateSettings(n=len(todo), reference=settings.reference)
        with connect(agent_profile(profile, vs.measure_settings(profile))) as agent:
            measure_subnets(agent, store, report.run_id, fp_id, space, todo, vs, 0.01, profile.model_format,
                            value_nominal=table.nominal_ms, rng=np.random.default_rng(1),
                            watch=ReferenceWatch() if settings.reference else None)
        report.subnets_measured = len(todo)
        table = load_device_table(profile.name, space, store)
    report.calibration = LatencyPredictor.from_table(table, space).calibration.to_dict()


def profile_devices(devices: Sequence[str], space: SearchSpace, store_target: str,
                    resolutions: Sequence[int] | None, settings: MeasureSettings = MeasureSettings(),
                    show_progress: bool = True) -> list[DeviceReport]:
    """One worker thread per device, a progress bar per device on stderr. Reports in the order given."""
    from devices import get_device

    from bench.store import open_store

    profiles = [get_device(d) for d in devices]  # unknown device: one-line error before anything starts
    check_resolutions(space, resolutions)
    open_store(store_target).close()  # a bad store, too, before any progress bar is drawn
    stop = threading.Event()
    reports: dict[int, DeviceReport] = {}
    errors: dict[int, BaseException] = {}
    bar = StderrProgress(show_progress, unit="entries")

    def work(i: int, prof) -> None:
        try:
            reports[i] = profile_device(prof, space, store_target, resolutions, settings, bar.update, stop)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            errors[i] = exc

    with bar:
        workers = Workers()
        for i, prof in enumerate(profiles):
            workers.start(f"profile-{prof.name}", work, i, prof)
        try:
            workers.wait()
        except KeyboardInterrupt:
            # Stop the runner calls in flight (their processes run in sessions of their own, out of Ctrl-C's
            # reach), so that every worker ends its run as interrupted now, not after its current batch.
            stop.set()
            interrupt_calls()
            try:
                workers.wait()
            finally:
                clear_interrupt()
            raise
    for i in sorted(errors):
        raise errors[i]
    return [reports[i] for i in range(len(profiles))]
