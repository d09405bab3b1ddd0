"""`python -m bench.perf search`: our evolutionary search against the official OFA `EvolutionFinder`, one run.

Both sides use the same published accuracy predictor and the Note10 tables (resolutions 160..224 step 16),
population 100 and 500 generations, one thread. The official code is the `ofa` wheel (installed with
`--no-deps`); it imports torchvision and gdown, which cannot be installed beside torch here, so empty stand-in
modules take their place (the search never uses them). Its latency tables are read from the local YAML files
instead of a download, and its predictor from the local `.pth`.
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
    try:
        import torchvision  # noqa: F401  (a real one, if ever installed, is used as is)
    except Exception:  # noqa: BLE001
        if not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _StandInFinder())
        for name in [m for m in sys.modules if m.split(".")[0] in _StandInFinder.roots]:
            del sys.modules[name]
    try:
        import ofa.tutorial as tutorial
    except ImportError as exc:
        raise ImportError(f"official OFA code not importable ({exc}); pip install --no-deps {OFFICIAL_WHEEL}") from None
    return tutorial


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
    from bench.lut import load_device_table
    from bench.predictor import LatencyPredictor
    from ofa_core.accuracy import AccuracyPredictor
    from ofa_core.space import SearchSpace

    space = SearchSpace.get("ofa-mbv3-w1.2")
    acc = AccuracyPredictor.from_official(anchors / "acc_predictor.pth")
    lat = LatencyPredictor.from_table(load_device_table("note10", space), space)
    return space, acc, lat


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf search", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds of our search")
    ap.add_argument("--official-seeds", type=int, default=1,
                    help="seeds of the official search (each takes ~10 s per budget; 0 skips it)")
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--generations", type=int, default=500)
    ap.add_argument("--restarts", type=int, default=None, help="our restarts side by side (default: SearchParams)")
    ap.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS_MS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from ofa_core.search import SearchParams, evolution_search, evolution_search_many

    from bench.lut import anchors_missing, anchors_root

    torch.set_num_threads(1)
    anchors = anchors_root() / "ofa-mbv3-w12-note10"
    for needed in (anchors / "acc_predictor.pth", anchors / "latency_table_note10"):
        if not needed.exists():
            print(f"python -m bench.perf search: {anchors_missing(needed)}", file=sys.stderr)
            return 2
    budgets = [float(b) for b in args.budgets.split(",")]
    space, acc, lat = _ours(anchors)
    params = SearchParams(population=args.population, generations=args.generations)
    if args.restarts:
        params = SearchParams(population=args.population, generations=args.generations, restarts=args.restarts)
    metrics = {"latency_ms": lat}
    report: dict = {"budgets_ms": budgets, "population": args.population, "generations": args.generations,
                    "restarts": params.restarts, "resolutions": list(RESOLUTIONS)}

    # ours, one call per budget
    single = {b: [] for b in budgets}
    single_s, single_cpu = [], []
    for seed in range(args.seeds):
        for b in budgets:
            t0, c0 = time.perf_counter(), time.process_time()
            r = evolution_search(space, acc, metrics, {"latency_ms": b}, np.random.default_rng(seed), params, RESOLUTIONS)
            single_s.append(time.perf_counter() - t0)
            single_cpu.append(time.process_time() - c0)
            assert r.values["latency_ms"] <= b
            single[b].append(r.accuracy)
        print(f"ours seed {seed}: " + ", ".join(f"{b:g} ms {single[b][-1]:.4f}" for b in budgets), file=sys.stderr)
    # ours, every budget in one call
    batched_s, batched_cpu = [], []
    batched = {b: [] for b in budgets}
    for seed in range(args.seeds):
        t0, c0 = time.perf_counter(), time.process_time()
        rs = evolution_search_many(space, acc, metrics, [{"latency_ms": b} for b in budgets],
                                   np.random.default_rng(seed), params, RESOLUTIONS)
        batched_s.append((time.perf_counter() - t0) / len(budgets))
        batched_cpu.append((time.process_time() - c0) / len(budgets))
        for b, r in zip(budgets, rs):
            assert r.values["latency_ms"] <= b
            batched[b].append(r.accuracy)
    report["ours"] = {
        "seconds_per_search": statistics.mean(single_s),
        "cpu_seconds_per_search": statistics.mean(single_cpu),
        "seconds_per_budget_batched": statistics.mean(batched_s),
        "cpu_seconds_per_budget_batched": statistics.mean(batched_cpu),
        "accuracy_mean": {f"{b:g}": statistics.mean(single[b]) for b in budgets},
        "accuracy_min": {f"{b:g}": min(single[b]) for b in budgets},
        "accuracy_mean_batched": {f"{b:g}": statistics.mean(batched[b]) for b in budgets},
        "accuracy_min_batched": {f"{b:g}": min(batched[b]) for b in budgets},
    }

    # a Pareto front of the same device (all resolutions its table holds)
    from ofa_core.search import pareto_front

    t0, c0 = time.perf_counter(), time.process_time()
    front = pareto_front(space, acc, metrics, np.random.default_rng(0), resolutions=lat.resolutions)
    report["pareto"] = {"points": len(front), "seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.process_time() - c0, "configs_scored": front.n_evaluated,
                        "resolutions": len(lat.resolutions)}

    if args.official_seeds > 0:
        off_acc = official_accuracy_predictor(anchors / "acc_predictor.pth")
        off_lat = official_latency_table(anchors / "latency_table_note10")
        off = {b: [] for b in budgets}
        off_s, off_cpu = [], []
        for seed in range(args.official_seeds):
            for b in budgets:
                (s, cpu), a, sample, l_ms = run_official(off_acc, off_lat, b, seed, args.population, args.generations)
                off_s.append(s)
                off_cpu.append(cpu)
                off[b].append(a)
                print(f"official seed {seed} {b:g} ms: {a:.4f} ({l_ms:.2f} ms) in {s:.1f} s ({cpu:.1f} s CPU)",
                      file=sys.stderr)
        report["official"] = {"seconds_per_search": statistics.mean(off_s),
                              "cpu_seconds_per_search": statistics.mean(off_cpu), "seeds": args.official_seeds,
                              "accuracy_mean": {f"{b:g}": statistics.mean(off[b]) for b in budgets}}
        o, oc = report["official"]["seconds_per_search"], report["official"]["cpu_seconds_per_search"]
        ours = report["ours"]
        report["speedup"] = o / ours["seconds_per_search"]
        report["speedup_batched"] = o / ours["seconds_per_budget_batched"]
        report["speedup_cpu"] = oc / ours["cpu_seconds_per_search"]
        report["speedup_cpu_batched"] = oc / ours["cpu_seconds_per_budget_batched"]

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report, budgets)
    return 0


def _print(rep: dict, budgets) -> None:
    ours = rep["ours"]
    print(f"search, population {rep['population']}, {rep['generations']} generations, Note10 tables at "
          f"{','.join(map(str, rep['resolutions']))}, one thread; ours with {rep['restarts']} restarts side by side")
    head = "budget_ms  ours_mean  ours_min  ours_batched_mean" + ("  official_mean" if "official" in rep else "")
    print(head)
    for b in budgets:
        k = f"{b:g}"
        line = (f"{k:>9}  {ours['accuracy_mean'][k]:.4f}     {ours['accuracy_min'][k]:.4f}    "
                f"{ours['accuracy_mean_batched'][k]:.4f}")
        if "official" in rep:
            line += f"             {rep['official']['accuracy_mean'][k]:.4f}"
        print(line)
    print(f"ours: {ours['seconds_per_search']:.3f} s ({ours['cpu_seconds_per_search']:.3f} s CPU) per search, one "
          f"budget per call; {ours['seconds_per_budget_batched']:.3f} s ({ours['cpu_seconds_per_budget_batched']:.3f} "
          f"s CPU) per budget with all budgets in one call")
    p = rep["pareto"]
    print(f"pareto front (NSGA-II, {p['resolutions']} resolutions): {p['points']} points in {p['seconds']:.2f} s "
          f"({p['cpu_seconds']:.2f} s CPU), {p['configs_scored']} configs scored")
    if "official" in rep:
        off = rep["official"]
        print(f"official: {off['seconds_per_search']:.2f} s ({off['cpu_seconds_per_search']:.2f} s CPU) per search "
              f"({off['seeds']} seed(s))")
        print(f"speed-up, wall: {rep['speedup']:.1f}x per search, {rep['speedup_batched']:.1f}x batched; "
              f"CPU: {rep['speedup_cpu']:.1f}x, {rep['speedup_cpu_batched']:.1f}x batched")
