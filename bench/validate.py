"""Predicted vs measured: time N random subnets end to end on a device and score the table's predictions.

A subnet is timed in several *passes*. Each pass runs every pending subnet once, in batches with the reference
subnet (interleaved rounds inside one runner invocation; `bench.measure.reference_subnet`, a subnet of typical
size, not the tiny reference block the table entries are timed beside), in a fresh random order, so a subnet
meets different neighbours, processes and moments of the machine's drift in each pass. Its value is the
median of its reference-normalised pass values (the run's reference level in full, each pass's own deviation
from it as far as the run's subnets share it: `bench.measure.tracking`); subnets whose passes still disagree
(relative standard error of that median above `precision`) get more passes, up to `max_passes`. One
invocation's value of a whole subnet can be off by several percent (process placement, drift no reference
follows fully); the median of a few independent ones is not. Every pass is stored as a kind "subnet"
measurement; the table's subnet value (which calibrates the predictor) is the median over the passes of the
latest run that timed it.

The scores are honest out-of-sample figures: each subnet is predicted with a calibration fitted without it
(k-fold over this run, plus older subnets). `before` scores the calibration the device had before the run (the
profile's subnets and older validations) on the same subnets: what validating added.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ofa_core.errors import OFABenchError
from ofa_core.space import SearchSpace, SubnetConfig

from bench.measure import keys
from bench.measure import (PROTOCOL_SUBNET_REFERENCE, MeasureSettings, ReferenceWatch, Timed, agent_profile,
                           measure_models, reference_records, reference_subnet, subnet_reference_nominal_ms, to_record)

SUBNET_PREFIX = "subnet:"


class ValidateError(OFABenchError):
    """Validation could not run (no table, fingerprint changed, bad arguments)."""


@dataclass(frozen=True)
class ValidateSettings:
    n: int = 60
    seed: int = 0
    resolutions: tuple[int, ...] | None = None
    remeasure: bool = False
    rounds: int = 3
    per_call: int = 6  # subnets timed in one runner invocation
    min_duration_s: float | None = None  # per subnet and pass; default max(0.5, the profile's)
    passes: int = 3       # every subnet is timed in at least this many separate invocations ...
    max_passes: int = 6   # ... and in up to this many while its passes disagree
    precision: float = 0.01  # ... by more than this relative standard error of their median
    # per subnet and pass, as the protocol warms every model (MeasureSettings); None: the device profile's
    warmup_s: float | None = MeasureSettings.warmup_s
    folds: int = 5
    reference: bool = True
    statistic: str = "median"  # per-measurement statistic of the raw samples (see bench.measure.STATISTICS)
    batch: int = 1  # the batch size: the table validated, and the samples each subnet takes per inference

    def measure_settings(self, profile) -> MeasureSettings:
        """The agent's timing settings for one pass on the device `profile`."""
        min_dur = self.min_duration_s if self.min_duration_s is not None else max(0.5, profile.min_duration_s)
        return MeasureSettings(rounds=self.rounds, warmup_s=self.warmup_s, min_duration_s=min_dur)


# ---- metrics (pure) --------------------------------------------------------------------------------------
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties handled): scipy's, NaN for fewer than two points or a constant side."""
    from scipy.stats import kendalltau

    if len(x) < 2:
        return float("nan")
    return float(kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float)).statistic)


def accuracy_metrics(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> dict:
    p, m = np.asarray(predicted_ms, dtype=float), np.asarray(measured_ms, dtype=float)
    rel = (p - m) / m
    return {
        "n": int(len(m)),
        "mape": float(np.mean(np.abs(rel))) if len(m) else float("nan"),
        "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))) if len(m) else float("nan"),
        "within_5pct": float(np.mean(np.abs(rel) <= 0.05)) if len(m) else float("nan"),
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)) if len(m) else float("nan"),
        "max_abs_error_pct": float(100 * np.max(np.abs(rel))) if len(m) else float("nan"),
        "mean_error_pct": float(100 * np.mean(rel)) if len(m) else float("nan"),
        "kendall_tau": kendall_tau(p, m),
    }


def cross_validated(predictor, table, cfgs: Sequence[SubnetConfig], measured_ms: np.ndarray, folds: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Each config's calibrated prediction from a calibration that never saw it: k-fold over `cfgs`, plus
    whatever subnets the table already held (minus these configs)."""
    from bench.table import Calibration, EntryStats, LatencyTable

    n = len(cfgs)
    keys = [(c.r, c.to_string()) for c in cfgs]
    older = {k: v for k, v in table.subnets.items() if k not in set(keys)}
    fold_of = rng.permutation(n) % max(1, min(folds, n))
    out = np.empty(n)
    sums = predictor.table_sum(cfgs)
    entries = predictor.n_entries(cfgs)
    mparams = predictor.mparams(cfgs)
    for f in np.unique(fold_of):
        train = dict(older)
        for i in np.flatnonzero(fold_of != f):
            train[keys[i]] = EntryStats(float(measured_ms[i]), float(measured_ms[i]), 0.0, 1)
        t = LatencyTable(table.device, table.fingerprint_id, table.space, table.version, table.entries, train)
        cal = predictor.fit_calibration(t) if train else Calibration()
        idx = np.flatnonzero(fold_of == f)
        out[idx] = cal.apply(np.array([cfgs[i].r for i in idx]), sums[idx], entries[idx], mparams[idx])
    return out


# ---- measuring subnets -----------------------------------------------------------------------------------
def subnet_pass(t: Timed, statistic: str) -> tuple[float, float | None]:
    """A measured subnet's latency under `statistic` and its reference's under the same statistic (None when
    it was timed without one)."""
    from bench.measure import sample_statistic

    value = sample_statistic(t.measurement.samples_ms, statistic) or t.measurement.latency_ms
    ref = (t.ref_stats or {}).get(statistic) or (t.ref_ms if statistic == "median" else None)
    return value, ref


def median_precision(values: Sequence[float]) -> float:
    """Relative standard error of the median of a few pass values (normal approximation, 1.2533 sigma/sqrt(n));
    infinite for fewer than two."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return math.inf
    # robust sigma: the median absolute deviation, floored by a quarter of the sample std so that two
    # values (MAD = half their gap) and three identical-but-one values are not called exact
    mad = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    sigma = max(mad, 0.25 * float(np.std(v, ddof=1)))
    return 1.2533 * sigma / math.sqrt(len(v)) / max(float(np.median(v)), 1e-12)


@dataclass
class SubnetTiming:
    """One subnet over all its passes: the pass values (rescaled to the table's reference speed when it has one,
    `bench.measure.tracking`), the raw ones, each pass's reference (None: timed without), the load average of
    each invocation, and the run's tracking coefficient the values were rescaled with."""

    values_ms: list[float]
    raw_ms: list[float]
    loads: list[float]
    refs_ms: list = field(default_factory=list)
    tracking: float | None = None

    @property
    def value_ms(self) -> float:
        return float(np.median(self.values_ms))

    @property
    def raw_value_ms(self) -> float:
        return float(np.median(self.raw_ms))

    @property
    def precision(self) -> float:
        return median_precision(self.values_ms)


def measure_subnets(agent, store, run_id: int, fp_id: str, space: SearchSpace, cfgs: Sequence[SubnetConfig],
                    settings: ValidateSettings, threshold: float, fmt: str, progress=None,
                    value_nominal: float | None = None, rng: np.random.Generator | None = None,
                    watch: ReferenceWatch | None = None, paths: Sequence[Path] | None = None,
                    precision: str = "fp32", batch: int = 1) -> list[SubnetTiming]:
    """Export and time `cfgs` in passes (see the module doc), committing every invocation as it is measured.
    Values are expressed at `value_nominal` (the reference subnet's speed the table's subnets are expressed at,
    `LatencyTable.subnet_nominal_ms`) when given. `paths`: models already exported for `cfgs` (e.g. with trained
    weights), timed instead of fresh exports. `precision`: the device's. `batch`: the batch size the models take
    (and the reference with them); a value is the whole batch's."""
    from bench.export import export_subnet

    rng = rng if rng is not None else np.random.default_rng(settings.seed + 7)
    ref_path = (export_subnet(space, reference_subnet(space), fmt, precision=precision, batch=batch)
                if settings.reference else None)
    nominal = subnet_reference_nominal_ms(store, fp_id, space, batch)
    paths = (list(paths) if paths is not None
             else [export_subnet(space, c, fmt, precision=precision, batch=batch) for c in cfgs])
    if len(paths) != len(cfgs):
        raise ValidateError(f"{len(paths)} model files for {len(cfgs)} subnets")
    out = [SubnetTiming([], [], []) for _ in cfgs]
    min_passes = max(1, settings.passes)
    max_passes = max(min_passes, settings.max_passes)
    done = 0
    for p in range(max_passes):
        todo = [i for i, t in enumerate(out) if p < min_passes or t.precision > settings.precision]
        if not todo:
            break
        total = max(len(cfgs) * min_passes, done + len(todo))  # an extra pass adds its timings to the total
        order = [todo[j] for j in rng.permutation(len(todo))]
        for b in range(0, len(order), settings.per_call):
            chunk = order[b:b + settings.per_call]
            timed, refs = measure_models(agent, [paths[i] for i in chunk], ref_path, settings.rounds, threshold, 0,
                                         watch)
            if refs and nominal is None:
                nominal = refs[0].latency_ms
            records = reference_records(space, refs, nominal, batch, subnet=True)
            records += [to_record(t, cfgs[i].r, SUBNET_PREFIX + cfgs[i].to_string(), "subnet", nominal, batch,
                                  PROTOCOL_SUBNET_REFERENCE) for t, i in zip(timed, chunk)]
            store.add_measurements(run_id, records)
            for t, i in zip(timed, chunk):
                value, ref = subnet_pass(t, settings.statistic)
                out[i].raw_ms.append(value)
                out[i].refs_ms.append(ref)
                load = t.measurement.env.get(keys.LOADAVG)
                if load:
                    out[i].loads.append(float(load[0]))
            done += len(chunk)
            if progress:
                progress(done, total)
        _rescale_passes(out, value_nominal)  # before the next pass asks which subnets still disagree
    return out


def _rescale_passes(timed: Sequence[SubnetTiming], nominal: float | None) -> None:
    """Every subnet's pass values at the `nominal` reference speed, with the tracking coefficient and the
    reference level of all the passes so far (`bench.measure.tracking`); raw values without a nominal speed."""
    from bench.measure.tracking import rescale_run

    values, beta = rescale_run([list(zip(t.raw_ms, t.refs_ms)) for t in timed], nominal)
    referenced = nominal and any(r for t in timed for r in t.refs_ms)
    for t, v in zip(timed, values):
        t.values_ms, t.tracking = v, beta if referenced else None


def _mean_load(timed: Sequence[SubnetTiming]) -> float | None:
    loads = [x for t in timed for x in t.loads]
    return round(float(np.mean(loads)), 2) if loads else None


def timed_subnet_run(profile, store_target, space: SearchSpace, cfgs: Sequence[SubnetConfig],
                     settings: ValidateSettings, kind: str, params: dict, value_nominal: float | None,
                     rng: np.random.Generator, paths: Sequence[Path] | None = None) -> list[SubnetTiming]:
    """Time `cfgs` on the device as `validate` does (`settings`), in a run of its own of `kind` with `params`
    (the benchmarks' held-out and calibration subnets: the device's fingerprint registered, the run marked done,
    or interrupted with what it measured kept), values expressed at `value_nominal`."""
    from agents import connect
    from bench.store import using_store

    ms = settings.measure_settings(profile)
    with using_store(store_target) as store, connect(agent_profile(profile, ms)) as agent:
        fp_id = store.register_fingerprint(profile.name, agent.fingerprint())
        with store.running(profile.name, fp_id, space.name, kind, params, {}) as run_id:
            return measure_subnets(agent, store, run_id, fp_id, space, cfgs, settings, 0.01, profile.model_format,
                                   value_nominal=value_nominal, rng=rng, watch=ReferenceWatch() if settings.reference
                                   else None, paths=paths, precision=profile.precision, batch=settings.batch)


@dataclass
class _Passes:
    """What a validate run measured on the device: its fingerprint, every subnet's timings (`second`: the
    independent remeasure, when asked) and the reference watch of the run."""

    fingerprint: dict
    first: list[SubnetTiming]
    second: list[SubnetTiming] | None
    watch: ReferenceWatch | None


def _measure_run(profile, space: SearchSpace, store_target, table, cfgs: Sequence[SubnetConfig],
                 res: list[int], settings: ValidateSettings, ms: MeasureSettings, progress) -> _Passes:
    """Time `cfgs` on the device in one validate run of the store, once its fingerprint is checked against
    the one its table was measured under."""
    from agents import connect
    from bench.store import using_store

    with using_store(store_target) as store:
        with connect(agent_profile(profile, ms)) as agent:
            fp = agent.fingerprint()
            fp_id = store.register_fingerprint(profile.name, fp)
            if table.fingerprint_id not in (fp_id, "anchors"):
                raise ValidateError(f"{profile.name} now reports fingerprint {fp_id}, but its table was measured "
                                    f"under {table.fingerprint_id}; re-profile it")
            if table.fingerprint_id == "anchors":
                raise ValidateError(f"{profile.name} has only the published table; profile it on this host first")
            with store.running(profile.name, fp_id, space.name, "validate",
                               {**settings.__dict__, "resolutions": res}, {"table_version": table.version}) as run_id:
                watch = ReferenceWatch() if settings.reference else None
                first = measure_subnets(agent, store, run_id, fp_id, space, cfgs, settings, 0.01,
                                        profile.model_format, progress, table.subnet_nominal_ms,
                                        np.random.default_rng([settings.seed, 1]), watch, precision=profile.precision,
                                        batch=settings.batch)
                second = None
                if settings.remeasure:  # an independent second set of passes, after the first
                    second = measure_subnets(agent, store, run_id, fp_id, space, cfgs, settings, 0.01,
                                             profile.model_format, progress, table.subnet_nominal_ms,
                                             np.random.default_rng([settings.seed, 2]), watch,
                                             precision=profile.precision, batch=settings.batch)
    return _Passes(fp, first, second, watch)


def _score_run(profile, space: SearchSpace, table, plain, cfgs: Sequence[SubnetConfig], res: list[int],
               settings: ValidateSettings, run: _Passes, start: float, plot_path: str | None) -> dict:
    """The report of a validate run: the table's cross-validated scores on the measured subnets, per
    resolution, against the calibration before the run and between the two sets of passes, each subnet's
    figures, and the predicted-vs-measured figure at `plot_path`."""
    fp, first, second, watch = run.fingerprint, run.first, run.second, run.watch
    measured = np.array([t.value_ms for t in first])
    raw = np.array([t.raw_value_ms for t in first])
    sums = plain.table_sum(cfgs)
    calibrated = cross_validated(plain, table, cfgs, measured, settings.folds, np.random.default_rng(settings.seed + 1))
    # the calibration the device had before this run, on this run's subnets (which it never saw)
    prior = plain.fit_calibration(table, exclude={(c.r, c.to_string()) for c in cfgs})
    before = prior.apply(np.array([c.r for c in cfgs]), sums, plain.n_entries(cfgs), plain.mparams(cfgs))
    doc = {"device": profile.name, "space": space.name, "batch": settings.batch, "table_version": table.version,
           "fingerprint_id": table.fingerprint_id,
           "transferred_share": table.transferred_share, "provenance": table.provenance(),
           "resolutions": res, "seed": settings.seed, "simulated": bool(profile.simulated or fp.get("simulated")),
           **accuracy_metrics(calibrated, measured),
           "table_sum": accuracy_metrics(sums, measured),
           "before": {"calibration_text": prior.describe(), **accuracy_metrics(before, measured)},
           "drift_normalised": bool(settings.reference), "statistic": settings.statistic,
           # what `predict` and `search` use from now on: fitted on every subnet measured here
           "calibration": plain.fit(cfgs, measured).to_dict(),
           "loadavg_1min": _mean_load(first),
           "invocations_redone": watch.redone if watch is not None else 0,
           "passes": {"min": settings.passes, "max": settings.max_passes, "mean": float(np.mean([len(t.values_ms) for t in first])),
                      "median_precision": float(np.median([t.precision for t in first]))},
           "raw_vs_normalised_pct": float(100 * np.mean(np.abs(raw / measured - 1))),
           # the share of the reference subnet's pass-to-pass movement the passes were rescaled by (None: raw)
           "reference_tracking": first[0].tracking if first else None,
           "duration_s": round(time.monotonic() - start, 1),
           "per_resolution": {}}
    for r in res:
        m = np.array([c.r == r for c in cfgs])
        if m.any():
            doc["per_resolution"][str(r)] = {k: v for k, v in accuracy_metrics(calibrated[m], measured[m]).items()
                                             if k in ("n", "mape", "within_5pct", "within_10pct", "kendall_tau")}
    if second is not None:
        again_ms = np.array([t.value_ms for t in second])
        rel = np.abs(again_ms / measured - 1)
        doc["remeasure_within_5pct"] = float(np.mean(rel <= 0.05))
        doc["remeasure_within_10pct"] = float(np.mean(rel <= 0.10))
        doc["remeasure_mape"] = float(np.mean(rel))
    doc["subnets"] = [{"config": c.to_string(), "resolution": c.r, "measured_ms": float(m), "raw_ms": float(w),
                       "table_sum_ms": float(s), "predicted_ms": float(p), "pass_ms": [round(v, 6) for v in t.values_ms]}
                      for c, m, w, s, p, t in zip(cfgs, measured, raw, sums, calibrated, first)]
    if plot_path:
        from bench.plots import predicted_vs_measured

        predicted_vs_measured(calibrated, measured, [c.r for c in cfgs], plot_path,
                              title=f"{profile.name} {space.name}: n={len(cfgs)}, "
                                    f"±5% {doc['within_5pct']:.0%}, τ={doc['kendall_tau']:.3f}")
        doc["plot"] = str(plot_path)
    return doc


def validate_device(device: str, space: SearchSpace, store_target, settings: ValidateSettings,
                    plot_path: str | None = None, progress=None) -> dict:
    """Measure `settings.n` random subnets on the device and score the device's table against them.
    `store_target`: an open Store or a store address (`bench.store.using_store`)."""
    from bench.table import Calibration, LatencyPredictor, load_device_table
    from devices import get_device

    if settings.n < 2:
        raise ValidateError("--subnets must be at least 2")
    if settings.passes < 1 or settings.max_passes < settings.passes:
        raise ValidateError("--passes must be at least 1 and --max-passes at least --passes")
    profile = get_device(device)
    table = load_device_table(profile.name, space, store_target, statistic=settings.statistic, batch=settings.batch)
    plain = LatencyPredictor.from_table(table, space, calibration=Calibration())
    res = list(settings.resolutions) if settings.resolutions else plain.resolutions
    missing = [r for r in res if r not in plain.resolutions]
    if missing:
        raise ValidateError(f"the table of {profile.name} has no complete resolution {missing[0]} "
                            f"(it holds {', '.join(map(str, plain.resolutions))})")
    rng = np.random.default_rng(settings.seed)
    cfgs = space.sample(rng, settings.n, res)
    ms = settings.measure_settings(profile)
    start = time.monotonic()
    run = _measure_run(profile, space, store_target, table, cfgs, res, settings, ms, progress)
    return _score_run(profile, space, table, plain, cfgs, res, settings, run, start, plot_path)


def rescore(device: str, space: SearchSpace, store_target, statistic: str = "median", seed: int = 0,
            folds: int = 5, plot_path: str | None = None, batch: int = 1) -> dict:
    """Score the table against the subnets already measured on the device (no new measurement): the same
    cross-validated figures as `validate_device`, e.g. to compare statistics on one set of raw samples."""
    from bench.table import Calibration, LatencyPredictor, load_device_table

    table = load_device_table(device, space, store_target, statistic=statistic, batch=batch)
    plain = LatencyPredictor.from_table(table, space, calibration=Calibration())
    items = sorted((k, v) for k, v in table.subnets.items() if k[0] in plain.resolutions)
    if len(items) < 2:
        raise ValidateError(f"{device} has {len(items)} measured subnets in the store; run validate first")
    cfgs = [SubnetConfig.from_string(s, space.max_depth) for (_, s), _ in items]
    measured = np.array([v.value_ms for _, v in items])
    sums = plain.table_sum(cfgs)
    empty = type(table)(table.device, table.fingerprint_id, table.space, table.version, table.entries, {})
    calibrated = cross_validated(plain, empty, cfgs, measured, folds, np.random.default_rng(seed + 1))
    doc = {"device": device, "space": space.name, "batch": batch, "statistic": statistic,
           "table_version": table.version,
           "transferred_share": table.transferred_share, "provenance": table.provenance(),
           "resolutions": sorted({c.r for c in cfgs}), **accuracy_metrics(calibrated, measured),
           "table_sum": accuracy_metrics(sums, measured), "rescored": True}
    if plot_path:
        from bench.plots import predicted_vs_measured

        predicted_vs_measured(calibrated, measured, [c.r for c in cfgs], plot_path,
                              title=f"{device} {space.name} ({statistic}): n={len(cfgs)}, "
                                    f"±5% {doc['within_5pct']:.0%}, τ={doc['kendall_tau']:.3f}")
        doc["plot"] = str(plot_path)
    return doc
