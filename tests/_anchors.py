"""Where tests find the published anchors (real OFA data: the Note10 latency tables and the official accuracy
predictor): `../shared/anchors` beside the checkout when it is there (CI has it), else the byte-identical copy
shipped in `tests/data/anchors` (see its NOTICE.md). Importable at collection time (`from _anchors import ...`:
tests/ is on sys.path), so parametrised tests can list the files."""
from __future__ import annotations

import os
from pathlib import Path

TESTS = Path(__file__).resolve().parent
#: `../shared` beside the checkout; $OFA_BENCH_SHARED names another one (a missing path runs as a plain clone)
SHARED = Path(os.environ.get("OFA_BENCH_SHARED") or TESTS.parents[1] / "shared")
SHIPPED_ANCHORS = TESTS / "data" / "anchors"
NOTE10 = "ofa-mbv3-w12-note10"


def anchors_dir() -> Path:
    """`../shared/anchors` if present, else the shipped copy."""
    shared = SHARED / "anchors"
    return shared if shared.is_dir() else SHIPPED_ANCHORS


def note10_dir() -> Path:
    """The Note10 anchor folder: `acc_predictor.pth` and `latency_table_note10/`."""
    return anchors_dir() / NOTE10


def missing_shared(rel: str = "") -> str:
    """The skip message of a test that needs something only ../shared has (not shipped): what to fetch, where."""
    path = SHARED / rel if rel else SHARED
    what = f"`{rel}` from the project's shared folder" if rel else "the project's shared folder"
    return (f"needs {path}, which the project does not ship: fetch {what} and put it at {path} "
            f"(../shared beside the checkout; CI has it), or set $OFA_BENCH_SHARED to a folder holding it")
