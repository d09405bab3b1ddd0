"""A loopback ADB device: a real ADB-protocol endpoint on 127.0.0.1 that runs commands on this host.

It lets the whole adb path (adb-shell, Debian's `adb` client and server) be exercised without a phone. It is a
simulated device and says so: `ro.product.model=ofa-bench-loopback`, `ro.ofa_bench.simulated=1`.

Protocol: 24-byte little-endian packets (command, arg0, arg1, payload length, byte-sum checksum, command ^
0xFFFFFFFF); CNXN without AUTH; streams opened by `shell:CMD` / `exec:CMD` / `sync:`, each WRTE acknowledged
by OKAY, CLSE both ways. The banner advertises no `shell_v2`, so clients use the legacy shell (stdout and
stderr merged, no exit status: callers append an exit-status sentinel).

Path model: the sandbox folder ROOT mirrors a phone's layout (`ROOT/data/local/tmp`, `ROOT/system/build.prop`,
`ROOT/bin/getprop`), but device paths are plain host paths, so shell commands and sync see the same files. The
device's workdir is the absolute host path `ROOT/data/local/tmp/ofa-bench`, advertised as
`ro.ofa_bench.workdir` in the CNXN banner and through `getprop`. Shell commands run with /bin/sh in ROOT
(`ROOT/bin` first on PATH, TMPDIR=ROOT/data/local/tmp) and are not confined: it is a shell on this host, which
is why the server binds 127.0.0.1 only. Sync (push, pull, stat, list) is confined: a path is taken relative to
ROOT unless absolute, resolved through symlinks, and refused (FAIL, or "absent" for STAT/LIST) unless it ends
up inside ROOT, so nothing outside the sandbox can be read or written through sync.

Run: `python -m agents.loopback_adbd --port PORT [--root DIR]`; in-process: `with loopback_adbd() as dev:`.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import queue
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from ofa_core.errors import OFABenchError

HOST = "127.0.0.1"
VERSION = 0x01000001          # protocol version; from this one on, peers may skip payload checksums
VERSION_CHECKSUM = 0x01000000  # peers announcing this version (adb-shell) check every payload checksum
MAX_PAYLOAD = 256 * 1024      # largest payload we accept per packet, announced in our CNXN
MAX_ACCEPTED = 16 * 1024 * 1024  # reject packets announcing more than this (corrupt stream)
SYNC_DATA_MAX = 64 * 1024     # largest DATA chunk of the sync sub-protocol
SYNC_PATH_MAX = 4096
FEATURES = ("fixed_push_mkdir",)  # SEND creates parent folders; no shell_v2, no stat_v2
HEADER = struct.Struct("<6I")
SYNC_HEADER = struct.Struct("<4sI")
SYNC_STAT = struct.Struct("<4sIII")
SYNC_DENT = struct.Struct("<4sIIII")


def _wire(name: bytes) -> int:
    return int.from_bytes(name, "little")


CNXN, OPEN, OKAY, WRTE, CLSE, AUTH = (_wire(n) for n in (b"CNXN", b"OPEN", b"OKAY", b"WRTE", b"CLSE", b"AUTH"))
COMMANDS = {CNXN, OPEN, OKAY, WRTE, CLSE, AUTH, _wire(b"SYNC"), _wire(b"STLS")}


class LoopbackAdbdError(OFABenchError):
    """The loopback device cannot start (bad root folder, port taken)."""


class _ProtocolError(Exception):
    """The peer sent something that is not ADB; the connection is dropped."""


class _StreamClosed(Exception):
    """The host closed the stream (or the connection went away) while the device was using it."""


def pack_packet(command: int, arg0: int, arg1: int, payload: bytes = b"") -> bytes:
    """One ADB packet: header (with checksum and magic) followed by the payload."""
    checksum = sum(payload) & 0xFFFFFFFF
    return HEADER.pack(command, arg0, arg1, len(payload), checksum, command ^ 0xFFFFFFFF) + payload


def device_properties(root: Path) -> dict[str, str]:
    """The device's identity as Android properties; it names itself a simulated loopback device."""
    return {
        "ro.product.name": "ofa_bench_loopback",
        "ro.product.model": "ofa-bench-loopback",
        "ro.product.device": "loopback",
        "ro.product.manufacturer": "ofa-bench (simulated device on this host)",
        "ro.product.cpu.abi": platform.machine(),
        "ro.build.fingerprint": f"ofa-bench/loopback/{platform.system()}-{platform.release()}:simulated",
        "ro.ofa_bench.simulated": "1",
        "ro.ofa_bench.root": str(root),
        "ro.ofa_bench.workdir": str(root / "data/local/tmp/ofa-bench"),
    }


def _banner(props: dict[str, str]) -> bytes:
    items = [f"{k}={v}" for k, v in props.items()] + ["features=" + ",".join(FEATURES)]
    return ("device::" + ";".join(items) + "\0").encode()


_GETPROP = """#!/bin/sh
# getprop of the ofa-bench loopback device (simulated): reads {props}
props={props}
if [ "$#" -eq 0 ]; then
  while IFS='=' read -r k v; do printf '[%s]: [%s]\\n' "$k" "$v"; done < "$props"
  exit 0
fi
while IFS='=' read -r k v; do
  if [ "$k" = "$1" ]; then printf '%s\\n' "$v"; exit 0; fi
done < "$props"
printf '%s\\n' "$2"
"""


def prepare_root(root: Path) -> dict[str, str]:
    """Lay out the sandbox (phone-like folders, build.prop, a getprop script) and return the properties."""
    text = str(root)
    if not root.is_absolute() or any(c in text for c in ";=\n\0"):
        raise LoopbackAdbdError(f"loopback adbd: root must be an absolute path without ';', '=' or newlines: {text!r}")
    props = device_properties(root)
    try:
        for sub in ("bin", "system", "data/local/tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "system/build.prop").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        getprop = root / "bin/getprop"
        getprop.write_text(_GETPROP.format(props=shlex.quote(str(root / "system/build.prop"))))
        getprop.chmod(0o755)
    except OSError as e:
        raise LoopbackAdbdError(f"loopback adbd: cannot prepare root {text}: {e.strerror or e}") from None
    return props


class _Stream:
    """One ADB stream: data from the host arrives in `inbox`, data to it waits for the host's OKAY."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self._cond = threading.Condition()
        self._awaiting_okay = False
        self._remote_closed = False
        self._clse_sent = False

    # -- host -> device
    def take(self) -> bytes:
        """Next chunk the host wrote; acknowledged only now, so the host never runs ahead of us."""
        data = self.inbox.get()
        if data is None:
            self.inbox.put(None)
            raise _StreamClosed()
        self.conn.send(OKAY, self.local_id, self.remote_id)
        return data

    # -- device -> host
    def write(self, data: bytes) -> None:
        """Send `data` in WRTE packets, one at a time, each after the host acknowledged the previous one."""
        size = self.conn.peer_max_payload
        for start in range(0, len(data), size):
            with self._cond:
                if self._remote_closed:
                    raise _StreamClosed()
                self._awaiting_okay = True
            self.conn.send(WRTE, self.local_id, self.remote_id, data[start:start + size])
            with self._cond:
                while self._awaiting_okay and not self._remote_closed:
                    self._cond.wait()
                if self._remote_closed:
                    raise _StreamClosed()

    def close(self) -> None:
        """Close our side (CLSE once)."""
        with self._cond:
            if self._clse_sent:
                return
            self._clse_sent = True
        self.conn.forget(self.local_id)
        with contextlib.suppress(OSError):
            self.conn.send(CLSE, self.local_id, self.remote_id)

    # -- events from the connection's reader
    def on_okay(self) -> None:
        with self._cond:
            self._awaiting_okay = False
            self._cond.notify_all()

    def on_remote_close(self) -> None:
        with self._cond:
            self._remote_closed = True
            self._cond.notify_all()
        self.inbox.put(None)
        self.abort()

    def abort(self) -> None:
        """Stop whatever the stream runs (the host went away)."""

    def run(self) -> None:
        raise NotImplementedError


class _ShellStream(_Stream):
    """`shell:CMD` / `exec:CMD`: /bin/sh -c CMD in ROOT, stdout and stderr merged (legacy shell protocol)."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int, command: str) -> None:
        super().__init__(conn, local_id, remote_id)
        self.command = command
        self.proc: subprocess.Popen | None = None
        self._proc_lock = threading.Lock()
        self._aborted = False

    def run(self) -> None:
        server = self.conn.server
        argv = ["/bin/sh", "-c", self.command] if self.command.strip() else ["/bin/sh"]
        with self._proc_lock:
            if self._aborted:
                return
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, cwd=server.root, env=server.shell_env,
                                             start_new_session=True)
            except OSError as e:
                with contextlib.suppress(_StreamClosed, OSError):
                    self.write(f"/bin/sh: {e}\n".encode())
                self.close()
                return
        threading.Thread(target=self._feed_stdin, name=f"adbd-stdin-{self.local_id}", daemon=True).start()
        fd = self.proc.stdout.fileno()
        try:
            while True:
                chunk = os.read(fd, self.conn.peer_max_payload)
                if not chunk:
                    break
                self.write(chunk)
        except (_StreamClosed, OSError):
            self.abort()
        finally:
            self.proc.stdout.close()
            self.proc.wait()
            self.inbox.put(None)
            self.close()

    def _feed_stdin(self) -> None:
        stdin = self.proc.stdin
        try:
            while True:
                data = self.take()
                stdin.write(data)
                stdin.flush()
        except (_StreamClosed, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()

    def abort(self) -> None:
        with self._proc_lock:
            self._aborted = True
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)


class _SyncStream(_Stream):
    """`sync:`: the file sub-protocol (STAT, LIST, RECV, SEND ... DATA ... DONE, QUIT) confined to ROOT."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int) -> None:
        super().__init__(conn, local_id, remote_id)
        self._buffer = bytearray()

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += self.take()
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def _fail(self, message: str) -> None:
        data = message.encode("utf-8", "replace")
        self.write(SYNC_HEADER.pack(b"FAIL", len(data)) + data)

    def run(self) -> None:
        try:
            while True:
                ident, length = SYNC_HEADER.unpack(self._read(SYNC_HEADER.size))
                if ident == b"QUIT":
                    break
                if ident not in (b"STAT", b"LIST", b"RECV", b"SEND"):
                    self._fail(f"unknown sync request {ident!r}")
                    break
                if length > SYNC_PATH_MAX:
                    self._fail(f"path too long ({length} bytes)")
                    break
                path = self._read(length).decode("utf-8", "surrogateescape")
                if ident == b"STAT":
                    self._stat(path)
                elif ident == b"LIST":
                    self._list(path)
                elif ident == b"RECV":
                    self._recv(path)
                elif not self._send(path):
                    break
        except _StreamClosed:
            pass
        finally:
            self.close()

    def _stat(self, path: str) -> None:
        real = self.conn.server.resolve(path)
        try:
            st = os.stat(real) if real else None
        except OSError:
            st = None
        if st is None:
            self.write(SYNC_STAT.pack(b"STAT", 0, 0, 0))
        else:
            self.write(SYNC_STAT.pack(b"STAT", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF,
                                      int(st.st_mtime) & 0xFFFFFFFF))

    def _list(self, path: str) -> None:
        real = self.conn.server.resolve(path)
        out = bytearray()
        if real and os.path.isdir(real):
            names = [".", ".."]
            with contextlib.suppress(OSError):
                names += sorted(os.listdir(real))
            for name in names:
                try:
                    st = os.lstat(os.path.join(real, name))
                except OSError:
                    continue
                raw = name.encode("utf-8", "surrogateescape")
                out += SYNC_DENT.pack(b"DENT", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF,
                                      int(st.st_mtime) & 0xFFFFFFFF, len(raw)) + raw
        out += SYNC_DENT.pack(b"DONE", 0, 0, 0, 0)
        self.write(bytes(out))

    def _recv(self, path: str) -> None:
        real = self.conn.server.resolve(path)
        if real is None:
            self._fail(f"{path}: outside the loopback device's sandbox {self.conn.server.root}")
            return
        try:
            f = open(real, "rb")
        except OSError as e:
            self._fail(f"{path}: {e.strerror}")
            return
        with f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                self._fail(f"{path}: not a regular file")
                return
            while chunk := f.read(SYNC_DATA_MAX):
                self.write(SYNC_HEADER.pack(b"DATA", len(chunk)) + chunk)
        self.write(SYNC_HEADER.pack(b"DONE", 0))

    def _send(self, spec: str) -> bool:
        """Receive one file; returns False when the stream must end (protocol violation)."""
        path, _, mode_text = spec.rpartition(",")
        try:
            mode = int(mode_text)
        except ValueError:
            path, mode = spec, 0o100644
        error = self._send_error(path, mode)
        real = self.conn.server.resolve(path) if error is None else None
        fd = None
        if real is not None:
            try:
                os.makedirs(os.path.dirname(real), exist_ok=True)
                fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, (mode & 0o777) or 0o644)
            except OSError as e:
                error = f"{path}: {e.strerror}"
        try:
            while True:
                ident, length = SYNC_HEADER.unpack(self._read(SYNC_HEADER.size))
                if ident == b"DONE":
                    mtime = length
                    break
                if ident != b"DATA" or length > SYNC_DATA_MAX:
                    self._fail(f"bad sync data packet {ident!r} of {length} bytes")
                    return False
                data = self._read(length)
                if fd is not None and error is None:
                    try:
                        os.write(fd, data)
                    except OSError as e:
                        error = f"{path}: {e.strerror}"
        finally:
            if fd is not None:
                os.close(fd)
        if error is not None:
            if real is not None:
                with contextlib.suppress(OSError):
                    os.unlink(real)
            self._fail(error)
            return True
        with contextlib.suppress(OSError):
            os.chmod(real, (mode & 0o777) or 0o644)
            os.utime(real, (mtime, mtime))
        self.write(SYNC_HEADER.pack(b"OKAY", 0))
        return True

    def _send_error(self, path: str, mode: int) -> str | None:
        if stat.S_ISLNK(mode):
            return f"{path}: the loopback device does not accept symlinks"
        real = self.conn.server.resolve(path)
        if real is None:
            return f"{path}: outside the loopback device's sandbox {self.conn.server.root}"
        if os.path.isdir(real):
            return f"{path}: is a directory"
        return None


class _Connection:
    """One host connected over TCP: reads packets, hands stream traffic to stream threads."""

    def __init__(self, server: "LoopbackAdbd", sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.peer_max_payload = 4096
        self.version = VERSION_CHECKSUM
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._connected = False

    def send(self, command: int, arg0: int, arg1: int, payload: bytes = b"") -> None:
        packet = pack_packet(command, arg0, arg1, payload)
        with self._send_lock:
            self.sock.sendall(packet)

    def forget(self, local_id: int) -> None:
        with self._streams_lock:
            self._streams.pop(local_id, None)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError()
            buf += chunk
        return bytes(buf)

    def _read_packet(self) -> tuple[int, int, int, bytes]:
        command, arg0, arg1, length, checksum, magic = HEADER.unpack(self._recv_exact(HEADER.size))
        if magic != command ^ 0xFFFFFFFF or command not in COMMANDS or length > MAX_ACCEPTED:
            raise _ProtocolError(f"bad packet header {command:#x}")
        payload = self._recv_exact(length) if length else b""
        if self.version < VERSION and checksum != sum(payload) & 0xFFFFFFFF:
            raise _ProtocolError("payload checksum mismatch")
        return command, arg0, arg1, payload

    def serve(self) -> None:
        try:
            while True:
                command, arg0, arg1, payload = self._read_packet()
                if command == CNXN:
                    self.version = min(arg0, VERSION)
                    self.peer_max_payload = max(256, min(arg1, MAX_PAYLOAD))
                    self._connected = True
                    self.send(CNXN, VERSION, MAX_PAYLOAD, self.server.banner)
                elif not self._connected:
                    continue
                elif command == OPEN:
                    self._open(arg0, payload.rstrip(b"\0").decode("utf-8", "surrogateescape"))
                else:
                    with self._streams_lock:
                        stream = self._streams.get(arg1)
                    if stream is None:
                        continue
                    if command == OKAY:
                        stream.on_okay()
                    elif command == WRTE:
                        stream.inbox.put(payload)
                    elif command == CLSE:
                        self.forget(arg1)
                        stream.on_remote_close()
                        stream.close()
        except (EOFError, OSError, _ProtocolError):
            pass
        finally:
            self.close()

    def _open(self, remote_id: int, service: str) -> None:
        local_id = next(self._ids)
        if service.startswith(("shell:", "exec:")):
            stream: _Stream = _ShellStream(self, local_id, remote_id, service.partition(":")[2])
        elif service == "sync:":
            stream = _SyncStream(self, local_id, remote_id)
        else:  # shell,v2 (not advertised), reboot:, root:, tcpip: ... are refused
            self.send(CLSE, 0, remote_id)
            return
        with self._streams_lock:
            self._streams[local_id] = stream
        self.send(OKAY, local_id, remote_id)
        threading.Thread(target=stream.run, name=f"adbd-stream-{local_id}", daemon=True).start()

    def close(self) -> None:
        """Drop the connection: every stream is told the host went away (their processes are killed)."""
        with self._streams_lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream.on_remote_close()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.server.forget(self)


class LoopbackAdbd:
    """The loopback device server. `start()` binds 127.0.0.1:`port` (0 = a free port); `stop()` ends everything.

    Without `root`, a temporary sandbox folder is created and removed on stop; a given `root` is kept.
    """

    def __init__(self, port: int = 0, root: Path | str | None = None) -> None:
        self.requested_port = port
        self._own_root = root is None
        self.root = Path(root).resolve() if root is not None else Path()   # a temporary folder is made by start()
        self.properties: dict[str, str] = {}
        self.banner = b""
        self.shell_env: dict[str, str] = {}
        self.port = 0
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def serial(self) -> str:
        """The device's address as adb names it: `127.0.0.1:PORT`."""
        return f"{HOST}:{self.port}"

    @property
    def workdir(self) -> str:
        """Absolute path of the device's work folder (inside the sandbox)."""
        return self.properties["ro.ofa_bench.workdir"]

    def resolve(self, device_path: str) -> str | None:
        """Host path of a device path for sync, or None if it resolves outside the sandbox."""
        if not device_path or "\0" in device_path:
            return None
        root = os.path.realpath(self.root)
        real = os.path.realpath(os.path.join(root, device_path))  # join keeps absolute paths as they are
        return real if os.path.commonpath([real, root]) == root else None

    def start(self) -> int:
        if self._own_root:
            self.root = Path(tempfile.mkdtemp(prefix="ofa-bench-loopback-"))
        try:
            return self._start()
        except BaseException:
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _start(self) -> int:
        self.properties = prepare_root(self.root)
        self.banner = _banner(self.properties)
        env = dict(os.environ)
        env["PATH"] = f"{self.root / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["TMPDIR"] = str(self.root / "data/local/tmp")
        env["OFA_BENCH_LOOPBACK_ROOT"] = str(self.root)
        self.shell_env = env
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((HOST, self.requested_port))
        except OSError as e:
            listener.close()
            raise LoopbackAdbdError(f"loopback adbd: cannot listen on {HOST}:{self.requested_port}: "
                                    f"{e.strerror or e}") from None
        listener.listen(16)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name="adbd-accept", daemon=True)
        self._accept_thread.start()
        return self.port

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            with self._lock:
                if self._stopping.is_set():
                    sock.close()
                    break
                self._connections.add(conn)
            threading.Thread(target=conn.serve, name="adbd-conn", daemon=True).start()

    def forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def stop(self) -> None:
        """Close the listener and every connection (killing running commands); remove a temporary root."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LoopbackAdbd":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def loopback_adbd(port: int = 0, root: Path | str | None = None) -> Iterator[LoopbackAdbd]:
    """Run a loopback device for the duration of a `with` block; yields the server (`.port`, `.serial`)."""
    server = LoopbackAdbd(port=port, root=root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.loopback_adbd",
        description="Loopback ADB device on 127.0.0.1 (simulated: runs commands on this host).")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 picks a free one, printed)")
    parser.add_argument("--root", type=Path, default=None,
                        help="sandbox folder (default: a temporary folder removed at exit)")
    args = parser.parse_args(argv)
    server = LoopbackAdbd(port=args.port, root=args.root)
    try:
        server.start()
    except LoopbackAdbdError as e:
        print(f"ofa-bench: error: {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"ofa-bench loopback adb device (simulated, runs on this host) listening on {server.serial}; "
          f"root {server.root}; workdir {server.workdir}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
