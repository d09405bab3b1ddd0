"""Validation end to end on this CPU (tiny Fashion-MNIST subnets), and the pure metrics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.validate import accuracy_metrics, kendall_tau
from ofa_core.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.get("ofa-mbv3-fmnist")

ORT_PROFILE = """
name = "ort-test"
kind = "local"
description = "this CPU, onnxruntime, short timings for tests"
runtime = "onnxruntime"
threads = 1
warmup_runs = 2
warmup_s = 0.01
min_runs = 10
min_duration_s = 0.03
max_runs = 2000
max_duration_s = 2.0
max_remeasure = 1
"""


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_kendall_tau_known_cases():
    x = np.arange(10.0)
    assert kendall_tau(x, x * 2) == pytest.approx(1.0)
    assert kendall_tau(x, -x) == pytest.approx(-1.0)
    # one swapped adjacent pair among 10: (45 - 2) / 45
    y = x.copy()
    y[[3, 4]] = y[[4, 3]]
    assert kendall_tau(x, y) == pytest.approx(43 / 45)


def test_accuracy_metrics():
    m = accuracy_metrics([1.04, 2.18, 3.0, 3.5], [1.0, 2.0, 3.0, 4.0])
    assert m["n"] == 4
    assert m["within_5pct"] == pytest.approx(0.5) and m["within_10pct"] == pytest.approx(0.75)
    assert m["mape"] == pytest.approx((0.04 + 0.09 + 0 + 0.125) / 4)
    assert m["rmse_ms"] == pytest.approx(np.sqrt((0.04 ** 2 + 0.18 ** 2 + 0.25) / 4))


@pytest.fixture(scope="module")
def ort_device():
    folder = Path(os.environ["OFA_BENCH_DEVICES"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ort-test.toml").write_text(ORT_PROFILE)
    return "ort-test"


def test_validate_end_to_end(tmp_path, ort_device):
    store = tmp_path / "s.sqlite"
    r = cli("profile", ort_device, "--space", SPACE.name, "--resolutions", "12", "--store", store, "--json",
            "--rounds", "2")
    assert r.returncode == 0, r.stderr
    plot = tmp_path / "pvm.png"
    r = cli("validate", ort_device, "--space", SPACE.name, "--subnets", "8", "--seed", "3", "--remeasure",
            "--store", store, "--plot", plot, "--json", "--min-duration-s", "0.05", "--rounds", "2")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for k in ("n", "mape", "rmse_ms", "within_5pct", "within_10pct", "kendall_tau", "remeasure_within_5pct"):
        assert k in doc
    assert doc["n"] == 8 and doc["resolutions"] == [12]
    for k in ("within_5pct", "within_10pct", "remeasure_within_5pct"):
        assert 0.0 <= doc[k] <= 1.0
    assert -1.0 <= doc["kendall_tau"] <= 1.0 and doc["mape"] >= 0
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    # the measured subnets are in the store and now calibrate the predictor
    from bench.lut import load_device_table
    from bench.predictor import LatencyPredictor

    table = load_device_table(ort_device, SPACE, str(store))
    assert len(table.subnets) == 8
    pred = LatencyPredictor.from_table(table, SPACE)
    assert pred.calibration.n_subnets == 8
    r = cli("predict", "--device", ort_device, "--space", SPACE.name, "--config", "largest", "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["table_version"] == table.version and p["latency_ms"] > 0 and p["table_sum_ms"] > 0


def test_validate_without_table_is_one_line(tmp_path, ort_device):
    r = cli("validate", ort_device, "--space", SPACE.name, "--subnets", "4", "--store", tmp_path / "s.sqlite")
    assert r.returncode != 0 and "no latency table" in r.stderr and r.stderr.count("\n") == 1


def test_plots_write_png(tmp_path, shared_dir):
    from bench.lut import load_device_table
    from bench.plots import drift_history, predicted_vs_measured, subnet_stage_breakdown

    w12 = SearchSpace.get("ofa-mbv3-w1.2")
    table = load_device_table("note10", w12)
    paths = [
        subnet_stage_breakdown(w12, table, w12.largest(224), tmp_path / "b.png"),
        drift_history([0, 3600, 7200, 10800], [1.0, 1.0, 1.2, 1.2], tmp_path / "d.png", step_index=2),
        predicted_vs_measured([1.0, 2.1], [1.05, 2.0], [160, 224], tmp_path / "p.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 1000
