"""A device's latency lookup table: the latest good measurement per (resolution, key) for its fingerprint.

Also reads and writes the official per-resolution YAML tables (`{R}_lookup_table.yaml`, each key ->
`{count, mean, std}` in ms), Parquet and CSV. Everything is parsed and checked before anything is written, so a
corrupt table leaves the store untouched.
"""
from __future__ import annotations

import hashlib
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ofa_core.accuracy import ANCHORS_ENV, anchors_root  # noqa: F401  (re-exported: the anchors' location)
from ofa_core.atomic import atomic_path, atomic_write
from ofa_core.errors import OFABenchError
from ofa_core.space import SearchSpace

from bench.candidates import candidates, keys_by_resolution
from bench.measure.reference import current_reference_ms, row_value
from bench.measure.stats import DEFAULT_STATISTIC, STATISTICS, sample_statistic, sample_stats  # noqa: F401

YAML_NAME_RE = re.compile(r"^(\d+)_lookup_table\.yaml$")
TABLE_COLUMNS = ("resolution", "key", "latency_ms", "mean_ms", "std_ms", "count", "normalised_ms")
#: published tables shipped beside the repository: device name -> (space, folder below the anchors root)
KNOWN_ANCHORS = {"note10": ("ofa-mbv3-w1.2", Path("ofa-mbv3-w12-note10") / "latency_table_note10")}








class LutError(OFABenchError, ValueError):
    """A table that cannot be read, does not fit its space, or does not exist for a device."""


@dataclass(frozen=True)
class EntryStats:
    """One table cell. `latency_ms` is the table statistic (our median; the source mean for imported tables)."""

    latency_ms: float
    mean_ms: float
    std_ms: float
    count: int
    normalised_ms: float | None = None
    measurement_id: int | None = None
    measured_at: float | None = None

    @property
    def value_ms(self) -> float:
        """What predictors sum: the drift-normalised latency when measured with a reference, else the raw one."""
        return self.latency_ms if self.normalised_ms is None else self.normalised_ms


@dataclass(frozen=True)
class LatencyTable:
    """The table of one device and space. `subnets` holds measured whole subnets ((r, config string) -> stats)
    of the same fingerprint: the predictor calibrates against them."""

    device: str
    fingerprint_id: str
    space: str
    version: str
    entries: Mapping[tuple[int, str], EntryStats]
    subnets: Mapping[tuple[int, str], EntryStats] = field(default_factory=dict)
    source: str = "store"
    nominal_ms: float | None = None  # reference latency the values are expressed at (None: raw latencies)
    statistic: str = DEFAULT_STATISTIC

    @property
    def resolutions(self) -> list[int]:
        return sorted({r for r, _ in self.entries})

    def complete_resolutions(self, space: SearchSpace) -> list[int]:
        """Resolutions at which every candidate entry of `space` has a value."""
        need = keys_by_resolution(candidates(space, [r for r in self.resolutions if r in space.resolutions]))
        have: dict[int, set[str]] = {}
        for r, k in self.entries:
            have.setdefault(r, set()).add(k)
        return [r for r in sorted(need) if need[r] <= have.get(r, set())]

    def missing(self, space: SearchSpace, resolutions) -> list[tuple[int, str]]:
        return [(e.resolution, e.key) for e in candidates(space, resolutions)
                if (e.resolution, e.key) not in self.entries]


def table_version(ids) -> str:
    """Short stable hash of the measurement ids a table is made of (changes whenever any cell changes)."""
    ids = sorted(int(i) for i in ids)
    digest = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:10]
    return f"m{ids[-1] if ids else 0}-n{len(ids)}-{digest}"




def stats_from_row(row: Mapping, nominal_ms: float | None = None, statistic: str = DEFAULT_STATISTIC) -> EntryStats:
    """A table cell from a store row. With `nominal_ms` (the device's current reference latency), a row timed
    beside the reference is rescaled to that speed: latency * nominal / reference-in-its-invocation."""
    value, ref_ms = row_value(row, statistic)
    norm = None if row.get("normalised_ms") is None or statistic != "median" else float(row["normalised_ms"])
    if nominal_ms is not None and ref_ms:
        norm = value * nominal_ms / ref_ms
    return EntryStats(
        latency_ms=value,
        mean_ms=float(row.get("mean_ms") if row.get("mean_ms") is not None else row["latency_ms"]),
        std_ms=float(row.get("std_ms") or 0.0),
        count=int(row.get("n") or 0),
        normalised_ms=norm,
        measurement_id=None if row.get("id") is None else int(row["id"]),
        measured_at=None if row.get("measured_at") is None else float(row["measured_at"]),
    )


# ---- official YAML ---------------------------------------------------------------------------------------
def _finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise LutError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def parse_yaml_table(text: str, where: str) -> dict[str, EntryStats]:
    """One `{R}_lookup_table.yaml`: key -> stats. Raises LutError (one line) on anything malformed."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise LutError(f"{where}: not valid YAML{at}") from None
    if not isinstance(doc, dict) or not doc:
        raise LutError(f"{where}: expected a mapping of table keys to {{count, mean, std}}")
    out: dict[str, EntryStats] = {}
    for key, cell in doc.items():
        if not isinstance(key, str) or not isinstance(cell, dict) or "mean" not in cell:
            raise LutError(f"{where}: entry {key!r} must map to {{count, mean, std}}")
        mean = _finite(cell["mean"], f"{where}: {key} mean")
        std = _finite(cell.get("std", 0.0), f"{where}: {key} std")
        count = cell.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise LutError(f"{where}: {key} count must be a non-negative integer, got {count!r}")
        if mean < 0 or std < 0:
            raise LutError(f"{where}: {key} has a negative latency")
        out[key] = EntryStats(latency_ms=mean, mean_ms=mean, std_ms=std, count=count)
    return out


def read_yaml_dir(folder: Path) -> dict[tuple[int, str], EntryStats]:
    """All `{R}_lookup_table.yaml` files of a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LutError(f"{folder}: not a folder of {{R}}_lookup_table.yaml files")
    files = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := YAML_NAME_RE.match(p.name)))
    if not files:
        raise LutError(f"{folder}: no {{R}}_lookup_table.yaml files")
    entries: dict[tuple[int, str], EntryStats] = {}
    for r, path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LutError(f"{path}: cannot read ({exc.__class__.__name__})") from None
        for key, st in parse_yaml_table(text, str(path)).items():
            entries[(r, key)] = st
    return entries


def write_yaml_dir(table: LatencyTable, folder: Path) -> list[Path]:
    """Official files, one per resolution. `mean` holds the table's value, the number the official code sums:
    for an imported table its own mean (so a round trip is exact), for a measured one the drift-normalised
    median (or the chosen statistic); `std` and `count` are the samples'."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_r: dict[int, dict[str, dict]] = {}
    for (r, key), st in table.entries.items():
        by_r.setdefault(r, {})[key] = {"count": int(st.count), "mean": float(st.value_ms), "std": float(st.std_ms)}
    paths = []
    for r in sorted(by_r):
        path = folder / f"{r}_lookup_table.yaml"
        with atomic_write(path) as f:  # a fresh temporary name: nothing planted in the folder is followed
            f.write(yaml.safe_dump(by_r[r], default_flow_style=False, sort_keys=True).encode("utf-8"))
        paths.append(path)
    return paths


# ---- Parquet / CSV ---------------------------------------------------------------------------------------
def table_frame(table: LatencyTable):
    import pandas as pd

    rows = [{"device": table.device, "fingerprint_id": table.fingerprint_id, "space": table.space,
             "table_version": table.version, "resolution": r, "key": k, "latency_ms": st.latency_ms,
             "mean_ms": st.mean_ms, "std_ms": st.std_ms, "count": st.count, "normalised_ms": st.normalised_ms,
             "measured_at": st.measured_at}
            for (r, k), st in sorted(table.entries.items())]
    return pd.DataFrame(rows)


def write_frame(table: LatencyTable, path: Path, fmt: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = table_frame(table)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, float_format="%.17g")
    return path


def read_frame(path: Path) -> dict[tuple[int, str], EntryStats]:
    """A Parquet or CSV table written by `write_frame` (or by hand with the same columns)."""
    import pandas as pd

    path = Path(path)
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except FileNotFoundError:
        raise LutError(f"{path}: no such file") from None
    except Exception as exc:  # pyarrow/pandas raise many types for a corrupt file
        raise LutError(f"{path}: not a readable {path.suffix.lstrip('.') or 'table'} file ({exc.__class__.__name__})") from None
    need = {"resolution", "key", "latency_ms"}
    if not need <= set(df.columns):
        raise LutError(f"{path}: missing column(s) {', '.join(sorted(need - set(df.columns)))}")
    entries: dict[tuple[int, str], EntryStats] = {}
    for row in df.to_dict("records"):
        where = f"{path}: {row.get('key')!r}"
        lat = _finite(row["latency_ms"], f"{where} latency_ms")
        mean = row.get("mean_ms")
        mean = lat if mean is None or (isinstance(mean, float) and math.isnan(mean)) else _finite(mean, f"{where} mean_ms")
        std = row.get("std_ms")
        std = 0.0 if std is None or (isinstance(std, float) and math.isnan(std)) else _finite(std, f"{where} std_ms")
        norm = row.get("normalised_ms")
        norm = None if norm is None or (isinstance(norm, float) and math.isnan(norm)) else _finite(norm, f"{where} normalised_ms")
        try:
            r = int(row["resolution"])
            count = int(row.get("count") or 0)
        except (TypeError, ValueError):
            raise LutError(f"{where}: resolution and count must be integers") from None
        if not isinstance(row["key"], str):
            raise LutError(f"{path}: a key is not a string ({row['key']!r})")
        entries[(r, row["key"])] = EntryStats(lat, mean, std, count, norm)
    if not entries:
        raise LutError(f"{path}: the table is empty")
    return entries


def read_table_source(source: Path) -> dict[tuple[int, str], EntryStats]:
    """A folder of official YAML files, or one `.parquet` / `.csv` file."""
    source = Path(source)
    if source.is_dir():
        return read_yaml_dir(source)
    if source.suffix in (".parquet", ".csv"):
        return read_frame(source)
    if not source.exists():
        raise LutError(f"{source}: no such file or folder")
    raise LutError(f"{source}: expected a folder of {{R}}_lookup_table.yaml files, a .parquet or a .csv file")


def check_fits_space(entries: Mapping[tuple[int, str], EntryStats], space: SearchSpace, where: str) -> None:
    """Every key must be an entry of `space` at its resolution (catches a table of another space)."""
    bad_r = sorted({r for r, _ in entries if r not in space.resolutions})
    if bad_r:
        raise LutError(f"{where}: resolution {bad_r[0]} is not in space {space.name}")
    known = keys_by_resolution(candidates(space, sorted({r for r, _ in entries})))
    for r, key in sorted(entries):
        if key not in known[r]:
            raise LutError(f"{where}: key {key!r} at resolution {r} is not an entry of space {space.name}")


# ---- tables from the store and from the anchors ----------------------------------------------------------
def anchors_missing(path: Path) -> str:
    """One line for a missing published anchor: what to fetch and where to put it."""
    return (f"{path} not found: fetch the published anchors folder ofa-mbv3-w12-note10 (in the project's shared "
            f"anchors; a checkout has a copy in tests/data/anchors) into {anchors_root()}, or set ${ANCHORS_ENV} "
            f"to a folder holding it")


def anchor_table(device: str, space: SearchSpace) -> LatencyTable | None:
    """A published table shipped beside the repo (the Note10 one), read in memory; None if absent."""
    known = KNOWN_ANCHORS.get(device)
    if known is None or known[0] != space.name:
        return None
    folder = anchors_root() / known[1]
    if not folder.is_dir():
        return None
    entries = read_yaml_dir(folder)
    check_fits_space(entries, space, str(folder))
    h = hashlib.sha256()
    for (r, k), st in sorted(entries.items()):
        h.update(f"{r}|{k}|{st.mean_ms!r}\n".encode())
    return LatencyTable(device=device, fingerprint_id="anchors", space=space.name,
                        version=f"anchors-{h.hexdigest()[:10]}", entries=entries, source=str(folder))


def subnet_stats(store, fingerprint_id: str, space: SearchSpace, nominal: float | None,
                 statistic: str = DEFAULT_STATISTIC) -> tuple[dict[tuple[int, str], EntryStats], list[dict]]:
    """Measured whole subnets: per (resolution, config), the median over the good passes of the latest run that
    timed it (validation times each subnet in several invocations). Returns the stats and the rows used."""
    by_key: dict[tuple[int, str], list[dict]] = {}
    for row in store.latest_measurements(fingerprint_id, space.name, kind="subnet", whole_run=True):
        by_key.setdefault((int(row["resolution"]), row["key"].removeprefix("subnet:")), []).append(row)
    out, used = {}, []
    for k, rows in by_key.items():
        stats = sorted((stats_from_row(r, nominal, statistic) for r in rows), key=lambda x: x.value_ms)
        st = stats[(len(stats) - 1) // 2]  # the lower median: its id and spread stand for the key
        value = statistics.median(x.value_ms for x in stats)
        out[k] = EntryStats(latency_ms=statistics.median(x.latency_ms for x in stats), mean_ms=st.mean_ms,
                            std_ms=st.std_ms, count=sum(x.count for x in stats),
                            normalised_ms=value if st.normalised_ms is not None else None,
                            measurement_id=st.measurement_id, measured_at=max(x.measured_at or 0.0 for x in stats))
        used.extend(rows)
    return out, used


def table_from_store(store, device: str, space: SearchSpace, fingerprint_id: str | None = None,
                     statistic: str = DEFAULT_STATISTIC) -> LatencyTable | None:
    """The latest good measurement per key for the device's latest (or a given) fingerprint; None if empty."""
    if fingerprint_id is None:
        fp = store.latest_fingerprint(device)
        if fp is None:
            return None
        fingerprint_id = fp["id"]
    rows = store.latest_measurements(fingerprint_id, space.name, kind="block")
    if not rows:
        return None
    nominal, ref_ids = current_reference_ms(store, fingerprint_id, space, statistic)
    entries = {(int(row["resolution"]), row["key"]): stats_from_row(row, nominal, statistic) for row in rows}
    # With a nominal speed, a cell is normalised exactly when it was timed beside the reference block.
    raw = sum(1 for st in entries.values() if st.normalised_ms is None)
    if nominal is not None and 0 < raw < len(entries):  # normalised and raw cells are different kinds of number
        raise LutError(f"the table of {device} ({space.name}) would mix {raw} cells timed without the reference "
                       f"block with {len(entries) - raw} normalised ones; measure those again with the reference: "
                       f"ofa-bench profile {device} --space {space.name} --remeasure-raw")
    subnets, subnet_rows = subnet_stats(store, fingerprint_id, space, nominal, statistic)
    ids = [row["id"] for row in rows] + [row["id"] for row in subnet_rows] + ref_ids
    version = table_version(ids) + ("" if statistic == DEFAULT_STATISTIC else f"-{statistic}")
    return LatencyTable(device=device, fingerprint_id=fingerprint_id, space=space.name, version=version,
                        entries=entries, subnets=subnets, nominal_ms=nominal, statistic=statistic)






def _store_exists(store_path: str) -> bool:
    return "://" in store_path or Path(store_path).exists()


def load_device_table(device: str, space: SearchSpace | str, store=None,
                      statistic: str = DEFAULT_STATISTIC) -> LatencyTable:
    """The table search and predict use: from the store (a path, URL or open Store), else the published anchors.

    A store path that does not exist is treated as empty and is not created. `statistic` picks the per-entry
    statistic computed from the raw samples (median by default; imported tables have only their mean).
    """
    space = SearchSpace.get(space) if isinstance(space, str) else space
    sample_statistic((), statistic)  # reject an unknown statistic early
    table = None
    where = "no store"
    if store is not None:
        if isinstance(store, (str, Path)):
            where = f"store {store}"
            if _store_exists(str(store)):
                from bench.store import open_store

                st = open_store(str(store))
                try:
                    table = table_from_store(st, device, space, statistic=statistic)
                finally:
                    st.close()
        else:
            table = table_from_store(store, device, space, statistic=statistic)
    if table is None:
        table = anchor_table(device, space)
    if table is None and KNOWN_ANCHORS.get(device, ("",))[0] == space.name:
        raise LutError(f"no latency table for device {device!r}, space {space.name} in {where}, and its published "
                       f"one is missing: {anchors_missing(anchors_root() / KNOWN_ANCHORS[device][1])}")
    if table is None:
        raise LutError(f"no latency table for device {device!r}, space {space.name} in {where}; "
                       f"run `ofa-bench profile {device} --space {space.name}` or `ofa-bench lut import` first")
    return table


def import_table(store, device: str, space: SearchSpace, source: Path) -> dict:
    """Read a table (checked completely first), then write it to the store as one run of one transaction."""
    entries = read_table_source(Path(source))
    check_fits_space(entries, space, str(source))
    fingerprint = {"name": device, "imported": True}
    records = [{
        "resolution": r, "key": k, "kind": "block", "latency_ms": st.latency_ms, "mean_ms": st.mean_ms,
        "std_ms": st.std_ms, "p10_ms": None, "p90_ms": None,
        "cv": (st.std_ms / st.mean_ms) if st.mean_ms > 0 else 0.0, "n": st.count, "samples_ms": [],
        "noisy": False, "env": {"imported_from": str(source)}, "normalised_ms": st.normalised_ms,
    } for (r, k), st in sorted(entries.items())]
    fp_id = store.register_fingerprint(device, fingerprint)
    run_id = store.start_run(device, fp_id, space.name, "import", {"source": str(source)}, {"entries": len(records)})
    try:
        ids = store.add_measurements(run_id, records)
    except BaseException:
        store.finish_run(run_id, "failed")
        raise
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
