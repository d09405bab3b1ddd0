"""What a search is given and what it gives back: predictors (plain callables on a `ConfigBatch`), budgets
(checked up front; `InfeasibleBudgetError` when no subnet meets one), the evolution's hyperparameters and the
result of one budget. Every other module of `ofa_core.search` builds on these.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ofa_core.errors import OFABenchError
from ofa_core.space import ConfigBatch, SubnetConfig

Predictor = Callable[[ConfigBatch], np.ndarray]


class InfeasibleBudgetError(OFABenchError, ValueError):
    """No subnet of the space meets the budget; the message gives the smallest value reachable, `config` the
    subnet that reaches it and `values` its value of each limited metric."""

    def __init__(self, message: str, config: SubnetConfig | None = None, values: Mapping[str, float] | None = None):
        super().__init__(message)
        self.config = config
        self.values = dict(values or {})


class InvalidBudgetError(OFABenchError, ValueError):
    """A budget that is not a finite number above zero (0, a negative value, nan or inf)."""


def check_budget(budget: Mapping[str, float]) -> dict[str, float]:
    """The budget as floats; every limit must be finite and > 0 (nan would silently admit every subnet)."""
    out = {}
    for name, value in budget.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InvalidBudgetError(f"budget on {name} must be a number, got {value!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise InvalidBudgetError(f"budget on {name} must be a finite number > 0, got {value!r}")
        out[name] = v
    return out


@dataclass(frozen=True)
class SearchParams:
    """Evolution hyperparameters: the paper's / official finder's defaults; `restarts` independent searches
    evolve side by side and the best is kept."""

    population: int = 100
    generations: int = 500
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    restarts: int = 1
    max_resample: int = 50  # rounds of redrawing children that break a budget
    oversample: int = 3  # candidates drawn per child in the first round (the first feasible one is kept)
    oversample_retry: int = 8  # ... and in later rounds, for the children still breaking their budget
    unique_parents: bool = True  # pick parents among distinct configs (the official finder lets copies crowd in)

    def __post_init__(self) -> None:
        if self.population < 2 or self.generations < 0 or self.restarts < 1:
            raise OFABenchError("search needs population >= 2, generations >= 0 and restarts >= 1")
        if not 0 < self.parent_ratio <= 1 or not 0 <= self.mutation_ratio <= 1 or not 0 <= self.mutate_prob <= 1:
            raise OFABenchError("parent_ratio must be in (0, 1]; mutation_ratio and mutate_prob in [0, 1]")

    @property
    def n_parents(self) -> int:
        return max(1, int(round(self.parent_ratio * self.population)))

    @property
    def n_mutations(self) -> int:
        return int(round(self.mutation_ratio * self.population))


@dataclass(frozen=True)
class SearchResult:
    """The best config found under one budget, its predicted accuracy and the values of every metric."""

    config: SubnetConfig
    accuracy: float
    values: dict[str, float]
    limits: dict[str, float]
    history: np.ndarray = field(repr=False)  # best accuracy after each generation (best restart)
    restart_accuracies: tuple[float, ...] = ()
    n_scored: int = 0  # distinct configs scored by the accuracy predictor (shared by all lanes of the call)
    seconds: float = 0.0  # wall time of the whole call (all budgets)
