"""This host as a device: commands run as subprocesses (no shell) in a work folder; pushes are file copies."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from agents.cache import cache_root
from agents.transports.base import CommandResult, Transport, TransportError, run_process


def default_workdir() -> str:
    return str(cache_root() / "device-local")


class LocalTransport(Transport):
    """Runs argv directly (never through a shell), each call in its own process group so a timeout kills the
    whole tree."""

    def __init__(self, workdir: str | None = None, timeout_s: float = 60.0, name: str = "local"):
        self.name = name
        self.workdir = str(Path(workdir or default_workdir()).expanduser().resolve())
        self.timeout_s = timeout_s

    def run(self, argv: list[str], timeout_s: float | None = None) -> CommandResult:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        argv = [str(a) for a in argv]
        try:
            code, out, err = run_process(argv, timeout, cwd=self.workdir if os.path.isdir(self.workdir) else None)
        except OSError as exc:
            return CommandResult(127, "", f"{argv[0]}: {exc.strerror or exc}")
        except subprocess.TimeoutExpired:
            raise TransportError(f"{self.name}: command {argv[0]} timed out after {timeout:g} s") from None
        return CommandResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def push_file(self, local: Path, remote: str, timeout_s: float = 120.0) -> None:
        try:
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, remote)
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot copy {local} to {remote}: {exc.strerror or exc}") from None

    def pull_file(self, remote: str, local: Path, timeout_s: float = 120.0) -> None:
        try:
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot copy {remote} to {local}: {exc.strerror or exc}") from None
