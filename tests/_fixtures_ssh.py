"""Reusable ssh fixture: a real OpenSSH server on 127.0.0.1 (free port, generated host and user keys).

It runs as the current user with its own sshd_config in a temporary folder. As root, sshd needs its privilege
separation folder /run/sshd (normally made by the service manager): the fixture creates it when missing.
Skips with the reason when `sshd` or `ssh-keygen` is absent or the server does not come up.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.transports.ssh import SshTransport

SSHD = "/usr/sbin/sshd"   # sshd must be started by absolute path (it re-executes itself)
PRIVSEP_DIR = Path("/run/sshd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SshServer:
    proc: subprocess.Popen
    port: int
    user: str
    key_path: Path
    known_hosts: Path
    folder: Path

    def transport(self, **kwargs) -> SshTransport:
        """An `SshTransport` to this server, ignoring the user's ~/.ssh/config."""
        kwargs.setdefault("timeout_s", 10.0)
        return SshTransport(self.user, "127.0.0.1", self.port, key_path=self.key_path,
                            known_hosts=self.known_hosts, config_file=os.devnull, **kwargs)

    def session_pids(self) -> list[int]:
        """Process ids of the per-connection sshd children (killing them drops the connections)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.proc.poll() is None:
            for pid in self.session_pids():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_sshd(folder: Path, timeout_s: float = 15.0) -> SshServer:
    """Generate keys and a config in `folder`, start sshd in the foreground, wait until it accepts."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        pytest.skip("OpenSSH server/client not installed (Debian packages openssh-server, openssh-client)")
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_ed25519", "user_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"ofa-bench-test-{name}",
                        "-f", str(folder / name)], check=True, capture_output=True)
    (folder / "authorized_keys").write_text((folder / "user_ed25519.pub").read_text())
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("")
    port = _free_port()
    user = getpass.getuser()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {folder / 'host_ed25519'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        f"PidFile {folder / 'sshd.pid'}",
        "StrictModes no",
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        f"AllowUsers {user}",
        "PrintMotd no",
        "MaxStartups 50",
        "MaxSessions 50",
        "LogLevel INFO",
        "",
    ]))
    log = open(folder / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd exited: {(folder / 'sshd.log').read_text().strip()[-300:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        proc.wait(5)
        pytest.skip(f"sshd did not accept connections within {timeout_s:g} s")
    server = SshServer(proc, port, user, folder / "user_ed25519", known_hosts, folder)
    _probe_login(server)
    return server


def _probe_login(server: SshServer) -> None:
    """One plain `ssh ... true`: if this machine refuses the login (e.g. a locked account: with UsePAM no,
    sshd rejects users whose password field starts with "!"), skip with sshd's reason instead of failing."""
    probe = subprocess.run(["ssh", "-F", os.devnull, "-p", str(server.port), "-i", str(server.key_path),
                            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
                            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "LogLevel=ERROR", f"{server.user}@127.0.0.1", "true"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    if probe.returncode != 0:
        log = (server.folder / "sshd.log").read_text().strip().splitlines()
        server.stop()
        pytest.skip(f"this machine's sshd refuses a key login for {server.user}: "
                    f"{(log[-1] if log else probe.stderr.strip())[:200]}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A running OpenSSH server on 127.0.0.1 for this test module (`SshServer`)."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
