"""The contract every transport keeps, run over each one: this host (a subprocess), ssh (a throwaway OpenSSH
server, tests/_fixtures_ssh.py) and adb (the loopback phone, tests/_fixtures_adb.py), through adb-shell and
through Debian's adb server. What only one transport does is tested in test_<transport>_transport.py."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from _fixtures_adb import adb_server, loopback, loopback_process  # noqa: F401  (fixtures)
from _fixtures_ssh import sshd  # noqa: F401  (fixture)
from agents.transports.adb import AdbServerTransport, AdbShellTransport
from agents.transports.base import Transport, TransportError
from agents.transports.local import LocalTransport

TRICKY = "a b  'c' \"d\" ; $(touch PWNED) `touch PWNED2` \\ * ~ $HOME\n|& z"


@dataclass
class Device:
    """One device as a transport reaches it. `connect()` opens a fresh transport to it (as another process
    would); `folders` are where an argument that reached a shell unquoted would have made files; `drop()` makes
    the device's side of every connection go away, after which it accepts new ones if `recovers`."""

    connect: Callable[[], Transport]
    folders: list[Path] = field(default_factory=list)
    drop: Callable[[], None] | None = None
    recovers: bool = False


def _closing(request, make: Callable[[], Transport]) -> Callable[[], Transport]:
    def connect() -> Transport:
        transport = make()
        request.addfinalizer(transport.close)
        return transport
    return connect


def _local(request, tmp_path: Path) -> Device:
    workdir = tmp_path / "device-workdir"
    return Device(_closing(request, lambda: LocalTransport(workdir=str(workdir), timeout_s=10.0)),
                  [tmp_path, workdir, Path.cwd()])


def _ssh(request, tmp_path: Path) -> Device:
    server = request.getfixturevalue("sshd")

    def drop() -> None:
        for pid in server.session_pids():
            os.kill(pid, signal.SIGKILL)

    workdir = str(tmp_path / "device-workdir")
    return Device(_closing(request, lambda: server.transport(workdir=workdir)), [tmp_path, Path.home()], drop,
                  recovers=True)


def _adb(request, tmp_path: Path, through_server: bool, as_process: bool) -> Device:
    phone = request.getfixturevalue("loopback_process" if as_process else "loopback")
    serial = f"127.0.0.1:{phone.port}"
    if through_server:
        server = request.getfixturevalue("adb_server")
        request.addfinalizer(lambda: server.run("disconnect", serial))

        def make() -> Transport:
            return AdbServerTransport(serial, server_port=server.port, timeout_s=10.0)
    else:
        def make() -> Transport:
            return AdbShellTransport("127.0.0.1", phone.port, timeout_s=10.0)
    return Device(_closing(request, make), [phone.root], phone.stop if as_process else None)


KINDS = {
    "local": _local,
    "ssh": _ssh,
    "adb-shell": lambda request, tmp_path, as_process=False: _adb(request, tmp_path, False, as_process),
    "adb-server": lambda request, tmp_path, as_process=False: _adb(request, tmp_path, True, as_process),
}
MARKS = {"local": (), "ssh": (pytest.mark.ssh,), "adb-shell": (pytest.mark.adb,), "adb-server": (pytest.mark.adb,)}


def _params(kinds) -> list:
    return [pytest.param(kind, marks=MARKS[kind], id=kind) for kind in kinds]


@pytest.fixture(params=_params(KINDS))
def device(request, tmp_path) -> Device:
    return KINDS[request.param](request, tmp_path)


@pytest.fixture
def transport(device) -> Transport:
    return device.connect()


def test_run_returns_exit_status_stdout_and_stderr_apart(transport):
    result = transport.run(["sh", "-c", "echo out; echo err >&2; printf tail; exit 7"])
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\ntail", "err\n")
    assert transport.run(["true"]).returncode == 0
    assert transport.run(["test", "-f", "/nonexistent/file"]).returncode == 1
    assert transport.run(["sh", "-c", "exit 255"]).returncode == 255   # the command's status, not the transport's


def test_arguments_arrive_literally(transport, device):
    assert transport.run(["printf", "%s", TRICKY]).stdout == TRICKY
    assert not [p for folder in device.folders for p in folder.glob("PWNED*")]


def test_push_pull_round_trip_and_content_hash_cache(transport, device, tmp_path):
    data = os.urandom(200_000)                   # > 64 KiB: several adb sync chunks
    local = tmp_path / "my model.onnx"           # a space in the name
    local.write_bytes(data)
    remote = transport.push(local)
    assert remote.startswith(transport.workdir + "/") and remote.endswith("-my model.onnx")
    assert transport.run(["test", "-f", remote]).returncode == 0
    back = tmp_path / "back.bin"
    transport.pull_file(remote, back)
    assert back.read_bytes() == data
    fresh = device.connect()                     # another process finds the file by its hash: not sent again
    fresh.push_file = lambda *a, **k: pytest.fail("pushed again although the device has the file")
    assert fresh.push(local) == remote


def test_pull_of_a_missing_file_is_a_one_line_error(transport, tmp_path):
    with pytest.raises(TransportError, match=rf"^{re.escape(transport.name)}: .*missing") as info:
        transport.pull_file(transport.workdir + "/missing", tmp_path / "x")
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("x*"))         # neither the file nor a partial one


def test_timeout_fails_within_the_limit_and_the_next_call_works(transport):
    start = time.monotonic()
    with pytest.raises(TransportError, match="timed out after 1 s"):
        transport.run(["sleep", "10"], timeout_s=1.0)
    assert time.monotonic() - start < 5.0
    assert transport.run(["echo", "again"]).stdout == "again\n"


@pytest.fixture(params=_params(["ssh", "adb-shell", "adb-server"]))
def droppable(request, tmp_path) -> Device:
    """A device that can go away mid-call: the ssh server's sessions killed, the loopback phone's process
    stopped (a command on this host has no connection to drop)."""
    if request.param == "ssh":
        return KINDS["ssh"](request, tmp_path)
    return KINDS[request.param](request, tmp_path, as_process=True)


def test_a_device_dropping_mid_call_fails_fast(droppable):
    transport = droppable.connect()
    assert transport.run(["true"]).returncode == 0
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["result"] = transport.run(["sleep", "20"], timeout_s=15.0)
        except TransportError as e:
            outcome["error"] = e

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.6)
    start = time.monotonic()
    droppable.drop()                              # the device's side goes away while `sleep` runs
    worker.join(15)
    assert not worker.is_alive() and time.monotonic() - start < 8.0
    text = str(outcome.get("error"))
    assert text.startswith(f"{transport.name}: ") and "dropped" in text and "\n" not in text, outcome
    if droppable.recovers:
        assert transport.run(["echo", "back"]).stdout == "back\n"
