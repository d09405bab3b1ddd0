"""The loopback ADB device speaks the real protocol: raw packets, adb-shell, several connections, phone paths
mapped into its sandbox for sync and shell alike, sync confined to the sandbox, RSA authentication as a phone's
adbd does it, and a frozen device for tests."""
from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from adb_shell.adb_device import AdbDeviceTcp
from adb_shell.exceptions import AdbCommandFailureException, PushFailedError

from _fixtures_adb import adb_keys, loopback, loopback_process, start_loopback_process  # noqa: F401  (fixtures)
from agents.sim.adb_auth import AUTH_RSAPUBLICKEY, AUTH_SIGNATURE, AUTH_TOKEN, AdbKeyError, AdbPublicKey, read_adb_keys
from agents.sim.loopback_adbd import AUTH, CNXN, CLSE, OKAY, OPEN, WRTE, HEADER, LoopbackAdbd, pack_packet

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
        assert props["ro.ofa_bench.workdir"] == loopback.workdir == "/data/local/tmp/ofa-bench"   # a phone path
        assert loopback.host_path(loopback.workdir) == loopback.root / "data/local/tmp/ofa-bench"
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
        assert out.splitlines() == ["/", "ofa-bench-loopback", loopback.workdir, "err"]   # "/" is the sandbox
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


def test_phone_paths_are_the_same_files_for_sync_and_shell(loopback, tmp_path):
    local = tmp_path / "blob"
    local.write_bytes(b"12345")
    device = _device(loopback)
    try:
        device.push(str(local), "/data/local/tmp/x")
        device.push(str(local), "/sdcard/Download/y")
        assert (loopback.root / "data/local/tmp/x").read_bytes() == b"12345"
        assert (loopback.root / "storage/emulated/0/Download/y").read_bytes() == b"12345"   # /sdcard links there
        assert device.shell("ls /data/local/tmp/x; wc -c < '/sdcard/Download/y'").split() == ["/data/local/tmp/x", "5"]
        # the output shows phone paths, never the sandbox folder on the host
        assert device.shell("readlink -f /sdcard/Download/y").strip() == "/storage/emulated/0/Download/y"
        assert str(loopback.root) not in device.shell("cd /data/local/tmp && pwd; echo $TMPDIR; ls -l /sdcard")
        device.shell("echo made-by-shell > /data/local/tmp/z; mkdir -p /sdcard/d")
        assert device.stat("/data/local/tmp/z")[1] == len("made-by-shell\n")
        assert device.stat("/storage/emulated/0/d")[0] & 0o170000 == 0o040000
        assert device.shell("getprop ro.product.model; /system/bin/getprop ro.ofa_bench.simulated").split() == [
            "ofa-bench-loopback", "1"]
        assert "ofa-bench-loopback" in device.shell("cat /system/build.prop")
        # paths that only look like phone paths are left alone
        assert device.shell("mkdir -p sub/data && echo rel > sub/data/f && cat sub/data/f").strip() == "rel"
        assert (loopback.root / "sub/data/f").exists() and not (loopback.root / "data/f").exists()
    finally:
        device.close()


def test_sync_is_confined_to_the_sandbox(loopback, tmp_path):
    local = tmp_path / "x.txt"
    local.write_text("x")
    outside = tmp_path / "outside.txt"
    os.symlink(tmp_path, loopback.root / "escape")
    os.symlink(tmp_path, loopback.root / "data/local/tmp/escape")
    device = _device(loopback)
    try:
        for target in (str(outside), "../" * 8 + str(outside).lstrip("/"), "escape/outside.txt",
                       "/data/local/tmp/escape/outside.txt", "/data/../../" + str(outside).lstrip("/"),
                       "/sdcard/" + "../" * 8 + str(outside).lstrip("/")):
            with pytest.raises(PushFailedError, match="outside the loopback device"):
                device.push(str(local), target)
        assert not outside.exists()
        with pytest.raises(AdbCommandFailureException, match="outside"):
            device.pull("/etc/hostname", str(tmp_path / "h"))
        assert device.stat("/etc/passwd") == (0, 0, 0)
        device.push(str(local), "data/local/tmp/relative.txt")      # relative to the sandbox root, like the shell
        assert (loopback.root / "data/local/tmp/relative.txt").read_text() == "x"
        assert device.shell("cat data/local/tmp/relative.txt /data/local/tmp/relative.txt") == "xx"
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


# ---- RSA authentication ------------------------------------------------------------------------------------
def _signer(key_path):
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    return PythonRSASigner.FromRSAKeyPath(str(key_path))


def _public(key_path) -> AdbPublicKey:
    return AdbPublicKey.parse(open(f"{key_path}.pub").read())


def test_public_key_format_round_trip_and_malformed_keys(adb_keys, tmp_path):
    known, stranger = adb_keys
    text = open(f"{known}.pub").read()
    key = AdbPublicKey.parse(text)
    assert key.to_android() == text.strip() and key.exponent == 65537
    assert AdbPublicKey.parse(_signer(known).GetPublicKey() + "\0") == key    # the AUTH(RSAPUBLICKEY) payload
    assert key != _public(stranger)
    raw = bytearray(__import__("base64").b64decode(text.split()[0]))
    raw[4] ^= 1                                                               # n0inv no longer matches n
    for bad in ("not base64!", "AAAA", __import__("base64").b64encode(bytes(raw)).decode()):
        with pytest.raises(AdbKeyError):
            AdbPublicKey.parse(bad)
    listing = tmp_path / "adb_keys"
    listing.write_text(f"garbage\n\n{text}\n")
    assert read_adb_keys(listing) == [key] and read_adb_keys(tmp_path / "missing") == []


def test_signatures_verify_only_for_their_key_and_token(adb_keys):
    known, stranger = adb_keys
    token = os.urandom(20)
    signature = _signer(known).Sign(token)
    assert _public(known).verify(token, signature)
    assert not _public(stranger).verify(token, signature)
    assert not _public(known).verify(os.urandom(20), signature)
    assert not _public(known).verify(token, signature[:-1] + bytes([signature[-1] ^ 1]))


def _raw_auth_start(server) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(pack_packet(CNXN, 0x01000000, 4096, b"host::\0"))
    command, kind, _, token = _read_packet(sock)
    assert (command, kind, len(token)) == (AUTH, AUTH_TOKEN, 20)
    return sock, token


def test_raw_auth_wrong_signature_gets_a_fresh_token_and_nothing_runs_before_auth(tmp_path, adb_keys):
    known, stranger = adb_keys
    with LoopbackAdbd(auth="always") as server:
        sock, token = _raw_auth_start(server)
        with sock:
            sock.sendall(pack_packet(OPEN, 3, 0, f"shell:touch {server.root}/ran\0".encode()))   # ignored
            sock.sendall(pack_packet(AUTH, AUTH_SIGNATURE, 0, _signer(stranger).Sign(token)))
            command, kind, _, token2 = _read_packet(sock)
            assert (command, kind) == (AUTH, AUTH_TOKEN) and token2 != token
            sock.sendall(pack_packet(AUTH, AUTH_RSAPUBLICKEY, 0, _signer(known).GetPublicKey().encode() + b"\0"))
            assert _read_packet(sock)[0] == CNXN                                 # "Allow" tapped (policy always)
        assert not (server.root / "ran").exists()
        assert read_adb_keys(server.root / "data/misc/adb/adb_keys") == [_public(known)]  # remembered
        sock, token = _raw_auth_start(server)                                    # next time: the signature does
        with sock:
            sock.sendall(pack_packet(AUTH, AUTH_SIGNATURE, 0, _signer(known).Sign(token)))
            assert _read_packet(sock)[0] == CNXN


def test_adb_shell_client_against_each_policy(tmp_path, adb_keys):
    from adb_shell.exceptions import DeviceAuthError

    known, stranger = adb_keys
    listing = tmp_path / "adb_keys"
    listing.write_text(open(f"{known}.pub").read())

    def connect(server, key, auth_timeout_s=1.0):
        device = AdbDeviceTcp("127.0.0.1", server.port, default_transport_timeout_s=5)
        try:
            device.connect(rsa_keys=[_signer(key)] if key else None, auth_timeout_s=auth_timeout_s)
            return device.shell("getprop ro.product.model").strip()
        finally:
            device.close()

    with LoopbackAdbd(auth="keys", adb_keys=listing) as server:
        assert connect(server, known) == "ofa-bench-loopback"
        start = time.monotonic()
        with pytest.raises(Exception):                      # offered, never accepted: the host times out
            connect(server, stranger)
        assert time.monotonic() - start < 4.0
        with pytest.raises(DeviceAuthError):                # no key at all
            connect(server, None)
        assert any("not accepted (policy keys)" in e for e in server.events)
    with LoopbackAdbd(auth="never") as server:
        with pytest.raises(Exception):
            connect(server, known)
        assert not read_adb_keys(server.root / "data/misc/adb/adb_keys")
    with LoopbackAdbd(auth="always") as server:
        assert connect(server, stranger) == "ofa-bench-loopback"
        assert connect(server, stranger) == "ofa-bench-loopback"
        assert [e for e in server.events if "accepted and remembered" in e] and \
            [e for e in server.events if "signature verified" in e]
    with LoopbackAdbd() as server:                          # auth none (the default): no challenge at all
        assert connect(server, None) == "ofa-bench-loopback"


def test_command_line_auth_options(tmp_path, adb_keys):
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "agents.sim.loopback_adbd", "--auth", "never", "--adb-keys",
                          str(tmp_path / "k")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "adb_keys" in bad.stderr
    known, _ = adb_keys
    listing = tmp_path / "adb_keys"
    listing.write_text(open(f"{known}.pub").read())
    device = start_loopback_process(tmp_path / "root", "--auth", "keys", "--adb-keys", str(listing))
    try:
        assert "auth keys" in device.banner_line
        adb = AdbDeviceTcp("127.0.0.1", device.port, default_transport_timeout_s=5)
        adb.connect(rsa_keys=[_signer(known)], auth_timeout_s=2)
        assert adb.shell("echo hello").strip() == "hello"
        adb.close()
    finally:
        device.stop()


def test_a_frozen_device_answers_nothing_and_kills_commands_when_the_host_hangs_up(tmp_path):
    with LoopbackAdbd(hang_on="FREEZE") as server:
        sock, _ = _raw_connect(server)
        pidfile = server.root / "data/local/tmp/pid"
        with sock:
            sock.sendall(pack_packet(OPEN, 5, 0, b"shell:echo $$ > /data/local/tmp/pid; exec sleep 30\0"))
            assert _read_packet(sock)[0] == OKAY
            deadline = time.monotonic() + 10
            while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
                time.sleep(0.02)
            pid = int(pidfile.read_text())
            sock.sendall(pack_packet(OPEN, 6, 0, b"shell:echo FREEZE\0"))
            sock.settimeout(1.0)
            with pytest.raises(socket.timeout):            # no OKAY, nothing at all
                sock.recv(100)
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as other:
                other.sendall(pack_packet(CNXN, 0x01000000, 4096, b"host::\0"))
                other.settimeout(1.0)
                with pytest.raises(socket.timeout):        # new connections get no CNXN either
                    other.recv(100)
            assert _alive(pid)
        deadline = time.monotonic() + 5                    # the host hung up: its command is killed
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid)
        assert any("FREEZE" in e for e in server.events)
