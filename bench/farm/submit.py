"""`ofa-bench farm submit`: queue, for each device, every table entry of a space that its latest fingerprint
has not measured yet (nor queued); the hosts' workers (`bench.farm.worker`) then measure them."""
from __future__ import annotations

from collections.abc import Sequence

from bench.farm.errors import FarmError
from bench.farm.queue import enqueue
from bench.store import Store
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


def submit(store: Store, devices: Sequence[str], space_name: str, resolutions: Sequence[int] | None = None,
           *, max_attempts: int = 3) -> dict:
    """Queue every table entry not yet measured (nor queued) for each device's latest fingerprint.

    All devices are checked before anything is written; the jobs of all devices go in one transaction."""
    from bench.table import candidates
    from ofa_core.space import SearchSpace

    if not devices:
        raise FarmError("farm submit needs at least one device")
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
            # read inside the locked transaction: a job completing meanwhile is either seen measured or
            # still active, so no entry is queued twice
            fp = store.latest_fingerprint(device)
            fp_id = fp["id"] if fp else None
            measured = store.measured_keys(fp_id, space.name, resolutions) if fp_id else set()
            missing = [e for e in entries if (e.resolution, e.key) not in measured]
            res = enqueue(store, device, space.name, missing, fingerprint_id=fp_id, max_attempts=max_attempts,
                          in_transaction=True)
            report["devices"].append({"device": device, "fingerprint_id": fp_id, "measured": len(measured),
                                      "queued": res.queued, "already_queued": res.already_active})
    report["queued"] = sum(d["queued"] for d in report["devices"])
    return report


def submit_devices(store_target: str, devices: Sequence[str], space: str | None, resolutions: Sequence[int] | None,
                   *, max_attempts: int = 3, default_space: str | None = None) -> dict:
    """`submit` into the store at `store_target`, in the space of the devices' tables (`space` when given,
    else `default_space` for devices without a table)."""
    from bench.store import open_store
    from bench.table import device_space

    with open_store(store_target) as s:
        sp = device_space(devices, space, s, default=default_space)  # a device's table goes on in its space
        return submit(s, devices, sp.name, resolutions, max_attempts=max_attempts)
