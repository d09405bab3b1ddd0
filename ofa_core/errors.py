"""Errors a user can cause. The CLI turns any `OFABenchError` into one line on stderr."""


class OFABenchError(Exception):
    """Base of every error that is the user's to fix (bad input, unreachable device, corrupt file)."""


class UnknownSpaceError(OFABenchError, LookupError):
    """A search space name that is not registered."""


class InvalidConfigError(OFABenchError, ValueError):
    """A subnet configuration that does not fit its search space or cannot be parsed."""


class CheckpointError(OFABenchError, ValueError):
    """A checkpoint or weights file that is missing, truncated or belongs to another space."""
