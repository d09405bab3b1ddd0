"""ADB transports: `adb-shell` straight to the device (TCP or USB, no adb server) and the `adb` command (its server).

Both run commands through the legacy shell protocol, which carries no exit status and merges stderr into
stdout, so every command is wrapped: stderr goes to a temporary file on the device, and after the command the
wrapper prints a line with a per-call random marker and the exit status, then the stderr file. The marker is
new for every call, so output can never be mistaken for it; a missing marker means the call did not finish.

Workdir: `workdir=None` asks the device for `ro.ofa_bench.workdir` (the loopback device announces it) and falls
back to /data/local/tmp/ofa-bench, the usual writable folder of a phone.

Authentication: a phone answers the host's CNXN with an RSA challenge; adb-shell signs it with `rsa_key_path`
(default ~/.android/adbkey), the adb server with its own keys. A key the phone does not know is offered to its
user ("Allow USB debugging?"); if nobody accepts it in time the call fails with `AdbUnauthorizedError`, one line
that says so.

Bounded waits: every call has a hard limit (its `timeout_s`). A long call (a runner measuring for minutes) also
checks every `timeout_s` of the transport that the device still answers, on a connection of its own (adb-shell
over TCP: a CNXN on a new socket; the adb server: `adb shell true`); a device that does not answer a check
within the transport's `timeout_s` is given up at once, and the error says after how long, of which limit.
Giving up closes the call's connection (adb-shell) or kills its `adb` process, so the device's adbd ends the
command it was running.
"""
from __future__ import annotations

import re
import secrets
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from adb_shell import exceptions as ex
from adb_shell.adb_device import AdbDevice, AdbDeviceUsb
from adb_shell.transport.tcp_transport import TcpTransport

from agents.transports.base import (CommandResult, Transport, TransportError, kill_process_group, quote_argv,
                                     run_process, stoppable)
from ofa_core.atomic import atomic_path

DEFAULT_WORKDIR = "/data/local/tmp/ofa-bench"
WORKDIR_PROPERTY = "ro.ofa_bench.workdir"
DEFAULT_KEY = Path("~/.android/adbkey")
ALLOW_PROMPT = ('unlock the phone and tap Allow on its "Allow USB debugging?" prompt (tick "Always allow from this '
                'computer"), then run again')
T = TypeVar("T")


class AdbUnauthorizedError(TransportError):
    """The device did not accept this host's adb key (its user has not tapped Allow), or asks for one we lack."""


def _stalled(name: str, check_s: float, elapsed_s: float, limit_s: float, what: str) -> TransportError:
    return TransportError(f"{name}: the device stopped answering (no reply to a check within {check_s:g} s); "
                          f"gave up after {elapsed_s:.0f} s (limit: {limit_s:g} s per call) ({what})")


def _join_watching(worker: threading.Thread, timeout_s: float, every_s: float | None, check_s: float,
                   answers: Callable[[float], bool], ready: Callable[[], bool] = lambda: True) -> float | None:
    """Wait for `worker` at most `timeout_s`. Meanwhile, every `every_s` (once `ready()`), ask `answers(check_s)`
    whether the device still responds; no check starts that could outlast the limit. Returns None when the
    worker ended or the time ran out, or the seconds waited when a check went unanswered."""
    start = time.monotonic()
    deadline = start + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not every_s or left <= check_s:
            worker.join(left)
            return None
        worker.join(min(left - check_s, every_s))
        if not worker.is_alive():
            return None
        if deadline - time.monotonic() > check_s and ready() and not answers(check_s):
            return time.monotonic() - start if worker.is_alive() else None


_CNXN_PROBE = b"host::ofa-bench-check\0"


def tcp_adbd_answers(host: str, port: int, timeout_s: float) -> bool:
    """True if an adbd at host:port answers a CNXN on a new connection within `timeout_s` (with CNXN or its
    AUTH challenge; nothing is signed and no key is offered, so a phone shows no prompt)."""
    command = int.from_bytes(b"CNXN", "little")
    packet = struct.pack("<6I", command, 0x01000001, 4096, len(_CNXN_PROBE), sum(_CNXN_PROBE),
                         command ^ 0xFFFFFFFF) + _CNXN_PROBE
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(packet)
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            return bool(sock.recv(24))
    except OSError:
        return False


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


class _AdbTransport(Transport):
    """What every adb transport shares: the workdir, given or asked of the device on first use."""

    _workdir: str | None
    timeout_s: float

    @property
    def workdir(self) -> str:
        """The profile's folder, else the one the device announces (the loopback device does), else the phone
        default."""
        if self._workdir is None:
            found = self.run(["getprop", WORKDIR_PROPERTY], timeout_s=self.timeout_s).stdout.strip()
            self._workdir = found if found.startswith("/") else DEFAULT_WORKDIR
        return self._workdir


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

    def abort(self) -> None:
        """Shut the socket down from any thread, without adb-shell's locks: a read blocked in another thread
        (holding them) returns at once, so the connection can then be closed."""
        sock = getattr(self, "_connection", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _AdbShellBase(_AdbTransport):
    """Shared logic of the adb-shell transports: one connection, reopened after a failure; hard deadlines."""

    def __init__(self, name: str, workdir: str | None, timeout_s: float, rsa_key_path: str | Path | None) -> None:
        self.name = name
        self.timeout_s = float(timeout_s)
        self._workdir = workdir or None
        self._rsa_key_path = rsa_key_path
        self._device: AdbDevice | None = None
        self._keys: list | None = None
        self._key_offered = False  # the device refused our signatures and we offered our public key
        self._generation = 0
        self._lock = threading.RLock()

    #: how often a long call checks that the device still answers (None: no checks)
    check_every_s: float | None = None

    def _answers(self, timeout_s: float) -> bool:
        """Whether the device answers a check on a connection of its own (subclasses that can open one)."""
        return True

    def _key_name(self) -> str:
        return str(Path(self._rsa_key_path).expanduser() if self._rsa_key_path else DEFAULT_KEY)

    def _unauthorized(self) -> AdbUnauthorizedError:
        return AdbUnauthorizedError(f"{self.name}: the device did not accept this host's adb key "
                                    f"{self._key_name()}: {ALLOW_PROMPT}")

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
        self._key_offered = False

        def offered(_device) -> None:  # adb-shell calls this just before it sends our public key
            self._key_offered = True

        try:
            device.connect(rsa_keys=self._keys or None, transport_timeout_s=timeout_s, auth_timeout_s=timeout_s,
                           read_timeout_s=timeout_s, auth_callback=offered)
        except Exception as e:  # refused, reset, auth rejected, garbage: all mean "cannot reach it"
            try:
                device.close()
            except Exception:
                pass
            if isinstance(e, ex.DeviceAuthError):
                raise AdbUnauthorizedError(
                    f"{self.name}: the device asks for adb authentication and this host has no adb key "
                    f"({self._key_name()}): create one (`adb keygen ~/.android/adbkey`, or start the adb server "
                    f"once), then accept the \"Allow USB debugging?\" prompt on the phone") from None
            if self._key_offered:
                raise self._unauthorized() from None
            raise TransportError(f"{self.name}: unreachable ({_one_line(e)})") from None
        if generation != self._generation:  # the caller gave up while we were connecting
            device.close()
            raise TransportError(f"{self.name}: connection abandoned after a timeout")
        self._device = device
        return device

    def _abort_io(self) -> None:
        """Unblock a call in flight on the current connection (subclasses that can)."""

    def _drop(self) -> None:
        self._generation += 1
        self._abort_io()
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
                every = self.check_every_s if self.check_every_s and timeout_s > self.check_every_s else None
                stalled_s = _join_watching(worker, timeout_s, every, self.timeout_s, self._answers,
                                           lambda: "connected" in box)
            if stalled_s is not None:
                self._drop()
                worker.join(2.0)
                raise _stalled(self.name, self.timeout_s, stalled_s, timeout_s, what)
            if worker.is_alive():
                self._drop()
                worker.join(2.0)
                if "connected" not in box:
                    if self._key_offered:
                        raise self._unauthorized()
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
    """A device reached over TCP with adb-shell (no adb server): a phone after `adb tcpip 5555`, the loopback device.

    Not Android 11+ wireless debugging: its pairing and connections run over TLS, which adb-shell lacks; pair and
    connect with the adb server (`adb pair`, `adb connect`) and use `AdbServerTransport`.

    Keys: `rsa_key_path` (default ~/.android/adbkey when it exists) answers a phone's AUTH request.
    """

    def __init__(self, host: str, port: int = 5555, workdir: str | None = None, timeout_s: float = 10.0,
                 rsa_key_path: str | Path | None = None) -> None:
        super().__init__(f"adb:{host}:{port}", workdir, timeout_s, rsa_key_path)
        self.host = host
        self.port = int(port)
        self.check_every_s = max(1.0, self.timeout_s)

        self._io: _EofTcpTransport | None = None

    def _answers(self, timeout_s: float) -> bool:
        return tcp_adbd_answers(self.host, self.port, timeout_s)

    def _abort_io(self) -> None:
        if self._io is not None:
            self._io.abort()

    def _make_device(self) -> AdbDevice:
        self._io = _EofTcpTransport(self.host, self.port)
        return AdbDevice(self._io, default_transport_timeout_s=self.timeout_s)


class AdbUsbTransport(_AdbShellBase):
    """A device on USB through adb-shell (needs the `usb` extra, libusb1); fails while an adb server holds it.

    USB allows one connection at a time, so a long call has only its own limit, no liveness checks."""

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


class AdbServerTransport(_AdbTransport):
    """A device known to the adb server, driven by the `adb` command (`adb -s SERIAL shell|push|pull`).

    A TCP serial (`HOST:PORT`) is `adb connect`-ed first (a phone paired with `adb pair` for wireless debugging
    is reached this way). `server_port` picks a non-default adb server (like `adb -P`); otherwise the `adb`
    command's own default (ANDROID_ADB_SERVER_PORT or 5037) is used. A long `run` checks every `timeout_s` with
    `adb shell true` that the device still answers.
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
        self.check_every_s: float | None = max(1.0, self.timeout_s)

    def _adb(self, args: list[str], timeout_s: float, what: str, serial: bool = True,
             started: Callable[[subprocess.Popen], None] | None = None) -> subprocess.CompletedProcess:
        argv = [self.adb]
        if self.server_port is not None:
            argv += ["-P", str(self.server_port)]
        if serial:
            argv += ["-s", self.serial]
        try:
            code, out, err = run_process(argv + args, timeout_s, started=started)
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
            # "failed to authenticate": the phone asked for a key it does not know and shows its prompt now
            if proc.returncode != 0 or not ("connected to" in out or "failed to authenticate" in out):
                raise TransportError(f"{self.name}: unreachable ({self._last_line(proc)})")
        proc = self._adb(["get-state"], timeout_s, "adb get-state")
        state = proc.stdout.decode("utf-8", "replace").strip()
        if proc.returncode == 0 and state == "device":
            self._ready = True
            return
        if "unauthorized" in (proc.stdout + proc.stderr).decode("utf-8", "replace"):
            try:  # give the phone's user the transport's timeout to tap Allow
                waited = self._adb(["wait-for-device"], timeout_s, "waiting for the key to be accepted")
            except TransportError:
                waited = None
            if waited is None or waited.returncode != 0:
                raise AdbUnauthorizedError(f"{self.name}: the device did not accept the adb server's key "
                                           f"(`adb devices` lists it as `unauthorized`): {ALLOW_PROMPT}")
            self._ready = True
            return
        raise TransportError(f"{self.name}: unreachable ({state or self._last_line(proc)})")

    def _answers(self, timeout_s: float) -> bool:
        """Whether the device runs `true` within `timeout_s` (through the server, beside the call in flight)."""
        try:
            proc = self._adb(["shell", "true"], timeout_s, "checking that the device answers")
        except TransportError:
            return False
        return proc.returncode == 0

    def _shell_watched(self, command: str, timeout_s: float, what: str) -> subprocess.CompletedProcess:
        """`adb shell COMMAND` with a hard limit; a long one gives up early when the device stops answering."""
        every = self.check_every_s if self.check_every_s and timeout_s > self.check_every_s else None
        if every is None:
            return self._adb(["shell", command], timeout_s, what)
        procs: list[subprocess.Popen] = []
        box: dict[str, object] = {}

        def work() -> None:
            try:
                box["value"] = self._adb(["shell", command], timeout_s, what, started=procs.append)
            except BaseException as e:  # handed over to the caller's thread
                box["error"] = e

        def kill() -> None:
            for proc in procs:
                kill_process_group(proc)

        worker = threading.Thread(target=work, name=f"{self.name} {what}", daemon=True)
        with stoppable(kill):
            worker.start()
            stalled_s = _join_watching(worker, timeout_s, every, self.timeout_s, self._answers)
            if stalled_s is not None:
                kill()
                worker.join(5.0)
                self._ready = False
                raise _stalled(self.name, self.timeout_s, stalled_s, timeout_s, what)
            worker.join(timeout_s + 5.0)  # run_process ends it at its own timeout
            if worker.is_alive():
                kill()
                worker.join(5.0)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        if "value" not in box:
            raise TransportError(f"{self.name}: timed out after {timeout_s:g} s ({what})")
        return box["value"]  # type: ignore[return-value]

    def run(self, argv: list[str], timeout_s: float = 60.0) -> CommandResult:
        token = secrets.token_hex(8)
        what = f"running `{_short(argv)}`"
        with self._lock:
            self._ensure_ready(min(timeout_s, self.timeout_s))
            proc = self._shell_watched(wrap_command(list(argv), token), timeout_s, what)
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
