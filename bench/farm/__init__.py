"""The measuring farm: hosts share one store (PostgreSQL), `submit` queues the missing table entries of each
device as jobs, and a `Worker` on each host measures the jobs of the devices plugged into it.

The rooms follow a job through the farm:
- `queue`: the job queue in the store (enqueue, claim under a lease, renew, complete, fail, release);
- `submit`: what to queue for a device (every entry its latest fingerprint has not measured);
- `worker`: the threads that claim, measure and complete jobs, one per device, and the heartbeat;
- `sessions`: how one job is measured on one device (`AgentSession` on the device, `NullSession` simulated);
- `serve`: what `farm worker` runs (the sessions of a measurer, a `Worker` stopped by SIGTERM);
- `status`: the workers' registrations and the per-device summary of the queue.
"""
from bench.farm.errors import FarmError
from bench.farm.queue import (DEFAULT_MAX_ATTEMPTS, JOB_STATUSES, EnqueueResult, Job, LostJob, active_count, claim,
                              complete, enqueue, fail, release, renew, requeue_expired)
from bench.farm.sessions import AgentSession, DeviceSession, NullSession, SessionFactory, UnknownEntryError
from bench.farm.status import farm_status, register_worker, stop_worker, worker_name
from bench.farm.submit import device_is_known, submit, submit_devices
from bench.farm.worker import (NoisyMeasurement, Worker, WorkerDeviceReport, WorkerReport, WorkerSettings,
                               check_record)
from bench.farm.serve import MEASURERS, run_worker, worker_sessions

__all__ = [
    "DEFAULT_MAX_ATTEMPTS", "JOB_STATUSES", "MEASURERS", "AgentSession", "DeviceSession", "EnqueueResult",
    "FarmError", "Job", "LostJob", "NoisyMeasurement", "NullSession", "SessionFactory", "UnknownEntryError",
    "Worker", "WorkerDeviceReport", "WorkerReport", "WorkerSettings", "active_count", "check_record", "claim", "complete",
    "device_is_known", "enqueue", "fail", "farm_status", "register_worker", "release", "renew", "requeue_expired",
    "run_worker", "stop_worker", "submit", "submit_devices", "worker_name", "worker_sessions",
]
