"""`ofa-bench train` (progressive shrinking, resumable, torchrun-ready) and `ofa-bench eval` (top-1 of any
subnet after BN recalibration)."""
from __future__ import annotations

from typing import Optional

import typer

from bench.commands._common import JsonOption, check_output_path, emit_json, info, non_negative

FMNIST_SPACE = "ofa-mbv3-fmnist"


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
    from ofa_core.train import train_supernet

    check_output_path(checkpoint, "--checkpoint")
    if export:
        check_output_path(export, "--export")
    doc = train_supernet(config, checkpoint, fresh=fresh, export=export,
                         command="ofa-bench train " + f"--config {config}", log=info)
    if doc is None:  # not the main rank under torchrun: the main one reports
        return
    if json_out:
        emit_json(doc)
    else:
        info(f"training done: {doc['epochs_done']} epochs; checkpoint {checkpoint}")


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
    precision: str = typer.Option("fp32", "--precision",
                                  help="fp32 | int8: int8 scores the int8 .tflite a phone runs, through LiteRT"),
    runtime: Optional[str] = typer.Option(None, "--runtime",
                                          help="onnxruntime | litert (default: onnxruntime at fp32, litert at "
                                               "int8); litert scores the channel-last .tflite as deployed"),
    json_out: bool = JsonOption,
) -> None:
    """Top-1 of one subnet of a trained supernet, after recalibrating its BN statistics; with --precision int8
    (or --runtime litert), of the .tflite file a phone would run."""
    from bench.deployed import evaluate_deployed
    from ofa_core.errors import OFABenchError

    if split not in ("val", "test"):
        raise OFABenchError(f"--split must be val or test, got {split!r}")
    doc = evaluate_deployed(space, config, checkpoint, split, precision, runtime, recal_images, seed, limit)
    if json_out:
        emit_json(doc)
    else:
        typer.echo(f"{doc['config']}  {split} top-1 {100 * doc['top1']:.2f}%  ({doc['macs'] / 1e6:.2f}M MACs, "
                   f"{doc['precision']} through {doc['runtime']})")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
