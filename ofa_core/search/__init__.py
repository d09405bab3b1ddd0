"""Hardware-aware search: the OFA evolutionary search under budgets, and NSGA-II Pareto fronts.

Predictors are passed in as plain callables `f(batch: ConfigBatch) -> np.ndarray` (an accuracy predictor, a
latency predictor, `space.macs`), as the official `EvolutionFinder` takes them. Unlike it, every population is
scored in one vectorised call, accuracies of configs already scored come from a cache, several searches
(restarts and budgets) evolve side by side in the same arrays ("lanes"), and a budget no subnet meets raises
`InfeasibleBudgetError` instead of resampling forever.

The rooms, in the order a search uses them:
- `problem`: what a search is given and gives back (predictors, budgets and their errors, `SearchParams`,
  `SearchResult`);
- `genome`: configs as rows of choice indices ("genes", int8): sampling, crossover, mutation, cache keys;
- `gene_paths`: our own predictors read straight from genes (no decoding to configs, the same values);
- `cache`: `ScoreCache`, metric values and accuracies of every config scored, once per distinct config;
- `offspring`: the children of a generation in every lane, each meeting its lane's budget;
- `smallest`: greedy descent to the smallest configs (`smallest_achievable`, seeds for tight budgets);
- `evolution`: `evolution_search` and `evolution_search_many`;
- `nsga`: `pareto_front` (NSGA-II; its pymoo adapters are in `nsga_pymoo`, imported when it runs).
"""
from ofa_core.search.cache import ScoreCache
from ofa_core.search.evolution import evolution_search, evolution_search_many
from ofa_core.search.genome import Genome
from ofa_core.search.nsga import ParetoFront, non_dominated, pareto_front
from ofa_core.search.problem import (InfeasibleBudgetError, InvalidBudgetError, Predictor, SearchParams, SearchResult,
                                     check_budget)
from ofa_core.search.smallest import smallest_achievable

__all__ = [
    "Genome", "InfeasibleBudgetError", "InvalidBudgetError", "ParetoFront", "Predictor", "ScoreCache",
    "SearchParams", "SearchResult", "check_budget", "evolution_search", "evolution_search_many", "non_dominated",
    "pareto_front", "smallest_achievable",
]
