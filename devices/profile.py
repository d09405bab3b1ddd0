"""A device profile: how to reach one device and how to measure on it. Loaded from TOML, frozen once built."""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofa_core.errors import OFABenchError

KINDS = ("local", "adb", "ssh", "fpga")
RUNTIMES = ("onnxruntime", "litert", "torch", "null", "fpga-model")
FORMATS = ("onnx", "tflite", "pt2")
PRECISIONS = ("fp32", "int8")
#: onnxruntime execution providers: the CPU, CUDA, TensorRT (with CUDA for what TensorRT does not take)
PROVIDERS = ("cpu", "cuda", "tensorrt")
DEFAULT_FORMAT = {"onnxruntime": "onnx", "litert": "tflite", "torch": "pt2", "null": "onnx", "fpga-model": "onnx"}
SSH_ADDRESS_FORM = "USER@HOST[:PORT]"
_SSH_ADDRESS = re.compile(r"^(?P<user>[^@\s:/-][^@\s:/]*)@(?P<host>[^@\s:/-][^@\s:/]*)(?::(?P<port>\d{1,5}))?$")


class DeviceProfileError(OFABenchError, ValueError):
    """A device profile that cannot be read or holds a bad value."""


def parse_ssh_address(address: str) -> tuple[str, str, int]:
    """`USER@HOST[:PORT]` -> (user, host, port); the user is required (ssh would otherwise log in as whoever
    runs ofa-bench, a different account on every host of a farm)."""
    m = _SSH_ADDRESS.match(address)
    port = int(m["port"]) if m and m["port"] else 22
    if m is None or not 0 < port < 65536:
        raise DeviceProfileError(f"ssh address must be {SSH_ADDRESS_FORM}, got {address!r}")
    return m["user"], m["host"], port


@dataclass(frozen=True)
class DeviceProfile:
    """Everything the host needs to measure on one device.

    Measurement settings follow pyperf's habit: warm up by count *and* time, then time single inferences until
    both `min_runs` and `min_duration_s` are reached, capped by `max_runs` and `max_duration_s`.
    """

    name: str
    kind: str = "local"                   # local | adb | ssh | fpga
    description: str = ""
    address: str = ""                     # adb: HOST:PORT or a serial; ssh: USER@HOST[:PORT]; fpga: board name
    adb_server: bool = False              # adb only: go through the `adb` command and its server
    key_path: str = ""                    # ssh: private key file; adb (adb-shell): adb key, default ~/.android/adbkey
    workdir: str = ""                     # folder on the device for pushed files ("" = transport default)
    python: str = "python3"               # interpreter on the device that runs the runner
    runtime: str = "onnxruntime"
    model_format: str = ""                # "" = the runtime's format
    precision: str = "fp32"               # fp32 | int8 (static int8 .tflite, calibrated; LiteRT devices)
    device: str = "cpu"                   # torch only: cpu | cuda
    provider: str = "cpu"                 # onnxruntime only: cpu | cuda | tensorrt (execution provider)
    batch: tuple[int, ...] = (1,)         # batch sizes `profile` measures by default (one table each)
    threads: int = 1
    cores: tuple[int, ...] = ()           # CPU affinity on the device; () = leave as is
    warmup_runs: int = 10
    warmup_s: float = 0.5
    min_runs: int = 50
    min_duration_s: float = 1.0
    max_runs: int = 10000
    max_duration_s: float = 30.0
    clock: str = "wall"                   # wall | thread (CPU time of the measuring thread: see agents/runner.py)
    cooldown_s: float = 0.0               # fixed pause before each measurement
    cooldown_temp_c: float | None = None  # or: wait until the device is cooler than this
    cooldown_max_s: float = 120.0         # longest wait for the temperature threshold
    cv_threshold: float = 0.05            # re-measure when std/mean exceeds this
    max_remeasure: int = 2                # after that many extra attempts the measurement is marked noisy
    binary: str = ""                      # a user-supplied measuring binary on the host (pushed once)
    binary_args: tuple[str, ...] = ()     # extra flags for that binary
    timeout_s: float = 60.0               # timeout of one device call (connect, push, fingerprint)
    fpga: dict[str, Any] = field(default_factory=dict)  # fpga only: accelerator parameters overriding the board's
    aliases: tuple[str, ...] = ()
    example: bool = False                 # a documented example, not a device that exists here
    simulated: bool = False
    source: str = ""                      # where the profile came from (file path or "ad-hoc")

    def __post_init__(self) -> None:
        if not self.model_format:
            object.__setattr__(self, "model_format", DEFAULT_FORMAT.get(self.runtime, "onnx"))
        if self.kind == "fpga":
            object.__setattr__(self, "simulated", True)
        self.check()

    def check(self) -> None:
        where = f"device profile {self.name!r}"
        if not self.name or any(c.isspace() for c in self.name):
            raise DeviceProfileError(f"{where}: name must be non-empty without spaces")
        if self.kind not in KINDS:
            raise DeviceProfileError(f"{where}: unknown kind {self.kind!r} (known: {', '.join(KINDS)})")
        if self.runtime not in RUNTIMES:
            raise DeviceProfileError(f"{where}: unknown runtime {self.runtime!r} (known: {', '.join(RUNTIMES)})")
        if self.clock not in ("wall", "thread"):
            raise DeviceProfileError(f"{where}: unknown clock {self.clock!r} (known: wall, thread)")
        if self.model_format not in FORMATS:
            raise DeviceProfileError(f"{where}: unknown model_format {self.model_format!r} (known: {', '.join(FORMATS)})")
        if self.precision not in PRECISIONS:
            raise DeviceProfileError(f"{where}: unknown precision {self.precision!r} (known: {', '.join(PRECISIONS)})")
        if self.precision == "int8" and self.model_format != "tflite":
            raise DeviceProfileError(f"{where}: precision int8 needs .tflite models (runtime litert), not "
                                     f"{self.model_format}")
        if self.provider not in PROVIDERS:
            raise DeviceProfileError(f"{where}: unknown provider {self.provider!r} (known: {', '.join(PROVIDERS)})")
        if self.provider != "cpu" and (self.runtime != "onnxruntime" or self.model_format != "onnx"):
            raise DeviceProfileError(f"{where}: provider {self.provider!r} is an onnxruntime execution provider "
                                     f"(runtime onnxruntime, .onnx models), not for runtime {self.runtime}")
        if self.provider != "cpu" and self.is_binary:
            raise DeviceProfileError(f"{where}: provider {self.provider!r} is for the Python runner, not a "
                                     f"measuring binary")
        if not self.batch or any(isinstance(b, bool) or b < 1 for b in self.batch) \
                or len(set(self.batch)) != len(self.batch):
            raise DeviceProfileError(f"{where}: batch must be a list of distinct sizes >= 1, got {list(self.batch)}")
        if self.kind in ("adb", "ssh") and not self.address:
            raise DeviceProfileError(f"{where}: kind {self.kind!r} needs an address")
        if self.kind == "ssh":
            try:
                parse_ssh_address(self.address)
            except DeviceProfileError as exc:
                raise DeviceProfileError(f"{where}: {exc}") from None
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise DeviceProfileError(f"{where}: {f.name} must be a finite number, got {value}")
        if self.cooldown_s < 0 or self.cooldown_max_s < 0 or self.cv_threshold <= 0 or self.max_remeasure < 0:
            raise DeviceProfileError(f"{where}: cooldown_s, cooldown_max_s and max_remeasure must not be negative, "
                               f"cv_threshold must be positive")
        if self.threads < 1:
            raise DeviceProfileError(f"{where}: threads must be >= 1")
        if self.min_runs < 1 or self.max_runs < self.min_runs:
            raise DeviceProfileError(f"{where}: need 1 <= min_runs <= max_runs")
        if self.min_duration_s < 0 or self.max_duration_s <= 0 or self.warmup_s < 0 or self.warmup_runs < 0:
            raise DeviceProfileError(f"{where}: durations and counts must not be negative")
        if self.timeout_s <= 0:
            raise DeviceProfileError(f"{where}: timeout_s must be positive")
        if any(c < 0 for c in self.cores):
            raise DeviceProfileError(f"{where}: cores must be CPU numbers >= 0")

    @property
    def is_binary(self) -> bool:
        return bool(self.binary)

    def replace(self, **changes) -> "DeviceProfile":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), without defaults' noise removed: what `--json` and TOML show."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def summary(self) -> dict[str, Any]:
        """The few settings that tell devices apart: a row of `ofa-bench devices list`."""
        return {"name": self.name, "kind": self.kind, "runtime": self.runtime, "model_format": self.model_format,
                "precision": self.precision, "provider": self.provider, "batch": list(self.batch),
                "address": self.address or None, "threads": self.threads, "cores": list(self.cores) or None,
                "binary": self.binary or None, "example": self.example, "simulated": self.simulated,
                "aliases": list(self.aliases), "description": self.description, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> "DeviceProfile":
        known = {f.name: f for f in dataclasses.fields(cls)}
        name = str(data.get("name") or Path(source).stem or "")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise DeviceProfileError(f"device profile {name!r} ({source or 'dict'}): unknown key(s) {', '.join(unknown)}")
        values: dict[str, Any] = {"name": name, "source": source}
        for key, value in data.items():
            if key in ("name", "source"):
                continue
            values[key] = _coerce(name, key, known[key], value)
        return cls(**values)

    @classmethod
    def from_toml(cls, path: Path) -> "DeviceProfile":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise DeviceProfileError(f"cannot read device profile {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise DeviceProfileError(f"device profile {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def to_toml(self) -> str:
        """TOML text of the settings that differ from the defaults (plus name, kind and runtime)."""
        default = DeviceProfile(name=self.name, kind="fpga" if self.kind == "fpga" else "local",
                                runtime=self.runtime)
        lines = []
        for f in dataclasses.fields(self):
            if f.name in ("source", "simulated"):
                continue
            value = getattr(self, f.name)
            if f.name not in ("name", "kind", "runtime") and value == getattr(default, f.name):
                continue
            if f.name == "fpga":
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        if self.fpga:
            lines.append("")
            lines.append("[fpga]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in sorted(self.fpga.items()))
        return "\n".join(lines) + "\n"


def _coerce(name: str, key: str, f: dataclasses.Field, value: Any) -> Any:
    """Type-check one TOML value against the field's annotation."""
    ann = str(f.type)
    bad = DeviceProfileError(f"device profile {name!r}: {key} has a bad value {value!r} (expected {ann})")
    if ann.startswith("tuple"):
        if not isinstance(value, list):
            raise bad
        item = int if "int" in ann else str
        if not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise bad
        return tuple(value)
    if ann.startswith("dict"):
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if ann == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if ann == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if ann.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if ann == "str":
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
