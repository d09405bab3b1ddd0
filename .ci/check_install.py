"""Checks an installed ofa-bench the way a new user meets it; run from a folder outside the source tree.

    python /path/to/.ci/check_install.py

Imports every module of the four packages from the installed distribution (not from a checkout), and
requires that a module whose optional dependency is missing fails with a one-line ImportError naming what to
install, and that the benchmarks (bench.perf, run from a clone) were left out; runs `ofa-bench --help` and a
usage mistake through the console script. Exit 0 when all hold.
"""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("ofa_core", "agents", "devices", "bench")


def import_every_module() -> list[str]:
    problems = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        origin = Path(pkg.__file__).resolve()
        if Path.cwd().resolve() in origin.parents and "site-packages" not in origin.parts:
            problems.append(f"{pkg_name} imported from the working folder ({origin}), not from the installation")
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            try:
                importlib.import_module(info.name)
            except ImportError as exc:
                message = str(exc)
                if "\n" in message or "pip install" not in message:
                    problems.append(f"{info.name}: ImportError without a one-line install hint: {message!r}")
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                problems.append(f"{info.name}: {type(exc).__name__}: {exc}")
    return problems


def benchmarks_left_out() -> list[str]:
    """bench/perf holds the benchmarks, which run from a clone (`python -m bench.perf AREA`): not installed."""
    folder = Path(importlib.import_module("bench").__file__).resolve().parent / "perf"
    return [f"bench.perf (the benchmarks, checkout-only) is installed at {folder}"] if folder.exists() else []


def cli_checks() -> list[str]:
    exe = Path(sys.executable).parent / "ofa-bench"
    problems = []
    if not exe.exists():
        return [f"no console script at {exe}"]
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or "profile" not in r.stdout:
        problems.append(f"ofa-bench --help: exit {r.returncode}: {r.stderr.strip()[-300:]}")
    r = subprocess.run([str(exe), "predict", "--bogus-option"], capture_output=True, text=True, timeout=120)
    last = r.stderr.strip().splitlines()[-1:] or [""]
    if r.returncode != 2 or "Traceback" in r.stderr or not last[0].startswith("ofa-bench: error:"):
        problems.append(f"ofa-bench predict --bogus-option: exit {r.returncode}, stderr {r.stderr.strip()[-300:]!r}")
    return problems


def main() -> int:
    problems = import_every_module() + benchmarks_left_out() + cli_checks()
    for p in problems:
        print(f"check_install: {p}", file=sys.stderr)
    if not problems:
        print(f"check_install: every module of {', '.join(PACKAGES)} imports; the console script keeps its conventions")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
