"""The ssh transport against a real OpenSSH server started by the test on 127.0.0.1: what only ssh does (what
every transport does is in test_transport_contract.py)."""
from __future__ import annotations

import os
import socket
import time

import pytest

from _fixtures_ssh import sshd  # noqa: F401  (fixture)
from agents.transports.base import TransportError
from agents.transports.ssh import SshTransport

pytestmark = pytest.mark.ssh


@pytest.fixture
def transport(sshd, tmp_path):
    t = sshd.transport(workdir=str(tmp_path / "device-workdir"))
    yield t
    t.close()


def test_first_contact_is_recorded_in_known_hosts(transport, sshd):
    assert transport.run(["true"]).returncode == 0
    assert "127.0.0.1" in sshd.known_hosts.read_text()   # accept-new


def test_default_workdir_is_absolute_under_home(sshd):
    t = sshd.transport()
    try:
        home = t.run(["sh", "-c", 'printf %s "$HOME"']).stdout
        assert t.workdir == f"{home.rstrip('/')}/.cache/ofa-bench"
    finally:
        t.close()


def test_unreachable_fails_within_the_timeout(sshd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = SshTransport(sshd.user, "127.0.0.1", port, key_path=sshd.key_path, known_hosts=sshd.known_hosts,
                     config_file=os.devnull, timeout_s=3.0)
    start = time.monotonic()
    with pytest.raises(TransportError, match=rf"^ssh:{sshd.user}@127\.0\.0\.1:{port}: unreachable"):
        t.run(["true"])
    assert time.monotonic() - start < 4.0
    t.close()


def test_rejected_key_is_a_one_line_error(sshd, tmp_path):
    import subprocess

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    t = SshTransport(sshd.user, "127.0.0.1", sshd.port, key_path=other, known_hosts=sshd.known_hosts,
                     config_file=os.devnull, timeout_s=5.0)
    with pytest.raises(TransportError, match=r"unreachable \(.*Permission denied") as info:
        t.run(["true"])
    assert "\n" not in str(info.value)
    t.close()


def test_bad_host_name_is_refused_before_calling_ssh():
    with pytest.raises(TransportError, match="bad user or host"):
        SshTransport("root", "-oProxyCommand=evil")
