"""The paper's control experiment at small scale: train single subnets from scratch (same data, augmentation,
batch and optimizer as the supernet's full phase) and compare with the same subnets taken out of the
progressive-shrinking supernet without retraining.

    python -m ofa_core.scratch --epochs 3 --out-dir runs/scratch
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ofa_core.space import SearchSpace

# small, medium, large subnets of ofa-mbv3-fmnist (string form, see ofa_core.space)
SUBNETS = {
    "small": "r24:k3e3,k3e3|k3e3,k3e3|k3e3,k3e3|k3e3,k3e3|k3e3,k3e3",
    "medium": "r28:k5e4,k5e4,k5e4|k5e4,k5e4,k5e4|k5e4,k5e4,k5e4|k5e4,k5e4,k5e4|k5e4,k5e4,k5e4",
    "large": "r32:k7e6,k7e6,k7e6,k7e6|k7e6,k7e6,k7e6,k7e6|k7e6,k7e6,k7e6,k7e6|k7e6,k7e6,k7e6,k7e6|k7e6,k7e6,k7e6,k7e6",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ofa_core.scratch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="fmnist", help="training config whose run settings and full-phase lr are used")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--subnets", default="small,medium,large")
    ap.add_argument("--supernet", default=None, help="PS supernet weights to compare with (default: shipped)")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)

    import torch

    from ofa_core.checkpoint import load_supernet
    from ofa_core.data import load_fmnist
    from ofa_core.evaluate import evaluate_subnet
    from ofa_core.train import Trainer, fixed_sampler
    from ofa_core.train_config import Phase, load_config

    torch.set_num_threads(1)
    base = load_config(args.config)
    space = SearchSpace.get(base.space)
    full = next(p for p in base.phases if p.name == "full")
    cfg = dataclasses.replace(base, phases=(Phase("full", args.epochs, full.lr, 1, min(full.warmup_epochs, args.epochs)),),
                              monitor_images=0)
    data = load_fmnist(val_size=cfg.val_size, seed=cfg.seed)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from ofa_core.errors import CheckpointError

    try:
        ps = load_supernet(space, args.supernet)
    except CheckpointError as exc:  # no supernet yet: train the scratch nets now, compare in a later run
        print(f"no supernet to compare with ({exc})", file=sys.stderr)
        ps = None
    rows = []
    for name in args.subnets.split(","):
        sub = space.parse_config(SUBNETS[name])
        trainer = Trainer(cfg, out_dir / f"scratch-{name}.safetensors", data=data, monitor={name: sub})
        trainer.resume()
        trainer.run(sampler_override=fixed_sampler(sub), resolutions=(sub.r,))
        row = {"subnet": name, "config": sub.to_string(), "macs": int(space.macs(sub)), "scratch_epochs": args.epochs,
               "scratch_test_top1": evaluate_subnet(trainer.net, sub, data.test, data.train, seed=cfg.seed),
               "ps_test_top1": None if ps is None else evaluate_subnet(ps, sub, data.test, data.train, seed=cfg.seed)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        (out_dir / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
