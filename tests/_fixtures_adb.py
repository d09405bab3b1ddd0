"""Reusable adb fixtures: the loopback ADB device (in-process or as a subprocess), a private adb server (own
port, own HOME and key), and adb keys made for a test (never the user's ~/.android/adbkey).

Import them into a test module (`from _fixtures_adb import loopback, adb_server  # noqa: F401`); tests/ is on
sys.path under pytest's default rootdir import mode.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.sim.loopback_adbd import LoopbackAdbd, LoopbackProcess, spawn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loopback():
    """An in-process loopback ADB device with a temporary sandbox; yields the `LoopbackAdbd` (.port, .workdir)."""
    server = LoopbackAdbd()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_adb_key(folder: Path) -> Path:
    """A fresh adb key pair (`adbkey`, `adbkey.pub`) in `folder`, made by adb-shell's keygen; returns `adbkey`."""
    from adb_shell.auth.keygen import keygen

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "adbkey"
    keygen(str(path))
    return path


@pytest.fixture(scope="module")
def adb_keys(tmp_path_factory) -> tuple[Path, Path]:
    """Two adb keys made for the test module: (a key the device will know, a key it will not)."""
    base = tmp_path_factory.mktemp("adb-keys")
    return make_adb_key(base / "known"), make_adb_key(base / "stranger")


def start_loopback_process(root: Path, *args: str, timeout_s: float = 20.0) -> LoopbackProcess:
    """Start the loopback device (`args`: more options) in a child process on a free port; wait for its
    "listening on" line (`agents.sim.loopback_adbd.spawn`)."""
    return spawn(root, *args, timeout_s=timeout_s)


@pytest.fixture
def loopback_process(tmp_path):
    """The loopback device as a separate process; stopped (SIGTERM) at the end unless the test did."""
    device = start_loopback_process(tmp_path / "device")
    try:
        yield device
    finally:
        device.stop()


@dataclass
class AdbServer:
    """A private adb server (own port, own HOME for its keys), so tests never touch the user's server or key."""

    adb: str
    port: int
    env: dict

    @property
    def public_key(self) -> Path:
        """The server's public key (made by the server in its HOME at start), as a phone would store it."""
        return Path(self.env["HOME"]) / ".android/adbkey.pub"

    def run(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([self.adb, "-P", str(self.port), *args], capture_output=True, text=True,
                              timeout=timeout_s, env=self.env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def adb_server(tmp_path_factory):
    """Debian's `adb` server on a free port; killed at the end. Skips when the `adb` command is absent."""
    adb = shutil.which("adb")
    if adb is None:
        pytest.skip("the `adb` command is not installed (Debian package `adb`)")
    home = tmp_path_factory.mktemp("adb-home")
    env = dict(os.environ, HOME=str(home))
    for name in ("ANDROID_ADB_SERVER_PORT", "ADB_VENDOR_KEYS", "ANDROID_SDK_HOME", "ANDROID_USER_HOME"):
        env.pop(name, None)  # only the key in this HOME, only this port
    for _ in range(3):  # a port free a moment ago can be taken before the server binds it: try another
        server = AdbServer(adb, free_port(), env)
        started = server.run("start-server")
        if started.returncode == 0:
            break
    else:
        pytest.skip(f"adb server does not start: {(started.stderr or started.stdout).strip()}")
    try:
        yield server
    finally:
        server.run("kill-server", timeout_s=15)
