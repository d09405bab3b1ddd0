"""Test-wide settings: keep every test away from the user's store, cache and device profiles, and point the
code at the published anchors (../shared/anchors, else the copy shipped in tests/data/anchors)."""
import os
from pathlib import Path

import pytest
from _anchors import SHARED, missing_shared
from _anchors import anchors_dir as _anchors_dir


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ofa-bench-home")
    saved = {k: os.environ.get(k) for k in ("OFA_BENCH_STORE", "OFA_BENCH_CACHE", "OFA_BENCH_DEVICES", "XDG_DATA_HOME",
                                            "OFA_BENCH_ANCHORS")}
    os.environ["OFA_BENCH_STORE"] = str(root / "store.sqlite")
    os.environ["OFA_BENCH_CACHE"] = str(root / "cache")
    os.environ["OFA_BENCH_DEVICES"] = str(root / "devices")
    os.environ["XDG_DATA_HOME"] = str(root / "data")
    os.environ["OFA_BENCH_ANCHORS"] = str(_anchors_dir())  # the Note10 table and predictor, for code and CLI runs
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def anchors_dir() -> Path:
    """The published anchors folder: ../shared/anchors beside the checkout, else tests/data/anchors."""
    return _anchors_dir()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout, for what only it has (the anchors do not need it: use `anchors_dir`)."""
    if not SHARED.is_dir():
        pytest.skip(missing_shared())
    return SHARED


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests: small CPU ops run fastest so, and a busy machine punishes
    thread wake-ups. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
