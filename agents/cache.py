"""The one folder rule for what ofa-bench caches on the host: runner bundles, the local device's work folder,
exported models. `$OFA_BENCH_CACHE` when set, else `ofa-bench` under `$XDG_CACHE_HOME` (default `~/.cache`)."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "OFA_BENCH_CACHE"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ofa-bench"
