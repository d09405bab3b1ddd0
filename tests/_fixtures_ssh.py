"""Reusable ssh fixture: a real OpenSSH server on 127.0.0.1 (free port, generated host and user keys).

The server itself is `agents.sim.local_sshd` (shared with `python -m bench.perf agents`); here it becomes a
pytest fixture that skips with the reason when `sshd` or `ssh-keygen` is absent or the server does not come up.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from agents.sim.local_sshd import LocalSshdUnavailable, SshServer
from agents.sim.local_sshd import start_sshd as _start_sshd

__all__ = ["SshServer", "sshd", "start_sshd"]


def start_sshd(folder: Path, timeout_s: float = 15.0) -> SshServer:
    """`agents.sim.local_sshd.start_sshd`, skipping the test with the reason when this machine cannot run it."""
    try:
        return _start_sshd(folder, timeout_s)
    except LocalSshdUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A running OpenSSH server on 127.0.0.1 for this test module (`SshServer`)."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
