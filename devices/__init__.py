"""Device profiles (TOML), the registry that finds them, and the fingerprint of what was measured on.

Reading a fingerprint from a device needs a connection: `agents.connect(profile).fingerprint()`."""
from devices.fingerprint import fingerprint_id
from devices.profile import DeviceProfile, DeviceProfileError
from devices.registry import (DEFAULT_DEVICE, UnknownDeviceError, check_profile_name, get_device, list_devices,
                              profile_batches, write_user_profile)

__all__ = ["DEFAULT_DEVICE", "DeviceProfile", "DeviceProfileError", "UnknownDeviceError", "check_profile_name",
           "fingerprint_id", "get_device", "list_devices", "profile_batches", "write_user_profile"]
