"""`python -m bench.perf core`: speed of the supernet core on this CPU, one run, figures printed as measured.

1. Extraction: `net.extract(cfg)` of random w1.0 subnets (target: median < 50 ms wall time; the process's
   CPU time is printed too, since on a shared machine the wall time mostly measures the other jobs).
2. Cost model: `space.macs(batch)` for 10,000 configs in one vectorised call (target: < 0.1 s).
3. Forward at 224, batch 1, eval: the supernet with a config vs the extracted static subnet, interleaved, same
   configs (target: the extracted one is not slower, ratio extracted / supernet <= 1).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _median_ms(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def bench_extract(net, cfgs) -> dict:
    net.extract(cfgs[0])  # warm-up: first-call allocations
    times, cpu_times = [], []
    for cfg in cfgs:
        t0, c0 = time.perf_counter(), time.process_time()
        net.extract(cfg)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu_times.append((time.process_time() - c0) * 1e3)
    largest_ms = _median_ms(lambda: net.extract(net.space.largest()), 5)
    return {"n_subnets": len(cfgs), "median_ms": statistics.median(times), "max_ms": max(times),
            "median_cpu_ms": statistics.median(cpu_times), "largest_subnet_ms": largest_ms, "target_ms": 50.0,
            "ok": statistics.median(times) < 50.0}


def bench_macs(space, rng, n: int) -> dict:
    batch = space.sample_batch(rng, n)
    space.macs(batch)
    macs_s = _median_ms(lambda: space.macs(batch), 5) / 1e3
    params_s = _median_ms(lambda: space.params(batch), 5) / 1e3
    return {"n_configs": n, "macs_s": macs_s, "params_s": params_s, "target_s": 0.1, "ok": macs_s < 0.1}


def bench_forward(net, cfgs, resolution: int, rounds: int) -> dict:
    import torch

    x = torch.randn(1, net.space.in_channels, resolution, resolution)
    statics = [net.extract(c).eval() for c in cfgs]
    sup, ext = [], []
    with torch.no_grad():
        for cfg, static in zip(cfgs, statics):  # warm-up both paths
            net(x, cfg)
            static(x)
        for _ in range(rounds):  # interleaved so that machine drift hits both sides alike
            for cfg, static in zip(cfgs, statics):
                t0 = time.perf_counter()
                net(x, cfg)
                t1 = time.perf_counter()
                static(x)
                t2 = time.perf_counter()
                sup.append((t1 - t0) * 1e3)
                ext.append((t2 - t1) * 1e3)
    s, e = statistics.median(sup), statistics.median(ext)
    return {"resolution": resolution, "n_subnets": len(cfgs), "rounds": rounds, "supernet_median_ms": s,
            "extracted_median_ms": e, "ratio_extracted_over_supernet": e / s, "ok": e <= s}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf core", description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="ofa-mbv3-w1.0")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--subnets", type=int, default=20, help="random subnets for the extraction timing")
    parser.add_argument("--configs", type=int, default=10_000, help="configs for the cost-model timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved forward rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from ofa_core import OFAMobileNetV3, SearchSpace

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    space = SearchSpace.get(args.space)
    net = OFAMobileNetV3(space).eval()
    load = os.getloadavg()[0]
    print(f"core benchmark: {space.name}, torch {torch.__version__}, {args.threads} thread(s), "
          f"load average {load:.2f} on {os.cpu_count()} CPUs", file=sys.stderr)
    result = {"space": space.name, "torch": torch.__version__, "threads": args.threads, "load_average_1min": load,
              "extract": bench_extract(net, space.sample(rng, args.subnets)),
              "macs": bench_macs(space, rng, args.configs)}
    fwd_cfgs = space.sample(rng, 4, resolutions=[224 if 224 in space.resolutions else max(space.resolutions)])
    result["forward"] = bench_forward(net, fwd_cfgs + [space.largest()], fwd_cfgs[0].r, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        ex, mc, fw = result["extract"], result["macs"], result["forward"]
        print(f"extract   median {ex['median_ms']:.1f} ms over {ex['n_subnets']} random subnets "
              f"(CPU time {ex['median_cpu_ms']:.1f} ms, max {ex['max_ms']:.1f} ms, largest "
              f"{ex['largest_subnet_ms']:.1f} ms); "
              f"target < 50 ms: {'ok' if ex['ok'] else 'MISSED'}")
        print(f"macs      {mc['n_configs']} configs in {mc['macs_s'] * 1e3:.1f} ms "
              f"(params {mc['params_s'] * 1e3:.1f} ms); target < 100 ms: {'ok' if mc['ok'] else 'MISSED'}")
        print(f"forward   at {fw['resolution']}: supernet {fw['supernet_median_ms']:.1f} ms, extracted "
              f"{fw['extracted_median_ms']:.1f} ms, ratio {fw['ratio_extracted_over_supernet']:.2f}; "
              f"extracted not slower: {'ok' if fw['ok'] else 'MISSED'}")
    return 0
