"""Progressive shrinking (Cai et al., 2020): train the full network, then make kernel, depth and expand elastic
in turn, distilling from the full network; a random resolution per batch, a cosine schedule per phase.

Resumable: a safetensors checkpoint after every epoch holds the supernet, the teacher, the optimizer's
momentum and the position (phase, epoch, step). Data parallel under `torchrun` (gloo on a CPU): each rank
takes a shard of every batch order, all ranks draw the same resolution and subnets, and the gradients
accumulated over a step's subnets are averaged across ranks before the optimizer step (the subnet changes
every step, so an explicit all-reduce replaces the DDP wrapper, which expects one fixed graph).
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ofa_core.checkpoint import Checkpoint, check_state, read_checkpoint, save_checkpoint
from ofa_core.data import FashionMNIST, iterate, load_fmnist, prepare
from ofa_core.errors import CheckpointError
from ofa_core.space import SearchSpace, SubnetConfig
from ofa_core.train_config import Phase, TrainConfig, load_config

Sampler = Callable[[np.random.Generator, int], SubnetConfig]


@dataclass(frozen=True)
class Position:
    """Where training stands: the phase to run and how many of its epochs are done; global step count."""

    phase_index: int = 0
    epoch: int = 0
    step: int = 0


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _phase_choices(space: SearchSpace, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which kernel, expand and depth values a phase may draw."""
    ks, es, ds = sorted(space.ks_list), sorted(space.expand_list), sorted(space.depth_list)
    choices = {
        "full": (ks[-1:], es[-1:], ds[-1:]),
        "kernel": (ks, es[-1:], ds[-1:]),
        "depth-1": (ks, es[-1:], ds[-2:]),
        "depth-2": (ks, es[-1:], ds),
        "expand-1": (ks, es[-2:], ds),
        "expand-2": (ks, es, ds),
    }[name]
    return tuple(np.asarray(c) for c in choices)


def phase_smallest(space: SearchSpace, name: str, r: int) -> SubnetConfig:
    """The smallest subnet a phase trains, at resolution `r`."""
    k_set, e_set, d_set = _phase_choices(space, name)
    return SubnetConfig((int(k_set.min()),) * space.n_slots, (int(e_set.min()),) * space.n_slots,
                        (int(d_set.min()),) * space.n_stages, int(r))


def phase_sampler(space: SearchSpace, name: str) -> Sampler:
    """The subnet distribution of a phase: uniform over its kernel, expand and depth values per block."""
    k_set, e_set, d_set = _phase_choices(space, name)

    def sample(rng: np.random.Generator, r: int) -> SubnetConfig:
        return SubnetConfig(
            tuple(int(v) for v in k_set[rng.integers(0, len(k_set), space.n_slots)]),
            tuple(int(v) for v in e_set[rng.integers(0, len(e_set), space.n_slots)]),
            tuple(int(v) for v in d_set[rng.integers(0, len(d_set), space.n_stages)]), int(r))

    return sample


def fixed_sampler(cfg: SubnetConfig) -> Sampler:
    """Always the same subnet at its own resolution (training one architecture from scratch)."""
    return lambda rng, r: cfg


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.sum(-soft_targets * F.log_softmax(logits, dim=1), dim=1))


def cosine_lr(phase: Phase, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up for `warmup_epochs`, then cosine decay to zero over the rest of the phase."""
    warm = int(round(phase.warmup_epochs * steps_per_epoch))
    if step < warm:
        return phase.lr * (step + 1) / warm
    span = max(1, total_steps - warm)
    return 0.5 * phase.lr * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))


def make_optimizer(net: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum; no weight decay on BN parameters and biases (as OFA does)."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def _optimizer_tensors(opt: torch.optim.SGD) -> dict[str, torch.Tensor]:
    out = {}
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[f"{i}.momentum_buffer"] = buf
    return out


def _load_optimizer_tensors(opt: torch.optim.SGD, tensors: dict[str, torch.Tensor], path: Path) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    for key, buf in tensors.items():
        i = int(key.split(".", 1)[0])
        if i >= len(params) or params[i].shape != buf.shape:
            raise CheckpointError(f"{path}: optimizer state does not match the supernet")
        opt.state[params[i]]["momentum_buffer"] = buf.clone()


def dist_info() -> DistInfo:
    """Rank and world size when launched by torchrun (initialises gloo once), else a single process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def _all_reduce_grads(net: torch.nn.Module, world: int) -> None:
    """Average gradients across ranks in one flat buffer (missing gradients count as zero)."""
    import torch.distributed as dist

    params = list(net.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


class Trainer:
    """Runs the phases of a `TrainConfig` on a supernet, checkpointing to `ckpt_path` after every epoch."""

    def __init__(self, cfg: TrainConfig, ckpt_path: str | Path, data: FashionMNIST | None = None,
                 dist: DistInfo | None = None, progress: bool = True, log: Callable[[str], None] | None = None,
                 monitor: dict[str, SubnetConfig] | None = None):
        from ofa_core.supernet import OFAMobileNetV3

        self.cfg = cfg
        self.space = SearchSpace.get(cfg.space)
        self.ckpt_path = Path(ckpt_path)
        self.dist = dist or DistInfo()
        self.progress = progress and self.dist.main
        self.log = log or ((lambda msg: print(msg, file=sys.stderr, flush=True)) if self.dist.main else (lambda msg: None))
        self.data = data or load_fmnist(val_size=cfg.val_size, seed=cfg.seed)
        self.train_split = self.data.train.head(cfg.train_images) if cfg.train_images else self.data.train
        torch.manual_seed(cfg.seed)
        self.net = OFAMobileNetV3(self.space).to(memory_format=torch.channels_last)
        self.teacher: torch.nn.Module | None = None
        self.monitor = monitor or {"largest": self.space.largest(), "smallest": self.space.smallest()}
        self.pos = Position()
        self.history: list[dict] = []
        self._opt_state: dict[str, torch.Tensor] = {}

    @property
    def rank_batch(self) -> int:
        """`batch_size` is the global batch: each rank takes its share of it."""
        return max(1, self.cfg.batch_size // self.dist.world)

    # ---- checkpoints ---------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Load `ckpt_path` if it exists; True when training continues from it."""
        if not self.ckpt_path.exists():
            return False
        ck = read_checkpoint(self.ckpt_path)
        if ck.kind != "train":
            raise CheckpointError(f"{self.ckpt_path} holds shipped weights, not a training checkpoint")
        if ck.space != self.space.name:
            raise CheckpointError(f"checkpoint {self.ckpt_path} is of space {ck.space}, not {self.space.name}")
        expected = self.net.state_dict()
        check_state(self.ckpt_path, self.space.name, expected, ck.net)
        self.net.load_state_dict(ck.net)
        if ck.teacher:
            check_state(self.ckpt_path, self.space.name, expected, ck.teacher, what="teacher")
            self.teacher = self._frozen_copy()
            self.teacher.load_state_dict(ck.teacher)
        names = ck.meta.get("phases", [])
        mine = [p.name for p in self.cfg.phases]
        if names[:len(mine)] != mine[:len(names)]:
            raise CheckpointError(f"{self.ckpt_path} was trained with phases {names}, the config has {mine}")
        m = ck.meta
        self.pos = Position(int(m["phase_index"]), int(m["epoch"]), int(m["step"]))
        self.history = list(m.get("history", []))
        self._opt_state = ck.opt
        return True

    def save(self, opt: torch.optim.SGD | None) -> None:
        if not self.dist.main:
            return
        meta = {
            "phases": [p.name for p in self.cfg.phases], "phase_index": self.pos.phase_index,
            "epoch": self.pos.epoch, "step": self.pos.step, "history": self.history, "config": self.cfg.source,
        }
        save_checkpoint(self.ckpt_path, Checkpoint(
            space=self.space.name, kind="train", net=self.net.state_dict(),
            teacher=self.teacher.state_dict() if self.teacher is not None else {},
            opt=_optimizer_tensors(opt) if opt is not None else {}, meta=meta))

    def _frozen_copy(self) -> torch.nn.Module:
        t = copy.deepcopy(self.net)
        for p in t.parameters():
            p.requires_grad_(False)
        return t

    @torch.no_grad()
    def _soft_labels(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """The teacher's class probabilities for a batch at resolution `r` (the distillation target)."""
        self.teacher.train()  # batch statistics: the teacher trained at mixed resolutions
        return F.softmax(self.teacher(x, self.space.largest(r)), dim=1)

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self, sampler_override: Sampler | None = None, resolutions: tuple[int, ...] | None = None) -> list[dict]:
        """Train every remaining phase; returns the per-epoch history."""
        res = tuple(resolutions or self.space.resolutions)
        for pi in range(self.pos.phase_index, len(self.cfg.phases)):
            phase = self.cfg.phases[pi]
            starting = self.pos.phase_index != pi or (self.pos.epoch == 0 and not self._opt_state)
            if self.pos.phase_index != pi:
                self.pos = Position(pi, 0, self.pos.step)
                self._opt_state = {}
            if starting:
                if phase.distills and self.cfg.kd_ratio > 0 and self.teacher is None:
                    self.teacher = self._frozen_copy()  # the full network, as trained so far
                if phase.sorts_channels:
                    self.net.sort_channels(expand_stage=[p.name for p in self.cfg.phases if p.sorts_channels
                                                         ].index(phase.name))
            self._run_phase(phase, sampler_override or phase_sampler(self.space, phase.name),
                            phase.sandwich and sampler_override is None,
                            tuple(phase.resolutions) if phase.resolutions and not resolutions else res)
        return self.history

    def _run_phase(self, phase: Phase, sampler: Sampler, sandwich: bool, res: tuple[int, ...]) -> None:
        cfg, world = self.cfg, self.dist.world
        per_rank = math.ceil(len(self.train_split) / world)
        steps_per_epoch = max(1, math.ceil(per_rank / self.rank_batch))
        whole = int(math.floor(phase.epochs))
        frac = phase.epochs - whole
        epochs = whole + (1 if frac > 1e-9 else 0)
        total_steps = max(1, int(round(phase.epochs * steps_per_epoch)))
        opt = make_optimizer(self.net, cfg, phase.lr)
        if self._opt_state:
            _load_optimizer_tensors(opt, self._opt_state, self.ckpt_path)
            self._opt_state = {}
        use_kd = phase.distills and cfg.kd_ratio > 0 and self.teacher is not None
        for epoch in range(self.pos.epoch, epochs):
            pi = self.pos.phase_index
            limit = total_steps - epoch * steps_per_epoch
            stats = self._run_epoch(phase, sampler, res, opt, epoch, min(steps_per_epoch, limit),
                                    steps_per_epoch, total_steps, use_kd, sandwich)
            self.pos = Position(pi, epoch + 1, self.pos.step + stats["steps"])
            if self.dist.main and cfg.monitor_images:
                stats.update(self._monitor())
            self.history.append(stats)
            self.log(json.dumps(stats))
            self.save(opt)
            if world > 1:
                import torch.distributed as dist

                dist.barrier()

    def _run_epoch(self, phase: Phase, sampler: Sampler, res: tuple[int, ...], opt: torch.optim.SGD, epoch: int,
                   n_steps: int, steps_per_epoch: int, total_steps: int, use_kd: bool, sandwich: bool) -> dict:
        cfg = self.cfg
        pi = self.pos.phase_index
        order_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + pi * 1009 + epoch)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + pi * 1009 + epoch + 7919 * (self.dist.rank + 1))
        rng = np.random.default_rng([cfg.seed, pi, epoch])  # same on every rank: same resolution and subnets
        torch.manual_seed(cfg.seed * 1_000_003 + pi * 1009 + epoch + 104_729 * self.dist.rank)  # dropout: resumable
        self.net.train()
        t0 = time.perf_counter()
        seen, loss_sum, kd_sum, correct = 0, 0.0, 0.0, 0
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=n_steps, desc=f"{phase.name} epoch {epoch + 1}/{math.ceil(phase.epochs)}",
                       file=sys.stderr, leave=False, dynamic_ncols=True)
        batches = iterate(self.train_split, self.rank_batch, order_gen, shard=(self.dist.rank, self.dist.world))
        for i, (images, labels) in enumerate(batches):
            if i >= n_steps:
                break
            lr = cosine_lr(phase, epoch * steps_per_epoch + i, total_steps, steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            r = int(res[rng.integers(len(res))])
            x = prepare(images, r, augment=cfg.augment, generator=aug_gen)
            soft = self._soft_labels(x, r) if use_kd else None
            opt.zero_grad(set_to_none=True)
            subs = [sampler(rng, r) for _ in range(phase.subnets_per_step)]  # all drawn: one random stream
            inputs = [(x, soft)] * len(subs)
            if sandwich:  # the two ends replace the first draws
                r_top = max(res) if phase.largest_at_max_resolution else r
                subs[0] = self.space.largest(r_top)
                if r_top != r:  # the same images at the largest resolution (own shift and flip)
                    x_top = prepare(images, r_top, augment=cfg.augment, generator=aug_gen)
                    inputs[0] = (x_top, self._soft_labels(x_top, r_top) if use_kd else None)
                if len(subs) > 1:
                    subs[1] = phase_smallest(self.space, phase.name, r)
            for sub, (x_in, target) in zip(subs, inputs):
                logits = self.net(x_in, sub)
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
                if target is not None:
                    kd = soft_cross_entropy(logits, target)
                    kd_sum += float(kd.detach()) * len(labels)
                    loss = loss + cfg.kd_ratio * kd
                loss.backward()
                loss_sum += float(loss.detach()) * len(labels)
                correct += int((logits.argmax(1) == labels).sum())
                seen += len(labels)
            if self.dist.world > 1:
                _all_reduce_grads(self.net, self.dist.world)
            opt.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / max(1, seen):.3f}", lr=f"{lr:.4f}", r=r)
        if bar is not None:
            bar.close()
        secs = time.perf_counter() - t0
        return {"phase": phase.name, "epoch": epoch + 1, "steps": n_steps, "lr_last": lr if n_steps else 0.0,
                "train_loss": loss_sum / max(1, seen), "kd_loss": kd_sum / max(1, seen) if use_kd else None,
                "train_top1": correct / max(1, seen), "seconds": round(secs, 1),
                "images_per_s": round(seen / max(secs, 1e-9), 1)}

    def _monitor(self) -> dict:
        """Validation top-1 of the largest and smallest subnets (BN recalibrated) on a few images."""
        from ofa_core.evaluate import evaluate_subnet

        out = {}
        val = self.data.val.head(self.cfg.monitor_images)
        for name, sub in self.monitor.items():
            out[f"val_top1_{name}"] = round(evaluate_subnet(
                self.net, sub, val, self.train_split, recal_images=min(self.cfg.bn_recal_images, 1000),
                seed=self.cfg.seed), 4)
        return out


def train(cfg: TrainConfig, ckpt_path: str | Path, progress: bool = True, fresh: bool = False,
          data: FashionMNIST | None = None) -> Trainer:
    """Train (or resume) progressive shrinking as configured; the checkpoint at `ckpt_path` is kept up to date."""
    dist = dist_info()
    if fresh and dist.main and Path(ckpt_path).exists():
        Path(ckpt_path).unlink()
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    trainer = Trainer(cfg, ckpt_path, data=data, dist=dist, progress=progress)
    if trainer.resume() and dist.main:
        trainer.log(f"resuming {ckpt_path} at phase {trainer.pos.phase_index + 1}, epoch {trainer.pos.epoch}")
    trainer.run()
    return trainer


def export_weights(trainer: Trainer, path: str | Path, command: str = "", extra: dict | None = None) -> Path:
    """Write the supernet alone (the shipped kind of file), with the config, command and history that made it."""
    meta = {"config": trainer.cfg.source, "command": command, "seed": trainer.cfg.seed,
            "phases": [p.name for p in trainer.cfg.phases], "history": trainer.history, **(extra or {})}
    return save_checkpoint(path, Checkpoint(space=trainer.space.name, kind="weights",
                                            net=trainer.net.state_dict(), meta=meta))


def train_supernet(config: str, checkpoint: str | Path, fresh: bool = False, export: str | Path | None = None,
                   command: str = "", log: Callable[[str], None] = print) -> dict | None:
    """Train (or resume) the supernet of a config (a TOML file or a shipped config's name); with `export`, also
    write its weights there. The report of the run (phases, epochs done, every epoch's figures) on the main
    rank; None on the others."""
    cfg = load_config(config)
    trainer = train(cfg, checkpoint, fresh=fresh)
    if not trainer.dist.main:
        return None
    if export:
        export_weights(trainer, export, command=command)
        log(f"weights written to {export}")
    last = trainer.history[-1] if trainer.history else {}
    return {"space": cfg.space, "checkpoint": checkpoint, "phases": [p.name for p in cfg.phases],
            "epochs_done": len(trainer.history), "last_epoch": last, "history": trainer.history}
