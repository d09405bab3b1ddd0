"""Ways to reach a device. `make_transport(profile)` picks one by the profile's kind and address; the adb and
ssh modules are imported only when a profile needs them."""
from __future__ import annotations

from agents.transports.base import CommandResult, Transport, TransportError, quote_argv


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
            return adb.AdbShellTransport(host, int(port), **kw)
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
        return ssh.SshTransport(user, host, int(port), key_path=profile.key_path or None, **kw)
    raise TransportError(f"{profile.name}: a {profile.kind!r} device has no transport")


__all__ = ["CommandResult", "Transport", "TransportError", "make_transport", "quote_argv"]
