"""The ssh transport against a real OpenSSH server started by the test on 127.0.0.1."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from _fixtures_ssh import sshd  # noqa: F401  (fixture)
from agents.transports.base import TransportError
from agents.transports.ssh import SshTransport

pytestmark = pytest.mark.ssh
TRICKY = "a b  'c' \"d\" ; $(touch PWNED) `touch PWNED2` \\ * ~ $HOME\n|& z"


@pytest.fixture
def transport(sshd, tmp_path):
    t = sshd.transport(workdir=str(tmp_path / "device-workdir"))
    yield t
    t.close()


def test_run_exit_status_stdout_stderr(transport, sshd):
    result = transport.run(["sh", "-c", "echo out; echo err >&2; printf tail; exit 7"])
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\ntail", "err\n")
    assert transport.run(["sh", "-c", "exit 255"]).returncode == 255   # a remote 255 is not an ssh failure
    assert transport.run(["test", "-f", "/nonexistent/file"]).returncode == 1
    assert "127.0.0.1" in sshd.known_hosts.read_text()   # first contact recorded (accept-new)


def test_arguments_arrive_literally(transport, tmp_path):
    assert transport.run(["printf", "%s", TRICKY]).stdout == TRICKY
    home = transport.run(["sh", "-c", 'printf %s "$HOME"']).stdout
    assert not [p for p in (tmp_path, home) if any(str(p) and os.path.exists(os.path.join(p, n))
                                                  for n in ("PWNED", "PWNED2"))]


def test_default_workdir_is_absolute_under_home(sshd):
    t = sshd.transport()
    try:
        home = t.run(["sh", "-c", 'printf %s "$HOME"']).stdout
        assert t.workdir == f"{home.rstrip('/')}/.cache/ofa-bench"
    finally:
        t.close()


def test_push_pull_round_trip_and_content_hash_cache(transport, sshd, tmp_path):
    data = os.urandom(200_000)
    local = tmp_path / "my model.onnx"         # a space in the name
    local.write_bytes(data)
    remote = transport.push(local)
    assert remote.startswith(transport.workdir + "/") and remote.endswith("-my model.onnx")
    assert transport.run(["test", "-f", remote]).returncode == 0
    back = tmp_path / "back.bin"
    transport.pull_file(remote, back)
    assert back.read_bytes() == data
    fresh = sshd.transport(workdir=transport.workdir)
    fresh.push_file = lambda *a, **k: pytest.fail("pushed again although the device has the file")
    try:
        assert fresh.push(local) == remote
    finally:
        fresh.close()
    with pytest.raises(TransportError, match=r"^ssh:.*: pulling .*missing.* failed"):
        transport.pull_file(transport.workdir + "/missing", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_timeout_fails_within_the_limit_and_the_next_call_works(transport):
    start = time.monotonic()
    with pytest.raises(TransportError, match="timed out after 1 s"):
        transport.run(["sleep", "10"], timeout_s=1.0)
    assert time.monotonic() - start < 5.0
    assert transport.run(["echo", "again"]).stdout == "again\n"


def test_connection_dropped_mid_call_fails_fast_and_recovers(transport, sshd):
    assert transport.run(["true"]).returncode == 0
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["result"] = transport.run(["sleep", "20"], timeout_s=15.0)
        except TransportError as e:
            outcome["error"] = e

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.7)
    start = time.monotonic()
    for pid in sshd.session_pids():              # the server side of our connection dies
        os.kill(pid, signal.SIGKILL)
    worker.join(15)
    assert time.monotonic() - start < 8.0
    assert "dropped" in str(outcome.get("error")), outcome
    assert transport.run(["echo", "back"]).stdout == "back\n"


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
