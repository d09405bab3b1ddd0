"""Table files as people publish them, and as `lut export` writes them.

- A folder of official per-resolution tables, `{R}_lookup_table.yaml` or `{R}_lookup_table.json` (either, or
  both for different resolutions), or one such file. Each maps a key to `{mean, std, count}` in ms; a `var`
  (ms², as ProxylessNAS-style tables give) stands for `std = sqrt(var)`; with neither, the spread is unknown
  (None), never zero. A file not named `{R}_lookup_table.*` takes R from its first-conv key.
- One CSV or Parquet file, a row per cell: `resolution`, `key`, `mean_ms` and/or `latency_ms` (the value summed;
  `mean_ms` when only it is given), optional `std_ms` or `var`, `count`, `normalised_ms`. Other columns (the
  `device`, `space`, ... that `lut export` adds) are ignored, so an export imports back unchanged.

Everything is parsed and checked before anything is returned: a corrupt file is one LutError line.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from pathlib import Path

from ofa_core.atomic import atomic_path, atomic_write

from bench.table.model import EntryStats, LatencyTable, LutError

TABLE_NAME_RE = re.compile(r"^(\d+)_lookup_table\.(yaml|yml|json)$")
TABLE_SUFFIXES = (".yaml", ".yml", ".json")
FRAME_SUFFIXES = (".csv", ".parquet")
_FIRST_CONV_RE = re.compile(r"^Conv-input:(\d+)x\1x\d+-")
_PARQUET_HINT = "reading or writing Parquet needs pyarrow: pip install pyarrow"


# ---- one cell ---------------------------------------------------------------------------------------------
def _finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise LutError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _count(value, what: str) -> int:
    """A sample count: a non-negative integer (an integral float, as JSON and CSV columns with gaps give, too)."""
    if value is None:
        return 0
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))
    if not ok or float(value) != int(value) or value < 0:
        raise LutError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def entry_stats(mean, std, var, count, where: str, latency=None, normalised=None) -> EntryStats:
    """One cell from the numbers a source gives (None: not given). `std` wins over `var` when both are there."""
    mean_ms = _finite(mean, f"{where} mean")
    latency_ms = mean_ms if latency is None else _finite(latency, f"{where} latency_ms")
    std_ms = None
    if std is not None:
        std_ms = _finite(std, f"{where} std")
    elif var is not None:
        v = _finite(var, f"{where} var")
        if v < 0:
            raise LutError(f"{where} has a negative variance")
        std_ms = math.sqrt(v)
    norm = None if normalised is None else _finite(normalised, f"{where} normalised_ms")
    if min(mean_ms, latency_ms, std_ms or 0.0, norm or 0.0) < 0:
        raise LutError(f"{where} has a negative latency")
    return EntryStats(latency_ms=latency_ms, mean_ms=mean_ms, std_ms=std_ms, count=_count(count, f"{where} count"),
                      normalised_ms=norm)


# ---- official per-resolution files ------------------------------------------------------------------------
def parse_table_doc(doc, where: str) -> dict[str, EntryStats]:
    """A parsed official table (key -> {mean, std or var, count}): key -> stats."""
    if not isinstance(doc, dict) or not doc:
        raise LutError(f"{where}: expected a mapping of table keys to {{mean, std, count}}")
    out: dict[str, EntryStats] = {}
    for key, cell in doc.items():
        if not isinstance(key, str) or not isinstance(cell, dict) or "mean" not in cell:
            raise LutError(f"{where}: entry {key!r} must map to {{mean, std, count}}")
        out[key] = entry_stats(cell["mean"], cell.get("std"), cell.get("var"), cell.get("count"), f"{where}: {key}")
    return out


def parse_yaml_table(text: str, where: str) -> dict[str, EntryStats]:
    """One `{R}_lookup_table.yaml`: key -> stats. Raises LutError (one line) on anything malformed."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise LutError(f"{where}: not valid YAML{at}") from None
    return parse_table_doc(doc, where)


def parse_json_table(text: str, where: str) -> dict[str, EntryStats]:
    """One `{R}_lookup_table.json`: key -> stats. Raises LutError (one line) on anything malformed."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LutError(f"{where}: not valid JSON at line {exc.lineno}") from None
    return parse_table_doc(doc, where)


def _file_resolution(path: Path, cells: dict[str, EntryStats]) -> int:
    """R from `{R}_lookup_table.*`, else from the one first-conv key (`Conv-input:RxRx3-...`)."""
    m = TABLE_NAME_RE.match(path.name)
    if m:
        return int(m.group(1))
    found = sorted({int(c.group(1)) for k in cells if (c := _FIRST_CONV_RE.match(k))})
    if len(found) != 1:
        said = "no first-conv key" if not found else f"first-conv keys of {', '.join(map(str, found))}"
        raise LutError(f"{path}: cannot tell its resolution ({said}); name it {{R}}_lookup_table{path.suffix}")
    return found[0]


def read_table_file(path: Path) -> tuple[int, dict[str, EntryStats]]:
    """One official table file (.yaml, .yml or .json): its resolution and cells."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LutError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LutError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    parse = parse_json_table if path.suffix.lower() == ".json" else parse_yaml_table
    cells = parse(text, str(path))
    return _file_resolution(path, cells), cells


def read_table_dir(folder: Path) -> dict[tuple[int, str], EntryStats]:
    """All `{R}_lookup_table.yaml` / `.json` files of a folder (other files are left alone)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LutError(f"{folder}: not a folder of {{R}}_lookup_table.yaml or .json files")
    by_r: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        m = TABLE_NAME_RE.match(p.name)
        if not m:
            continue
        r = int(m.group(1))
        if r in by_r:
            raise LutError(f"{folder}: resolution {r} is given twice ({by_r[r].name} and {p.name}); keep one")
        by_r[r] = p
    if not by_r:
        raise LutError(f"{folder}: no {{R}}_lookup_table.yaml or {{R}}_lookup_table.json files")
    entries: dict[tuple[int, str], EntryStats] = {}
    for r in sorted(by_r):
        _, cells = read_table_file(by_r[r])
        entries.update(((r, key), st) for key, st in cells.items())
    return entries


read_yaml_dir = read_table_dir  # the name it had when only YAML was read


def write_yaml_dir(table: LatencyTable, folder: Path) -> list[Path]:
    """Official files, one per resolution. `mean` holds the table's value, the number the official code sums:
    for an imported table its own mean (so a round trip is exact), for a measured one the drift-normalised
    median (or the chosen statistic); `std` (left out where unknown) and `count` are the samples'."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_r: dict[int, dict[str, dict]] = {}
    for (r, key), st in table.entries.items():
        cell = {"count": int(st.count), "mean": float(st.value_ms)}
        if st.std_ms is not None:
            cell["std"] = float(st.std_ms)
        by_r.setdefault(r, {})[key] = cell
    paths = []
    for r in sorted(by_r):
        path = folder / f"{r}_lookup_table.yaml"
        with atomic_write(path) as f:  # a fresh temporary name: nothing planted in the folder is followed
            f.write(yaml.safe_dump(by_r[r], default_flow_style=False, sort_keys=True).encode("utf-8"))
        paths.append(path)
    return paths


# ---- Parquet / CSV ----------------------------------------------------------------------------------------
def table_frame(table: LatencyTable):
    """The table as rows of a CSV or Parquet file: one per entry, with the table's metadata (its batch size
    too, which `lut import` reads back) in columns of their own."""
    import pandas as pd

    rows = [{"device": table.device, "fingerprint_id": table.fingerprint_id, "space": table.space,
             "table_version": table.version, "resolution": r, "key": k, "latency_ms": st.latency_ms,
             "mean_ms": st.mean_ms, "std_ms": st.std_ms, "count": st.count, "normalised_ms": st.normalised_ms,
             "measured_at": st.measured_at, "batch": int(table.batch)}
            for (r, k), st in sorted(table.entries.items())]
    return pd.DataFrame(rows)


def write_frame(table: LatencyTable, path: Path, fmt: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = table_frame(table)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            try:
                df.to_parquet(tmp, index=False)
            except ImportError:
                raise LutError(_PARQUET_HINT) from None
        else:
            df.to_csv(tmp, index=False, float_format="%.17g")
    return path


def _given(value):
    """None for an empty cell (None, NaN, pandas' NA), else the value."""
    import pandas as pd

    try:
        return None if value is None or bool(pd.isna(value)) else value
    except (TypeError, ValueError):  # a list or array in a cell: not empty, and not a number either
        return value


def read_frame(path: Path) -> dict[tuple[int, str], EntryStats]:
    """A Parquet or CSV table: the columns of the module docstring (what `write_frame` writes, or by hand)."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except FileNotFoundError:
        raise LutError(f"{path}: no such file") from None
    except ImportError:
        raise LutError(_PARQUET_HINT) from None
    except Exception as exc:  # pyarrow/pandas raise many types for a corrupt file
        kind = path.suffix.lstrip(".") or "table"
        raise LutError(f"{path}: not a readable {kind} file ({exc.__class__.__name__})") from None
    cols = set(df.columns)
    need = {"resolution", "key"} - cols
    if need or not cols & {"mean_ms", "latency_ms"}:
        missing = sorted(need) + ([] if cols & {"mean_ms", "latency_ms"} else ["mean_ms (or latency_ms)"])
        raise LutError(f"{path}: missing column(s) {', '.join(missing)}")
    entries: dict[tuple[int, str], EntryStats] = {}
    for i, row in enumerate(df.to_dict("records"), start=2):  # line 1 of a CSV is its header
        key = _given(row["key"])
        if not isinstance(key, str) or not key:
            raise LutError(f"{path}: row {i}: the key is not a string ({row['key']!r})")
        r = _given(row["resolution"])
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r != int(r):
            raise LutError(f"{path}: row {i}: resolution must be an integer, got {row['resolution']!r}")
        where = f"{path}: {key!r}"
        latency, mean = _given(row.get("latency_ms")), _given(row.get("mean_ms"))
        if latency is None and mean is None:
            raise LutError(f"{where} has no mean_ms or latency_ms")
        st = entry_stats(latency if mean is None else mean, _given(row.get("std_ms")), _given(row.get("var")),
                         _given(row.get("count")), where, latency=latency, normalised=_given(row.get("normalised_ms")))
        if (int(r), key) in entries:
            raise LutError(f"{where} at resolution {int(r)} is given twice")
        entries[(int(r), key)] = st
    if not entries:
        raise LutError(f"{path}: the table is empty")
    return entries


# ---- any source -------------------------------------------------------------------------------------------
def read_table_source(source: Path) -> dict[tuple[int, str], EntryStats]:
    """A folder of official files, one official file, or one `.csv` / `.parquet` file."""
    source = Path(source)
    if source.is_dir():
        return read_table_dir(source)
    suffix = source.suffix.lower()
    if suffix in FRAME_SUFFIXES:
        return read_frame(source)
    if suffix in TABLE_SUFFIXES:
        r, cells = read_table_file(source)
        return {(r, key): st for key, st in cells.items()}
    if not source.exists():
        raise LutError(f"{source}: no such file or folder")
    raise LutError(f"{source}: expected a folder of {{R}}_lookup_table.yaml/.json files, one such file, "
                   f"a .csv or a .parquet file")
