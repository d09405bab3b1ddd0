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


def null_profile_toml(name: str, min_duration_s: float = 0.02, threads: int = 1, extra: str = "") -> str:
    """A device profile of the null runtime (runs nothing: timings are the harness's own), labelled simulated,
    quick to profile: the small tables of the profile, batch and CLI tests."""
    return (f'name = "{name}"\nkind = "local"\ndescription = "simulated: null runtime (runs nothing), for tests"\n'
            f'runtime = "null"\nmodel_format = "onnx"\nthreads = {threads}\nwarmup_runs = 1\nwarmup_s = 0.0\n'
            f"min_runs = 5\nmin_duration_s = {min_duration_s}\nmax_runs = 200\nmax_duration_s = 1.0\n"
            f"max_remeasure = 1\nsimulated = true\n{extra}")


@pytest.fixture(scope="session")
def write_null_device():
    """Writes a null-runtime device profile into the test session's device folder; returns its name."""
    def write(name: str, **kwargs) -> str:
        folder = Path(os.environ["OFA_BENCH_DEVICES"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.toml").write_text(null_profile_toml(name, **kwargs))
        return name
    return write
