"""`python -m bench.perf search`: our evolutionary search against the official OFA `EvolutionFinder`, one run.

Both sides use the same published accuracy predictor and the Note10 tables (resolutions 160..224 step 16),
population 100 and 500 generations, one thread. Ours holds the latency predictor's upper bound, as `ofa-bench
search` does (for these tables, without measured subnets, it is the table sum the official finder uses). For
each budget, one budget per call: our seeds and the official run side by side (the official run between our
seeds, so both see the same load), wall and CPU time per search and their ratio, and the best predicted
accuracy of each; then ours with every budget in one call, and a Pareto front. The official code is the `ofa`
wheel (the `official` extra); its package imports torchvision and gdown, which it does not declare and which
cannot be installed beside torch here, so empty stand-in modules take their place when they are absent (the
search never uses them). Its latency tables are read from
the local YAML files instead of a download, and its predictor from the local `.pth`.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread on both sides, before numpy loads BLAS

import argparse
import importlib.abc
import importlib.machinery
import json
import statistics
import sys
import time
import types
from functools import partial
from pathlib import Path

BUDGETS_MS = (15.0, 20.0, 25.0, 30.0)
RESOLUTIONS = (160, 176, 192, 208, 224)
OFFICIAL_WHEEL = "ofa==0.1.0.post202307202001"


# ---- the official implementation --------------------------------------------------------------------
class _StandIn(types.ModuleType):
    """An empty module whose every attribute is an inert class (so `class X(transforms.Y)` still works)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})
        setattr(self, name, cls)
        return cls


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    roots = ("torchvision", "gdown")

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        return None


def import_official():
    """The official `ofa.tutorial` package, importable without torchvision and gdown. Raises ImportError
    (with the install command) when the wheel is absent."""
    if not _importable("torchvision"):  # a real one that imports is used as is
        if not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _StandInFinder())
        for name in [m for m in sys.modules if m.split(".")[0] in _StandInFinder.roots]:
            del sys.modules[name]
    try:
        import ofa.tutorial as tutorial
    except ImportError as exc:
        raise ImportError(f"official OFA code not importable ({exc}); "
                          f"pip install -c .ci/constraints.txt torch==2.13.0 '.[official]'") from None
    return tutorial


def _importable(name: str) -> bool:
    """Whether the optional module `name` is installed and imports (one built for another torch does not)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(name) is None:
        return False
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any failure means: stand in for it
        return False
    return True


def official_accuracy_predictor(pth: Path):
    """The tutorial's AccuracyPredictor reading the local weights instead of downloading them."""
    tutorial = import_official()
    import ofa.tutorial.accuracy_predictor as acc_mod

    acc_mod.download_url = lambda *a, **k: str(pth)
    return tutorial.AccuracyPredictor(pretrained=True, device="cpu")


def official_latency_table(table_dir: Path, resolutions=RESOLUTIONS):
    """The tutorial's Note10 LatencyTable over the local YAML files (its loader calls `yaml.load` without a
    Loader, which PyYAML 6 refuses: give that module a safe loader)."""
    import yaml

    import_official()
    import ofa.tutorial.latency_table as lat_mod

    lat_mod.yaml = types.SimpleNamespace(load=yaml.safe_load)
    table = lat_mod.LatencyTable.__new__(lat_mod.LatencyTable)
    table.latency_tables = {r: lat_mod.LatencyEstimator(url=str(table_dir / f"{r}_lookup_table.yaml"))
                            for r in resolutions}
    return table


def run_official(acc, lat, budget_ms: float, seed: int, population: int, generations: int):
    """One official search; returns (seconds, best accuracy, best sample dict, its latency)."""
    import random

    import numpy as np

    import ofa.tutorial.evolution_finder as evo

    evo.tqdm = lambda it, **k: it  # no progress bars
    random.seed(seed)
    np.random.seed(seed)
    finder = evo.EvolutionFinder(constraint_type="note10", efficiency_constraint=budget_ms,
                                 efficiency_predictor=lat, accuracy_predictor=acc,
                                 population_size=population, max_time_budget=generations)
    t0, c0 = time.perf_counter(), time.process_time()
    _, best = finder.run_evolution_search()
    return (time.perf_counter() - t0, time.process_time() - c0), float(best[0]), best[1], float(best[2])


# ---- ours ---------------------------------------------------------------------------------------------
def _ours(anchors: Path):
    from bench.table import LatencyPredictor, load_device_table
    from ofa_core.accuracy import AccuracyPredictor
    from ofa_core.space import SearchSpace

    space = SearchSpace.get("ofa-mbv3-w1.2")
    acc = AccuracyPredictor.from_official(anchors / "acc_predictor.pth")
    lat = LatencyPredictor.from_table(load_device_table("note10", space), space)
    return space, acc, lat


def _timed(fn):
    """(result, wall seconds, CPU seconds) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.perf search", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds of our search, per budget")
    ap.add_argument("--official-seeds", type=int, default=1,
                    help="seeds of the official search, per budget (each takes ~10 s; 0 skips it)")
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--restarts", type=int, default=None, help="our restarts side by side (default: SearchParams)")
    ap.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS_MS))
    ap.add_argument("--single-only", action="store_true",
                    help="only the one-budget-per-call comparison (no all-budgets call, no Pareto front)")
    ap.add_argument("--json", action="store_true")
    return ap


def _run_ours(space, acc, metrics, params, budget_ms: float, seed: int) -> dict:
    """One search of ours for one budget: its best predicted accuracy, wall and CPU seconds."""
    import numpy as np

    from ofa_core.search import evolution_search

    r, wall, cpu = _timed(partial(evolution_search, space, acc, metrics, {"latency_ms": budget_ms},
                                  np.random.default_rng(seed), params, RESOLUTIONS))
    if r.values["latency_ms"] > budget_ms:
        raise AssertionError(f"budget {budget_ms} ms broken: {r.values['latency_ms']}")
    return {"seed": seed, "accuracy": r.accuracy, "wall_s": wall, "cpu_s": cpu}


def _per_budget(ours_setup, official, budgets, args) -> dict:
    """One budget per call, ours and the official side by side: the official run sits between our seeds, so
    both see the same load. `official`: (accuracy predictor, latency table) of the official code, or None."""
    per_budget = {}
    for b in budgets:
        ours = [_run_ours(*ours_setup, b, seed) for seed in range(args.seeds // 2)]
        runs = []
        for seed in range(args.official_seeds):
            (s, cpu), a, _, l_ms = run_official(*official, b, seed, args.population, args.generations)
            runs.append({"seed": seed, "accuracy": a, "latency_ms": l_ms, "wall_s": s, "cpu_s": cpu})
        ours += [_run_ours(*ours_setup, b, seed) for seed in range(args.seeds // 2, args.seeds)]
        row = {"ours": _summary(ours), "load": _load()}
        if runs:
            row["official"] = _summary(runs)
            row["speedup_wall"] = row["official"]["wall_s"] / row["ours"]["wall_s"]
            row["speedup_cpu"] = row["official"]["cpu_s"] / row["ours"]["cpu_s"]
        per_budget[f"{b:g}"] = row
        print(_budget_line(b, row), file=sys.stderr)
    return per_budget


def _overall(report: dict, official_seeds: int) -> None:
    """Means over the budgets of the one-budget-per-call comparison, into `report`."""
    per_budget = report["per_budget"]
    ours_all = [b["ours"] for b in per_budget.values()]
    report["ours"] = {"seconds_per_search": statistics.mean(o["wall_s"] for o in ours_all),
                      "cpu_seconds_per_search": statistics.mean(o["cpu_s"] for o in ours_all),
                      "accuracy_mean": {k: v["ours"]["accuracy_mean"] for k, v in per_budget.items()},
                      "accuracy_min": {k: v["ours"]["accuracy_min"] for k, v in per_budget.items()}}
    if official_seeds > 0:
        off_all = [b["official"] for b in per_budget.values()]
        report["official"] = {"seconds_per_search": statistics.mean(o["wall_s"] for o in off_all),
                              "cpu_seconds_per_search": statistics.mean(o["cpu_s"] for o in off_all),
                              "seeds": official_seeds,
                              "accuracy_mean": {k: v["official"]["accuracy_mean"] for k, v in per_budget.items()}}
        report["speedup"] = report["official"]["seconds_per_search"] / report["ours"]["seconds_per_search"]
        report["speedup_cpu"] = report["official"]["cpu_seconds_per_search"] / report["ours"]["cpu_seconds_per_search"]


def _batched(report: dict, ours_setup, budgets, seeds: int) -> None:
    """Ours, every budget in one call (several searches share the same arrays), into `report`."""
    import numpy as np

    from ofa_core.search import evolution_search_many

    space, acc, metrics, params = ours_setup
    batched = {b: [] for b in budgets}
    batched_s, batched_cpu = [], []
    for seed in range(seeds):
        rs, wall, cpu = _timed(partial(evolution_search_many, space, acc, metrics,
                                       [{"latency_ms": b} for b in budgets], np.random.default_rng(seed), params,
                                       RESOLUTIONS))
        batched_s.append(wall / len(budgets))
        batched_cpu.append(cpu / len(budgets))
        for b, r in zip(budgets, rs):
            if r.values["latency_ms"] > b:
                raise AssertionError(f"budget {b} ms broken: {r.values['latency_ms']}")
            batched[b].append(r.accuracy)
    report["ours"].update({
        "seconds_per_budget_batched": statistics.mean(batched_s),
        "cpu_seconds_per_budget_batched": statistics.mean(batched_cpu),
        "accuracy_mean_batched": {f"{b:g}": statistics.mean(batched[b]) for b in budgets},
        "accuracy_min_batched": {f"{b:g}": min(batched[b]) for b in budgets}})
    if "official" in report:
        report["speedup_batched"] = report["official"]["seconds_per_search"] / statistics.mean(batched_s)
        report["speedup_cpu_batched"] = (report["official"]["cpu_seconds_per_search"]
                                         / statistics.mean(batched_cpu))


def _pareto(space, acc, metrics, lat) -> dict:
    """A Pareto front of the same device (all resolutions its table holds): its size and time."""
    import numpy as np

    from ofa_core.search import pareto_front

    front, wall, cpu = _timed(partial(pareto_front, space, acc, metrics, np.random.default_rng(0),
                                      resolutions=lat.resolutions))
    return {"points": len(front), "seconds": wall, "cpu_seconds": cpu,
            "configs_scored": front.n_evaluated, "resolutions": len(lat.resolutions)}


def main(argv: list[str]) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")

    import torch

    from ofa_core.search import SearchParams

    from bench.table import anchors_missing
    from ofa_core.accuracy import anchors_root

    torch.set_num_threads(1)
    anchors = anchors_root() / "ofa-mbv3-w12-note10"
    for needed in (anchors / "acc_predictor.pth", anchors / "latency_table_note10"):
        if not needed.exists():
            print(f"python -m bench.perf search: {anchors_missing(needed)}", file=sys.stderr)
            return 2
    budgets = [float(b) for b in args.budgets.split(",")]
    space, acc, lat = _ours(anchors)
    params = SearchParams(population=args.population, generations=args.generations,
                          **({"restarts": args.restarts} if args.restarts else {}))
    metrics = {"latency_ms": lat.upper}  # what `ofa-bench search` holds: the prediction interval's upper bound
    off_acc = off_lat = None
    if args.official_seeds > 0:
        off_acc = official_accuracy_predictor(anchors / "acc_predictor.pth")
        off_lat = official_latency_table(anchors / "latency_table_note10")
    report: dict = {"budgets_ms": budgets, "population": args.population, "generations": args.generations,
                    "restarts": params.restarts, "resolutions": list(RESOLUTIONS), "load_before": _load()}
    ours_setup = (space, acc, metrics, params)
    report["per_budget"] = _per_budget(ours_setup, (off_acc, off_lat), budgets, args)
    _overall(report, args.official_seeds)
    if not args.single_only:
        _batched(report, ours_setup, budgets, args.seeds)
        report["pareto"] = _pareto(space, acc, metrics, lat)
    report["load_after"] = _load()

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report, budgets)
    return 0


def _summary(runs: list[dict]) -> dict:
    accs = [r["accuracy"] for r in runs]
    return {"accuracy_mean": statistics.mean(accs), "accuracy_min": min(accs),
            "wall_s": statistics.mean(r["wall_s"] for r in runs), "cpu_s": statistics.mean(r["cpu_s"] for r in runs),
            "runs": runs}


def _budget_line(b: float, row: dict) -> str:
    o = row["ours"]
    line = (f"{b:>6g} ms  {o['accuracy_mean']:.4f} ({o['accuracy_min']:.4f})  {o['wall_s']:6.3f} s "
            f"({o['cpu_s']:.3f} s CPU)")
    if "official" in row:
        f = row["official"]
        line += (f"  |  {f['accuracy_mean']:.4f}  {f['wall_s']:6.2f} s ({f['cpu_s']:.2f} s CPU)  |  "
                 f"{row['speedup_wall']:5.1f}x ({row['speedup_cpu']:.1f}x CPU)")
    return line + f"  load {row['load']:.2f}"


def _print(rep: dict, budgets) -> None:
    per = rep["per_budget"]
    n_ours = len(next(iter(per.values()))["ours"]["runs"])
    print(f"search, population {rep['population']}, {rep['generations']} generations, Note10 tables at "
          f"{','.join(map(str, rep['resolutions']))}, one thread, one budget per call; ours: {n_ours} seeds, "
          f"{rep['restarts']} restart(s); load average {rep['load_before']:.2f} before, {rep['load_after']:.2f} after")
    head = "budget     ours: accuracy mean (min)  s per search"
    if "official" in rep:
        head += f"   |  official ({rep['official']['seeds']} seed): accuracy  s per search  |  speed-up"
    print(head)
    for b in budgets:
        print(_budget_line(b, per[f"{b:g}"]))
    ours = rep["ours"]
    if "official" in rep:
        off = rep["official"]
        print(f"all budgets: ours {ours['seconds_per_search']:.3f} s ({ours['cpu_seconds_per_search']:.3f} s CPU), "
              f"official {off['seconds_per_search']:.2f} s ({off['cpu_seconds_per_search']:.2f} s CPU): "
              f"{rep['speedup']:.1f}x wall, {rep['speedup_cpu']:.1f}x CPU")
    if "seconds_per_budget_batched" in ours:
        line = (f"ours with all budgets in one call: {ours['seconds_per_budget_batched']:.3f} s "
                f"({ours['cpu_seconds_per_budget_batched']:.3f} s CPU) per budget, accuracy "
                + ", ".join(f"{b:g} ms {ours['accuracy_mean_batched'][f'{b:g}']:.4f}" for b in budgets))
        if "speedup_batched" in rep:
            line += f"; {rep['speedup_batched']:.1f}x wall, {rep['speedup_cpu_batched']:.1f}x CPU"
        print(line)
    if "pareto" in rep:
        p = rep["pareto"]
        print(f"pareto front (NSGA-II, {p['resolutions']} resolutions): {p['points']} points in {p['seconds']:.2f} s "
              f"({p['cpu_seconds']:.2f} s CPU), {p['configs_scored']} configs scored")
