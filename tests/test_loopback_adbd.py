"""The loopback ADB device speaks the real protocol: raw packets, adb-shell, several connections, sandboxed sync."""
from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from adb_shell.adb_device import AdbDeviceTcp
from adb_shell.exceptions import AdbCommandFailureException, PushFailedError

from _fixtures_adb import loopback, loopback_process  # noqa: F401  (fixtures)
from agents.loopback_adbd import CNXN, CLSE, OKAY, OPEN, WRTE, HEADER, pack_packet

pytestmark = pytest.mark.adb


def _device(server) -> AdbDeviceTcp:
    device = AdbDeviceTcp("127.0.0.1", server.port, default_transport_timeout_s=5)
    device.connect(rsa_keys=None, auth_timeout_s=2)
    return device


def _read_packet(sock: socket.socket) -> tuple[int, int, int, bytes]:
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf
    command, arg0, arg1, length, checksum, magic = HEADER.unpack(exact(HEADER.size))
    payload = exact(length) if length else b""
    assert magic == command ^ 0xFFFFFFFF
    assert checksum == sum(payload) & 0xFFFFFFFF
    return command, arg0, arg1, payload


def _raw_connect(server) -> tuple[socket.socket, dict[str, str]]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(pack_packet(CNXN, 0x01000000, 4096, b"host::\0"))
    command, version, maxdata, banner = _read_packet(sock)
    assert command == CNXN and version >= 0x01000000 and maxdata >= 4096
    kind, _, props = banner.rstrip(b"\0").decode().partition("::")
    assert kind == "device"
    return sock, dict(item.split("=", 1) for item in props.split(";"))


def test_raw_handshake_banner_names_a_simulated_device_without_shell_v2(loopback):
    sock, props = _raw_connect(loopback)
    with sock:
        assert props["ro.product.model"] == "ofa-bench-loopback"
        assert props["ro.ofa_bench.simulated"] == "1"
        assert props["ro.ofa_bench.workdir"] == loopback.workdir
        assert loopback.workdir.startswith(str(loopback.root))
        assert "shell_v2" not in props["features"].split(",")


def test_raw_shell_stream_flow_control_and_close(loopback):
    sock, _ = _raw_connect(loopback)
    with sock:
        sock.sendall(pack_packet(OPEN, 7, 0, b"shell:printf 'a%.0s' $(seq 10000)\0"))
        command, device_id, host_id, _ = _read_packet(sock)
        assert (command, host_id) == (OKAY, 7)
        received = b""
        while True:
            command, arg0, arg1, payload = _read_packet(sock)
            assert (arg0, arg1) == (device_id, 7)
            if command == CLSE:
                break
            assert command == WRTE and len(payload) <= 4096   # our CNXN announced maxdata 4096
            received += payload
            sock.sendall(pack_packet(OKAY, 7, device_id))
        assert received == b"a" * 10000


def test_raw_unknown_service_and_shell_v2_are_refused(loopback):
    sock, _ = _raw_connect(loopback)
    with sock:
        for service in (b"shell,v2,raw:echo hi\0", b"reboot:\0"):
            sock.sendall(pack_packet(OPEN, 3, 0, service))
            command, arg0, arg1, _ = _read_packet(sock)
            assert (command, arg0, arg1) == (CLSE, 0, 3)


def test_bad_magic_drops_the_connection(loopback):
    with socket.create_connection(("127.0.0.1", loopback.port), timeout=5) as sock:
        bad = bytearray(pack_packet(CNXN, 0x01000000, 4096, b"host::\0"))
        bad[20:24] = struct.pack("<I", 0)
        sock.sendall(bytes(bad))
        assert sock.recv(100) == b""


def test_adb_shell_runs_commands_in_the_sandbox(loopback):
    device = _device(loopback)
    try:
        out = device.shell("pwd; getprop ro.product.model; getprop ro.ofa_bench.workdir; echo err >&2")
        assert out.splitlines() == [str(loopback.root), "ofa-bench-loopback", loopback.workdir, "err"]
    finally:
        device.close()


def test_sync_push_pull_stat_list_round_trip(loopback, tmp_path):
    data = os.urandom(300_000)   # several 64 KiB DATA chunks
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    remote = loopback.workdir + "/sub/blob.bin"    # parent folders are created (fixed_push_mkdir)
    device = _device(loopback)
    try:
        device.push(str(local), remote, st_mode=0o100640, mtime=1_700_000_000)
        mode, size, mtime = device.stat(remote)
        assert (mode, size, mtime) == (0o100640, len(data), 1_700_000_000)
        names = {bytes(f.filename).decode() for f in device.list(loopback.workdir + "/sub")}
        assert names == {".", "..", "blob.bin"}
        back = tmp_path / "back.bin"
        device.pull(remote, str(back))
        assert back.read_bytes() == data
        assert device.shell(f"wc -c < {remote}").strip() == str(len(data))   # the shell sees the same file
        assert device.stat(loopback.workdir + "/missing") == (0, 0, 0)
    finally:
        device.close()


def test_sync_is_confined_to_the_sandbox(loopback, tmp_path):
    local = tmp_path / "x.txt"
    local.write_text("x")
    outside = tmp_path / "outside.txt"
    os.symlink(tmp_path, loopback.root / "escape")
    device = _device(loopback)
    try:
        for target in (str(outside), "../" * 8 + str(outside).lstrip("/"), str(loopback.root / "escape/outside.txt")):
            with pytest.raises(PushFailedError, match="outside the loopback device"):
                device.push(str(local), target)
        assert not outside.exists()
        with pytest.raises(AdbCommandFailureException, match="outside"):
            device.pull("/etc/hostname", str(tmp_path / "h"))
        assert device.stat("/etc/passwd") == (0, 0, 0)
        device.push(str(local), "data/local/tmp/relative.txt")      # relative to the sandbox root, like the shell
        assert (loopback.root / "data/local/tmp/relative.txt").read_text() == "x"
    finally:
        device.close()


def test_several_connections_and_streams_at_once(loopback):
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            device = _device(loopback)
            try:
                for j in range(2):
                    assert device.shell(f"sleep 0.5; echo {i}-{j}").strip() == f"{i}-{j}"
            finally:
                device.close()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert time.monotonic() - start < 0.5 * 2 * 4 - 0.5   # they ran concurrently, not one after another


def test_stop_kills_running_commands_and_removes_the_temporary_root(loopback):
    sock, _ = _raw_connect(loopback)
    marker = loopback.root / "data/local/tmp/pid"
    with sock:
        sock.sendall(pack_packet(OPEN, 5, 0, f"shell:echo $$ > {marker}; exec sleep 30\0".encode()))
        assert _read_packet(sock)[0] == OKAY
        deadline = time.monotonic() + 10
        while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = int(marker.read_text())
        root = loopback.root
        loopback.stop()
        assert sock.recv(100) == b""          # the connection is closed, not left hanging
    assert not root.exists()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_command_line_entry_point_prints_the_address_and_stops_on_sigterm(loopback_process):
    assert "simulated" in loopback_process.banner_line
    assert "listening on 127.0.0.1:" in loopback_process.banner_line
    device = _device(loopback_process)
    try:
        assert device.shell("echo hello").strip() == "hello"
    finally:
        device.close()
    loopback_process.stop()
    assert loopback_process.proc.returncode == 0
