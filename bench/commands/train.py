"""`ofa-bench train` (progressive shrinking, resumable, torchrun-ready) and `ofa-bench eval` (top-1 of any
subnet after BN recalibration)."""
from __future__ import annotations

from typing import Optional

import typer

from bench.commands._common import JsonOption, check_output_path, emit_json, info, non_negative

FMNIST_SPACE = "ofa-mbv3-fmnist"


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        config: str = typer.Option("fmnist", "--config", help="TOML file, or the name of a shipped config"),
        checkpoint: str = typer.Option("ofa-train.safetensors", "--checkpoint",
                                       help="training checkpoint: resumed if it exists, rewritten every epoch"),
        fresh: bool = typer.Option(False, "--fresh", help="ignore an existing checkpoint and start over"),
        export: Optional[str] = typer.Option(None, "--export", help="also write the trained supernet's weights here"),
        json_out: bool = JsonOption,
    ) -> None:
        """Train a supernet with progressive shrinking. Under `torchrun --nproc_per_node N` it runs data parallel
        (gloo on a CPU); run `torchrun --nproc_per_node 2 -m bench.cli train ...`."""
        from ofa_core.train import export_weights, train
        from ofa_core.train_config import load_config

        check_output_path(checkpoint, "--checkpoint")
        if export:
            check_output_path(export, "--export")
        cfg = load_config(config)
        trainer = train(cfg, checkpoint, fresh=fresh)
        if not trainer.dist.main:
            return
        if export:
            export_weights(trainer, export, command="ofa-bench train " + f"--config {config}")
            info(f"weights written to {export}")
        last = trainer.history[-1] if trainer.history else {}
        doc = {"space": cfg.space, "checkpoint": checkpoint, "phases": [p.name for p in cfg.phases],
               "epochs_done": len(trainer.history), "last_epoch": last, "history": trainer.history}
        if json_out:
            emit_json(doc)
        else:
            info(f"training done: {len(trainer.history)} epochs; checkpoint {checkpoint}")

    @app.command("eval")
    def eval_cmd(
        config: str = typer.Option("largest", "--config", help="largest | smallest | string form | JSON dict"),
        space: str = typer.Option(FMNIST_SPACE, "--space", help="search space name"),
        checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="weights (default: the shipped ones)"),
        split: str = typer.Option("test", "--split", help="val | test"),
        recal_images: int = typer.Option(2000, "--recal-images", callback=non_negative,
                                         help="training images for BN recalibration"),
        seed: int = typer.Option(0, "--seed", callback=non_negative,
                                 help="seed of the validation split and recalibration sample"),
        limit: int = typer.Option(0, "--limit", callback=non_negative,
                                  help="score only the first N images of the split (quick checks)"),
        json_out: bool = JsonOption,
    ) -> None:
        """Top-1 of one subnet of a trained supernet, after recalibrating its BN statistics."""
        import time

        from ofa_core.checkpoint import load_supernet
        from ofa_core.data import load_fmnist
        from ofa_core.errors import OFABenchError
        from ofa_core.evaluate import evaluate_subnet
        from ofa_core.space import SearchSpace

        if split not in ("val", "test"):
            raise OFABenchError(f"--split must be val or test, got {split!r}")
        sp = SearchSpace.get(space)
        cfg = sp.parse_config(config)
        net = load_supernet(sp, checkpoint)
        data = load_fmnist(seed=seed)
        t0 = time.perf_counter()
        scored = data.split(split).head(limit) if limit > 0 else data.split(split)
        acc = evaluate_subnet(net, cfg, scored, data.train, recal_images=recal_images, seed=seed)
        doc = {"space": sp.name, "config": cfg.to_string(), "split": split, "images": len(scored),
               "top1": acc, "macs": int(sp.macs(cfg)), "params": int(sp.params(cfg)),
               "checkpoint": checkpoint or "shipped", "seconds": round(time.perf_counter() - t0, 2)}
        if json_out:
            emit_json(doc)
        else:
            typer.echo(f"{cfg.to_string()}  {split} top-1 {100 * acc:.2f}%  ({doc['macs'] / 1e6:.2f}M MACs)")
