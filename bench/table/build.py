"""Store -> table: a device's latency lookup table is the latest good measurement per (resolution, key) for its
fingerprint and one batch size, with the published anchors (batch 1) as the fallback; and tables in and out of
the store (`lut import`, `lut export`).

The table model is `bench.table.model`, the file formats (official YAML/JSON folders, CSV, Parquet)
`bench.table.files`, the space found from the keys `bench.table.spaces`. Everything is parsed and checked before
anything is written, so a corrupt table leaves the store untouched.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from ofa_core.accuracy import anchors_root
from ofa_core.space import SearchSpace

from bench.measure import keys
from bench.measure.protocol import PROTOCOL_SUBNET_REFERENCE
from bench.measure.reference import current_reference_ms, row_value, subnet_reference_key
from bench.measure.stats import DEFAULT_STATISTIC, sample_statistic
from bench.store.handle import store_address, using_store
from bench.table.anchors import KNOWN_ANCHORS, anchor_table, anchors_missing
from bench.table.files import read_table_source, write_frame, write_yaml_dir
from bench.table.model import EntryStats, LatencyTable, LutError, table_version
from bench.table.spaces import check_fits_space, detect_space


def stats_from_row(row: Mapping, nominal_ms: float | None = None, statistic: str = DEFAULT_STATISTIC) -> EntryStats:
    """A table cell from a store row. With `nominal_ms` (the device's current reference latency), a row timed
    beside the reference is rescaled to that speed: latency * nominal / reference-in-its-invocation.
    A row without a std (an imported table that gave none) keeps it unknown (None)."""
    value, ref_ms = row_value(row, statistic)
    norm = None if row.get("normalised_ms") is None or statistic != "median" else float(row["normalised_ms"])
    if nominal_ms is not None and ref_ms:
        norm = value * nominal_ms / ref_ms
    return EntryStats(
        latency_ms=value,
        mean_ms=float(row.get("mean_ms") if row.get("mean_ms") is not None else row["latency_ms"]),
        std_ms=None if row.get("std_ms") is None else float(row["std_ms"]),
        count=int(row.get("n") or 0),
        normalised_ms=norm,
        measurement_id=None if row.get("id") is None else int(row["id"]),
        measured_at=None if row.get("measured_at") is None else float(row["measured_at"]),
    )


# ---- tables from the store and from the anchors ----------------------------------------------------------


def _tracked_values(by_key: Mapping[tuple[int, str], list[dict]], speed, statistic: str) -> dict[int, float]:
    """The rescaled value of every subnet pass timed beside a reference (by `id` of its row), run by run as
    `validate` rescales them (`bench.measure.tracking.rescale_run`). `speed(row)`: the nominal speed the row
    goes to (one per run and kind of reference)."""
    from bench.measure.tracking import rescale_run

    runs: dict[tuple[int, float], dict[tuple[int, str], list[dict]]] = {}
    for k, rows in by_key.items():
        for row in rows:
            nominal = speed(row)
            if row_value(row, statistic)[1] and nominal:
                runs.setdefault((int(row.get("run_id") or 0), nominal), {}).setdefault(k, []).append(row)
    out = {}
    for (_, nominal), passes in runs.items():
        groups = list(passes.values())
        values, _ = rescale_run([[row_value(row, statistic) for row in group] for group in groups], nominal)
        for group, rescaled in zip(groups, values):
            out.update({id(row): v for row, v in zip(group, rescaled)})
    return out


def subnet_stats(store, fingerprint_id: str, space: SearchSpace, nominal: float | None,
                 statistic: str = DEFAULT_STATISTIC, batch: int = 1,
                 subnet_nominal: float | None = None) -> tuple[dict[tuple[int, str], EntryStats], list[dict]]:
    """Measured whole subnets at `batch`: per (resolution, config), the median over the good passes of the latest
    run that timed it (validation times each subnet in several invocations). A pass timed beside the reference
    subnet is rescaled to `subnet_nominal`, one timed beside the reference block (older stores) to `nominal`.
    Returns the stats and the rows used."""
    by_key: dict[tuple[int, str], list[dict]] = {}
    for row in store.latest_measurements(fingerprint_id, space.name, kind="subnet", whole_run=True, batch=batch):
        by_key.setdefault((int(row["resolution"]), row["key"].removeprefix("subnet:")), []).append(row)

    def speed(row: Mapping) -> float | None:
        beside_subnet = (row.get("env") or {}).get(keys.PROTOCOL) == PROTOCOL_SUBNET_REFERENCE
        return subnet_nominal if beside_subnet else nominal

    rescaled = _tracked_values(by_key, speed, statistic)
    out, used = {}, []
    for k, rows in by_key.items():
        stats = sorted((replace(st, normalised_ms=rescaled[id(r)]) if id(r) in rescaled else st
                        for r, st in ((r, stats_from_row(r, speed(r), statistic)) for r in rows)),
                       key=lambda x: x.value_ms)
        st = stats[(len(stats) - 1) // 2]  # the lower median: its id and spread stand for the key
        value = statistics.median(x.value_ms for x in stats)
        out[k] = EntryStats(latency_ms=statistics.median(x.latency_ms for x in stats), mean_ms=st.mean_ms,
                            std_ms=st.std_ms, count=sum(x.count for x in stats),
                            normalised_ms=value if st.normalised_ms is not None else None,
                            measurement_id=st.measurement_id, measured_at=max(x.measured_at or 0.0 for x in stats))
        used.extend(rows)
    return out, used


def table_from_store(store, device: str, space: SearchSpace, fingerprint_id: str | None = None,
                     statistic: str = DEFAULT_STATISTIC, batch: int = 1) -> LatencyTable | None:
    """The latest good measurement per key at `batch` for the device's latest (or a given) fingerprint; None if
    empty."""
    if fingerprint_id is None:
        fp = store.latest_fingerprint(device)
        if fp is None:
            return None
        fingerprint_id = fp["id"]
    rows = store.latest_measurements(fingerprint_id, space.name, kind="block", batch=batch)
    if not rows:
        return None
    nominal, ref_ids = current_reference_ms(store, fingerprint_id, space, statistic, batch=batch)
    entries = {(int(row["resolution"]), row["key"]): stats_from_row(row, nominal, statistic) for row in rows}
    # With a nominal speed, a cell is normalised exactly when it was timed beside the reference block.
    raw = sum(1 for st in entries.values() if st.normalised_ms is None)
    if nominal is not None and 0 < raw < len(entries):  # normalised and raw cells are different kinds of number
        raise LutError(f"the table of {device} ({space.name}) would mix {raw} cells timed without the reference "
                       f"block with {len(entries) - raw} normalised ones; measure those again with the reference: "
                       f"ofa-bench profile {device} --space {space.name} --remeasure-raw")
    # Entries predicted by `profile --few-shot` (bench.transfer) fill what was not measured; a measurement wins.
    moved = [row for row in store.latest_measurements(fingerprint_id, space.name, kind="transferred", batch=batch)
             if (int(row["resolution"]), row["key"]) not in entries]
    entries.update({(int(row["resolution"]), row["key"]): stats_from_row(row, nominal, statistic) for row in moved})
    transferred = {(int(row["resolution"]), row["key"]): tuple(((row.get("env") or {}).get(keys.TRANSFER) or {})
                                                               .get("sources") or ()) for row in moved}
    subnet_nominal, subnet_ref_ids = current_reference_ms(store, fingerprint_id, space, statistic, batch=batch,
                                                          key=subnet_reference_key(space))
    subnets, subnet_rows = subnet_stats(store, fingerprint_id, space, nominal, statistic, batch, subnet_nominal)
    ids = [row["id"] for row in rows + moved] + [row["id"] for row in subnet_rows] + ref_ids + subnet_ref_ids
    version = table_version(ids) + ("" if statistic == DEFAULT_STATISTIC else f"-{statistic}")
    return LatencyTable(device=device, fingerprint_id=fingerprint_id, space=space.name, version=version,
                        entries=entries, subnets=subnets, nominal_ms=nominal, statistic=statistic,
                        transferred=transferred, batch=batch, subnet_nominal_ms=subnet_nominal)


def load_device_table(device: str, space: SearchSpace | str, store=None,
                      statistic: str = DEFAULT_STATISTIC, batch: int = 1) -> LatencyTable:
    """The table search and predict use: from the store (a path, URL or open Store), else the published anchors.

    A store path that does not exist is treated as empty and is not created. `statistic` picks the per-entry
    statistic computed from the raw samples (median by default; imported tables have only their mean). `batch`
    picks the batch size (the published tables are of batch 1).
    """
    space = SearchSpace.get(space) if isinstance(space, str) else space
    sample_statistic((), statistic)  # reject an unknown statistic early
    table = None
    where = "no store" if store is None else f"store {store_address(store)}"
    with using_store(store, if_exists=True) as st:
        if st is not None:
            table = table_from_store(st, device, space, statistic=statistic, batch=batch)
    if table is None and batch == 1:
        table = anchor_table(device, space)
    if table is None and batch != 1:
        raise LutError(f"no latency table for device {device!r}, space {space.name}, batch {batch} in {where}; "
                       f"run `ofa-bench profile {device} --space {space.name} --batch {batch}` first")
    if table is None and KNOWN_ANCHORS.get(device, ("",))[0] == space.name:
        raise LutError(f"no latency table for device {device!r}, space {space.name} in {where}, and its published "
                       f"one is missing: {anchors_missing(anchors_root() / KNOWN_ANCHORS[device][1])}")
    if table is None:
        raise LutError(f"no latency table for device {device!r}, space {space.name} in {where}; "
                       f"run `ofa-bench profile {device} --space {space.name}` or `ofa-bench lut import` first")
    return table


def read_table(source: Path,
               space: SearchSpace | str | None = None) -> tuple[SearchSpace, dict[tuple[int, str], EntryStats]]:
    """A table file or folder, read and checked completely, and its space: `space` when given (every key must be
    an entry of it), else the one its keys are found in (`detect_space`)."""
    entries = read_table_source(Path(source))
    if space is None:
        return detect_space(entries, str(source)), entries
    space = SearchSpace.get(space) if isinstance(space, str) else space
    try:
        check_fits_space(entries, space, str(source))
    except LutError as exc:
        try:
            found = detect_space(entries, str(source))
        except LutError:
            raise exc from None
        raise LutError(f"{exc}; the keys are those of {found.name}: pass --space {found.name}, or leave "
                       f"--space out") from None
    return space, entries


def import_table(store, device: str, space: SearchSpace | str | None, source: Path,
                 entries: Mapping[tuple[int, str], EntryStats] | None = None, batch: int = 1) -> dict:
    """Read a table (checked completely first; `entries` if the caller has read it already), then write it to
    the store as the device's table of batch size `batch`, fingerprint, run and every cell, in one
    transaction: an import is stored whole or not at all. A cell whose source gave no std keeps it unknown
    (NULL), not 0."""
    if entries is None:
        space, entries = read_table(source, space)
    elif space is None:
        space = detect_space(entries, str(source))
    else:
        space = SearchSpace.get(space) if isinstance(space, str) else space
        check_fits_space(entries, space, str(source))
    fingerprint = {"name": device, "imported": True}
    records = [{
        "resolution": r, "key": k, "kind": "block", "latency_ms": st.latency_ms, "mean_ms": st.mean_ms,
        "std_ms": st.std_ms, "p10_ms": None, "p90_ms": None,
        "cv": None if st.std_ms is None else (st.std_ms / st.mean_ms) if st.mean_ms > 0 else 0.0,
        "n": st.count, "samples_ms": [], "noisy": False, "env": {keys.IMPORTED_FROM: str(source)},
        "normalised_ms": st.normalised_ms, "batch": int(batch),
    } for (r, k), st in sorted(entries.items())]
    with store.transaction():
        fp_id = store.register_fingerprint(device, fingerprint)
        run_id = store.start_run(device, fp_id, space.name, "import", {"source": str(source), "batch": int(batch)},
                                 {"entries": len(records)})
        ids = store.insert_measurements(run_id, records)
        store.finish_run(run_id, "done")
    return {"device": device, "space": space.name, "fingerprint_id": fp_id, "run_id": run_id,
            "entries": len(ids), "resolutions": sorted({r for r, _ in entries})}


def export_table(table: LatencyTable, fmt: str, out: Path) -> list[Path]:
    """Write the table as a folder of official YAML files, or one Parquet or CSV file."""
    if fmt not in ("yaml", "parquet", "csv"):
        raise LutError(f"unknown table format {fmt!r}; use yaml, parquet or csv")
    try:
        return write_yaml_dir(table, out) if fmt == "yaml" else [write_frame(table, out, fmt)]
    except OSError as exc:
        raise LutError(f"cannot write the table to {out}: {exc.strerror or exc}") from None
