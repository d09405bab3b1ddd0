"""ADB transports: `adb-shell` straight to the device (TCP or USB, no adb server) and the `adb` command (its server).

Both run commands through the legacy shell protocol, which carries no exit status and merges stderr into
stdout, so every command is wrapped: stderr goes to a temporary file on the device, and after the command the
wrapper prints a line with a per-call random marker and the exit status, then the stderr file. The marker is
new for every call, so output can never be mistaken for it; a missing marker means the call did not finish.

Workdir: `workdir=None` asks the device for `ro.ofa_bench.workdir` (the loopback device sets it to a folder
inside its sandbox) and falls back to /data/local/tmp/ofa-bench, the usual writable folder of a phone.
"""
from __future__ import annotations

import re
import secrets
import socket
import stat
import subprocess
import threading
from pathlib import Path
from typing import Callable, TypeVar

from adb_shell import exceptions as ex
from adb_shell.adb_device import AdbDevice, AdbDeviceUsb
from adb_shell.transport.tcp_transport import TcpTransport

from agents.transports.base import (CommandResult, Transport, TransportError, quote_argv, run_process,
                                     stoppable)
from ofa_core.atomic import atomic_path

DEFAULT_WORKDIR = "/data/local/tmp/ofa-bench"
WORKDIR_PROPERTY = "ro.ofa_bench.workdir"
DEFAULT_KEY = Path("~/.android/adbkey")
T = TypeVar("T")


def wrap_command(argv: list[str], token: str) -> str:
    """The device-side command line: run `argv` (quoted), keep its stderr apart, print the marker and status.

    If the stderr file cannot be created (no writable TMPDIR), stderr stays merged into stdout.
    """
    cmd = quote_argv(argv)
    return (f'e="${{TMPDIR:-/data/local/tmp}}/.ofa-bench-err-{token}"; '
            f'if ( : >"$e" ) 2>/dev/null; then {{ {cmd}; }} 2>"$e"; r=$?; else {{ {cmd}; }} 2>&1; r=$?; fi; '
            f'printf "\\n{_marker(token)}%s\\n" "$r"; cat "$e" 2>/dev/null; rm -f "$e"')


def _marker(token: str) -> str:
    return f"__ofa_bench_rc_{token}="


def parse_wrapped(output: bytes, token: str) -> CommandResult | None:
    """Split the wrapper's output into stdout, exit status and stderr; None if the marker line is missing."""
    text = output.decode("utf-8", "replace")
    match = None
    for match in re.finditer(r"\r?\n" + re.escape(_marker(token)) + r"(-?\d+)\r?\n", text):
        pass
    if match is None:
        return None
    return CommandResult(returncode=int(match.group(1)), stdout=text[:match.start()], stderr=text[match.end():])


def _one_line(error: BaseException) -> str:
    first = error.args[0] if len(error.args) == 1 else None
    raw = bytes(first).decode("utf-8", "replace") if isinstance(first, (bytes, bytearray)) else str(error)
    text = raw.strip().splitlines()
    return text[-1] if text else type(error).__name__


def _short(argv: list[str]) -> str:
    line = quote_argv(argv)
    return line if len(line) <= 80 else line[:77] + "..."



def _device_workdir(transport) -> str:
    """The folder the device announces for pushed files (the loopback device does), else the phone default."""
    found = transport.run(["getprop", WORKDIR_PROPERTY], timeout_s=transport.timeout_s).stdout.strip()
    return found if found.startswith("/") else DEFAULT_WORKDIR

class _EofTcpTransport(TcpTransport):
    """adb-shell's TCP transport, but a closed socket fails the call at once.

    adb-shell's own TcpTransport returns b"" at end of file and keeps polling until its read timeout; a device
    that dropped should fail the call immediately instead.
    """

    def connect(self, transport_timeout_s):
        super().connect(transport_timeout_s)
        # adb-shell writes a packet's header and payload separately: without this, Nagle's algorithm and the
        # peer's delayed ACK add ~40 ms to every request.
        self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def bulk_read(self, numbytes, transport_timeout_s):
        data = super().bulk_read(numbytes, transport_timeout_s)
        if not data:
            raise ConnectionResetError("connection closed by the device")
        return data


class _AdbShellBase(Transport):
    """Shared logic of the adb-shell transports: one connection, reopened after a failure; hard deadlines."""

    def __init__(self, name: str, workdir: str | None, timeout_s: float, rsa_key_path: str | Path | None) -> None:
        self.name = name
        self.timeout_s = float(timeout_s)
        self._workdir = workdir or None
        self._rsa_key_path = rsa_key_path
        self._device: AdbDevice | None = None
        self._keys: list | None = None
        self._generation = 0
        self._lock = threading.RLock()

    # -- device construction (subclasses)
    def _make_device(self) -> AdbDevice:
        raise NotImplementedError

    def _rsa_keys(self) -> list:
        path = Path(self._rsa_key_path).expanduser() if self._rsa_key_path else DEFAULT_KEY.expanduser()
        if not (path.is_file() and Path(str(path) + ".pub").is_file()):
            if self._rsa_key_path:
                raise TransportError(f"{self.name}: adb key {path} (and {path}.pub) not found")
            return []
        from adb_shell.auth.sign_pythonrsa import PythonRSASigner
        try:
            return [PythonRSASigner.FromRSAKeyPath(str(path))]
        except Exception as e:  # a malformed key file
            raise TransportError(f"{self.name}: cannot read adb key {path}: {_one_line(e)}") from None

    # -- calls with a hard deadline
    def _connected(self, timeout_s: float) -> AdbDevice:
        if self._device is not None:
            return self._device
        if self._keys is None:
            self._keys = self._rsa_keys()
        generation = self._generation
        device = self._make_device()
        try:
            device.connect(rsa_keys=self._keys or None, transport_timeout_s=timeout_s, auth_timeout_s=timeout_s,
                           read_timeout_s=timeout_s)
        except Exception as e:  # refused, reset, auth rejected, garbage: all mean "cannot reach it"
            try:
                device.close()
            except Exception:
                pass
            raise TransportError(f"{self.name}: unreachable ({_one_line(e)})") from None
        if generation != self._generation:  # the caller gave up while we were connecting
            device.close()
            raise TransportError(f"{self.name}: connection abandoned after a timeout")
        self._device = device
        return device

    def _drop(self) -> None:
        self._generation += 1
        device, self._device = self._device, None
        if device is not None:
            try:
                device.close()
            except Exception:  # closing a broken connection may fail in many ways; it is gone either way
                pass

    def _call(self, what: str, op: Callable[[AdbDevice, float], T], timeout_s: float) -> T:
        """Connect if needed and run `op(device, timeout_s)` in a worker thread with a hard deadline.

        Connecting takes at most the transport's `timeout_s`, the whole call at most the call's `timeout_s`.
        Past the deadline the connection is closed (which unblocks the worker) and the call fails; every
        failure becomes a one-line `TransportError` naming the device.
        """
        box: dict[str, object] = {}

        def work() -> None:
            try:
                device = self._connected(min(timeout_s, self.timeout_s))
                box["connected"] = True
                box["value"] = op(device, timeout_s)
            except BaseException as e:  # handed over to the caller's thread
                box["error"] = e

        with self._lock:
            worker = threading.Thread(target=work, name=f"{self.name} {what}", daemon=True)
            # Stopping closes the connection: the device's adbd then ends the command's process.
            with stoppable(self._drop):
                worker.start()
                worker.join(timeout_s)
            if worker.is_alive():
                self._drop()
                worker.join(2.0)
                if "connected" not in box:
                    raise TransportError(f"{self.name}: unreachable within {timeout_s:g} s")
                raise TransportError(f"{self.name}: timed out after {timeout_s:g} s ({what})")
            error = box.get("error")
            if error is None:
                return box["value"]  # type: ignore[return-value]
            if isinstance(error, TransportError):
                raise error
            if isinstance(error, (ex.AdbTimeoutError, ex.TcpTimeoutException, socket.timeout)):
                self._drop()
                raise TransportError(f"{self.name}: timed out after {timeout_s:g} s ({what})") from None
            if isinstance(error, (ex.AdbCommandFailureException, ex.PushFailedError)):
                raise TransportError(f"{self.name}: {what} failed: {_one_line(error)}") from None
            if isinstance(error, (OSError, ex.AdbConnectionError, ex.InvalidResponseError,
                                  ex.InvalidChecksumError, ex.InvalidCommandError, ex.UsbReadFailedError,
                                  ex.UsbWriteFailedError)):
                self._drop()
                raise TransportError(f"{self.name}: connection dropped ({what}): {_one_line(error)}") from None
            raise error

    # -- Transport
    @property
    def workdir(self) -> str:
        if self._workdir is None:
            self._workdir = _device_workdir(self)
        return self._workdir

    def run(self, argv: list[str], timeout_s: float = 60.0) -> CommandResult:
        token = secrets.token_hex(8)
        command = wrap_command(list(argv), token)
        what = f"running `{_short(argv)}`"

        def op(device, t: float) -> bytes:
            return device.shell(command, transport_timeout_s=t, read_timeout_s=t + 1.0, timeout_s=t + 1.0,
                                decode=False)

        output = self._call(what, op, timeout_s)
        result = parse_wrapped(output, token)
        if result is None:
            self._drop()
            raise TransportError(f"{self.name}: connection dropped ({what}): the command did not report its exit status")
        return result

    def push_file(self, local: Path, remote: str, timeout_s: float = 120.0) -> None:
        local = Path(local)
        try:
            mode = stat.S_IFREG | (local.stat().st_mode & 0o777)
        except OSError as e:
            raise TransportError(f"{self.name}: cannot push {local}: {e.strerror}") from None

        def op(device, t: float) -> None:
            device.push(str(local), remote, st_mode=mode, transport_timeout_s=t, read_timeout_s=t + 1.0)

        self._call(f"pushing {local.name} to {remote}", op, timeout_s)

    def pull_file(self, remote: str, local: Path, timeout_s: float = 120.0) -> None:
        local = Path(local)
        with atomic_path(local) as part:  # a fresh temporary name beside `local`, swapped in once complete
            def op(device, t: float) -> None:
                device.pull(remote, str(part), transport_timeout_s=t, read_timeout_s=t + 1.0)

            self._call(f"pulling {remote}", op, timeout_s)

    def close(self) -> None:
        with self._lock:
            self._drop()


class AdbShellTransport(_AdbShellBase):
    """A device reached over TCP with adb-shell (no adb server): a phone in wireless debugging, the loopback device.

    Keys: `rsa_key_path` (default ~/.android/adbkey when it exists) answers a phone's AUTH request.
    """

    def __init__(self, host: str, port: int = 5555, workdir: str | None = None, timeout_s: float = 10.0,
                 rsa_key_path: str | Path | None = None) -> None:
        super().__init__(f"adb:{host}:{port}", workdir, timeout_s, rsa_key_path)
        self.host = host
        self.port = int(port)

    def _make_device(self) -> AdbDevice:
        return AdbDevice(_EofTcpTransport(self.host, self.port), default_transport_timeout_s=self.timeout_s)


class AdbUsbTransport(_AdbShellBase):
    """A device on USB through adb-shell (needs the `usb` extra, libusb1); fails while an adb server holds it."""

    def __init__(self, serial: str | None = None, workdir: str | None = None, timeout_s: float = 10.0,
                 rsa_key_path: str | Path | None = None) -> None:
        super().__init__(f"adb-usb:{serial or 'first'}", workdir, timeout_s, rsa_key_path)
        self.serial = serial

    def _make_device(self) -> AdbDevice:
        try:
            return AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.timeout_s)
        except ex.InvalidTransportError:
            raise TransportError(f"{self.name}: USB needs the 'usb' extra (pip install 'ofa-bench[usb]')") from None
        except Exception as e:  # no device found, permission denied on /dev/bus/usb
            raise TransportError(f"{self.name}: unreachable ({_one_line(e)})") from None


class AdbServerTransport(Transport):
    """A device known to the adb server, driven by the `adb` command (`adb -s SERIAL shell|push|pull`).

    A TCP serial (`HOST:PORT`) is `adb connect`-ed first. `server_port` picks a non-default adb server
    (like `adb -P`); otherwise the `adb` command's own default (ANDROID_ADB_SERVER_PORT or 5037) is used.
    """

    def __init__(self, serial: str, workdir: str | None = None, adb: str = "adb", timeout_s: float = 10.0,
                 server_port: int | None = None) -> None:
        self.serial = serial
        self.name = f"adb:{serial}"
        self.adb = adb
        self.timeout_s = float(timeout_s)
        self.server_port = server_port
        self._workdir = workdir or None
        self._ready = False
        self._lock = threading.RLock()

    def _adb(self, args: list[str], timeout_s: float, what: str, serial: bool = True) -> subprocess.CompletedProcess:
        argv = [self.adb]
        if self.server_port is not None:
            argv += ["-P", str(self.server_port)]
        if serial:
            argv += ["-s", self.serial]
        try:
            code, out, err = run_process(argv + args, timeout_s)
            return subprocess.CompletedProcess(argv + args, code, out, err)
        except FileNotFoundError:
            raise TransportError(f"{self.name}: the `{self.adb}` command is not installed "
                                 "(Debian: apt install adb; or Android platform-tools)") from None
        except subprocess.TimeoutExpired:
            self._ready = False
            raise TransportError(f"{self.name}: timed out after {timeout_s:g} s ({what})") from None

    @staticmethod
    def _last_line(proc: subprocess.CompletedProcess) -> str:
        lines = (proc.stderr + proc.stdout).decode("utf-8", "replace").strip().splitlines()
        return lines[-1].strip() if lines else f"adb exited with status {proc.returncode}"

    def _ensure_ready(self, timeout_s: float) -> None:
        if self._ready:
            return
        if re.fullmatch(r"[^:\s]+:\d+", self.serial):
            proc = self._adb(["connect", self.serial], timeout_s, "adb connect", serial=False)
            out = proc.stdout.decode("utf-8", "replace")
            if proc.returncode != 0 or "connected to" not in out:
                raise TransportError(f"{self.name}: unreachable ({self._last_line(proc)})")
        proc = self._adb(["get-state"], timeout_s, "adb get-state")
        state = proc.stdout.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or state != "device":
            raise TransportError(f"{self.name}: unreachable ({state or self._last_line(proc)})")
        self._ready = True

    @property
    def workdir(self) -> str:
        if self._workdir is None:
            self._workdir = _device_workdir(self)
        return self._workdir

    def run(self, argv: list[str], timeout_s: float = 60.0) -> CommandResult:
        token = secrets.token_hex(8)
        what = f"running `{_short(argv)}`"
        with self._lock:
            self._ensure_ready(min(timeout_s, self.timeout_s))
            proc = self._adb(["shell", wrap_command(list(argv), token)], timeout_s, what)
            result = parse_wrapped(proc.stdout, token)
            if result is None:
                self._ready = False
                raise TransportError(f"{self.name}: connection dropped ({what}): {self._last_line(proc)}")
            return result

    def push_file(self, local: Path, remote: str, timeout_s: float = 120.0) -> None:
        local = Path(local)
        what = f"pushing {local.name} to {remote}"
        with self._lock:
            self._ensure_ready(min(timeout_s, self.timeout_s))
            proc = self._adb(["push", str(local), remote], timeout_s, what)
            if proc.returncode != 0:
                self._ready = False
                raise TransportError(f"{self.name}: {what} failed: {self._last_line(proc)}")

    def pull_file(self, remote: str, local: Path, timeout_s: float = 120.0) -> None:
        local = Path(local)
        what = f"pulling {remote}"
        with self._lock:
            self._ensure_ready(min(timeout_s, self.timeout_s))
            with atomic_path(local) as part:
                proc = self._adb(["pull", remote, str(part)], timeout_s, what)
                if proc.returncode != 0:
                    self._ready = False
                    raise TransportError(f"{self.name}: {what} failed: {self._last_line(proc)}")
