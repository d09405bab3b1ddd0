"""Profile a device: measure every missing table entry of a space, in small committed groups, resumably.

A table is for one batch size B: every entry and the reference are exported taking B samples, (B, C, R, R), and
timed as one inference of the whole batch. A device profile's `batch` list (default [1]) says which tables
`profile` makes; each is measured in turn, as a table of its own.

Each batch goes to the device as one runner invocation holding a fixed *reference* model next to the entries,
interleaved round-robin (`rounds`). The reference's latency in that invocation, against its first-ever latency
on this fingerprint, gives the machine's speed at that moment; every measurement stores `normalised_ms`, its
latency at the nominal speed, so slow drift and load between batches (and between profiling and validation)
cancel out. Entries whose spread stays high are re-measured (with the reference again); a batch is committed
in one transaction, so after a crash or kill -9 the same command measures exactly what is missing.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from agents.transports.base import clear_interrupt, interrupt_calls
from ofa_core.errors import OFABenchError
from ofa_core.space import SearchSpace, SubnetConfig

from bench.table import candidates
from bench.table.predictor import space_ends
from bench.measure import keys
from bench.measure import (MeasureSettings, ProfileError, ReferenceWatch, agent_profile,  # noqa: F401
                           check_batch_sizes, commit, measure_models, reference_entry, reference_nominal_ms,
                           reference_records, reference_subnet, to_record)
from bench.progress import StderrProgress
from bench.store import StoreLike, using_store
from bench.workers import Workers

#: an ImageNet space has 25 resolutions (2400 entries); without --resolutions these three are profiled
DEFAULT_IMAGENET_RESOLUTIONS = (160, 192, 224)
#: spaces with at most this many resolutions are profiled whole by default
SMALL_SPACE_RESOLUTIONS = 8


@dataclass
class DeviceReport:
    device: str
    space: str
    resolutions: list[int]
    batch: int = 1  # the batch size of this table (latencies are the whole batch's)
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
    export_s: float = 0.0  # seconds measuring waited for exported models
    convert_s: float = 0.0  # seconds converter workers spent on this run's .tflite files (beside measuring)
    convert_cpu_s: float = 0.0  # their CPU seconds (the load-independent cost of converting)
    status: str = "running"
    error: str | None = None
    simulated: bool = False
    few_shot: int | None = None  # --few-shot K: K entries measured, the rest transferred (bench.transfer)
    entries_transferred: int = 0
    transfer: dict | None = None  # the transfer model: its kind, sources, fit and leave-one-out error

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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

    start = time.monotonic()
    first = None
    for attempt in range(retries + 1):
        try:
            return fn()
        except (TransportError, AgentError) as exc:
            text = " ".join(str(exc).split())
            first = first or text
            if attempt >= retries:
                # Each attempt has its own limit (in the message: a call's timeout, or the check that found the
                # device silent); say what the whole wait came to, and the first failure when it differs.
                also = f"; first attempt: {first if len(first) <= 240 else first[:239] + '…'}" if first != text else ""
                raise ProfileError(f"{what}: {text} (gave up after {time.monotonic() - start:.0f} s, "
                                   f"{retries + 1} attempts{also})") from None
            time.sleep(min(2.0 ** attempt, 5.0))


def profile_device(device, space: SearchSpace, store_target: StoreLike, resolutions: Sequence[int] | None,
                   settings: MeasureSettings = MeasureSettings(), progress=None,
                   stop: threading.Event | None = None, few_shot: int | None = None, batch: int = 1,
                   thread: bool = False) -> DeviceReport:
    """Measure every missing entry of `space` at `resolutions` on one device at batch size `batch` into the store
    (an open Store, a second connection to it with `thread=True`, or an address); returns what was done.
    `progress(device, advanced, total)` after each committed invocation; `few_shot` K: see `bench.transfer`."""
    from agents import connect
    from bench.export import ExportQueue
    from devices import get_device

    profile = get_device(device) if isinstance(device, str) else device
    res = check_resolutions(space, resolutions)
    entries = candidates(space, res)
    report = DeviceReport(device=profile.name, space=space.name, resolutions=res, batch=int(batch),
                          simulated=bool(profile.simulated), few_shot=few_shot, entries_total=len(entries))
    label = profile.name if batch == 1 else f"{profile.name} batch {batch}"  # progress bars, one per table
    start = time.monotonic()
    held = ExitStack()
    store = held.enter_context(using_store(store_target, thread=thread))
    agent = exports = None
    try:
        # Models convert in workers while this thread measures (.tflite: about a second each); the reference
        # first, so the workers start while the device is reached.
        ref = reference_entry(space)
        exports = ExportQueue(profile.model_format, precision=profile.precision, batch=batch,
                              progress=(lambda done, total: progress(f"{label} .tflite", 1, total))
                              if progress else None)
        if settings.reference:
            exports.add_entries(space, [ref])
        agent = _with_retries(lambda: connect(agent_profile(profile, settings)), settings.retries,
                              f"device {profile.name}")
        fp_id = _register(agent, profile, store, settings, report)
        todo, plan = _entries_to_measure(store, fp_id, space, res, entries, settings, report, few_shot, batch)
        exports.add_entries(space, todo)
        if todo and settings.calibration_subnets > 0:  # the subnets every calibration starts with, next
            exports.add_subnets(space, calibration_ends(space, res, settings.calibration_subnets))
        if progress:
            progress(label, 0, len(todo))
        if not todo:
            _transfer_rest(plan, profile.name, space, res, store, fp_id, settings, report)
            measure_calibration_subnets(profile, space, res, store, fp_id, settings, report, stop, exports, batch)
            _end_run(store, report, "done")
            return report
        report.run_id = store.start_run(profile.name, fp_id, space.name, "profile",
                                        {"resolutions": res, **settings.__dict__, "few_shot": few_shot,
                                         "batch": batch},
                                        {"entries_total": len(entries), "entries_todo": len(todo),
                                         "profile": profile.to_dict()})
        ref_path = exports.entry(space, ref) if settings.reference else None
        _measure_entries(agent, profile, store, fp_id, space, todo, ref_path, exports, settings, report, batch,
                         lambda n: progress(label, n, len(todo)) if progress else None, stop)
        _transfer_rest(plan, profile.name, space, res, store, fp_id, settings, report)
        if report.entries_noisy == 0:
            measure_calibration_subnets(profile, space, res, store, fp_id, settings, report, stop, exports, batch)
        store.finish_run(report.run_id, "done")
        report.status = "done" if report.entries_noisy == 0 else "incomplete"
        return report
    except KeyboardInterrupt:
        if exports is not None:
            exports.close(kill=True)  # conversions still queued must not delay the exit
        _end_run(store, report, "interrupted")
        raise
    except OFABenchError as exc:
        _end_run(store, report, "failed")
        report.error = " ".join(str(exc).split())
        return report
    except BaseException:  # a bug or a broken install: the run is failed, not left running
        _end_run(store, report, "failed")
        raise
    finally:
        report.duration_s = round(time.monotonic() - start, 2)
        if exports is not None:
            exports.close()
            report.export_s = round(exports.waited_s, 2)
            report.convert_s = round(exports.convert_s, 2)
            report.convert_cpu_s = round(exports.convert_cpu_s, 2)
        if agent is not None:
            agent.close()
        held.close()


def _register(agent, profile, store, settings: MeasureSettings, report: DeviceReport) -> str:
    """The device's fingerprint, registered in the store; returns its id."""
    fp = _with_retries(agent.fingerprint, settings.retries, f"device {profile.name}")
    report.simulated = report.simulated or bool(fp.get("simulated"))
    report.fingerprint_id = store.register_fingerprint(profile.name, fp)
    return report.fingerprint_id


def _end_run(store, report: DeviceReport, status: str) -> None:
    """The run (if one was opened) and the report end with `status`."""
    if report.run_id is not None:
        store.finish_run(report.run_id, status)
    report.status = status


def _entries_to_measure(store, fp_id: str, space: SearchSpace, res: list[int], entries: list, settings: MeasureSettings,
                        report: DeviceReport, few_shot: int | None, batch: int) -> tuple[list, object]:
    """The entries this run measures (those without a cell; with `remeasure_raw`, also raw cells; with
    `few_shot`, only the plan's picks) and the few-shot plan (None without)."""
    done = store.measured_keys(fp_id, space.name, res, batch=batch)
    if settings.remeasure_raw and settings.reference:
        done -= {(int(row["resolution"]), row["key"]) for row in store.latest_measurements(fp_id, space.name,
                                                                                          kind="block", batch=batch)
                 if not (row.get("env") or {}).get(keys.REFERENCE_MS)}
    todo = [e for e in entries if (e.resolution, e.key) not in done]
    report.entries_reused = len(entries) - len(todo)
    plan = None
    if few_shot is not None:  # measure the K entries the plan picks; the rest are transferred afterwards
        from bench.transfer import plan_few_shot

        plan = plan_few_shot(store, space, res, report.device, done, few_shot, batch=batch)
        todo = [e for e in todo if e in plan.measure]
        report.entries_reused = len(done & {(e.resolution, e.key) for e in entries})
    return todo, plan


def _measure_entries(agent, profile, store, fp_id: str, space: SearchSpace, todo: list, ref_path, exports,
                     settings: MeasureSettings, report: DeviceReport, batch: int, advanced,
                     stop: threading.Event | None) -> None:
    """Time `todo` in invocations of `settings.per_call` entries beside the reference block and commit each."""
    threshold = settings.precision
    max_rem = settings.max_remeasure if settings.max_remeasure is not None else profile.max_remeasure
    nominal = reference_nominal_ms(store, fp_id, space, batch)
    watch = ReferenceWatch() if settings.reference else None
    for i in range(0, len(todo), settings.per_call):
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        chunk = todo[i:i + settings.per_call]
        paths = [exports.entry(space, e) for e in chunk]
        report.export_s = round(exports.waited_s, 2)
        timed, refs = _with_retries(
            lambda: measure_models(agent, paths, ref_path, settings.rounds, threshold, max_rem, watch),
            settings.retries, f"device {profile.name}")
        if refs and nominal is None:
            nominal = refs[0].latency_ms
        records = reference_records(space, refs, nominal, batch)
        records += [to_record(t, e.resolution, e.key, "block", nominal, batch) for t, e in zip(timed, chunk)]
        written = commit(store, report.run_id, fp_id, space, records, dedupe=not settings.remeasure_raw,
                         batch=batch)
        report.entries_measured += sum(1 for r in written if not r["noisy"])
        report.entries_noisy += sum(1 for r in written if r["noisy"])
        report.entries_reused += len(chunk) - len(written)
        report.entries_remeasured += sum(1 for t in timed if t.attempts > 1)
        report.batches_redone = watch.redone if watch is not None else 0
        advanced(len(chunk))


def _transfer_rest(plan, device: str, space: SearchSpace, res: Sequence[int], store, fp_id: str,
                   settings: MeasureSettings, report: DeviceReport) -> None:
    """--few-shot: every entry not measured is predicted from the other devices' tables, into this run."""
    if plan is None:
        return
    from bench.transfer import fill_by_transfer

    if report.run_id is None:
        report.run_id = store.start_run(device, fp_id, space.name, "profile",
                                        {"resolutions": list(res), **settings.__dict__, "few_shot": plan.k,
                                         "batch": plan.batch}, {})
    report.transfer = fill_by_transfer(store, device, space, res, report.run_id, plan)
    report.entries_transferred = report.transfer["entries_transferred"]


def calibration_ends(space: SearchSpace, resolutions: Sequence[int], n: int) -> list[SubnetConfig]:
    """The first calibration subnets, known before the table: the smallest and the largest subnet at the
    lowest and the highest resolution (distinct, at most `n`)."""
    return space_ends(space, resolutions)[:n]


def calibration_configs(space: SearchSpace, resolutions: Sequence[int], table_sum, n: int,
                        rng: np.random.Generator) -> list[SubnetConfig]:
    """`n` whole subnets that span the table: the smallest and the largest at the lowest and the highest
    resolution, then one subnet from each of `n - 4` equal-count bands of the table sum of 512 random ones
    (in order of the sum), alternately one with many and one with few weights for its table sum (the 85th and
    15th percentile of weights per ms in its band).

    The spread in weights is what lets the calibration tell a table sum's error from a per-weight cost: entries
    timed one by one keep their weights in cache, a whole subnet loads them all. On `ofa-mbv3-fmnist` on this
    host that cost is about 0.3 ms per million weights, against 0.07-0.55 ms subnets."""
    out = calibration_ends(space, resolutions, n)
    k = n - len(out)
    if k > 0:
        pool = space.sample(rng, 512, list(resolutions))
        sums = np.asarray(table_sum(pool), dtype=np.float64)
        per_ms = np.asarray(space.params(pool), dtype=np.float64) / sums
        for i, band in enumerate(np.array_split(np.argsort(sums, kind="stable"), k)):
            ranked = band[np.argsort(per_ms[band], kind="stable")]
            cfg = pool[int(ranked[int(round((0.85 if i % 2 == 0 else 0.15) * (len(ranked) - 1)))])]
            if cfg not in out:
                out.append(cfg)
    return out


def calibration_todo(space: SearchSpace, resolutions: Sequence[int], cfgs: Sequence[SubnetConfig],
                     measured, n: int) -> list[SubnetConfig]:
    """Which of `cfgs` to measure when the table already holds the subnets `measured` ((resolution, string)
    keys): the ends it lacks, then as many of the others as it takes to have `n` at these resolutions. The
    picks between the ends follow the table sum, which moves a little with every re-normalisation; counting
    instead of matching keeps a complete calibration from growing by one subnet on every run."""
    missing = [c for c in cfgs if (c.r, c.to_string()) not in measured]
    ends = [c for c in calibration_ends(space, resolutions, n) if c in missing]
    have = sum(1 for r, _ in measured if r in set(resolutions))
    others = [c for c in missing if c not in ends]
    return ends + others[:max(0, n - have - len(ends))]


#: (passes, max_passes, precision) of the calibration subnets of a few-shot profile, timed for as long as its
#: entries are (`MeasureSettings.min_duration_s` per pass), all in one invocation per pass: two passes, a third
#: only where those two disagree by more than 2%. `validate` takes three to six passes to 1%, at least 0.5 s
#: each, six subnets per invocation. A transferred table errs by a few percent per entry; calibrating it on
#: subnets timed to 1% buys nothing there and costs about three times the device time, more than the K entries
#: themselves (and a runner that loads its models slowly, torch's, pays for every invocation).
FEW_SHOT_SUBNET_PASSES = (2, 3, 0.02)


def calibration_timing(profile, settings: MeasureSettings, n: int, few_shot: bool = False):
    """The `ValidateSettings` the calibration subnets of a profile are timed with: validate's, or (`few_shot`)
    `FEW_SHOT_SUBNET_PASSES` at the entries' duration."""
    from bench.validate import ValidateSettings

    if not few_shot:
        return ValidateSettings(n=n, reference=settings.reference)
    passes, max_passes, precision = FEW_SHOT_SUBNET_PASSES
    min_dur = settings.min_duration_s if settings.min_duration_s is not None else profile.min_duration_s
    return ValidateSettings(n=n, reference=settings.reference, passes=passes, max_passes=max_passes,
                            precision=precision, min_duration_s=min_dur, per_call=max(1, n))


def measure_calibration_subnets(profile, space: SearchSpace, res: Sequence[int], store, fp_id: str,
                                settings: MeasureSettings, report: DeviceReport,
                                stop: threading.Event | None = None, exports=None, batch: int = 1) -> None:
    """Measure the calibration subnets the table (of batch size `batch`) does not have yet, the way `validate`
    measures (passes beside the reference subnet, a fresh agent with validate's timing settings; fewer and
    shorter passes in a few-shot profile, `report.few_shot`: `calibration_timing`), into the profile's run."""
    if settings.calibration_subnets <= 0:
        return
    from agents import connect
    from bench.table import Calibration, LatencyPredictor, load_device_table
    from bench.validate import measure_subnets

    table = load_device_table(profile.name, space, store, batch=batch)
    plain = LatencyPredictor.from_table(table, space, calibration=Calibration())
    usable = [r for r in res if r in plain.resolutions]
    if not usable:
        return
    cfgs = calibration_configs(space, usable, plain.table_sum, settings.calibration_subnets,
                               np.random.default_rng(len(usable)))
    todo = calibration_todo(space, usable, cfgs, table.subnets, settings.calibration_subnets)
    if todo:
        if exports is not None:  # all at once (and the reference subnet): converting takes longer than timing
            exports.add_subnets(space, [reference_subnet(space)] + list(todo))
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        if report.run_id is None:
            report.run_id = store.start_run(profile.name, fp_id, space.name, "profile",
                                            {"resolutions": list(res), **settings.__dict__, "batch": batch},
                                            {"calibration_subnets": len(todo), "profile": profile.to_dict()})
        vs = calibration_timing(profile, settings, len(todo), report.few_shot is not None)
        paths = None
        if exports is not None:  # through the queue, so that the wait counts as export time, not device time
            if settings.reference:
                exports.subnet(space, reference_subnet(space))
            paths = [exports.subnet(space, c) for c in todo]
        with connect(agent_profile(profile, vs.measure_settings(profile))) as agent:
            measure_subnets(agent, store, report.run_id, fp_id, space, todo, vs, 0.01, profile.model_format,
                            value_nominal=table.subnet_nominal_ms, rng=np.random.default_rng(1),
                            watch=ReferenceWatch() if settings.reference else None, paths=paths,
                            precision=profile.precision, batch=batch)
        report.subnets_measured = len(todo)
        table = load_device_table(profile.name, space, store, batch=batch)
    report.calibration = LatencyPredictor.from_table(table, space).calibration.to_dict()


def profile_devices(devices: Sequence[str], space: SearchSpace, store_target: StoreLike,
                    resolutions: Sequence[int] | None, settings: MeasureSettings = MeasureSettings(),
                    show_progress: bool = True, few_shot: int | None = None,
                    batches: Sequence[int] | None = None) -> list[DeviceReport]:
    """One worker thread per device, a progress bar per device and table on stderr. Each device makes a table
    per batch size of `batches` (default: its profile's `batch` list), one after the other. Reports in the order
    given, a device's batches in their order. `few_shot` K: see `profile_device` (checked here first: another
    device's table of each batch size must be in the store)."""
    from devices import get_device

    profiles = [get_device(d) for d in devices]  # unknown device: one-line error before anything starts
    batches = check_batch_sizes(batches)
    plans = [batches or list(p.batch) for p in profiles]
    check_resolutions(space, resolutions)
    with using_store(store_target):  # a bad store, too, before any progress bar is drawn
        pass
    if few_shot is not None:
        from bench.transfer import check_few_shot

        for b in sorted({b for plan in plans for b in plan}):  # each batch size transfers from its own tables
            few_shot = check_few_shot(store_target, space, check_resolutions(space, resolutions),
                                      [p.name for p, plan in zip(profiles, plans) if b in plan], few_shot,
                                      lambda line: print(f"ofa-bench: {line}", file=sys.stderr), batch=b)
            if few_shot is None:  # K covers the whole table: a full profile, said once
                break
    stop = threading.Event()
    reports: dict[int, list[DeviceReport]] = {}
    errors: dict[int, BaseException] = {}
    bar = StderrProgress(show_progress, unit="entries")

    def work(i: int, prof) -> None:
        try:
            reports[i] = [profile_device(prof, space, store_target, resolutions, settings, bar.update, stop,
                                         few_shot, batch=b, thread=True) for b in plans[i]]
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
    return [r for i in range(len(profiles)) for r in reports[i]]
