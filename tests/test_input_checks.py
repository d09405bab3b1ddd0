"""The library side of input checking: budgets, settings, device names and ssh addresses, stores that must
exist, output paths, and atomic writes that never follow a planted temporary name."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import typer

from ofa_core.space import SearchSpace

W10 = SearchSpace.get("ofa-mbv3-w1.0")
BAD_NUMBERS = [0, -1.0, math.nan, math.inf, -math.inf]


# ---- search budgets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", BAD_NUMBERS + ["abc", None])
def test_check_budget_refuses_non_positive_and_non_finite(value):
    from ofa_core.search import InvalidBudgetError, check_budget

    with pytest.raises(InvalidBudgetError, match="latency_ms"):
        check_budget({"latency_ms": value})


def test_check_budget_keeps_good_values():
    from ofa_core.search import check_budget

    assert check_budget({"latency_ms": 20, "macs": "3e8"}) == {"latency_ms": 20.0, "macs": 3e8}


def _never_called(batch):
    raise AssertionError("a predictor was called for an invalid budget")


@pytest.mark.parametrize("value", [0.0, math.nan, math.inf])
def test_searches_refuse_bad_budgets_before_scoring(value):
    from ofa_core.search import InvalidBudgetError, SearchParams, evolution_search, pareto_front

    rng = np.random.default_rng(0)
    with pytest.raises(InvalidBudgetError):
        evolution_search(W10, _never_called, {"latency_ms": _never_called}, {"latency_ms": value}, rng,
                         SearchParams(population=4, generations=1))
    with pytest.raises(InvalidBudgetError):
        pareto_front(W10, _never_called, {"latency_ms": _never_called}, rng, population=4, generations=1,
                     limits={"latency_ms": value})


# ---- settings dataclasses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("changes", [{"min_duration_s": math.nan}, {"warmup_s": -0.1}, {"warmup_s": math.inf},
                                     {"rounds": 0}, {"per_call": 0}, {"precision": math.nan}])
def test_measure_settings_refuse_bad_values(changes):
    from bench.profile import MeasureSettings, ProfileError

    with pytest.raises(ProfileError):
        MeasureSettings(**changes)


@pytest.mark.parametrize("changes", [{"threshold": math.nan}, {"threshold": 0.0}, {"stale_days": -1.0},
                                     {"stale_days": math.inf}, {"rounds": 0}])
def test_nightly_settings_refuse_bad_values(changes):
    from bench.nightly import NightlySettings
    from ofa_core.errors import OFABenchError

    with pytest.raises(OFABenchError):
        NightlySettings(**changes)


@pytest.mark.parametrize("changes", [{"lease_s": math.nan}, {"lease_s": 0.0}, {"poll_s": math.inf}])
def test_worker_refuses_bad_lease_and_poll(tmp_path, changes):
    from bench.farm import FarmError, NullSession, Worker, WorkerSettings

    with pytest.raises(FarmError):
        Worker(str(tmp_path / "s.sqlite"), WorkerSettings(("d",), **changes), NullSession)
    assert not (tmp_path / "s.sqlite").exists()


def test_number_check_callback():
    from bench.commands._common import at_least_one, non_negative, positive

    for check, bad, good in ((positive, [0.0, -1.0, math.nan, math.inf], [1e-9, 3.0]),
                             (non_negative, [-1e-9, math.nan, -math.inf], [0.0, 2.0]),
                             (at_least_one, [0, -3], [1, 7])):
        for value in bad:
            with pytest.raises(typer.BadParameter):
                check(value)
        assert [check(v) for v in good] == good
        assert check(None) is None  # an option not given


# ---- device profiles: ssh addresses and names ----------------------------------------------------------------
@pytest.mark.parametrize("address", ["host", "@host", "me@", "me@host:0", "me@host:70000", "me@host:x",
                                     "-oProxyCommand=x@host", "me@-host", "me@ho st", "a@b@c", "me@host/x"])
def test_ssh_address_needs_user_and_host(address):
    from devices import DeviceProfile, DeviceProfileError

    with pytest.raises(DeviceProfileError, match=r"USER@HOST\[:PORT\]"):
        DeviceProfile(name="board", kind="ssh", address=address)


def test_ssh_address_forms():
    from devices.profile import parse_ssh_address

    assert parse_ssh_address("pi@10.0.0.2") == ("pi", "10.0.0.2", 22)
    assert parse_ssh_address("ubuntu@jetson.local:2222") == ("ubuntu", "jetson.local", 2222)


@pytest.mark.parametrize("name", ["ssh:host", "ssh:host:22", "ssh:@host", "ssh:"])
def test_adhoc_ssh_without_user(name):
    from devices import DeviceProfileError, get_device

    with pytest.raises(DeviceProfileError, match=r"ssh:USER@HOST\[:PORT\]"):
        get_device(name)


def test_adhoc_adb_malformed():
    from devices import DeviceProfileError, get_device

    with pytest.raises(DeviceProfileError, match="adb:HOST:PORT"):
        get_device("adb:host:port:x")


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/b", "a\\b", ".hidden", "..", "a..b", "x y", "", "-x",
                                  "adb:h:5555", "é"])
def test_profile_names_are_names_not_paths(name, tmp_path, monkeypatch):
    from devices import DeviceProfile, DeviceProfileError, check_profile_name, write_user_profile

    monkeypatch.setenv("OFA_BENCH_DEVICES", str(tmp_path / "devices"))
    with pytest.raises(DeviceProfileError, match="not allowed"):
        check_profile_name(name)
    if name and not any(c.isspace() for c in name):  # a profile that DeviceProfile itself accepts
        with pytest.raises(DeviceProfileError, match="not allowed"):
            write_user_profile(DeviceProfile(name=name, kind="local"), force=True)
    assert list(tmp_path.rglob("*")) == []


def test_profile_name_accepted_and_written_atomically(tmp_path, monkeypatch):
    from devices import DeviceProfile, check_profile_name, get_device, write_user_profile

    monkeypatch.setenv("OFA_BENCH_DEVICES", str(tmp_path / "devices"))
    assert check_profile_name("pixel-7_a.b") == "pixel-7_a.b"
    victim = tmp_path / "victim.toml"
    victim.write_text("keep = true\n")
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "board.toml").symlink_to(victim)  # a link where the profile goes
    with pytest.raises(Exception, match="already exists"):
        write_user_profile(DeviceProfile(name="board", kind="local"))
    with pytest.raises(Exception, match="not a regular file"):
        write_user_profile(DeviceProfile(name="board", kind="local"), force=True)
    assert victim.read_text() == "keep = true\n"
    (tmp_path / "devices" / "board.toml").unlink()
    path = write_user_profile(DeviceProfile(name="pixel-7_a.b", kind="local", threads=2))
    assert path.parent == tmp_path / "devices" and get_device("pixel-7_a.b").threads == 2
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("field", ["cooldown_s", "cv_threshold", "min_duration_s", "timeout_s"])
def test_profile_refuses_non_finite_numbers(field):
    from devices import DeviceProfile, DeviceProfileError

    with pytest.raises(DeviceProfileError, match=field):
        DeviceProfile(name="x", **{field: math.nan})


# ---- stores that must exist ------------------------------------------------------------------------------------
def test_open_store_without_create_refuses_a_missing_file(tmp_path):
    from bench.store import StoreError, check_store_exists, open_store

    target = tmp_path / "sub" / "typo.sqlite"
    with pytest.raises(StoreError, match="does not exist"):
        open_store(target, create=False)
    with pytest.raises(StoreError, match="does not exist"):
        check_store_exists(target)
    assert not (tmp_path / "sub").exists()  # not even its folder
    open_store(target).close()  # the default creates it
    with open_store(target, create=False) as s:
        assert s.version > 0
    check_store_exists(target)
    check_store_exists("postgresql://user@127.0.0.1:1/db")  # a URL: the server answers, nothing checked here


def test_resolve_store_must_exist(tmp_path, monkeypatch):
    from bench.commands._common import resolve_store
    from bench.store import StoreError

    monkeypatch.setenv("OFA_BENCH_STORE", str(tmp_path / "default.sqlite"))
    assert resolve_store(None) == str(tmp_path / "default.sqlite")
    with pytest.raises(StoreError, match="default.sqlite does not exist"):
        resolve_store(None, must_exist=True)
    with pytest.raises(StoreError, match="other.sqlite does not exist"):
        resolve_store(str(tmp_path / "other.sqlite"), must_exist=True)


# ---- output paths ------------------------------------------------------------------------------------------------
def test_check_output_path(tmp_path, monkeypatch):
    from bench.commands._common import FIGURE_SUFFIXES, check_output_folder, check_output_path
    from ofa_core.errors import OFABenchError

    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    assert check_output_path(tmp_path / "new" / "deeper" / "f.png", "--out", FIGURE_SUFFIXES).name == "f.png"
    assert check_output_path(tmp_path / "file", "--out") == tmp_path / "file"  # an existing file is replaced
    for path, suffixes, message in ((tmp_path / "dir", None, "is a folder"),
                                    (tmp_path / "file" / "f.csv", None, "is not a folder"),
                                    (tmp_path / "file" / "a" / "b.csv", None, "is not a folder"),
                                    (tmp_path / "f.gif", FIGURE_SUFFIXES, "'.gif' is not one of"),
                                    (tmp_path / "f", FIGURE_SUFFIXES, "no suffix")):
        with pytest.raises(OFABenchError, match=message):
            check_output_path(path, "--out", suffixes)
    assert check_output_folder(tmp_path / "dir", "--out") == tmp_path / "dir"
    with pytest.raises(OFABenchError, match="not a folder"):
        check_output_folder(tmp_path / "file", "--out")
    with pytest.raises(OFABenchError, match="not a folder"):
        check_output_folder(tmp_path / "file" / "sub", "--out")
    # a folder we may not write in (simulated: the tests may run as root, who may write anywhere)
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path / "dir")
    with pytest.raises(OFABenchError, match="permission denied"):
        check_output_path(tmp_path / "dir" / "f.csv", "--csv")
    with pytest.raises(OFABenchError, match="permission denied"):
        check_output_folder(tmp_path / "dir", "--plots")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]  # checking created nothing


# ---- atomic writes -------------------------------------------------------------------------------------------------
def test_atomic_write_replaces_a_link_and_cleans_up(tmp_path):
    from ofa_core.atomic import atomic_path, atomic_write

    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "out.txt"
    target.symlink_to(victim)
    with atomic_write(target) as f:
        f.write(b"new")
    assert not target.is_symlink() and target.read_text() == "new" and victim.read_text() == "precious"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "victim"]  # no temporary left


def _one_entry_table():
    from bench.table import EntryStats, LatencyTable, candidates

    space = SearchSpace.get("ofa-mbv3-fmnist")
    e = candidates(space, [space.resolutions[0]])[0]
    return LatencyTable(device="d", fingerprint_id="f", space=space.name, version="v",
                        entries={(e.resolution, e.key): EntryStats(1.5, 1.5, 0.0, 3)})


@pytest.mark.parametrize("fmt", ["csv", "parquet", "yaml"])
def test_table_writers_ignore_planted_part_files(tmp_path, fmt):
    from bench.table import export_table

    table = _one_entry_table()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    if fmt == "yaml":
        out = tmp_path / "tables"
        out.mkdir()
        (r,) = table.resolutions
        (out / f"{r}_lookup_table.yaml.part").symlink_to(victim)  # the old fixed temporary name
    else:
        out = tmp_path / f"t.{fmt}"
        (tmp_path / f"t.{fmt}.part").symlink_to(victim)
    (path, *_) = export_table(table, fmt, out)
    assert victim.read_text() == "precious" and path.is_file() and path.stat().st_size > 0


def test_table_export_under_a_file_is_a_lut_error(tmp_path):
    from bench.table import LutError, export_table

    (tmp_path / "file").write_text("x")
    for fmt in ("csv", "yaml"):
        with pytest.raises(LutError, match="cannot write"):
            export_table(_one_entry_table(), fmt, tmp_path / "file" / "out")


def test_checkpoint_ignores_a_planted_tmp_file(tmp_path):
    import torch

    from ofa_core.checkpoint import Checkpoint, read_checkpoint, save_checkpoint

    victim = tmp_path / "victim"
    victim.write_text("precious")
    path = tmp_path / "w.safetensors"
    (tmp_path / "w.safetensors.tmp").symlink_to(victim)  # the old fixed temporary name
    save_checkpoint(path, Checkpoint(space="ofa-mbv3-fmnist", kind="weights", net={"a": torch.ones(2)}))
    assert victim.read_text() == "precious"
    assert torch.equal(read_checkpoint(path).net["a"], torch.ones(2))
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
