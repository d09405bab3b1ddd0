"""Reusable adb fixtures: the loopback ADB device (in-process or as a subprocess) and a private adb server.

Import them into a test module (`from _fixtures_adb import loopback, adb_server  # noqa: F401`); tests/ is on
sys.path under pytest's default rootdir import mode.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.loopback_adbd import LoopbackAdbd

REPO = Path(__file__).resolve().parents[1]


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


@dataclass
class LoopbackProcess:
    """The loopback device run as `python -m agents.loopback_adbd` (so a test can kill it like a real device)."""

    proc: subprocess.Popen
    port: int
    root: Path
    banner_line: str

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_loopback_process(root: Path, timeout_s: float = 20.0) -> LoopbackProcess:
    """Start the loopback device in a child process on a free port; wait for its "listening on" line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "agents.loopback_adbd", "--port", "0", "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=env, cwd=REPO)
    deadline = time.monotonic() + timeout_s
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            return LoopbackProcess(proc, int(match.group(1)), root, line.strip())
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"loopback adbd did not start: {line!r}")


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
    """A private adb server (own port, own HOME for its keys), so tests never touch the user's server."""

    adb: str
    port: int
    env: dict

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
    env.pop("ANDROID_ADB_SERVER_PORT", None)
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
