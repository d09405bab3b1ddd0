"""A loopback ADB device: a real ADB-protocol endpoint on 127.0.0.1 that runs commands on this host.

It lets the whole adb path (adb-shell, Debian's `adb` client and server) be exercised without a phone. It is a
simulated device and says so: `ro.product.model=ofa-bench-loopback`, `ro.ofa_bench.simulated=1`.

Protocol: 24-byte little-endian packets (command, arg0, arg1, payload length, byte-sum checksum, command ^
0xFFFFFFFF); streams opened by `shell:CMD` / `exec:CMD` / `sync:`, each WRTE acknowledged by OKAY, CLSE both
ways. The banner advertises no `shell_v2`, so clients use the legacy shell (stdout and stderr merged, no exit
status: callers append an exit-status sentinel).

Authentication (`auth`), as a phone's adbd does it (agents/sim/adb_auth.py): `none` answers CNXN at once;
otherwise CNXN is answered with AUTH(TOKEN), a signature that a trusted key verifies gets CNXN, any other a fresh token,
and a public key the host then offers (AUTH(RSAPUBLICKEY)) is the "Allow USB debugging?" prompt: `always`
accepts it and remembers it in ROOT/data/misc/adb/adb_keys (the phone's file), `never` leaves it unanswered (a
user who does not tap Allow: the host waits, then gives up), `keys` trusts only the keys of an adb_keys file
(`adb_keys`, default the sandbox's), like a phone whose keys were provisioned.

Path model: the sandbox folder ROOT holds the phone's folders: ROOT/data/local/tmp, ROOT/data/misc/adb,
ROOT/storage/emulated/0 (with ROOT/sdcard linking to it), ROOT/system/build.prop and ROOT/system/bin/getprop.
A device path under /data, /sdcard, /storage or /system is that path inside ROOT, for sync and for shell
commands alike; the device's workdir is the phone's /data/local/tmp/ofa-bench (`ro.ofa_bench.workdir`). Shell
commands run with /bin/sh in ROOT (its "/", so relative paths agree with sync; ROOT/system/bin first on PATH,
TMPDIR=ROOT/data/local/tmp): in the command line, a word that starts with one of those four folders gets ROOT
in front of it, and in the output ROOT is taken out again, so the host sees phone paths only. Every other
path is this host's own (/proc, /sys, /bin/sh: the device reports this host's CPU). Shell commands are not
confined: it is a shell on this host, which is why the server binds 127.0.0.1 only. Sync (push, pull, stat,
list) is confined: a path is mapped as above (relative to ROOT unless absolute), resolved through symlinks, and
refused (FAIL, or "absent" for STAT/LIST) unless it ends up inside ROOT, so nothing outside the sandbox can be
read or written through sync.

For tests, `hang_on` makes the device stop answering, as a phone that froze, once a shell command containing
that text arrives: packets are still read (so a host that hangs up is noticed and its commands are killed), but
nothing is sent on any connection, and new connections get no CNXN.

Run: `python -m agents.sim.loopback_adbd --port PORT [--root DIR] [--auth POLICY [--adb-keys FILE]]`;
in-process: `with loopback_adbd() as dev:`; as a child process that a test or a benchmark can kill like a phone
that goes away: `with spawn(root, "--auth", "always") as dev:` (`.serial`, `.proc`, `.stop()`).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import os
import platform
import queue
import re
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

from agents.sim.adb_auth import (AUTH_RSAPUBLICKEY, AUTH_SIGNATURE, AUTH_TOKEN, AdbKeyError, AdbPublicKey,
                                 new_token, read_adb_keys)
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
PHONE_DIRS = ("data", "sdcard", "storage", "system")  # absolute device paths under these live in ROOT
WORKDIR = "/data/local/tmp/ofa-bench"
ADB_KEYS = "data/misc/adb/adb_keys"  # where a phone keeps the keys its user accepted
AUTH_POLICIES = ("none", "always", "never", "keys")
# A sandbox path is pasted into shell command lines (quoted or not), so it may hold only these characters.
_SAFE_ROOT = re.compile(r"/[A-Za-z0-9_@%+,./-]*")
# A phone path in a command line: one of PHONE_DIRS at the start of a word (after a blank, a quote, `=`, `:`,
# a redirection or another shell operator, or `${VAR:-`), followed by `/` or the end of the word.
_PHONE_PATH = re.compile(r"(?:^|(?<=[\s'\"=:(<>|;&`{,])|(?<=:-)|(?<=:=)|(?<=:\+))/(?:" + "|".join(PHONE_DIRS)
                         + r")(?=[/\s'\";:)&|<>`}]|$)")


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
        "ro.ofa_bench.workdir": WORKDIR,
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
    if not _SAFE_ROOT.fullmatch(text):
        raise LoopbackAdbdError(f"loopback adbd: root must be an absolute path of letters, digits and _@%+,.-/ "
                                f"only (it is pasted into shell command lines): {text!r}")
    props = device_properties(root)
    try:
        for sub in ("system/bin", "data/local/tmp", "data/misc/adb", "storage/emulated/0"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if not (root / "sdcard").is_symlink():
            (root / "sdcard").symlink_to("storage/emulated/0")   # relative: it stays inside the sandbox
        (root / "system/build.prop").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        getprop = root / "system/bin/getprop"
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


class _OutputMapper:
    """Takes the sandbox folder out of a byte stream (ROOT/data/x -> /data/x, ROOT alone -> /), across chunks."""

    def __init__(self, root: str) -> None:
        self._root = root.encode()
        self._pattern = re.compile(re.escape(self._root) + rb"(?![\w.-])/?")
        self._pending = b""

    def feed(self, chunk: bytes, final: bool = False) -> bytes:
        data = self._pending + chunk
        limit = len(data)
        if not final:  # hold back an end that may be the start of ROOT
            for k in range(min(len(self._root), len(data)), 0, -1):
                if self._root.startswith(data[-k:]):
                    limit = len(data) - k
                    break
        out = bytearray()
        pos = 0
        for match in self._pattern.finditer(data):
            if match.start() >= limit:
                break
            if match.end() == len(data) and not final:  # a `/` may follow in the next chunk
                limit = match.start()
                break
            out += data[pos:match.start()] + b"/"
            pos = match.end()
        limit = max(limit, pos)
        out += data[pos:limit]
        self._pending = data[limit:]
        return bytes(out)


class _ShellStream(_Stream):
    """`shell:CMD` / `exec:CMD`: /bin/sh -c CMD in ROOT, stdout and stderr merged (legacy shell protocol); phone
    paths in CMD are mapped into the sandbox, and the sandbox folder is taken out of the output."""

    def __init__(self, conn: "_Connection", local_id: int, remote_id: int, command: str) -> None:
        super().__init__(conn, local_id, remote_id)
        self.command = command
        self.proc: subprocess.Popen | None = None
        self._proc_lock = threading.Lock()
        self._aborted = False

    def run(self) -> None:
        server = self.conn.server
        command = server.map_command(self.command)
        argv = ["/bin/sh", "-c", command] if command.strip() else ["/bin/sh"]
        mapper = _OutputMapper(str(server.root))
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
                out = mapper.feed(chunk, final=not chunk)
                if out:
                    self.write(out)
                if not chunk:
                    break
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
        self._token: bytes | None = None  # the AUTH token the host must sign, while authenticating

    def send(self, command: int, arg0: int, arg1: int, payload: bytes = b"") -> None:
        if self.server.hung.is_set():  # a frozen device answers nothing
            return
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
                    if self.server.auth == "none":
                        self._online()
                    else:
                        self._connected = False
                        self._ask_token()
                elif command == AUTH:
                    self._auth(arg0, payload)
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

    # -- authentication, as a phone's adbd does it
    def _online(self) -> None:
        self._connected = True
        self._token = None
        self.send(CNXN, VERSION, MAX_PAYLOAD, self.server.banner)

    def _ask_token(self) -> None:
        self._token = new_token()
        self.send(AUTH, AUTH_TOKEN, 0, self._token)

    def _auth(self, kind: int, payload: bytes) -> None:
        if self._connected or self._token is None:
            return
        server = self.server
        if kind == AUTH_SIGNATURE:
            if any(key.verify(self._token, payload) for key in server.trusted_keys()):
                server.note("auth: signature verified with a trusted key; connected")
                self._online()
            else:
                self._ask_token()
        elif kind == AUTH_RSAPUBLICKEY:
            try:
                key = AdbPublicKey.parse(payload)
            except AdbKeyError as e:
                server.note(f"auth: the host offered an unreadable key ({e}); ignored")
                return
            if server.accept_key(key):
                self._online()
            # else: like a phone whose user does not tap "Allow", say nothing; the host gives up in time

    def _open(self, remote_id: int, service: str) -> None:
        hang_on = self.server.hang_on
        if hang_on and service.startswith(("shell:", "exec:")) and hang_on in service:
            self.server.note(f"hang: {hang_on!r} received; the device stops answering")
            self.server.hung.set()
            return
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
    `auth` is the authentication policy (`none`, `always`, `never`, `keys`; see the module's docstring) and
    `adb_keys` the keys file the `keys` policy trusts (default: the sandbox's data/misc/adb/adb_keys).
    `hang_on` (tests) makes the device freeze when a shell command containing it arrives; `verbose` prints
    what the device decides about keys (the phone's prompt) on stdout.
    """

    def __init__(self, port: int = 0, root: Path | str | None = None, auth: str = "none",
                 adb_keys: Path | str | None = None, hang_on: str | None = None, verbose: bool = False) -> None:
        if auth not in AUTH_POLICIES:
            raise LoopbackAdbdError(f"loopback adbd: auth must be one of {', '.join(AUTH_POLICIES)}, got {auth!r}")
        if adb_keys is not None and auth != "keys":
            raise LoopbackAdbdError("loopback adbd: an adb_keys file goes with auth 'keys'")
        self.requested_port = port
        self.auth = auth
        self.adb_keys = Path(adb_keys).expanduser().resolve() if adb_keys is not None else None
        self.hang_on = hang_on or None
        self.hung = threading.Event()
        self.verbose = verbose
        self.events: list[str] = []   # what the device decided (keys offered, accepted, refused; hangs)
        self._accepted: list[AdbPublicKey] = []
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
        """The device's work folder as the device names it (/data/local/tmp/ofa-bench; see `host_path`)."""
        return self.properties["ro.ofa_bench.workdir"]

    def host_path(self, device_path: str) -> Path:
        """Where a device path is on this host: under /data, /sdcard, /storage, /system or relative -> inside
        ROOT; any other absolute path is this host's own. Not resolved through symlinks, not confined."""
        first = device_path.lstrip("/").split("/", 1)[0]
        if not device_path.startswith("/") or first in PHONE_DIRS:
            return self.root / device_path.lstrip("/")
        return Path(device_path)

    def resolve(self, device_path: str) -> str | None:
        """Host path of a device path for sync, or None if it resolves outside the sandbox."""
        if not device_path or "\0" in device_path:
            return None
        root = os.path.realpath(self.root)
        real = os.path.realpath(self.host_path(device_path))
        return real if os.path.commonpath([real, root]) == root else None

    def map_command(self, command: str) -> str:
        """A shell command line with its phone paths (/data/..., /sdcard/..., ...) moved into the sandbox."""
        return _PHONE_PATH.sub(lambda m: str(self.root) + m.group(0), command)

    # -- authentication policy
    def trusted_keys(self) -> list[AdbPublicKey]:
        """Keys whose signatures the device accepts now (the file is read each time, as adbd reads it)."""
        if self.auth == "always":
            return self._accepted + read_adb_keys(self.root / ADB_KEYS)
        if self.auth == "keys":
            return read_adb_keys(self.adb_keys or self.root / ADB_KEYS)
        return []

    def accept_key(self, key: AdbPublicKey) -> bool:
        """The "Allow USB debugging?" prompt for a key the host offers: the policy answers it."""
        who = key.comment or "a host"
        if self.auth == "always":
            self._accepted.append(key)
            try:
                with open(self.root / ADB_KEYS, "a", encoding="utf-8") as f:
                    f.write(key.to_android() + "\n")
            except OSError as e:
                self.note(f"auth: cannot remember the key in {ADB_KEYS}: {e.strerror}")
            self.note(f"auth: key of {who} accepted and remembered (policy always)")
            return True
        if self.auth == "keys" and key in self.trusted_keys():
            self.note(f"auth: key of {who} is in the adb_keys file; accepted")
            return True
        self.note(f"auth: key of {who} not accepted (policy {self.auth}); the host is left waiting")
        return False

    def note(self, message: str) -> None:
        self.events.append(message)
        del self.events[:-100]
        if self.verbose:
            print(f"ofa-bench loopback adb device (simulated): {message}", flush=True)

    def hang(self) -> None:
        """Stop answering from now on, like a phone that froze (tests)."""
        self.note("hang: the device stops answering")
        self.hung.set()

    def start(self) -> int:
        if self._own_root:
            self.root = Path(tempfile.mkdtemp(prefix="ofa-bench-loopback-")).resolve()
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
        env["PATH"] = f"{self.root / 'system/bin'}:{env.get('PATH', '/usr/bin:/bin')}"
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
def loopback_adbd(port: int = 0, root: Path | str | None = None, auth: str = "none",
                  adb_keys: Path | str | None = None) -> Iterator[LoopbackAdbd]:
    """Run a loopback device for the duration of a `with` block; yields the server (`.port`, `.serial`)."""
    server = LoopbackAdbd(port=port, root=root, auth=auth, adb_keys=adb_keys)
    server.start()
    try:
        yield server
    finally:
        server.stop()


#: the line `main` prints once the device accepts connections (what `spawn` waits for)
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+); root (\S+);")
#: the folder holding the `agents` package: a spawned device imports this same copy of it
_PACKAGE_HOME = str(Path(__file__).resolve().parents[2])


@dataclasses.dataclass
class LoopbackProcess:
    """The loopback device in a child process (`spawn`). Its output is read all along (a full pipe would stall
    the device); `output` keeps its last lines, the "listening" one apart in `banner_line`."""

    proc: subprocess.Popen
    port: int
    root: Path
    banner_line: str
    output: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=200))

    @property
    def serial(self) -> str:
        """The device's address as adb names it: `127.0.0.1:PORT`."""
        return f"{HOST}:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (the device closes its connections and exits 0), SIGKILL if it is still there after
        `timeout_s`; returns the exit status. Stopping a device that already ended does nothing."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> "LoopbackProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn(root: Path | str | None = None, *args: str, port: int = 0, env: dict | None = None,
          timeout_s: float = 20.0) -> LoopbackProcess:
    """Start `python -m agents.sim.loopback_adbd` (`args`: more of its options, e.g. `--auth always`) in a
    child process on `port` (0: a free one) and wait until it listens. `root`: its sandbox (default: a
    temporary one it removes at exit); `env`: its environment (default: this one), with this copy of the
    package put first on PYTHONPATH. A device that exits or says nothing within `timeout_s` is killed and a
    `LoopbackAdbdError` says so, with its last words."""
    env = dict(os.environ if env is None else env)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != _PACKAGE_HOME]
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_HOME, *paths])
    argv = [sys.executable, "-m", "agents.sim.loopback_adbd", "--port", str(port)]
    if root is not None:
        argv += ["--root", str(Path(root).resolve())]
    proc = subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, env=env, cwd=_PACKAGE_HOME)
    output: collections.deque = collections.deque(maxlen=200)
    banner: list[re.Match] = []
    ready = threading.Event()

    def read() -> None:  # every line, until the device exits
        for line in proc.stdout:
            match = None if banner else _LISTENING.search(line)
            if match:
                banner.append(match)
                ready.set()
            else:
                output.append(line.rstrip("\n"))
        ready.set()

    threading.Thread(target=read, name="loopback-adbd-output", daemon=True).start()
    ended = False
    try:
        ended = ready.wait(timeout_s)
    finally:
        if not banner:
            proc.kill()
            proc.wait(5)
    if not banner:
        last = output[-1] if output else "no output"
        how = f"exited with status {proc.returncode}" if ended else f"did not listen within {timeout_s:g} s"
        raise LoopbackAdbdError(f"loopback adbd {how}: {last}")
    match = banner[0]
    return LoopbackProcess(proc, int(match.group(1)), Path(match.group(2)), match.string.strip(), output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.sim.loopback_adbd",
        description="Loopback ADB device on 127.0.0.1 (simulated: runs commands on this host).")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 picks a free one, printed)")
    parser.add_argument("--root", type=Path, default=None,
                        help="sandbox folder (default: a temporary folder removed at exit)")
    parser.add_argument("--auth", choices=AUTH_POLICIES, default="none",
                        help="RSA authentication: none (default), always (accept and remember every offered key, "
                             "like tapping Allow), never (leave every key unanswered), keys (only the keys of "
                             "--adb-keys)")
    parser.add_argument("--adb-keys", type=Path, default=None, metavar="FILE",
                        help="with --auth keys: the trusted public keys, one per line as in a phone's "
                             "/data/misc/adb/adb_keys (default: ROOT/data/misc/adb/adb_keys)")
    parser.add_argument("--hang-on", default=None, metavar="TEXT",
                        help="testing: stop answering, like a frozen phone, once a shell command containing "
                             "TEXT arrives")
    args = parser.parse_args(argv)
    try:
        server = LoopbackAdbd(port=args.port, root=args.root, auth=args.auth, adb_keys=args.adb_keys,
                              hang_on=args.hang_on, verbose=True)
        server.start()
    except LoopbackAdbdError as e:
        print(f"ofa-bench: error: {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"ofa-bench loopback adb device (simulated, runs on this host) listening on {server.serial}; "
          f"root {server.root}; workdir {server.workdir}; auth {server.auth}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
