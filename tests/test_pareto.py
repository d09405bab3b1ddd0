"""Pareto fronts: non-domination, NSGA-II on the Note10 tables (>= 50 points within 5 s of CPU), measured
subnets from the store, CSV, figure and the CLI."""
import csv
import json
import time

import numpy as np
import pytest

from bench.pareto import DeviceFront, measured_subnets, plot_fronts, write_csv
from ofa_core.search import non_dominated, pareto_front
from ofa_core.space import SearchSpace

W12 = SearchSpace.get("ofa-mbv3-w1.2")


def _brute(acc, costs):
    keep = []
    for i in range(len(acc)):
        beaten = ((acc >= acc[i]) & (costs <= costs[i]).all(1) & ((acc > acc[i]) | (costs < costs[i]).any(1)))
        if not beaten.any():
            keep.append(i)
    return set(keep)


@pytest.mark.parametrize("n_costs", [1, 2])
def test_non_dominated_matches_brute_force(n_costs):
    rng = np.random.default_rng(n_costs)
    acc = rng.integers(0, 30, 400) / 30.0  # ties on purpose
    costs = rng.integers(0, 30, (400, n_costs)).astype(float)
    got = non_dominated(acc, costs)
    assert set(got.tolist()) == _brute(acc, costs)
    assert np.all(np.diff(costs[got, 0]) >= 0)


@pytest.fixture(scope="module")
def note10(anchors_dir):
    from bench.table import LatencyPredictor, load_device_table
    from ofa_core.accuracy import AccuracyPredictor

    pth = anchors_dir / "ofa-mbv3-w12-note10" / "acc_predictor.pth"
    return AccuracyPredictor.from_official(pth), LatencyPredictor.from_table(load_device_table("note10", W12), W12)


@pytest.fixture(scope="module")
def front(note10):
    acc, lat = note10
    t0 = time.process_time()
    f = pareto_front(W12, acc, {"latency_ms": lat}, np.random.default_rng(0), resolutions=lat.resolutions)
    return f, time.process_time() - t0


def test_note10_front_is_large_fast_and_non_dominated(front, note10):
    f, cpu_s = front
    acc, lat = note10
    assert len(f) >= 50
    assert cpu_s <= 5.0
    lat_ms = f.values["latency_ms"]
    assert np.all(np.diff(lat_ms) > 0) and np.all(np.diff(f.accuracy) > 0)  # a staircase
    batch = W12.encode(f.configs)
    np.testing.assert_allclose(lat(batch), lat_ms)
    np.testing.assert_allclose(acc(batch), f.accuracy)
    # nothing random does better than the front at its latency
    sample = W12.sample_batch(np.random.default_rng(9), 3000, lat.resolutions)
    s_acc, s_lat = acc(sample), lat(sample)
    idx = np.searchsorted(lat_ms, s_lat, side="right") - 1
    covered = idx >= 0
    assert np.all(s_acc[covered] <= f.accuracy[idx[covered]] + 1e-9)


def test_front_with_macs_as_third_objective(note10):
    acc, lat = note10
    f = pareto_front(W12, acc, {"latency_ms": lat, "macs": W12.macs}, np.random.default_rng(1),
                     generations=30, resolutions=[160, 192, 224])
    assert len(f) > 10 and set(f.values) == {"latency_ms", "macs"}
    keep = non_dominated(f.accuracy, np.stack([f.values["latency_ms"], f.values["macs"]], 1))
    assert len(keep) == len(f)


def test_measured_subnets_csv_and_figure(front, note10, tmp_path):
    from bench.store import open_store

    acc, lat = note10
    f, _ = front
    store_path = tmp_path / "store.sqlite"
    st = open_store(str(store_path))
    cfgs = f.configs[::40]
    try:
        fp = st.register_fingerprint("note10", {"model": "test phone", "note": "made-up subnet timings"})
        run = st.start_run("note10", fp, W12.name, "confirm", {}, {})
        recs = []
        for i, c in enumerate(cfgs):
            ms = 20.0 + i
            recs.append({"resolution": c.r, "key": f"subnet:{c.to_string()}", "kind": "subnet", "latency_ms": ms,
                         "mean_ms": ms, "std_ms": 0.1, "p10_ms": ms, "p90_ms": ms, "cv": 0.01, "n": 10,
                         "samples_ms": [ms] * 10, "noisy": False, "env": {}})
        st.add_measurements(run, recs)
        st.finish_run(run, "done")
    finally:
        st.close()
    measured = measured_subnets(str(store_path), "note10", W12, acc, lat)
    assert sorted(m["config_string"] for m in measured) == sorted(c.to_string() for c in cfgs)
    for m in measured:
        assert "predicted_latency_ms" in m and 0.6 < m["predicted_accuracy"] < 0.9
    assert measured_subnets(str(tmp_path / "absent.sqlite"), "note10", W12, acc) == []

    fronts = [DeviceFront("note10", W12.name, f, lat.version, False, measured)]
    rows = list(csv.DictReader(write_csv(fronts, tmp_path / "front.csv").open()))
    assert sum(r["kind"] == "front" for r in rows) == len(f)
    assert sum(r["kind"] == "measured" for r in rows) == len(cfgs)
    png = plot_fronts(fronts, tmp_path / "front.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_pareto(note10, capsys, tmp_path):
    from bench.cli import main

    from bench.store import open_store

    open_store(tmp_path / "empty.sqlite").close()  # no tables: the published anchors answer
    rc = main(["pareto", "--device", "note10", "--out", str(tmp_path / "f.png"), "--csv", str(tmp_path / "f.csv"),
               "--generations", "40", "--resolutions", "160,192,224", "--json",
               "--store", str(tmp_path / "empty.sqlite")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    doc = json.loads(out.out)
    (dev,) = doc["devices"]
    assert dev["device"] == "note10" and dev["n_points"] == len(dev["points"]) > 20
    assert (tmp_path / "f.png").is_file() and (tmp_path / "f.csv").is_file()
    assert {p["config"]["r"][0] for p in dev["points"]} <= {160, 192, 224}
