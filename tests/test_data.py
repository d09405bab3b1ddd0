"""Fashion-MNIST loading (Debian's dataset-fashion-mnist), the held-out validation split, batch preparation."""
import gzip

import pytest
import torch

from ofa_core.data import DatasetError, iterate, load_fmnist, prepare


@pytest.fixture(scope="module")
def fmnist():
    try:
        return load_fmnist()
    except DatasetError as exc:
        pytest.skip(str(exc))


def test_splits_are_uint8_in_memory_and_disjoint(fmnist):
    assert (len(fmnist.train), len(fmnist.val), len(fmnist.test)) == (50_000, 10_000, 10_000)
    assert fmnist.train.images.dtype == torch.uint8 and fmnist.train.images.shape[1:] == (1, 28, 28)
    assert set(fmnist.val.labels.tolist()) == set(range(10))
    # no validation image is also a training image (compare raw bytes of a sample)
    train_keys = {bytes(x.numpy().tobytes()) for x in fmnist.train.images[:5000]}
    assert not any(bytes(x.numpy().tobytes()) in train_keys for x in fmnist.val.images[:2000])


def test_validation_split_is_fixed_by_its_seed(fmnist):
    again = load_fmnist(seed=0)
    other = load_fmnist(seed=1)
    assert torch.equal(again.val.images, fmnist.val.images)
    assert not torch.equal(other.val.images, fmnist.val.images)


def test_missing_files_name_the_debian_package(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_fmnist(root=tmp_path)
    msg = str(err.value)
    assert "dataset-fashion-mnist" in msg and "\n" not in msg


def test_truncated_file_is_a_one_line_error(tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as fh:
            fh.write(bytes.fromhex("00000803") + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(DatasetError, match="truncated"):
        load_fmnist(root=tmp_path)


def test_prepare_resizes_normalises_and_augments_whole_batches(fmnist):
    x, _ = next(iterate(fmnist.train, 64))
    for r in (12, 20, 28, 32):
        out = prepare(x, r)
        assert out.shape == (64, 1, r, r) and out.dtype == torch.float32
    plain = prepare(x, 28)
    assert abs(float(plain.mean())) < 0.3 and 0.7 < float(plain.std()) < 1.3
    g = torch.Generator().manual_seed(0)
    flipped_only = prepare(x, 28, augment=True, generator=g, pad_px=0)
    same = (flipped_only == plain).flatten(1).all(1)
    mirrored = (flipped_only == plain.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54
    shifted = prepare(x, 28, augment=True, generator=g)
    assert not torch.equal(shifted, plain)


def test_shards_partition_a_shuffled_epoch(fmnist):
    part = fmnist.val.head(100)
    seen = []
    for rank in (0, 1):
        for _, y in iterate(part, 16, torch.Generator().manual_seed(3), shard=(rank, 2)):
            seen.append(len(y))
    assert sum(seen) == 100
