"""BN-recalibrated evaluation of subnets, the `ofa-bench eval` command, and the shipped weights."""
import json

import numpy as np
import pytest
import torch

from ofa_core.checkpoint import Checkpoint, load_supernet, read_checkpoint, save_checkpoint, shipped_weights_path
from ofa_core.data import DatasetError, load_fmnist
from ofa_core.evaluate import calibrated_subnet, evaluate_subnet, recal_sample, top1_onnx, top1_torch
from ofa_core.space import SearchSpace

SPACE = "ofa-mbv3-fmnist"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    try:
        return load_fmnist()
    except DatasetError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    from ofa_core.supernet import OFAMobileNetV3

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "random.safetensors"
    save_checkpoint(path, Checkpoint(space=SPACE, kind="weights", net=OFAMobileNetV3(SPACE).state_dict()))
    return path


def test_recalibration_sets_statistics_of_the_subnet(data, random_weights):
    space = SearchSpace.get(SPACE)
    net = load_supernet(space, random_weights)
    cfg = space.smallest(24)
    static = calibrated_subnet(net, cfg, recal_sample(data.train, 200))
    bn = static.first_conv.bn
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not static.training


def test_onnxruntime_and_torch_scores_agree(data, random_weights):
    space = SearchSpace.get(SPACE)
    net = load_supernet(space, random_weights)
    cfg = space.sample(np.random.default_rng(1))
    static = calibrated_subnet(net, cfg, recal_sample(data.train, 200))
    a = top1_onnx(static, data.val.head(300), cfg.r)
    b = top1_torch(static, data.val.head(300), cfg.r)
    assert abs(a - b) <= 2 / 300


def test_eval_command_prints_top1_as_a_fraction(random_weights, capsys):
    from bench.cli import main

    rc = main(["eval", "--space", SPACE, "--config", "smallest", "--checkpoint", str(random_weights),
               "--split", "val", "--limit", "200", "--recal-images", "200", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert 0.0 <= doc["top1"] <= 1.0 and doc["images"] == 200 and doc["split"] == "val"
    assert doc["config"].startswith("r24:")


def test_eval_command_bad_input_is_one_line(tmp_path, random_weights, capsys):
    from bench.cli import main

    assert main(["eval", "--config", "largest", "--split", "train", "--checkpoint", str(random_weights)]) == 2
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(random_weights.read_bytes()[:1000])
    assert main(["eval", "--config", "largest", "--checkpoint", str(cut)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("ofa-bench: error:") for line in lines)


def test_shipped_supernet_is_accurate(data):
    space = SearchSpace.get(SPACE)
    if not shipped_weights_path(SPACE).is_file():
        pytest.skip("no shipped weights yet")
    net = load_supernet(space)
    acc = evaluate_subnet(net, space.largest(), data.test.head(500), data.train, recal_images=500)
    assert acc > 0.8


def test_shipped_supernet_was_trained_with_the_shipped_config():
    from ofa_core.train_config import load_config, parse_config

    ck = read_checkpoint(shipped_weights_path(SPACE))
    trained = parse_config(ck.meta["config"], origin="the shipped weights' metadata")
    assert trained == load_config("fmnist")  # every run setting and phase (the TOML's comments aside)
