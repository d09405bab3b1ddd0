"""Fashion-MNIST in memory: uint8 tensors, a fixed validation split, and whole-batch preprocessing in torch.

The images come from Debian's `dataset-fashion-mnist` (IDX files, gzip). Everything stays uint8 until a batch
is prepared, so augmentation and resizing run as a few tensor ops per batch (no per-image Python, no workers).
"""
from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ofa_core.errors import OFABenchError

DATA_ENV = "OFA_BENCH_FMNIST"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics (of x / 255)
NATIVE_PX = 28


class DatasetError(OFABenchError):
    """The Fashion-MNIST files are missing or unreadable."""


@dataclass(frozen=True)
class Split:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int) -> "Split":
        return Split(self.images[:n], self.labels[:n])

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class FashionMNIST:
    """The three splits: `train` (60k minus validation), `val` (held out from train), `test` (the 10k test set)."""

    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, name)


def data_dir(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get(DATA_ENV) or DEFAULT_DIR)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DatasetError(
            f"Fashion-MNIST file {path} is missing: install the Debian package dataset-fashion-mnist "
            f"(or set {DATA_ENV} to a folder holding the IDX .gz files)") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    n_dims = magic & 0xFF
    if len(raw) < 4 + 4 * n_dims or struct.unpack(">I", raw[:4])[0] != magic:
        raise DatasetError(f"{path} is not an IDX file of the expected kind")
    dims = struct.unpack(f">{n_dims}I", raw[4:4 + 4 * n_dims])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * n_dims)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} bytes)")
    return body.reshape(dims)


def load_fmnist(root: str | Path | None = None, val_size: int = 10_000, seed: int = 0) -> FashionMNIST:
    """Load all of Fashion-MNIST as uint8 tensors; `val_size` training images (seeded choice) form `val`."""
    d = data_dir(root)
    tr_x = _read_idx(d / FILES["train_images"], 0x0803)
    tr_y = _read_idx(d / FILES["train_labels"], 0x0801)
    te_x = _read_idx(d / FILES["test_images"], 0x0803)
    te_y = _read_idx(d / FILES["test_labels"], 0x0801)
    if not 0 <= val_size < len(tr_y):
        raise DatasetError(f"validation size {val_size} must be in 0..{len(tr_y) - 1}")
    perm = np.random.default_rng(seed).permutation(len(tr_y))
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))

    return FashionMNIST(split(tr_x[train_idx], tr_y[train_idx]), split(tr_x[val_idx], tr_y[val_idx]),
                        split(te_x, te_y))


def iterate(split: Split, batch_size: int, generator: torch.Generator | None = None,
            shard: tuple[int, int] = (0, 1), drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (uint8 images, labels); shuffled when a generator is given. `shard` = (rank, world size)."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    rank, world = shard
    order = order[rank::world]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        if len(idx) == 0:
            break
        yield split.images[idx], split.labels[idx]


def prepare(images: torch.Tensor, resolution: int, augment: bool = False,
            generator: torch.Generator | None = None, pad_px: int = 2) -> torch.Tensor:
    """uint8 (B, 1, 28, 28) -> normalised float (B, 1, r, r), channels_last.

    With `augment`: a random shift of up to `pad_px` pixels (zero padding) and a random horizontal flip per
    image, done as one gather on the whole batch. Downsizing uses antialiased bilinear interpolation.
    """
    x = images
    b = x.shape[0]
    if augment:
        h, w = x.shape[-2:]
        padded = F.pad(x, (pad_px, pad_px, pad_px, pad_px))
        oy = torch.randint(0, 2 * pad_px + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * pad_px + 1, (b,), generator=generator)
        flip = torch.rand(b, generator=generator) < 0.5
        rows = oy[:, None] + torch.arange(h)[None, :]
        cols = torch.arange(w)[None, :].expand(b, w)
        cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]
        x = padded[torch.arange(b)[:, None, None], 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
    x = x.float().div_(255.0)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=resolution < x.shape[-1])
    x = (x - MEAN) / STD
    return x.contiguous(memory_format=torch.channels_last)
