"""A throwaway OpenSSH server on 127.0.0.1: a test and benchmark harness for the ssh transport, not a device.

`start_sshd(folder)` runs this machine's `sshd` as the current user, in the foreground, with its own
sshd_config on a free port, a host key and one user key generated for it in `folder` (a private temporary
folder by default: ssh-keygen writes the private keys 0600), and returns once a key login works. Nothing of the
user's ~/.ssh is read or written: `SshServer.transport()` names the key, a known_hosts file of its own and no
ssh config. As root, sshd needs its privilege separation folder /run/sshd (normally made by the service
manager): it is created when missing. When `sshd` or `ssh-keygen` is absent, the server does not come up, or
this machine refuses the login, `LocalSshdUnavailable` says why (the test fixture skips with it).
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agents.transports.ssh import SshTransport
from ofa_core.errors import OFABenchError

SSHD = "/usr/sbin/sshd"   # sshd must be started by absolute path (it re-executes itself)
PRIVSEP_DIR = Path("/run/sshd")
HOST = "127.0.0.1"


class LocalSshdUnavailable(OFABenchError):
    """This machine cannot run the throwaway sshd (OpenSSH missing, sshd not starting, key login refused)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class SshServer:
    """A running throwaway sshd (`start_sshd`): who logs in with which key, and where its files are."""

    proc: subprocess.Popen
    port: int
    user: str
    key_path: Path
    known_hosts: Path
    folder: Path
    owns_folder: bool = False  # a temporary folder start_sshd made: removed by stop()

    def transport(self, **kwargs) -> SshTransport:
        """An `SshTransport` to this server, ignoring the user's ~/.ssh/config."""
        kwargs.setdefault("timeout_s", 10.0)
        return SshTransport(self.user, HOST, self.port, key_path=self.key_path,
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
        """End every session, then the server (SIGTERM, SIGKILL after 10 s); remove a folder of its own."""
        self._stop_processes()
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _stop_processes(self) -> None:
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

    def __enter__(self) -> "SshServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _write_config(folder: Path, port: int, user: str) -> Path:
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        f"ListenAddress {HOST}",
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
    return config


def start_sshd(folder: Path | str | None = None, timeout_s: float = 15.0) -> SshServer:
    """Generate keys and a config in `folder` (default: a new private temporary folder), start sshd in the
    foreground, wait until it accepts connections and a key login works. Raises `LocalSshdUnavailable`."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        raise LocalSshdUnavailable("OpenSSH server/client not installed (Debian packages openssh-server, "
                                   "openssh-client)")
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
    if folder is not None:
        return _start_in(Path(folder), timeout_s, owns_folder=False)
    folder = Path(tempfile.mkdtemp(prefix="ofa-bench-sshd-"))  # 0700: only this user reads the keys
    try:
        return _start_in(folder, timeout_s, owns_folder=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _start_in(folder: Path, timeout_s: float, owns_folder: bool) -> SshServer:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_ed25519", "user_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"ofa-bench-test-{name}",
                        "-f", str(folder / name)], check=True, capture_output=True)
    (folder / "authorized_keys").write_text((folder / "user_ed25519.pub").read_text())
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("")
    port = _free_port()
    user = getpass.getuser()
    config = _write_config(folder, port, user)
    with open(folder / "sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalSshdUnavailable(f"sshd exited: {(folder / 'sshd.log').read_text().strip()[-300:]}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        proc.wait(5)
        raise LocalSshdUnavailable(f"sshd did not accept connections within {timeout_s:g} s")
    server = SshServer(proc, port, user, folder / "user_ed25519", known_hosts, folder, owns_folder)
    try:
        _probe_login(server)
    except BaseException:
        server._stop_processes()  # its folder, if its own, goes too (start_sshd)
        raise
    return server


def _probe_login(server: SshServer) -> None:
    """One plain `ssh ... true`: if this machine refuses the login (e.g. a locked account: with UsePAM no,
    sshd rejects users whose password field starts with "!"), say sshd's reason."""
    probe = subprocess.run(["ssh", "-F", os.devnull, "-p", str(server.port), "-i", str(server.key_path),
                            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
                            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "LogLevel=ERROR", f"{server.user}@{HOST}", "true"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    if probe.returncode != 0:
        log = (server.folder / "sshd.log").read_text().strip().splitlines()
        raise LocalSshdUnavailable(f"this machine's sshd refuses a key login for {server.user}: "
                                   f"{(log[-1] if log else probe.stderr.strip())[:200]}")
