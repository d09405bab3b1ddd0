"""`python -m bench.perf lut [--n N]`: how fast tables load and the predictor scores configs (Note10 anchors,
else a random table), so regressions in the vectorised path show up as numbers."""
from __future__ import annotations

import argparse
import json
import time


def main(argv: list[str]) -> int:
    import numpy as np

    from bench.table import EntryStats, LatencyPredictor, LatencyTable, anchor_table, candidates
    from ofa_core.space import SearchSpace

    ap = argparse.ArgumentParser(prog="python -m bench.perf lut")
    ap.add_argument("--n", type=int, default=100_000, help="configs per predictor call")
    args = ap.parse_args(argv)
    space = SearchSpace.get("ofa-mbv3-w1.2")
    t0 = time.perf_counter()
    table = anchor_table("note10", space)
    if table is None:
        rng = np.random.default_rng(0)
        ents = candidates(space, range(160, 225, 4))
        table = LatencyTable("random", "random", space.name, "random",
                             {(e.resolution, e.key): EntryStats(v, v, 0.0, 1) for e, v in zip(ents, rng.uniform(0.01, 2, len(ents)))})
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = LatencyPredictor.from_table(table, space)
    build_s = time.perf_counter() - t0
    batch = space.sample_batch(np.random.default_rng(0), args.n, pred.resolutions)
    pred(batch)  # warm up
    t0 = time.perf_counter()
    pred(batch)
    call_s = time.perf_counter() - t0
    cfgs = batch.to_configs()[:2000]
    t0 = time.perf_counter()
    pred(cfgs)
    list_s = time.perf_counter() - t0
    doc = {"table": table.source, "entries": len(table.entries), "load_s": round(load_s, 3),
           "build_predictor_s": round(build_s, 3), "batch": args.n, "predict_batch_s": round(call_s, 4),
           "configs_per_s": round(args.n / call_s), "predict_2000_configs_list_s": round(list_s, 4)}
    print(json.dumps(doc, indent=2))
    return 0
