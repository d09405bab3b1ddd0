"""The farm's user-facing error: what `ofa-bench farm` turns into one line on stderr."""
from __future__ import annotations

from ofa_core.errors import OFABenchError


class FarmError(OFABenchError):
    """Bad farm input (unknown device, nothing to serve) or a worker that could not start any device."""
