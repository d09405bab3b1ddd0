"""The one error the store raises for anything a user can fix (bad path, foreign file, unreachable database)."""
from __future__ import annotations

import re

from ofa_core.errors import OFABenchError


class StoreError(OFABenchError):
    """A store that cannot be opened or used; the message is one line and names the store."""


def one_line(text: object) -> str:
    """Collapse a driver message (often several lines) into one."""
    return " ".join(str(text).split()) or "unknown error"


def redact_url(url: str) -> str:
    """A database URL without its password, fit for error messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)
