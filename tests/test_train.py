"""Progressive shrinking on a few hundred images: every phase trains, distillation, resume, torchrun, bad input."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ofa_core.checkpoint import Checkpoint, load_supernet, read_checkpoint, save_checkpoint
from ofa_core.data import DatasetError, load_fmnist
from ofa_core.errors import CheckpointError
from ofa_core.space import SearchSpace
from ofa_core.train import Trainer, export_weights, phase_sampler, phase_smallest
from ofa_core.train_config import PHASES, TrainConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
SPACE = "ofa-mbv3-fmnist"


def tiny_toml(phases=PHASES, epochs=1, kd_ratio=1.0, extra="", images=64):
    per_step = {"depth-1": 2, "depth-2": 2, "expand-1": 2, "expand-2": 2}
    body = "".join(f'[[phases]]\nname = "{p}"\nepochs = {epochs}\nlr = 0.05\nsubnets_per_step = {per_step.get(p, 1)}\n'
                   for p in phases)
    return (f'space = "{SPACE}"\nbatch_size = 32\ntrain_images = {images}\nmonitor_images = 0\nkd_ratio = {kd_ratio}\n'
            f"{extra}\n{body}")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    try:
        d = load_fmnist()
    except DatasetError as exc:
        pytest.skip(str(exc))
    return d


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _changed(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_shipped_config_parses():
    cfg = load_config("fmnist")
    assert cfg.space == SPACE and [p.name for p in cfg.phases] == list(PHASES)
    assert all(p.epochs > 0 and p.lr > 0 for p in cfg.phases)


@pytest.mark.parametrize("text, needle", [
    (tiny_toml().replace('name = "kernel"', 'name = "width"'), "unknown phase 'width'"),
    (tiny_toml(epochs=-1), "must not be negative"),
    (tiny_toml().replace("batch_size = 32", "batch_size = -4"), "must not be negative"),
    (tiny_toml(phases=("kernel", "full")), "order"),
    (tiny_toml() + "\nbogus = 1\n", "unknown key"),
    ("space = ", "not valid TOML"),
    (tiny_toml().replace('name = "kernel"', 'name = "kernel"\nsandwich = "yes"'), "sandwich = 'yes' must be bool"),
    (tiny_toml().replace('name = "kernel"', 'name = "kernel"\nlargest_at_max_resolution = true'),
     "largest_at_max_resolution needs sandwich = true"),
])
def test_bad_configs_are_one_line_errors(text, needle):
    with pytest.raises(TrainConfigError) as err:
        parse_config(text, origin="t.toml")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_phase_samplers_follow_the_paper():
    import numpy as np

    space = SearchSpace.get(SPACE)
    rng = np.random.default_rng(0)
    full = {phase_sampler(space, "full")(rng, 28) for _ in range(5)}
    assert full == {space.largest(28)}
    kernel = [phase_sampler(space, "kernel")(rng, 28) for _ in range(20)]
    assert {k for c in kernel for k in c.ks} == {3, 5, 7} and {e for c in kernel for e in c.e} == {6}
    depth1 = [phase_sampler(space, "depth-1")(rng, 28) for _ in range(20)]
    assert {d for c in depth1 for d in c.d} == {3, 4}
    expand1 = [phase_sampler(space, "expand-1")(rng, 28) for _ in range(20)]
    assert {e for c in expand1 for e in c.e} == {4, 6} and {d for c in expand1 for d in c.d} == {2, 3, 4}


def test_phase_smallest_is_the_low_end_of_each_phase():
    space = SearchSpace.get(SPACE)
    k = phase_smallest(space, "kernel", 24)
    assert set(k.ks) == {3} and set(k.e) == {6} and set(k.d) == {4} and k.r == 24
    d1 = phase_smallest(space, "depth-1", 24)
    assert set(d1.ks) == {3} and set(d1.d) == {3}
    assert phase_smallest(space, "expand-2", 28) == space.smallest(28)


def test_sandwich_trains_both_ends_every_step(tmp_path, data):
    """With `sandwich`, each step's first subnet is the largest and its second the phase's smallest."""
    text = tiny_toml(phases=("full", "depth-1")).replace(
        'name = "depth-1"\nepochs = 1\nlr = 0.05\nsubnets_per_step = 2', 'name = "depth-1"\nepochs = 1\nlr = 0.05\n'
        'subnets_per_step = 3\nsandwich = true')
    cfg = parse_config(text)
    assert cfg.phases[1].sandwich and not cfg.phases[0].sandwich
    trainer = Trainer(cfg, tmp_path / "s.safetensors", data=data, progress=False, log=lambda m: None)
    space = trainer.space
    seen = []

    def spy(module, args):
        if module is trainer.net:  # the teacher, a copy made later, carries the hook too
            seen.append(args[1])

    trainer.net.register_forward_pre_hook(spy)
    trainer.run()
    steps = trainer.history[-1]["steps"]
    depth_phase = seen[-3 * steps:]
    assert len(depth_phase) == 3 * steps
    for i in range(steps):
        big, small, rand = depth_phase[3 * i:3 * i + 3]
        assert big == space.largest(big.r) and small == phase_smallest(space, "depth-1", small.r)
        assert big.r == small.r == rand.r and set(rand.d) <= {3, 4}


def test_sandwich_largest_at_max_resolution(tmp_path, data):
    """With `largest_at_max_resolution`, the largest subnet sees the phase's largest resolution on every step
    (its input at that size), while the others keep the batch's random one."""
    text = tiny_toml(phases=("full", "depth-1"), images=160).replace(
        'name = "depth-1"\nepochs = 1\nlr = 0.05\nsubnets_per_step = 2', 'name = "depth-1"\nepochs = 1\nlr = 0.05\n'
        'subnets_per_step = 2\nsandwich = true\nlargest_at_max_resolution = true\nresolutions = [24, 28, 32]')
    cfg = parse_config(text)
    assert cfg.phases[1].largest_at_max_resolution
    trainer = Trainer(cfg, tmp_path / "s.safetensors", data=data, progress=False, log=lambda m: None)
    space = trainer.space
    seen = []

    def spy(module, args):
        if module is trainer.net:
            seen.append((args[1], args[0].shape[-1]))

    trainer.net.register_forward_pre_hook(spy)
    trainer.run()
    steps = trainer.history[-1]["steps"]
    depth_phase = seen[-2 * steps:]
    for i in range(steps):
        (big, big_px), (small, small_px) = depth_phase[2 * i:2 * i + 2]
        assert big == space.largest(32) and big_px == 32
        assert small == phase_smallest(space, "depth-1", small.r) and small_px == small.r
    assert {small.r for small, _ in depth_phase[1::2]} != {32}  # the batch's resolution varied


def test_every_phase_runs_and_changes_the_weights(tmp_path, data):
    """Phases one at a time, each resuming from the previous checkpoint; the teacher appears after `full`."""
    ckpt = tmp_path / "t.safetensors"
    before = None
    for i, name in enumerate(PHASES):
        cfg = parse_config(tiny_toml(phases=PHASES[:i + 1]))
        trainer = Trainer(cfg, ckpt, data=data, progress=False, log=lambda m: None)
        trainer.resume()
        if before is not None:
            assert not _changed(before, _state(trainer.net)), "resume must restore the weights"
        start = _state(trainer.net)
        trainer.run()
        assert trainer.history[-1]["phase"] == name and len(trainer.history) == i + 1
        assert _changed(start, _state(trainer.net)), f"phase {name} left the weights unchanged"
        before = _state(trainer.net)
        assert (trainer.teacher is not None) == (name != "full")
    ck = read_checkpoint(ckpt)
    assert ck.teacher and ck.opt and ck.meta["phase_index"] == len(PHASES) - 1


def test_distillation_loss_is_used_when_asked(tmp_path, data):
    for kd_ratio, expect in ((1.0, True), (0.0, False)):
        cfg = parse_config(tiny_toml(phases=("full", "kernel"), kd_ratio=kd_ratio))
        trainer = Trainer(cfg, tmp_path / f"kd{kd_ratio}.safetensors", data=data, progress=False, log=lambda m: None)
        trainer.run()
        full, kernel = trainer.history
        assert full["kd_loss"] is None
        assert (kernel["kd_loss"] is not None) == expect
        if expect:
            assert kernel["kd_loss"] > 0 and kernel["train_loss"] > kernel["kd_loss"]


def test_resume_after_interruption_continues_exactly(tmp_path, data):
    cfg = parse_config(tiny_toml(phases=("full", "kernel"), epochs=2, images=32))
    straight = Trainer(cfg, tmp_path / "a.safetensors", data=data, progress=False, log=lambda m: None)
    straight.run()

    class Interrupted(Trainer):
        calls = 0

        def _run_epoch(self, *args, **kwargs):
            Interrupted.calls += 1
            if Interrupted.calls == 3:  # first epoch of the kernel phase
                raise KeyboardInterrupt
            return super()._run_epoch(*args, **kwargs)

    first = Interrupted(cfg, tmp_path / "b.safetensors", data=data, progress=False, log=lambda m: None)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    again = Trainer(cfg, tmp_path / "b.safetensors", data=data, progress=False, log=lambda m: None)
    assert again.resume() and (again.pos.phase_index, again.pos.epoch) == (0, 2)
    again.run()
    assert [h["phase"] for h in again.history] == ["full", "full", "kernel", "kernel"]
    a, b = _state(straight.net), _state(again.net)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_checkpoint_of_another_space_or_truncated_is_refused(tmp_path, data):
    cfg = parse_config(tiny_toml(phases=("full",)))
    trainer = Trainer(cfg, tmp_path / "t.safetensors", data=data, progress=False, log=lambda m: None)
    trainer.run()
    weights = export_weights(trainer, tmp_path / "w.safetensors", command="test")
    space = SearchSpace.get(SPACE)
    assert load_supernet(space, weights) is not None

    other = tmp_path / "other.safetensors"
    save_checkpoint(other, Checkpoint(space="ofa-mbv3-w1.0", kind="weights", net={"x": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="of space ofa-mbv3-w1.0, not ofa-mbv3-fmnist"):
        load_supernet(space, other)
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, Checkpoint(space=SPACE, kind="weights", net={"x": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="do not match"):
        load_supernet(space, wrong)

    raw = weights.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError) as err:
        load_supernet(space, cut)
    assert "truncated" in str(err.value) and "\n" not in str(err.value)
    other_trainer = Trainer(cfg, other, data=data, progress=False, log=lambda m: None)
    with pytest.raises(CheckpointError):
        other_trainer.resume()


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    from bench.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_toml(epochs=-2))
    assert main(["train", "--config", str(bad), "--checkpoint", str(tmp_path / "c.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ofa-bench: error:") and "negative" in err[0]


def test_torchrun_two_processes_run_a_step(tmp_path, data):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml(phases=("full", "kernel")))
    ckpt = tmp_path / "ddp.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "bench.cli", "train", "--config", str(cfg), "--checkpoint", str(ckpt), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    doc = json.loads(proc.stdout)
    assert doc["epochs_done"] == 2 and doc["history"][-1]["kd_loss"] is not None
    # batch_size is global: each rank takes 16 of every 32, so 64 images make 2 steps per epoch
    assert doc["history"][0]["steps"] == 2
    assert read_checkpoint(ckpt).meta["step"] == 4


def test_phase_resolutions_are_parsed_checked_and_used(tmp_path, data, monkeypatch):
    import ofa_core.train as T

    text = tiny_toml(phases=("full", "kernel")).replace('name = "full"\n', 'name = "full"\nresolutions = [28, 32]\n')
    cfg = parse_config(text)
    assert cfg.phases[0].resolutions == (28, 32) and cfg.phases[1].resolutions is None
    with pytest.raises(TrainConfigError, match="resolution 13 is not one of") as err:
        parse_config(text.replace("[28, 32]", "[28, 13]"), origin="t.toml")
    assert "\n" not in str(err.value)
    with pytest.raises(TrainConfigError, match="non-empty list"):
        parse_config(text.replace("[28, 32]", "[]"))
    seen = []
    real = T.prepare

    def spy(images, r, **kw):
        seen.append((trainer.pos.phase_index, r))
        return real(images, r, **kw)

    monkeypatch.setattr(T, "prepare", spy)
    trainer = Trainer(parse_config(text.replace("train_images = 64", "train_images = 256")), tmp_path / "t.safetensors",
                      data=data, progress=False, log=lambda m: None)
    trainer.run()
    full = {r for p, r in seen if p == 0}
    kernel = {r for p, r in seen if p == 1}
    assert full <= {28, 32} and full and not kernel <= {28, 32}
