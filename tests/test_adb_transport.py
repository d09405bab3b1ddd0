"""The adb transports against the loopback device: adb-shell directly, and Debian's `adb` through its server;
keys accepted and refused as on a phone, and devices that stop answering given up within a stated limit (what
every transport does is in test_transport_contract.py)."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from _fixtures_adb import adb_keys, adb_server, free_port, loopback  # noqa: F401  (fixtures)
from agents.sim.loopback_adbd import LoopbackAdbd
from agents.transports import base
from agents.transports.adb import (AdbServerTransport, AdbShellTransport, AdbUnauthorizedError, parse_wrapped,
                                   wrap_command)
from agents.transports.base import TransportError

pytestmark = pytest.mark.adb


def _make(kind: str, request, port: int, timeout_s: float = 10.0, rsa_key_path=None):
    if kind == "adb-shell":
        return AdbShellTransport("127.0.0.1", port, timeout_s=timeout_s, rsa_key_path=rsa_key_path)
    server = request.getfixturevalue("adb_server")
    transport = AdbServerTransport(f"127.0.0.1:{port}", server_port=server.port, timeout_s=timeout_s)
    request.addfinalizer(lambda: server.run("disconnect", f"127.0.0.1:{port}"))
    return transport


@pytest.fixture(params=["adb-shell", "adb-server"])
def transport(request, loopback):
    t = _make(request.param, request, loopback.port)
    yield t
    t.close()


def test_wrapper_round_trip_is_exact():
    token = "00ff"
    out = b"line\nno newline" + b"\n__ofa_bench_rc_00ff=3\n" + b"warn\n"
    result = parse_wrapped(out, token)
    assert (result.returncode, result.stdout, result.stderr) == (3, "line\nno newline", "warn\n")
    assert parse_wrapped(b"output but the device went away", token) is None
    assert "'a b'" in wrap_command(["echo", "a b"], token)


def test_workdir_comes_from_the_device_property_and_pushes_land_in_the_sandbox(transport, loopback, tmp_path):
    assert transport.workdir == loopback.workdir
    local = tmp_path / "model.onnx"
    local.write_bytes(os.urandom(1000))
    assert loopback.host_path(transport.push(local)).read_bytes() == local.read_bytes()   # a phone path


def test_unreachable_port_fails_within_the_timeout(request):
    port = free_port()
    for kind in ("adb-shell", "adb-server"):
        if kind == "adb-server" and not _has_adb():
            continue
        t = _make(kind, request, port, timeout_s=3.0)
        start = time.monotonic()
        with pytest.raises(TransportError, match=rf"^adb:127\.0\.0\.1:{port}: unreachable"):
            t.run(["true"])
        assert time.monotonic() - start < 4.0


def test_silent_endpoint_fails_within_the_timeout():
    """A port that accepts TCP but never answers CNXN (a wedged device)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        t = AdbShellTransport("127.0.0.1", port, timeout_s=1.0)
        start = time.monotonic()
        with pytest.raises(TransportError, match="unreachable"):
            t.run(["true"], timeout_s=60.0)      # connecting is bounded by the transport's own timeout
        assert time.monotonic() - start < 3.5


def test_debian_adb_client_connect_push_shell_pull(adb_server, loopback, tmp_path):
    serial = loopback.serial
    connected = adb_server.run("connect", serial)
    assert "connected to" in connected.stdout, connected
    try:
        devices = adb_server.run("devices", "-l").stdout
        assert serial in devices and "model:ofa_bench_loopback" in devices
        local = tmp_path / "blob.bin"
        local.write_bytes(os.urandom(150_000))
        remote = "/data/local/tmp/blob.bin"
        pushed = adb_server.run("-s", serial, "push", str(local), remote)
        assert pushed.returncode == 0, pushed
        shell = adb_server.run("-s", serial, "shell", f"wc -c < {remote}; getprop ro.product.model; ls {remote}")
        assert shell.stdout.split() == ["150000", "ofa-bench-loopback", remote]
        assert (loopback.root / "data/local/tmp/blob.bin").read_bytes() == local.read_bytes()
        sdcard = adb_server.run("-s", serial, "push", str(local), "/sdcard/Download/blob.bin")
        assert sdcard.returncode == 0 and (loopback.root / "storage/emulated/0/Download/blob.bin").exists()
        pulled = adb_server.run("-s", serial, "pull", remote, str(tmp_path / "back.bin"))
        assert pulled.returncode == 0 and (tmp_path / "back.bin").read_bytes() == local.read_bytes()
        refused = adb_server.run("-s", serial, "push", str(local), str(tmp_path / "escaped.bin"))
        assert refused.returncode != 0 and "outside the loopback device" in refused.stderr + refused.stdout
        assert not (tmp_path / "escaped.bin").exists()
    finally:
        adb_server.run("disconnect", serial)


def _has_adb() -> bool:
    import shutil

    return shutil.which("adb") is not None


def test_end_to_end_measure_a_tiny_onnx_model_on_the_loopback_device(loopback, tmp_path):
    pytest.importorskip("onnxruntime")
    from agents import connect
    from agents.tiny_models import tiny_onnx
    from devices import get_device

    profile = get_device(f"adb:{loopback.serial}").replace(
        warmup_runs=2, warmup_s=0.05, min_runs=5, min_duration_s=0.1, max_remeasure=0, timeout_s=120.0)
    model = tiny_onnx(tmp_path / "tiny.onnx")
    with connect(profile) as agent:
        fingerprint = agent.fingerprint()
        [measurement] = agent.measure([model])
    assert fingerprint["model"] == "ofa-bench-loopback"     # read on the device, through the adb path
    assert measurement.n >= 5 and measurement.median_ms > 0
    assert len(measurement.samples_ms) == measurement.n
    pushed = [p.name for p in loopback.host_path(loopback.workdir).iterdir()]
    assert any(name.endswith("-tiny.onnx") for name in pushed)   # the model went through sync into the sandbox


def test_usb_transport_without_a_device_is_a_one_line_error():
    from agents.transports.adb import AdbUsbTransport

    t = AdbUsbTransport(serial="OFA-BENCH-NO-SUCH-DEVICE", timeout_s=3.0)
    with pytest.raises(TransportError, match=r"^adb-usb:OFA-BENCH-NO-SUCH-DEVICE: (USB needs|unreachable)") as info:
        t.run(["true"])
    assert "\n" not in str(info.value)


# ---- commands that end early stop on the device -------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pid_of_sleeper(loopback, name: str) -> int:
    pidfile = loopback.host_path(f"/data/local/tmp/{name}")
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return int(pidfile.read_text())


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def test_a_timed_out_command_is_killed_on_the_device(transport, loopback):
    with pytest.raises(TransportError, match="timed out after 1.5 s"):
        transport.run(["sh", "-c", "echo $$ > /data/local/tmp/pid-timeout; exec sleep 30"], timeout_s=1.5)
    assert _gone(_pid_of_sleeper(loopback, "pid-timeout"))


def test_interrupt_stops_the_command_on_the_device(transport, loopback):
    box: dict = {}

    def call() -> None:
        try:
            box["result"] = transport.run(["sh", "-c", "echo $$ > /data/local/tmp/pid-int; exec sleep 30"],
                                          timeout_s=60.0)
        except BaseException as e:  # noqa: BLE001 - checked below
            box["error"] = e

    worker = threading.Thread(target=call)
    worker.start()
    pid = _pid_of_sleeper(loopback, "pid-int")
    try:
        assert base.interrupt_calls() >= 1
        worker.join(10)
    finally:
        base.clear_interrupt()
    assert not worker.is_alive() and isinstance(box.get("error"), base.Interrupted), box
    assert _gone(pid)
    assert transport.run(["echo", "again"]).stdout == "again\n"


# ---- a device that stops answering ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["adb-shell", "adb-server"])
def test_a_device_that_freezes_mid_call_is_given_up_long_before_the_call_limit(kind, request):
    with LoopbackAdbd() as server:
        t = _make(kind, request, server.port, timeout_s=1.0)
        try:
            assert t.run(["true"]).returncode == 0
            box: dict = {}

            def call() -> None:
                try:
                    box["result"] = t.run(["sh", "-c", "echo $$ > /data/local/tmp/pid-freeze; exec sleep 30"],
                                          timeout_s=40.0)
                except TransportError as e:
                    box["error"] = e

            worker = threading.Thread(target=call)
            worker.start()
            pid = _pid_of_sleeper(server, "pid-freeze")      # the call runs: now the phone freezes
            start = time.monotonic()
            server.hang()
            worker.join(20)
            took = time.monotonic() - start
            assert not worker.is_alive() and "error" in box, box
            text = str(box["error"])
            assert text.startswith(f"adb:127.0.0.1:{server.port}: the device stopped answering"), text
            assert "limit: 40 s per call" in text and "\n" not in text
            assert took < 6.0                                # checks every 1 s, each answered within 1 s
            assert _gone(pid)                                # the host hung up: the command was stopped
        finally:
            t.close()


# ---- RSA authentication: a phone's prompt, accepted or not ------------------------------------------------------
def test_adb_shell_key_accepted_or_refused(adb_keys, tmp_path, monkeypatch):
    known, stranger = adb_keys
    listing = tmp_path / "adb_keys"
    listing.write_text(Path(f"{known}.pub").read_text())
    with LoopbackAdbd(auth="keys", adb_keys=listing) as server:
        ok = AdbShellTransport("127.0.0.1", server.port, timeout_s=2.0, rsa_key_path=known)
        assert ok.run(["getprop", "ro.product.model"]).stdout.strip() == "ofa-bench-loopback"
        ok.close()
        refused = AdbShellTransport("127.0.0.1", server.port, timeout_s=2.0, rsa_key_path=stranger)
        start = time.monotonic()
        with pytest.raises(AdbUnauthorizedError) as info:
            refused.run(["true"], timeout_s=30.0)
        assert time.monotonic() - start < 5.0
        text = str(info.value)
        assert text.startswith(f"adb:127.0.0.1:{server.port}: the device did not accept this host's adb key "
                               f"{stranger}") and '"Allow USB debugging?"' in text and "\n" not in text
        monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))   # no ~/.android/adbkey (and not the user's)
        keyless = AdbShellTransport("127.0.0.1", server.port, timeout_s=2.0)
        with pytest.raises(AdbUnauthorizedError, match="this host has no adb key"):
            keyless.run(["true"])
    with LoopbackAdbd(auth="always") as server:              # the user taps "Allow": the key is remembered
        first = AdbShellTransport("127.0.0.1", server.port, timeout_s=2.0, rsa_key_path=stranger)
        assert first.run(["true"]).returncode == 0
        first.close()
        assert Path(f"{stranger}.pub").read_text().split()[0] in \
            (server.root / "data/misc/adb/adb_keys").read_text()


def test_adb_server_key_accepted(adb_server, tmp_path):
    listing = tmp_path / "adb_keys"
    listing.write_text(adb_server.public_key.read_text())
    for auth, keys in (("keys", listing), ("always", None)):
        with LoopbackAdbd(auth=auth, adb_keys=keys) as server:
            t = AdbServerTransport(server.serial, server_port=adb_server.port, timeout_s=5.0)
            try:
                assert t.run(["getprop", "ro.product.model"]).stdout.strip() == "ofa-bench-loopback"
                assert t.workdir == "/data/local/tmp/ofa-bench"
            finally:
                adb_server.run("disconnect", server.serial)


def test_adb_server_key_refused_is_one_line_naming_the_prompt(adb_server):
    with LoopbackAdbd(auth="never") as server:
        t = AdbServerTransport(server.serial, server_port=adb_server.port, timeout_s=2.0)
        try:
            start = time.monotonic()
            with pytest.raises(AdbUnauthorizedError) as info:
                t.run(["true"], timeout_s=30.0)
            assert time.monotonic() - start < 8.0
            text = str(info.value)
            assert text.startswith(f"adb:{server.serial}: ") and "\n" not in text
            assert "`unauthorized`" in text and '"Allow USB debugging?"' in text
            assert f"{server.serial}\tunauthorized" in adb_server.run("devices").stdout
        finally:
            adb_server.run("disconnect", server.serial)


FROZEN_PROFILE = """
name = "frozen-loopback"
kind = "adb"
description = "simulated: loopback ADB device that freezes while measuring (tests)"
address = "127.0.0.1:{port}"
runtime = "null"
model_format = "onnx"
warmup_runs = 1
min_runs = 5
max_runs = 50
max_duration_s = 30.0
timeout_s = 2.0
"""


def test_profile_gives_up_on_a_frozen_phone_within_the_stated_limits(tmp_path):
    """The phone freezes once the measuring call arrives: `profile` says so in one line, with the call's limit
    and the attempts, long before the call's own limit (2 s + 3 x 32 s), let alone three of them."""
    import re
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    with LoopbackAdbd(hang_on="--max-duration-s") as server:
        folder = Path(os.environ["OFA_BENCH_DEVICES"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "frozen-loopback.toml").write_text(FROZEN_PROFILE.format(port=server.port))
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "bench.cli", "profile", "frozen-loopback", "--space",
                            "ofa-mbv3-fmnist", "--resolutions", "24", "--per-call", "2", "--rounds", "1",
                            "--calibration-subnets", "0", "--store", str(tmp_path / "s.sqlite")],
                           cwd=repo, capture_output=True, text=True, timeout=240)
        took = time.monotonic() - start
    (folder / "frozen-loopback.toml").unlink()
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ofa-bench: error:") and "the device stopped answering" in last, last
    limit = float(re.search(r"limit: (\d+(?:\.\d+)?) s per call", last).group(1))
    gave_up = float(re.search(r"gave up after (\d+) s, 3 attempts", last).group(1))
    assert limit > 90 and gave_up < 25, last
    assert took < 90, (took, last)     # the CLI's start-up, two exports, then at most ~20 s of waiting
    assert any("--max-duration-s" in e for e in server.events)


def test_a_profile_key_path_is_the_adb_key_adb_shell_signs_with(adb_keys, tmp_path):
    from agents.transports import make_transport
    from devices import get_device

    known, stranger = adb_keys
    listing = tmp_path / "adb_keys"
    listing.write_text(Path(f"{known}.pub").read_text())
    with LoopbackAdbd(auth="keys", adb_keys=listing) as server:
        profile = get_device(f"adb:{server.serial}").replace(timeout_s=2.0)
        with make_transport(profile.replace(key_path=str(known))) as t:
            assert t.run(["echo", "ok"]).stdout == "ok\n"
        with make_transport(profile.replace(key_path=str(stranger))) as t:
            with pytest.raises(AdbUnauthorizedError):
                t.run(["true"])


def test_the_binary_path_over_adb_with_the_stand_in_benchmark_model(loopback, tmp_path):
    """A user's `benchmark_model` over adb: pushed once to the phone's /data/local/tmp, run with the model as
    one quoted argument, its summary parsed; the stand-in script plays the binary on the loopback device."""
    from agents import connect
    from devices.profile import DeviceProfile

    data = Path(__file__).parent / "data"
    profile = DeviceProfile(name="standin-adb-phone", kind="adb", address=loopback.serial, runtime="litert",
                            model_format="tflite", binary=str(data / "standin_benchmark_model.sh"), threads=2,
                            workdir="/data/local/tmp/ofa-bench", max_remeasure=0, timeout_s=20.0)
    model = tmp_path / "block one; echo x.tflite"
    model.write_bytes(b"TFL3 placeholder model for the stand-in")
    with connect(profile) as agent:
        assert agent.binary_remote.startswith("/data/local/tmp/ofa-bench/")
        ms = agent.measure([model, model])
    assert len(ms) == 2 and ms[0].median_ms == pytest.approx(0.340) and ms[0].env["threads"] == 2
    assert ms[0].env["graph"].endswith("block one; echo x.tflite")
    landed = [p for p in loopback.host_path("/data/local/tmp/ofa-bench").rglob("*")
              if p.name.endswith("standin_benchmark_model.sh")]
    assert len(landed) == 1  # pushed once, into the phone's folder
