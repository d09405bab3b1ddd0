"""What every transport offers: run a command on the device, push and pull files, with a timeout on each call."""
from __future__ import annotations

import hashlib
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from ofa_core.errors import OFABenchError


class TransportError(OFABenchError):
    """The device could not be reached, dropped, or a call timed out. The message names the device."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def quote_argv(argv: list[str]) -> str:
    """One shell command line with every argument quoted (device shells see no unquoted user input)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Transport(ABC):
    """A way to reach one device. `name` identifies it in error messages (e.g. `adb:127.0.0.1:5555`)."""

    name: str
    #: folder on the device where pushed files live (created on first use)
    workdir: str

    @abstractmethod
    def run(self, argv: list[str], timeout_s: float = 60.0) -> CommandResult:
        """Run `argv` on the device (each argument quoted) and return its exit status and output.

        Raises `TransportError` on timeout or when the device cannot be reached or drops.
        """

    @abstractmethod
    def push_file(self, local: Path, remote: str, timeout_s: float = 120.0) -> None:
        """Copy one file to `remote` on the device (no cache)."""

    @abstractmethod
    def pull_file(self, remote: str, local: Path, timeout_s: float = 120.0) -> None:
        """Copy one file from the device."""

    def push(self, local: Path, timeout_s: float = 120.0) -> str:
        """Push `local` into `workdir` under a name derived from its content hash; skip it if already there.

        Returns the remote path. The cache check asks the device (the file exists with that name), so it holds
        across processes and hosts.
        """
        local = Path(local)
        digest = file_sha256(local)[:16]
        remote = f"{self.workdir}/{digest}-{local.name}"
        if remote not in self._pushed_cache():
            check = self.run(["test", "-f", remote], timeout_s=timeout_s)
            if check.returncode != 0:
                self.run(["mkdir", "-p", self.workdir], timeout_s=timeout_s)
                self.push_file(local, remote + ".part", timeout_s=timeout_s)
                self.run(["mv", remote + ".part", remote], timeout_s=timeout_s)
            self._pushed_cache().add(remote)
        return remote

    def _pushed_cache(self) -> set[str]:
        cache = self.__dict__.get("_pushed")
        if cache is None:
            cache = self.__dict__["_pushed"] = set()
        return cache

    def close(self) -> None:
        """Release connections. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
