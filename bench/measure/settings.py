"""How one measuring pass is run: the settings every writer of measurements shares, and the device profile
they turn into for the agent."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ofa_core.errors import OFABenchError


class ProfileError(OFABenchError):
    """Profiling could not proceed (bad resolutions, device failed after retries)."""


def check_batch_sizes(batches, error: type[OFABenchError] = ProfileError) -> list[int] | None:
    """Batch sizes to make tables of: distinct, in the order given, each an integer >= 1 (`error` otherwise);
    None stays None (each device profile's own `batch` list)."""
    if batches is None:
        return None
    bad = [b for b in batches if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1]
    if bad or not batches:
        raise error(f"batch sizes must be integers >= 1, got {bad[0] if bad else 'none'}")
    return list(dict.fromkeys(int(b) for b in batches))


@dataclass(frozen=True)
class MeasureSettings:
    """How entries are measured. None means: take the device profile's value."""

    rounds: int = 3
    per_call: int = 16  # entries timed in one runner invocation (committed together)
    warmup_s: float | None = 0.1        # per entry over all rounds; None = the device profile's
    min_duration_s: float | None = 0.3  # per entry over all rounds (min_runs of the profile still holds)
    max_remeasure: int | None = None
    precision: float = 0.01  # re-measure while the median's relative standard error exceeds this
    retries: int = 2
    reference: bool = True
    # Whole subnets measured once the table is complete (smallest, largest, a spread between), so that a
    # freshly profiled device already has a calibration; 0 leaves it to `validate`. 12 is the fewest that let
    # the calibration fit its per-weight term (`MIN_POINTS` of "overhead+weights" is 10).
    calibration_subnets: int = 12
    # Entries whose latest cell was timed without the reference block (an older farm worker, --no-reference)
    # are measured again, so that the table holds one kind of cell.
    remeasure_raw: bool = False

    def __post_init__(self) -> None:
        """Bad settings fail here, before a store is opened or a model exported."""
        if self.rounds < 1 or self.per_call < 1 or self.retries < 0:
            raise ProfileError(f"need rounds >= 1, per_call >= 1 and retries >= 0, got {self.rounds}, "
                               f"{self.per_call} and {self.retries}")
        if self.calibration_subnets < 0:
            raise ProfileError(f"calibration_subnets must be >= 0, got {self.calibration_subnets}")
        if self.max_remeasure is not None and self.max_remeasure < 0:
            raise ProfileError(f"max_remeasure must be >= 0, got {self.max_remeasure}")
        for name in ("warmup_s", "min_duration_s", "precision"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ProfileError(f"{name} must be a finite number >= 0, got {value}")



def agent_profile(profile, settings: MeasureSettings):
    """The device profile with this run's overrides; re-measuring is done here (with the reference), not by the agent."""
    changes = {"max_remeasure": 0}
    if settings.warmup_s is not None:
        changes["warmup_s"] = settings.warmup_s
    if settings.min_duration_s is not None:
        changes["min_duration_s"] = settings.min_duration_s
    return profile.replace(**changes)
