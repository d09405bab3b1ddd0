"""Where device profiles come from: the built-in ones shipped in `devices/profiles/`, the user's own
(`$OFA_BENCH_DEVICES`, else `~/.config/ofa-bench/devices/*.toml`), and ad-hoc names such as `adb:HOST:PORT`."""
from __future__ import annotations

import os
import tomllib
import re
from pathlib import Path

from devices.profile import SSH_ADDRESS_FORM, DeviceProfile, DeviceProfileError, parse_ssh_address
from ofa_core.atomic import atomic_write
from ofa_core.errors import OFABenchError

BUILTIN_DIR = Path(__file__).resolve().parent / "profiles"
DEVICES_ENV = "OFA_BENCH_DEVICES"
DEFAULT_DEVICE = "local-cpu"


class UnknownDeviceError(OFABenchError, LookupError):
    """A device name that is neither a profile nor an ad-hoc address."""


def user_profile_dirs() -> list[Path]:
    """Folders holding the user's profiles: `$OFA_BENCH_DEVICES` (os.pathsep-separated) or the config folder."""
    env = os.environ.get(DEVICES_ENV)
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [base / "ofa-bench" / "devices"]


def _load_dir(folder: Path) -> list[DeviceProfile]:
    if not folder.is_dir():
        return []
    return [DeviceProfile.from_toml(p) for p in sorted(folder.glob("*.toml"))]


def list_devices(include_user: bool = True) -> list[DeviceProfile]:
    """Every named profile, built-in first; a user profile with a built-in's name replaces it."""
    profiles: dict[str, DeviceProfile] = {p.name: p for p in _load_dir(BUILTIN_DIR)}
    if include_user:
        for folder in user_profile_dirs():
            for p in _load_dir(folder):
                profiles[p.name] = p
    return list(profiles.values())


#: what a profile written by `devices add` may be called: the name becomes the file NAME.toml, so it is never a path
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def check_profile_name(name: str) -> str:
    """`name` if it can name a profile file: letters, digits, '.', '_' and '-', not starting with '.' or '-',
    no '..' (so never a path, an absolute name or a hidden file); else a one-line `DeviceProfileError`."""
    if not _PROFILE_NAME.match(name or "") or ".." in name or len(name) > 128:
        raise DeviceProfileError(f"device name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                           f"(at most 128, not starting with '.' or '-', no '..'; a name, not a path)")
    return name


_ADB_TCP = re.compile(r"^adb:(?P<host>[^:\s]+):(?P<port>\d{1,5})$")
_ADB_SERIAL = re.compile(r"^adb:(?P<serial>[^\s:]+)$")


def _adhoc(name: str) -> DeviceProfile | None:
    """A profile for an address typed on the command line; Python runner, onnxruntime, one thread."""
    if name == "local":
        base = get_device(DEFAULT_DEVICE)
        return base.replace(name="local", source="ad-hoc", aliases=())
    m = _ADB_TCP.match(name)
    if m:
        return DeviceProfile(name=name, kind="adb", address=f"{m['host']}:{m['port']}", source="ad-hoc",
                             description="ad-hoc adb-shell device over TCP")
    m = _ADB_SERIAL.match(name)
    if m:
        return DeviceProfile(name=name, kind="adb", address=m["serial"], adb_server=True, source="ad-hoc",
                             description="ad-hoc device through the adb server")
    if name.startswith("ssh:"):
        try:
            parse_ssh_address(name.removeprefix("ssh:"))
        except DeviceProfileError:
            raise DeviceProfileError(f"ad-hoc ssh device {name!r}: use ssh:{SSH_ADDRESS_FORM} "
                               f"(the user is required)") from None
        return DeviceProfile(name=name, kind="ssh", address=name.removeprefix("ssh:"), source="ad-hoc",
                             description="ad-hoc device over ssh")
    if name.startswith("adb:"):
        raise DeviceProfileError(f"ad-hoc adb device {name!r}: use adb:HOST:PORT or adb:SERIAL")
    return None


def get_device(name: str | None = None) -> DeviceProfile:
    """The profile called `name` (or one of its aliases), an ad-hoc address, or the default `local-cpu`."""
    name = (name or DEFAULT_DEVICE).strip()
    profiles = list_devices()
    for p in profiles:
        if p.name == name:
            return p
    for p in profiles:
        if name in p.aliases:
            return p
    adhoc = _adhoc(name)
    if adhoc is not None:
        return adhoc
    known = ", ".join(sorted(p.name for p in profiles))
    raise UnknownDeviceError(f"unknown device {name!r}; known devices: {known}; or use local, adb:HOST:PORT, "
                             f"adb:SERIAL, ssh:USER@HOST[:PORT]")


def profile_batches(name: str) -> tuple[int, ...] | None:
    """The `batch` list of the device's profile on this host; None for a device this host has no usable profile
    of (a farm device another host's worker registered)."""
    from ofa_core.errors import OFABenchError

    try:
        return get_device(name).batch
    except OFABenchError:
        return None


def write_user_profile(profile: DeviceProfile, force: bool = False) -> Path:
    """Save `profile` as TOML in the first user profile folder; refuse to overwrite unless `force`."""
    folder = user_profile_dirs()[0]
    path = folder / f"{check_profile_name(profile.name)}.toml"
    if (path.exists() or path.is_symlink()) and not force:
        raise DeviceProfileError(f"device profile {path} already exists (use --force to replace it)")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise DeviceProfileError(f"{path} is not a regular file; remove it first")
    text = profile.to_toml()
    DeviceProfile.from_dict(tomllib.loads(text), source=str(path))  # round-trips
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            f.write(text.encode("utf-8"))
    except OSError as exc:
        raise DeviceProfileError(f"cannot write device profile {path}: {exc.strerror or exc}") from None
    return path
