"""Build the runner as ONE pushable file: a zipapp holding runner.py and the runtimes, built on the host and
cached by content hash (the same sources always give byte-identical archives, so pushes are cached too)."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from agents.cache import cache_root
from ofa_core.atomic import atomic_write

AGENTS_DIR = Path(__file__).resolve().parent
_MAIN = (
    '"""ofa-bench runner (zipapp): python3 runner.pyz --help"""\n'
    "import sys\n\nfrom agents.runner import main\n\nsys.exit(main())\n"
)
_PKG_INIT = '"""Device-side part of ofa-bench agents (runner and runtimes only)."""\n'
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def runner_sources() -> dict[str, bytes]:
    """Archive name -> content of every file the runner needs on the device."""
    files = {
        "__main__.py": _MAIN.encode(),
        "agents/__init__.py": _PKG_INIT.encode(),
        "agents/runner.py": (AGENTS_DIR / "runner.py").read_bytes(),
    }
    for path in sorted((AGENTS_DIR / "runtimes").glob("*.py")):
        files[f"agents/runtimes/{path.name}"] = path.read_bytes()
    return files


def build_runner(cache: Path | None = None) -> Path:
    """Path of `runner-<hash>.pyz` in the cache, written only if that content is not there yet."""
    files = runner_sources()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    folder = Path(cache) if cache else cache_root() / "runner"
    target = folder / f"runner-{digest.hexdigest()[:16]}.pyz"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name])
    return target
