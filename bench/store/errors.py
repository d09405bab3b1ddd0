"""The store's errors: `StoreError` for anything a user can fix (bad path, foreign file, unreachable database),
and `StoreConflict` for a write a uniqueness rule refused."""
from __future__ import annotations

import re

from ofa_core.errors import OFABenchError


class StoreError(OFABenchError):
    """A store that cannot be opened or used; the message is one line and names the store."""


class StoreConflict(StoreError):
    """A write refused by a uniqueness rule (used internally by the job queue to detect races)."""


def one_line(text: object) -> str:
    """Collapse a driver message (often several lines) into one."""
    return " ".join(str(text).split()) or "unknown error"


def redact_url(url: str) -> str:
    """A database URL without its password, fit for error messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)
