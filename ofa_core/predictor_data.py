"""Data for the accuracy predictor: random subnets of a trained supernet scored on the validation split, then
the predictor (`ofa_core.accuracy.AccuracyPredictor`) fitted on most of them and judged on the rest.

    python -m ofa_core.predictor_data --checkpoint ofa_core/weights/ofa-mbv3-fmnist.safetensors --n 300
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ofa_core.space import SearchSpace, SubnetConfig


def distinct_sample(space: SearchSpace, rng: np.random.Generator, n: int) -> list[SubnetConfig]:
    """`n` distinct uniformly random configs (all of the space's resolutions)."""
    seen: dict[SubnetConfig, None] = {}
    for _ in range(100):
        for cfg in space.sample(rng, n):
            seen.setdefault(cfg, None)
        if len(seen) >= n:
            break
    return list(seen)[:n]


def holdout_metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    """RMSE and mean absolute error in accuracy points, and Kendall's tau-b between predicted and measured."""
    from scipy.stats import kendalltau

    err = (np.asarray(pred) - np.asarray(true)) * 100
    return {"n": int(len(true)), "rmse_points": float(np.sqrt(np.mean(err ** 2))),
            "mae_points": float(np.mean(np.abs(err))), "kendall_tau": float(kendalltau(pred, true)[0]),
            "measured_range_points": [float(100 * np.min(true)), float(100 * np.max(true))]}


def fit_and_judge(space: SearchSpace, cfgs: Sequence[SubnetConfig], accs: np.ndarray, n_holdout: int,
                  seed: int = 0, epochs: int = 500, hidden: int = 128, n_layers: int = 2, batch_size: int = 32):
    """Fit on all but `n_holdout` (seeded choice) pairs; the predictor's metadata records the held-out figures."""
    from ofa_core.accuracy import AccuracyPredictor

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cfgs))
    hold, fit = order[:n_holdout], order[n_holdout:]
    pred = AccuracyPredictor.fit([cfgs[i] for i in fit], accs[fit], space, rng=rng, epochs=epochs, hidden=hidden,
                                 n_layers=n_layers, batch_size=batch_size)
    metrics = holdout_metrics(pred.predict([cfgs[i] for i in hold]), accs[hold])
    pred.metadata["holdout"] = metrics
    return pred, metrics, hold


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ofa_core.predictor_data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="supernet weights (default: the shipped ones)")
    ap.add_argument("--space", default="ofa-mbv3-fmnist")
    ap.add_argument("--n", type=int, default=300, help="random subnets to score")
    ap.add_argument("--holdout", type=int, default=60, help="of which held out to judge the predictor")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--recal-images", type=int, default=2000)
    # defaults chosen by 5-fold cross-validation on the fitting pairs only (hidden 400 x 3 at batch 256 took
    # one step per epoch on 240 pairs and under-fitted: CV RMSE 0.88 points; this: 0.40)
    ap.add_argument("--epochs", type=int, default=500, help="predictor training epochs")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data", default=None, help="JSON of (config, accuracy) pairs: reused if it exists, else written")
    ap.add_argument("--no-eval", action="store_true", help="fit on the pairs already in --data, score nothing new")
    ap.add_argument("--out", required=True, help="predictor file (.safetensors; a .json is written beside it)")
    args = ap.parse_args(argv)

    from ofa_core.evaluate import evaluate_parallel

    space = SearchSpace.get(args.space)
    data_path = Path(args.data) if args.data else None
    cfgs = distinct_sample(space, np.random.default_rng(args.seed), args.n)
    doc = {"space": space.name, "split": "val (10,000 training images held out, seed %d)" % args.seed,
           "recal_images": args.recal_images, "seconds": 0.0, "configs": [], "val_top1": []}
    if data_path is not None and data_path.is_file():  # resume: keep what was scored, score the rest
        doc = json.loads(data_path.read_text())
        done = [space.parse_config(c) for c in doc["configs"]]
        if done != cfgs[:len(done)]:
            cfgs = done + [c for c in cfgs if c not in set(done)][:max(0, args.n - len(done))]
    todo = cfgs[len(doc["configs"]):]
    if todo and not args.no_eval:
        t0, before = time.perf_counter(), doc["seconds"]

        def keep(i: int, acc: float) -> None:
            doc["configs"].append(todo[i].to_string())
            doc["val_top1"].append(float(acc))
            doc["seconds"] = round(before + time.perf_counter() - t0, 1)
            if data_path is not None and (i % 10 == 9 or i == len(todo) - 1):
                data_path.parent.mkdir(parents=True, exist_ok=True)
                data_path.write_text(json.dumps(doc, indent=1) + "\n")

        evaluate_parallel(args.checkpoint, space, todo, "val", seed=args.seed, recal_images=args.recal_images,
                          workers=args.workers, on_result=keep)
    cfgs = [space.parse_config(c) for c in doc["configs"]]
    accs = np.asarray(doc["val_top1"], dtype=np.float64)
    pred, metrics, _ = fit_and_judge(space, cfgs, accs, args.holdout, seed=args.seed, epochs=args.epochs,
                                     hidden=args.hidden, n_layers=args.layers, batch_size=args.batch_size)
    pred.metadata["data"] = {"n_subnets": len(cfgs), "n_holdout": args.holdout, "seed": args.seed,
                             "recal_images": doc["recal_images"], "eval_seconds": doc["seconds"],
                             "command": "python -m ofa_core.predictor_data " + " ".join(argv or sys.argv[1:])}
    pred.save(args.out)
    print(json.dumps({"predictor": args.out, "holdout": metrics, "fit": pred.metadata.get("fit")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
