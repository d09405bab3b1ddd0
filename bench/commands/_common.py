"""Options and output helpers shared by every command."""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from ofa_core.errors import OFABenchError

STORE_ENV = "OFA_BENCH_STORE"
DEFAULT_SPACE = "ofa-mbv3-w1.0"


def default_store() -> str:
    """`$OFA_BENCH_STORE`, else `store.sqlite` in the user's data folder."""
    env = os.environ.get(STORE_ENV)
    if env:
        return env
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return str(base / "ofa-bench" / "store.sqlite")


StoreOption = typer.Option(None, "--store", help=f"SQLite file or postgresql:// URL (default: ${STORE_ENV} or the user data folder)")
SpaceOption = typer.Option(None, "--space", help="search space name (default: the space of the device's table)")
#: for commands that make tables: a device with none yet gets the default space
NewTableSpaceOption = typer.Option(None, "--space", help=f"search space name (default: the space of the device's "
                                                          f"table, else {DEFAULT_SPACE})")
JsonOption = typer.Option(False, "--json", help="print one JSON document on stdout")


def resolve_store(store: str | None, must_exist: bool = False, default_may_be_missing: bool = False) -> str:
    """The store a command works on; with `must_exist` (commands that read or maintain a store) a missing
    SQLite file is a one-line error here, before any work, instead of a new empty store.
    `default_may_be_missing`: commands that only read may run without any store of the user's yet (the
    published tables, e.g. `note10`, need none): only a store named by --store or $OFA_BENCH_STORE must exist."""
    target = store or default_store()
    named = bool(store or os.environ.get(STORE_ENV))
    if must_exist and (named or not default_may_be_missing):
        from bench.store import check_store_exists

        check_store_exists(target)
    return target


def check_space(space: str | None) -> None:
    """A --space that was given must name a registered space: said first, before outputs or tables are looked
    at (an omitted one is found from the device's table, `bench.table.device_space`)."""
    if space:
        from ofa_core.space import SearchSpace

        SearchSpace.get(space)


# ---- values a typer callback checks at parse time (a usage error: the usage line, one error line, exit 2)
def number_check(*, gt: float | None = None, ge: float | None = None):
    """A typer option callback: the value must be finite and > `gt` / >= `ge`. None (an option not given)
    passes. click reads "nan" and "inf" as floats, and its ranges let nan through, hence this."""
    rule = "".join(([f" > {gt:g}"] if gt is not None else []) + ([f" >= {ge:g}"] if ge is not None else []))

    def check(value):
        if value is None:
            return value
        ok = math.isfinite(value) and (gt is None or value > gt) and (ge is None or value >= ge)
        if not ok:
            what = "a finite number" if isinstance(value, float) else "an integer"
            raise typer.BadParameter(f"must be {what}{rule}, got {value}")
        return value

    return check


positive = number_check(gt=0)
non_negative = number_check(ge=0)
at_least_one = number_check(ge=1)
finite = number_check()


# ---- output paths, checked before any measuring or exporting ---------------------------------------------
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def _writable_parent(p: Path, option: str) -> None:
    """The nearest existing folder above `p` must be a folder we may create entries in."""
    parent = p.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OFABenchError(f"{option} {p}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OFABenchError(f"{option} {p}: cannot write in {parent} (permission denied)")


def check_output_path(path: str | os.PathLike, option: str, suffixes: Sequence[str] | None = None) -> Path:
    """A file a command will write: refuse, before any work, a folder, a path under a regular file, a folder
    we may not write in, or a suffix outside `suffixes` (figures: the format follows the suffix)."""
    p = Path(path).expanduser()
    if suffixes is not None and p.suffix.lower() not in suffixes:
        found = f"suffix {p.suffix!r} is not" if p.suffix else "no suffix; it must be"
        raise OFABenchError(f"{option} {p}: {found} one of {', '.join(suffixes)} (the file type follows it)")
    if p.is_dir():
        raise OFABenchError(f"{option} {p} is a folder; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise OFABenchError(f"{option} {p}: cannot write it (permission denied)")
    _writable_parent(p, option)
    return p


def check_output_folder(path: str | os.PathLike, option: str) -> Path:
    """A folder a command will write files into (created if missing): refuse a file, a path under a file,
    or a folder we may not write in."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise OFABenchError(f"{option} {p} exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise OFABenchError(f"{option} {p}: cannot write in it (permission denied)")
        return p
    _writable_parent(p, option)
    return p


def parse_resolutions(text: str | None) -> list[int] | None:
    """`160,192,224` -> [160, 192, 224]; None stays None (the caller picks its default)."""
    if text is None or not text.strip():
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OFABenchError(f"--resolutions must be integers separated by commas, got {text!r}") from None
    if not values:
        raise OFABenchError("--resolutions is empty")
    return values


def parse_batches(text: str | None) -> list[int] | None:
    """`1,16,64` -> [1, 16, 64] (batch sizes, each at least 1); None stays None (the device profile's list)."""
    if text is None or not text.strip():
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OFABenchError(f"--batch must be batch sizes separated by commas, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise OFABenchError(f"--batch sizes must be integers >= 1, got {text!r}")
    return list(dict.fromkeys(values))


BatchOption = typer.Option(None, "--batch", callback=number_check(ge=1),
                           help="batch size of the table to use (default: 1, or the only batch size the device's "
                                "table has); latencies are the whole batch's")


def emit_json(doc: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def info(message: str) -> None:
    """Human-readable progress goes to stderr, so that stdout stays clean for --json."""
    print(message, file=sys.stderr)
