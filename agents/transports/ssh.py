"""SSH transport: the system `ssh` command, one multiplexed master connection per device.

Files travel over the same connection as commands (`cat > path` and `cat path`) rather than with `scp`, whose
remote paths are re-parsed by the remote shell in its legacy mode but not in its SFTP mode (OpenSSH >= 9):
with `cat`, every path is quoted by us, the same way on every OpenSSH version. The remote login shell must be
POSIX-like (sh, bash, dash, zsh, ash).

Exit status: ssh reports both its own failures and a remote `exit 255` as 255, and a dropped connection does
not always print anything, so the remote command line ends with a marker on stderr (per-call random token,
then the status); the marker is stripped, and a call without it did not finish.

A call that times out kills the local `ssh`; without a terminal the remote process may keep running until it
next writes.
"""
from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from agents.transports.base import CommandResult, Transport, TransportError, quote_argv, run_process
from ofa_core.atomic import atomic_write

DEFAULT_WORKDIR = "~/.cache/ofa-bench"   # resolved to an absolute path on the device at first use
_PUSH_SCRIPT = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'


def _last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _short(argv: list[str]) -> str:
    line = quote_argv(argv)
    return line if len(line) <= 80 else line[:77] + "..."


class SshTransport(Transport):
    """A Linux device over ssh (Jetson, Raspberry Pi, a server): key-based, non-interactive.

    `known_hosts`: file for host keys (first contact accepted, later changes refused); None = ssh's default.
    `options`: extra `-o` settings, e.g. ("ProxyJump=gateway",); `config_file`: instead of ~/.ssh/config.
    `multiplex=False` opens one connection per call instead of sharing one master connection.
    """

    def __init__(self, user: str, host: str, port: int = 22, key_path: str | Path | None = None,
                 workdir: str | None = None, timeout_s: float = 10.0, known_hosts: str | Path | None = None,
                 options: tuple[str, ...] = (), config_file: str | Path | None = None, multiplex: bool = True,
                 control_persist_s: int = 60, ssh: str = "ssh") -> None:
        for part in (user, host):
            if not part or part.startswith("-") or any(c.isspace() or c in "@/" for c in part):
                raise TransportError(f"ssh:{user}@{host}:{port}: bad user or host name {part!r}")
        self.user, self.host, self.port = user, host, int(port)
        self.name = f"ssh:{user}@{host}:{self.port}"
        self.key_path = Path(key_path).expanduser() if key_path else None
        self.timeout_s = float(timeout_s)
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else None
        self.options = tuple(options)
        self.config_file = str(config_file) if config_file else None
        self.multiplex = multiplex
        self.control_persist_s = int(control_persist_s)
        self.ssh = ssh
        self._workdir = workdir or None
        self._control_dir: str | None = None
        self._master_up = False
        self._lock = threading.RLock()

    # -- ssh command lines
    def _base_argv(self, *, master: bool = False) -> list[str]:
        argv = [self.ssh, "-p", str(self.port)]
        if self.config_file is not None:
            argv += ["-F", self.config_file]
        argv += ["-o", "BatchMode=yes",
                 "-o", f"ConnectTimeout={max(1, math.ceil(self.timeout_s))}",
                 "-o", "StrictHostKeyChecking=accept-new",
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                 "-o", "LogLevel=ERROR"]
        if self.key_path is not None:
            argv += ["-i", str(self.key_path), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts is not None:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        for option in self.options:
            argv += ["-o", option]
        if self.multiplex:
            argv += ["-o", f"ControlPath={self._control_path()}",
                     "-o", "ControlMaster=yes" if master else "ControlMaster=no"]
            if master:
                argv += ["-o", f"ControlPersist={self.control_persist_s}"]
        return argv

    def _control_path(self) -> str:
        if self._control_dir is None:
            # a short folder: unix socket paths are limited to ~108 bytes
            self._control_dir = tempfile.mkdtemp(prefix="ofa-ssh-", dir="/tmp" if os.path.isdir("/tmp") else None)
        return os.path.join(self._control_dir, "%C")

    def _target(self) -> list[str]:
        return ["--", f"{self.user}@{self.host}"]

    def _ensure_master(self, timeout_s: float) -> None:
        """Start the shared master connection (in the background, `-f -N`) unless it is up."""
        if not self.multiplex or self._master_up:
            return
        if self._control_dir is not None and os.listdir(self._control_dir):
            if self._ssh_control("check"):
                self._master_up = True
                return
            for stale in os.listdir(self._control_dir):  # a dead master's socket would disable multiplexing
                Path(self._control_dir, stale).unlink(missing_ok=True)
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: the backgrounded master keeps it open
            try:
                proc = subprocess.run(self._base_argv(master=True) + ["-f", "-N"] + self._target(),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=timeout_s)
            except FileNotFoundError:
                raise TransportError(f"{self.name}: the `{self.ssh}` command is not installed "
                                     "(Debian: apt install openssh-client)") from None
            except subprocess.TimeoutExpired:
                self._remove_control_dir()
                raise TransportError(f"{self.name}: unreachable within {timeout_s:g} s") from None
            err.seek(0)
            message = _last_line(err.read())
        if proc.returncode != 0:
            self._remove_control_dir()
            raise TransportError(f"{self.name}: unreachable ({message or f'ssh exited with {proc.returncode}'})")
        self._master_up = True

    def _ssh_control(self, command: str) -> bool:
        """`ssh -O check|exit`: talk to the local master process only."""
        try:
            proc = subprocess.run(self._base_argv() + ["-O", command] + self._target(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0

    def _ssh(self, argv: list[str], timeout_s: float, what: str, *, stdin=subprocess.DEVNULL,
             stdout=subprocess.PIPE) -> tuple[int, bytes, str]:
        """Run one remote command; returns (exit status, stdout bytes or b"", stderr without the marker).

        ssh's own failures, and calls that end without the status marker, become `TransportError`.
        """
        marker = f"__ofa_bench_rc_{secrets.token_hex(8)}="
        line = f'{quote_argv(argv)}; printf "\\n{marker}%s\\n" "$?" >&2'
        with self._lock:
            self._ensure_master(min(timeout_s, self.timeout_s))
            try:
                returncode, out, err = run_process(self._base_argv() + self._target() + [line], timeout_s,
                                                   stdin=stdin, stdout=stdout)
            except FileNotFoundError:
                raise TransportError(f"{self.name}: the `{self.ssh}` command is not installed") from None
            except subprocess.TimeoutExpired:
                raise TransportError(f"{self.name}: timed out after {timeout_s:g} s ({what})") from None
        proc = subprocess.CompletedProcess([], returncode, out, err)
        stderr = proc.stderr.decode("utf-8", "replace")
        found = None
        for found in re.finditer("\n" + re.escape(marker) + r"(-?\d+)\n", stderr):
            pass
        if found is None:
            self._master_up = False
            reason = _last_line(proc.stderr) or f"ssh exited with status {proc.returncode} before the command finished"
            raise TransportError(f"{self.name}: connection dropped or refused ({what}): {reason}")
        stderr = stderr[:found.start()] + stderr[found.end():]
        return int(found.group(1)), proc.stdout or b"", stderr

    # -- Transport
    @property
    def workdir(self) -> str:
        if self._workdir is None or self._workdir.startswith("~"):
            rest = (self._workdir or DEFAULT_WORKDIR)[1:].lstrip("/")
            home = self.run(["sh", "-c", 'printf %s "$HOME"'], timeout_s=self.timeout_s).stdout.strip()
            if not home.startswith("/"):
                raise TransportError(f"{self.name}: cannot find the home folder on the device")
            self._workdir = f"{home.rstrip('/')}/{rest}" if rest else home
        return self._workdir

    def run(self, argv: list[str], timeout_s: float = 60.0) -> CommandResult:
        returncode, stdout, stderr = self._ssh(list(argv), timeout_s, f"running `{_short(argv)}`")
        return CommandResult(returncode=returncode, stdout=stdout.decode("utf-8", "replace"), stderr=stderr)

    def push_file(self, local: Path, remote: str, timeout_s: float = 120.0) -> None:
        local = Path(local)
        what = f"pushing {local.name} to {remote}"
        try:
            f = open(local, "rb")
        except OSError as e:
            raise TransportError(f"{self.name}: cannot push {local}: {e.strerror}") from None
        with f:
            returncode, _, stderr = self._ssh(["sh", "-c", _PUSH_SCRIPT, "sh", remote], timeout_s, what, stdin=f)
        if returncode != 0:
            raise TransportError(f"{self.name}: {what} failed: {_last_line(stderr.encode()) or returncode}")

    def pull_file(self, remote: str, local: Path, timeout_s: float = 120.0) -> None:
        local = Path(local)
        what = f"pulling {remote}"
        with atomic_write(local) as f:  # a fresh temporary name beside `local`, swapped in once complete
            returncode, _, stderr = self._ssh(["cat", "--", remote], timeout_s, what, stdout=f)
            if returncode != 0:
                raise TransportError(f"{self.name}: {what} failed: {_last_line(stderr.encode()) or returncode}")

    def close(self) -> None:
        """Stop the master connection (`ssh -O exit`) and remove its socket folder."""
        with self._lock:
            if self._control_dir is None:
                return
            if os.listdir(self._control_dir):
                self._ssh_control("exit")
            self._master_up = False
            self._remove_control_dir()

    def _remove_control_dir(self) -> None:
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None
