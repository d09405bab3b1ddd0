"""How a farm worker measures one job on one device: the `DeviceSession` protocol and its two implementations.

The worker (`bench.farm.worker`) opens one session per device through a factory, asks it for the device's
fingerprint once, then hands it the jobs it claims and stores the records it returns.

`AgentSession` exports the entry's model (cached) and measures it with `agents.connect(profile)`;
`NullSession` times an empty call in-process: a simulated device for testing the queue and its throughput.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Protocol

from bench.farm.queue import Job
from ofa_core.errors import OFABenchError


class UnknownEntryError(OFABenchError):
    """A job names a table entry its space does not have (the space changed since it was queued)."""


class DeviceSession(Protocol):
    """What a worker needs from one device: its fingerprint, and a measurement record for a job."""

    def fingerprint(self) -> dict: ...

    def measure_job(self, job: Job) -> dict: ...

    def close(self) -> None: ...


class NullSession:
    """Simulated device: times an empty Python call in-process, so a job costs only the queue's own overhead.

    It measures for at least `min_duration_s` (like a runner's minimum duration) and says it is simulated in
    its fingerprint and in every record's environment."""

    def __init__(self, device: str, min_duration_s: float = 0.0, min_runs: int = 5):
        self.device = device
        self.min_duration_s = min_duration_s
        self.min_runs = min_runs

    def fingerprint(self) -> dict:
        return {"device": self.device, "runtime": "null-inprocess", "host": socket.gethostname(), "simulated": True}

    def measure_job(self, job: Job) -> dict:
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < self.min_runs or time.perf_counter() - start < self.min_duration_s:
            t0 = time.perf_counter()
            _nothing()
            samples.append((time.perf_counter() - t0) * 1e3)
        samples.sort()
        n = len(samples)
        mean = sum(samples) / n
        std = (sum((s - mean) ** 2 for s in samples) / n) ** 0.5
        return {"latency_ms": samples[n // 2], "mean_ms": mean, "std_ms": std, "p10_ms": samples[n // 10],
                "p90_ms": samples[(9 * n) // 10], "cv": std / mean if mean > 0 else None, "n": n,
                "samples_ms": samples if n <= 1000 else samples[:: max(1, n // 1000)], "noisy": False,
                "env": {"measurer": "null-inprocess", "simulated": True}}

    def close(self) -> None:
        pass


def _nothing() -> None:
    return None


class AgentSession:
    """A real device, measured through the project's one protocol (`bench.measure`), as `profile` measures:
    each entry's model (exported, cached) is timed beside the reference block and re-measured until its median
    settles, so farm cells and profile cells are the same kind of cell. The reference timings go to the store
    too (`take_reference_records`), where they give the device's current speed."""

    def __init__(self, device: str, rounds: int | None = None, settings=None):
        from agents import connect
        from bench.export import exporter_versions
        from bench.measure import MeasureSettings, ReferenceWatch, agent_profile
        from devices import get_device

        self.profile = get_device(device)
        self.settings = settings or (MeasureSettings(rounds=rounds) if rounds else MeasureSettings())
        exporter_versions(self.profile.model_format)  # import the exporters now, not during the first job
        self._agent = connect(agent_profile(self.profile, self.settings))
        self._entries: dict[tuple[str, int], dict] = {}
        self._watch = ReferenceWatch() if self.settings.reference else None  # batch 1 (the name it always had)
        # a batch of B images takes its own time: each batch size's references are watched apart
        self._watches: dict[int, object] = {1: self._watch}
        self._references: list[dict] = []

    def fingerprint(self) -> dict:
        return self._agent.fingerprint()

    def _entry(self, space_name: str, resolution: int, key: str):
        from bench.table import candidates
        from ofa_core.space import SearchSpace

        table = self._entries.get((space_name, resolution))
        if table is None:
            space = SearchSpace.get(space_name)
            table = {e.key: e for e in candidates(space, [resolution])}
            self._entries[(space_name, resolution)] = table
        try:
            return table[key]
        except KeyError:
            raise UnknownEntryError(f"{space_name} has no table entry {key!r} at resolution {resolution}") from None

    def _watch_of(self, batch: int):
        from bench.measure import ReferenceWatch

        if batch not in self._watches:
            self._watches[batch] = ReferenceWatch() if self.settings.reference else None
        return self._watches[batch]

    def measure_job(self, job: Job) -> dict:
        """The job's entry (and the reference beside it), exported taking `job.batch` images and timed as one
        inference of the whole batch, as `profile --batch` measures it."""
        from bench.export import export_entry
        from bench.measure import measure_models, reference_entry, reference_records, to_record
        from ofa_core.space import SearchSpace

        space = SearchSpace.get(job.space)
        fmt = self.profile.model_format
        precision = self.profile.precision
        batch = int(getattr(job, "batch", 1))
        path = export_entry(space, self._entry(job.space, job.resolution, job.key), fmt=fmt, precision=precision,
                            batch=batch)
        ref_path = (export_entry(space, reference_entry(space), fmt=fmt, precision=precision, batch=batch)
                    if self.settings.reference else None)
        s = self.settings
        max_rem = s.max_remeasure if s.max_remeasure is not None else self.profile.max_remeasure
        (timed,), refs = measure_models(self._agent, [path], ref_path, s.rounds, s.precision, max_rem,
                                        self._watch_of(batch))
        self._references.extend(reference_records(space, refs, None, batch))
        return to_record(timed, job.resolution, job.key, job.kind, None, batch)

    def take_reference_records(self) -> list[dict]:
        """The reference timings of the jobs measured since the last call (the worker stores them)."""
        out, self._references = self._references, []
        return out

    def close(self) -> None:
        self._agent.close()


SessionFactory = Callable[[str], DeviceSession]
