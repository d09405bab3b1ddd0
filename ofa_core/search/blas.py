"""numpy's BLAS held to one thread while a search runs (evolution and NSGA-II alike)."""
from __future__ import annotations

import contextlib
import functools


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def one_blas_thread():
    """Context: numpy's BLAS on one thread. A search runs thousands of small matmuls, where extra BLAS threads
    only add hand-offs (and spin badly on a loaded machine: 4x the CPU time measured here)."""
    ctl = _blas_controller()
    return ctl.limit(limits=1, user_api="blas") if ctl is not None else contextlib.nullcontext()
