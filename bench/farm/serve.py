"""What `ofa-bench farm worker` runs on a host: the sessions that measure its devices' jobs, and a `Worker`
serving them until it is stopped (SIGTERM included) or, when asked, idle."""
from __future__ import annotations

from collections.abc import Sequence

from bench.farm.errors import FarmError
from bench.farm.sessions import AgentSession, NullSession, SessionFactory
from bench.farm.worker import Worker, WorkerReport, WorkerSettings

MEASURERS = ("agent", "null")


def worker_sessions(measurer: str, devices: Sequence[str], null_min_duration_s: float = 0.0
                    ) -> tuple[SessionFactory, str]:
    """(session factory, label for the worker's log lines) of a measurer: `agent` measures on the device,
    `null` times an empty call (simulated). Unknown device names fail here, before the worker registers."""
    if measurer not in MEASURERS:
        raise FarmError(f"--measurer must be one of {', '.join(MEASURERS)}, got {measurer!r}")
    if measurer == "null":
        return (lambda d: NullSession(d, min_duration_s=null_min_duration_s)), " (simulated null measurer)"
    from devices import get_device

    for d in devices:
        get_device(d)
    return AgentSession, ""


def run_worker(store_target: str, settings: WorkerSettings, factory: SessionFactory, label: str = "") -> WorkerReport:
    """Serve `settings.devices` until stopped; SIGTERM stops the worker the way its own end does (jobs in
    hand released, the worker marked stopped)."""
    import signal

    worker = Worker(store_target, settings, factory, label=label)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    return worker.run()
