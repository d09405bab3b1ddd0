"""Options and output helpers shared by every command."""
from __future__ import annotations

import json
import os
import sys
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
SpaceOption = typer.Option(DEFAULT_SPACE, "--space", help="search space name")
JsonOption = typer.Option(False, "--json", help="print one JSON document on stdout")


def resolve_store(store: str | None) -> str:
    return store or default_store()


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
