"""Top-1 accuracy of any subnet of a trained supernet, after BN recalibration.

A subnet's BN statistics are not stored in the supernet (they were accumulated over many subnets), so each
evaluation extracts the static subnet, recomputes its BN statistics on a fixed sample of training images at
its resolution (as OFA does, 2000 images), then scores the held-out split. Scoring runs in onnxruntime by
default: on this 2-core machine, shared with other jobs, it scored 10k images ~3x faster than torch eager.
Many subnets can be scored by several worker processes, one thread each.
"""
from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ofa_core.data import Split, iterate, load_fmnist, prepare
from ofa_core.space import SearchSpace, SubnetConfig

BACKENDS = ("onnxruntime", "torch")


def recal_sample(train: Split, n_images: int, seed: int = 0) -> Split:
    """A fixed random sample of the training split for BN recalibration (the same images for every subnet)."""
    n = min(n_images, len(train))
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(train), size=n, replace=False)))
    return train.subset(idx)


@torch.no_grad()
def calibrated_subnet(net, cfg: SubnetConfig, recal: Split, batch_size: int = 500) -> torch.nn.Module:
    """The static subnet `cfg` of `net`, BN statistics recomputed on `recal` at its resolution, in eval mode."""
    from ofa_core.bn import recalibrate_bn

    static = net.extract(cfg).to(memory_format=torch.channels_last).eval()
    recalibrate_bn(static, (prepare(x, cfg.r) for x, _ in iterate(recal, batch_size)))
    return static.eval()


@torch.no_grad()
def top1_torch(module: torch.nn.Module, split: Split, resolution: int, batch_size: int = 1000) -> float:
    """Fraction of `split` classified correctly by `module` (eval mode) at `resolution`, in torch."""
    module.eval()
    correct = 0
    for x, y in iterate(split, batch_size):
        correct += int((module(prepare(x, resolution)).argmax(1) == y).sum())
    return correct / max(1, len(split))


def top1_onnx(module: torch.nn.Module, split: Split, resolution: int, batch_size: int = 1000,
              threads: int = 1) -> float:
    """The same figure through onnxruntime (the module exported in memory with a dynamic batch axis)."""
    import onnxruntime as ort

    buf = io.BytesIO()
    module.eval()
    torch.onnx.export(module, torch.zeros(1, 1, resolution, resolution), buf, dynamo=False,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    correct = 0
    for x, y in iterate(split, batch_size):
        logits = sess.run(None, {"x": prepare(x, resolution).contiguous().numpy()})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
    return correct / max(1, len(split))


def evaluate_subnet(net, cfg: SubnetConfig, split: Split, train: Split, recal_images: int = 2000,
                    seed: int = 0, backend: str = "onnxruntime") -> float:
    """Top-1 (a fraction) of subnet `cfg` of supernet `net` on `split`, BN recalibrated on training images."""
    static = calibrated_subnet(net, cfg, recal_sample(train, recal_images, seed))
    return _score(static, split, cfg.r, backend)


def _score(static: torch.nn.Module, split: Split, r: int, backend: str) -> float:
    if backend == "onnxruntime":
        return top1_onnx(static, split, r)
    if backend == "torch":
        return top1_torch(static, split, r)
    raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")


def evaluate_many(net, cfgs: Sequence[SubnetConfig], split: Split, train: Split, recal_images: int = 2000,
                  seed: int = 0, backend: str = "onnxruntime", progress: bool = True,
                  on_result=None) -> np.ndarray:
    """Top-1 of many subnets in this process (float64 array), with a progress bar on stderr. Each equals
    `evaluate_subnet` of the same arguments. `on_result(i, top1)` is called as each result arrives (e.g. a
    caller's own progress report, with `progress=False`)."""
    from tqdm import tqdm

    recal = recal_sample(train, recal_images, seed)
    out = np.zeros(len(cfgs))
    for i, cfg in enumerate(tqdm(cfgs, desc="evaluating subnets", file=sys.stderr, disable=not progress,
                                 dynamic_ncols=True)):
        out[i] = _score(calibrated_subnet(net, cfg, recal), split, cfg.r, backend)
        if on_result is not None:
            on_result(i, float(out[i]))
    return out


# ---- several worker processes ------------------------------------------------------------------------
_WORKER: dict = {}


def _worker_init(ckpt: str | None, space_name: str, split_name: str, val_size: int, seed: int,
                 recal_images: int, backend: str) -> None:
    from ofa_core.checkpoint import load_supernet

    torch.set_num_threads(1)
    data = load_fmnist(val_size=val_size, seed=seed)
    space = SearchSpace.get(space_name)
    _WORKER.update(net=load_supernet(space, ckpt), split=data.split(split_name), backend=backend,
                   recal=recal_sample(data.train, recal_images, seed))


def _worker_eval(cfg_text: str) -> float:
    space = _WORKER["net"].space
    cfg = space.parse_config(cfg_text)
    return _score(calibrated_subnet(_WORKER["net"], cfg, _WORKER["recal"]), _WORKER["split"], cfg.r,
                  _WORKER["backend"])


def evaluate_parallel(ckpt: str | Path | None, space: SearchSpace, cfgs: Sequence[SubnetConfig],
                      split_name: str = "val", val_size: int = 10_000, seed: int = 0, recal_images: int = 2000,
                      workers: int = 2, backend: str = "onnxruntime", progress: bool = True,
                      on_result=None) -> np.ndarray:
    """Top-1 of many subnets by `workers` processes (one thread each), each loading the weights at `ckpt`.

    `on_result(i, top1)` is called as each result arrives, in order (to save partial results)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    texts = [c.to_string() for c in cfgs]
    args = (None if ckpt is None else str(ckpt), space.name, split_name, val_size, seed, recal_images, backend)
    def collect(it) -> np.ndarray:
        out = []
        for i, acc in enumerate(tqdm(it, total=len(texts), desc="evaluating subnets", file=sys.stderr,
                                     disable=not progress, dynamic_ncols=True)):
            out.append(acc)
            if on_result is not None:
                on_result(i, acc)
        return np.array(out, dtype=np.float64)

    if workers <= 1:
        _worker_init(*args)
        return collect(map(_worker_eval, texts))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=args) as pool:
        return collect(pool.map(_worker_eval, texts, chunksize=1))


def evaluate_checkpoint(space_name: str, config: str, checkpoint: str | Path | None = None, split: str = "test",
                        recal_images: int = 2000, seed: int = 0, limit: int = 0, score=None) -> dict:
    """Top-1 on `split` of one subnet (`config` in any form `parse_config` reads) of the supernet at
    `checkpoint` (None: the shipped weights), after BN recalibration, with its MACs and parameters; `limit`
    scores only the split's first images. `score(static_subnet, split, resolution) -> top-1` replaces the
    onnxruntime scoring (a device format: `bench.deployed`)."""
    import time

    from ofa_core.checkpoint import load_supernet

    sp = SearchSpace.get(space_name)
    cfg = sp.parse_config(config)
    net = load_supernet(sp, checkpoint)
    data = load_fmnist(seed=seed)
    t0 = time.perf_counter()
    scored = data.split(split).head(limit) if limit > 0 else data.split(split)
    if score is None:
        acc = evaluate_subnet(net, cfg, scored, data.train, recal_images=recal_images, seed=seed)
    else:
        acc = score(calibrated_subnet(net, cfg, recal_sample(data.train, recal_images, seed)), scored, cfg.r)
    return {"space": sp.name, "config": cfg.to_string(), "split": split, "images": len(scored),
            "top1": acc, "macs": int(sp.macs(cfg)), "params": int(sp.params(cfg)),
            "checkpoint": checkpoint or "shipped", "seconds": round(time.perf_counter() - t0, 2)}
