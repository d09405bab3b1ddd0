"""Ways to reach a device. `make_transport(profile)` picks one by the profile's kind and address; the adb and
ssh modules are imported only when a profile needs them."""
from __future__ import annotations

import os

from agents.transports.base import CommandResult, Transport, TransportError, quote_argv

TRANSPORT_KINDS = ("local", "adb", "ssh")  # the device kinds `make_transport` reaches


def make_transport(profile) -> Transport:
    """The transport for a `devices.DeviceProfile` (local, adb over TCP or through the adb server, ssh)."""
    workdir = profile.workdir or None
    if profile.kind == "local":
        from agents.transports.local import LocalTransport

        return LocalTransport(workdir=workdir, timeout_s=profile.timeout_s, name=profile.name)
    if profile.kind == "adb":
        from agents.transports import adb

        kw = {"timeout_s": profile.timeout_s}
        if workdir:
            kw["workdir"] = workdir
        host, sep, port = profile.address.rpartition(":")
        if not profile.adb_server and sep and port.isdigit():
            key = os.path.expanduser(profile.key_path) if profile.key_path else None  # default ~/.android/adbkey
            return adb.AdbShellTransport(host, int(port), rsa_key_path=key, **kw)
        return adb.AdbServerTransport(profile.address, **kw)
    if profile.kind == "ssh":
        from agents.transports import ssh

        user, _, hostport = profile.address.partition("@")
        if not hostport:
            raise TransportError(f"{profile.name}: ssh address must be USER@HOST[:PORT], got {profile.address!r}")
        host, sep, port = hostport.rpartition(":")
        if not (sep and port.isdigit()):
            host, port = hostport, "22"
        kw = {"timeout_s": profile.timeout_s}
        if workdir:
            kw["workdir"] = workdir
        key = os.path.expanduser(profile.key_path) if profile.key_path else None
        return ssh.SshTransport(user, host, int(port), key_path=key, **kw)
    raise TransportError(f"{profile.name}: a {profile.kind!r} device has no transport")


__all__ = ["CommandResult", "TRANSPORT_KINDS", "Transport", "TransportError", "make_transport", "quote_argv"]
