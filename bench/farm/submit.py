"""`ofa-bench farm submit`: queue, for each device, every table entry of a space that its latest fingerprint
has not measured yet (nor queued); the hosts' workers (`bench.farm.worker`) then measure them."""
from __future__ import annotations

from collections.abc import Sequence

from bench.farm.errors import FarmError
from bench.farm.queue import enqueue
from bench.measure.settings import check_batch_sizes
from bench.store import Store
from devices import profile_batches
from ofa_core.errors import OFABenchError


def device_is_known(store: Store, name: str) -> bool:
    """A device profile of this host, an ad-hoc address, or a device some worker already registered."""
    if store.latest_fingerprint(name) is not None:
        return True
    try:
        from devices import get_device

        get_device(name)
        return True
    except OFABenchError:
        return False


def _submit_device(store: Store, device: str, space, resolutions, entries: list, batches: Sequence[int],
                   max_attempts: int) -> dict:
    """Queue one device's missing entries at each batch size (inside the caller's locked transaction)."""
    # read inside the locked transaction: a job completing meanwhile is either seen measured or still active,
    # so no entry is queued twice
    fp = store.latest_fingerprint(device)
    fp_id = fp["id"] if fp else None
    per_batch = []
    for b in batches:
        measured = store.measured_keys(fp_id, space.name, resolutions, batch=b) if fp_id else set()
        missing = [e for e in entries if (e.resolution, e.key) not in measured]
        res = enqueue(store, device, space.name, missing, fingerprint_id=fp_id, max_attempts=max_attempts,
                      in_transaction=True, batch=b)
        per_batch.append({"batch": b, "measured": len(measured), "queued": res.queued,
                          "already_queued": res.already_active})
    # the device's counts are summed over its batch sizes (one table each), then given per batch size
    return {"device": device, "fingerprint_id": fp_id,
            **{k: sum(p[k] for p in per_batch) for k in ("measured", "queued", "already_queued")},
            "batches": per_batch}


def submit(store: Store, devices: Sequence[str], space_name: str, resolutions: Sequence[int] | None = None,
           *, max_attempts: int = 3, batches: Sequence[int] | None = None) -> dict:
    """Queue every table entry not yet measured (nor queued) for each device's latest fingerprint, at each batch
    size of `batches` (default: the device profile's `batch` list; [1] for a device without a profile here).

    All devices are checked before anything is written; the jobs of all devices go in one transaction."""
    from bench.table import candidates
    from ofa_core.space import SearchSpace

    if not devices:
        raise FarmError("farm submit needs at least one device")
    batches = check_batch_sizes(batches, FarmError)
    space = SearchSpace.get(space_name)
    entries = candidates(space, resolutions)
    unknown = [d for d in devices if not device_is_known(store, d)]
    if unknown:
        raise FarmError(f"unknown device {unknown[0]!r}: no device profile and no worker ever registered it "
                        f"in {store.target}")
    report = {"store": store.target, "space": space.name,
              "resolutions": sorted({e.resolution for e in entries}), "entries": len(entries), "devices": []}
    with store.transaction():
        names = sorted(set(devices))
        for device in names:  # sorted: two submits lock devices in the same order
            store.lock_name(f"device:{device}")
        for device in names:
            report["devices"].append(_submit_device(store, device, space, resolutions, entries,
                                                    batches or profile_batches(device) or [1], max_attempts))
    report["queued"] = sum(d["queued"] for d in report["devices"])
    return report


def submit_devices(store_target, devices: Sequence[str], space: str | None, resolutions: Sequence[int] | None,
                   *, max_attempts: int = 3, default_space: str | None = None,
                   batches: Sequence[int] | None = None) -> dict:
    """`submit` into the store (an open Store or an address), in the space of the devices' tables (`space` when given,
    else `default_space` for devices without a table), at `batches` (default: each device profile's list)."""
    from bench.store import using_store
    from bench.table import device_space

    batches = check_batch_sizes(batches, FarmError)  # before the store is opened
    with using_store(store_target) as s:
        sp = device_space(devices, space, s, default=default_space)  # a device's table goes on in its space
        return submit(s, devices, sp.name, resolutions, max_attempts=max_attempts, batches=batches)
