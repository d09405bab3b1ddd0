"""Inference runtimes the runner can time. Stdlib only here: each runtime module imports its library on use.

A runtime module offers `version() -> str`, `build() -> dict` (what identifies the build) and
`load(path, threads, device) -> Loaded`; the runner then calls `loaded.run()` (one inference on inputs
allocated at load time) inside its timing loop. A runtime with execution providers (onnxruntime) also offers
`PROVIDERS`, `check_provider(provider)` and takes `provider=` and `cache_dir=` in `load`.
"""
import importlib

RUNTIMES = {"onnxruntime": "ort", "litert": "litert", "torch": "torch_rt", "null": "null"}


class RuntimeUnavailable(Exception):
    """The runtime's library is not installed on this device, or the runtime name is unknown."""


class ModelLoadError(Exception):
    """The model file is missing, unreadable or not a model this runtime can run."""


class Loaded:
    """A model ready to time: `run()` does one inference; `event_timer`, when set, times n runs on an
    accelerator (e.g. CUDA events) and returns their durations in nanoseconds instead of wall-clock timing."""

    __slots__ = ("run", "inputs", "event_timer")

    def __init__(self, run, inputs, event_timer=None):
        self.run = run
        self.inputs = inputs  # [{name, shape, dtype}] for the record
        self.event_timer = event_timer


def get_runtime(name):
    """The runtime module called `name`; raises RuntimeUnavailable (one line) if unknown or not installed."""
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {name!r} (known: {', '.join(sorted(RUNTIMES))})")
    try:
        return importlib.import_module(f"{__name__}.{RUNTIMES[name]}")
    except ImportError as exc:
        raise RuntimeUnavailable(f"runtime {name!r} is not installed on this device ({exc})") from None


def check_file(path):
    """Fail early and clearly for a missing or empty model file."""
    import os

    if not os.path.isfile(path):
        raise ModelLoadError(f"model file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ModelLoadError(f"model file is empty: {path}")
