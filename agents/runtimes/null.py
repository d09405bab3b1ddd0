"""The null runtime: reads the model file but runs nothing, so its timings are the harness's own cost."""
import platform

from agents.runtimes import Loaded, check_file


def version():
    return platform.python_version()


def build():
    return {"null": True, "python": platform.python_version()}


def _nothing():
    return None


def load(path, threads=1, device="cpu"):
    check_file(path)
    with open(path, "rb") as f:
        f.read(1)
    return Loaded(_nothing, [])
