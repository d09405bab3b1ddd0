"""The adb transports against the loopback device: adb-shell directly, and Debian's `adb` through its server."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from _fixtures_adb import adb_server, free_port, loopback, loopback_process  # noqa: F401  (fixtures)
from agents.transports.adb import AdbServerTransport, AdbShellTransport, parse_wrapped, wrap_command
from agents.transports.base import TransportError

pytestmark = pytest.mark.adb
TRICKY = "a b  'c' \"d\" ; $(touch PWNED) `touch PWNED2` \\ * ~ $HOME\n|& z"


def _make(kind: str, request, port: int, timeout_s: float = 10.0):
    if kind == "adb-shell":
        return AdbShellTransport("127.0.0.1", port, timeout_s=timeout_s)
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


def test_run_returns_exit_status_stdout_and_stderr_apart(transport, loopback):
    result = transport.run(["sh", "-c", "echo out; echo err >&2; printf tail; exit 7"])
    assert result.returncode == 7
    assert result.stdout == "out\ntail"
    assert result.stderr == "err\n"
    assert transport.run(["true"]).returncode == 0
    assert transport.run(["test", "-f", "/nonexistent/file"]).returncode == 1


def test_arguments_arrive_literally(transport, loopback):
    assert transport.run(["printf", "%s", TRICKY]).stdout == TRICKY
    assert not list(loopback.root.glob("PWNED*"))


def test_workdir_comes_from_the_device_property(transport, loopback):
    assert transport.workdir == loopback.workdir


def test_push_pull_round_trip_and_content_hash_cache(transport, loopback, tmp_path, request):
    data = os.urandom(200_000)   # > 64 KiB: several sync DATA chunks
    local = tmp_path / "model.onnx"
    local.write_bytes(data)
    remote = transport.push(local)
    assert remote.startswith(loopback.workdir + "/") and remote.endswith("-model.onnx")
    assert transport.run(["test", "-f", remote]).returncode == 0
    assert Path(remote).read_bytes() == data      # the loopback device's paths are host paths
    back = tmp_path / "back.bin"
    transport.pull_file(remote, back)
    assert back.read_bytes() == data
    # a fresh transport (another process, say) finds the file by its hash and does not send it again
    fresh = _make(request.node.callspec.params["transport"], request, loopback.port)
    fresh.push_file = lambda *a, **k: pytest.fail("pushed again although the device has the file")
    assert fresh.push(local) == remote
    fresh.close()


def test_pull_of_a_missing_file_is_a_one_line_error(transport, loopback, tmp_path):
    with pytest.raises(TransportError, match=r"^adb:127\.0\.0\.1:\d+: pulling .*missing") as info:
        transport.pull_file(loopback.workdir + "/missing", tmp_path / "x")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_timeout_fails_within_the_limit_and_the_next_call_works(transport):
    start = time.monotonic()
    with pytest.raises(TransportError, match="timed out after 1 s"):
        transport.run(["sleep", "10"], timeout_s=1.0)
    assert time.monotonic() - start < 4.0
    assert transport.run(["echo", "again"]).stdout == "again\n"


@pytest.mark.parametrize("kind", ["adb-shell", "adb-server"])
def test_device_dropping_mid_call_fails_fast(kind, request, loopback_process):
    t = _make(kind, request, loopback_process.port)
    assert t.run(["true"]).returncode == 0
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["result"] = t.run(["sleep", "20"], timeout_s=15.0)
        except TransportError as e:
            outcome["error"] = e

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.5)
    start = time.monotonic()
    loopback_process.stop()                       # the device goes away while `sleep` runs
    worker.join(15)
    assert not worker.is_alive()
    assert time.monotonic() - start < 8.0
    assert "error" in outcome, outcome
    assert str(outcome["error"]).startswith(f"adb:127.0.0.1:{loopback_process.port}: ")
    assert "dropped" in str(outcome["error"])
    t.close()


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
        remote = loopback.workdir + "/blob.bin"
        pushed = adb_server.run("-s", serial, "push", str(local), remote)
        assert pushed.returncode == 0, pushed
        shell = adb_server.run("-s", serial, "shell", f"wc -c < {remote}; getprop ro.product.model")
        assert shell.stdout.split() == ["150000", "ofa-bench-loopback"]
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
    pushed = [p.name for p in Path(loopback.workdir).iterdir()]
    assert any(name.endswith("-tiny.onnx") for name in pushed)   # the model went through sync into the sandbox


def test_usb_transport_without_a_device_is_a_one_line_error():
    from agents.transports.adb import AdbUsbTransport

    t = AdbUsbTransport(serial="OFA-BENCH-NO-SUCH-DEVICE", timeout_s=3.0)
    with pytest.raises(TransportError, match=r"^adb-usb:OFA-BENCH-NO-SUCH-DEVICE: (USB needs|unreachable)") as info:
        t.run(["true"])
    assert "\n" not in str(info.value)
