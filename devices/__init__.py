"""Device profiles (TOML), the registry that finds them, and the fingerprint of what was measured on."""
from devices.profile import DeviceProfile, ProfileError
from devices.registry import (DEFAULT_DEVICE, UnknownDeviceError, check_profile_name, get_device, list_devices,
                              write_user_profile)


def __getattr__(name):  # fingerprint talks to agents: import on use
    if name in ("fingerprint_id", "read_fingerprint"):
        import devices.fingerprint as fp

        return getattr(fp, name)
    raise AttributeError(name)


__all__ = ["DEFAULT_DEVICE", "DeviceProfile", "ProfileError", "UnknownDeviceError", "check_profile_name",
           "fingerprint_id", "get_device", "list_devices", "read_fingerprint", "write_user_profile"]
