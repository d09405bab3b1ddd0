"""Fronts that span the range and never run faster than the device has shown, the accuracy predictor's ends,
measured and predicted points linked in the figure, and one measured number per subnet across report.md,
report.json and the front's CSV."""
import csv
import json

import numpy as np
import pytest

from bench.pareto import (FlooredLatency, LatencyFloor, build_device_front, chosen_subnets,
                          figure_data, measured_subnets, plot_fronts, write_csv)
from ofa_core.search import SearchParams, evolution_search, pareto_front
from ofa_core.space import SearchSpace

W12 = SearchSpace.get("ofa-mbv3-w1.2")
FMNIST = SearchSpace.get("ofa-mbv3-fmnist")
RES = [160, 176, 192, 208, 224]
ENDS = SearchParams(population=40, generations=40)


@pytest.fixture(scope="module")
def note10(anchors_dir):
    from bench.table import LatencyPredictor, load_device_table
    from ofa_core.accuracy import AccuracyPredictor

    pth = anchors_dir / "ofa-mbv3-w12-note10" / "acc_predictor.pth"
    return AccuracyPredictor.from_official(pth), LatencyPredictor.from_table(load_device_table("note10", W12), W12)


def _store_with_subnets(path, device, space, timings):
    """A store holding whole-subnet measurements: `timings` maps a config to its pass values (ms), one run."""
    from bench.store import open_store

    st = open_store(str(path))
    try:
        fp = st.register_fingerprint(device, {"model": "test", "note": "made-up subnet timings"})
        run = st.start_run(device, fp, space.name, "confirm", {}, {})
        recs = []
        for cfg, passes in timings.items():
            for ms in passes:
                recs.append({"resolution": cfg.r, "key": f"subnet:{cfg.to_string()}", "kind": "subnet",
                             "latency_ms": ms, "mean_ms": ms, "std_ms": 0.01, "p10_ms": ms, "p90_ms": ms, "cv": 0.01,
                             "n": 10, "samples_ms": [ms] * 10, "noisy": False, "env": {}})
        st.add_measurements(run, recs)
        st.finish_run(run, "done")
    finally:
        st.close()
    return path


# ---- 1. both ends --------------------------------------------------------------------------------------------

def test_seeds_are_always_in_the_front_archive(note10):
    acc, lat = note10
    largest = W12.largest(224)
    f = pareto_front(W12, acc, {"latency_ms": lat}, np.random.default_rng(0), population=8, generations=1,
                     resolutions=RES, initial=[largest, W12.smallest(160)])
    assert f.accuracy.max() >= acc([largest])[0] - 1e-6  # float32 features either way
    assert f.values["latency_ms"].min() <= lat([W12.smallest(160)])[0] + 1e-9


def test_note10_front_spans_the_range_and_tops_a_single_budget_search(note10):
    acc, lat = note10
    dev = build_device_front("note10", W12, acc, lat, np.random.default_rng(0), RES, population=30, generations=15,
                             end_params=ENDS)
    lat_ms, front_acc = dev.front.values["latency_ms"], dev.front.accuracy
    small, large = W12.smallest(min(RES)), W12.largest(max(RES))
    assert lat_ms.min() <= lat([small])[0] + 1e-9  # starts at the smallest subnet
    assert front_acc.max() >= acc([large])[0] - 1e-6  # nothing is left above it ...
    # ... and an independent single-budget search (another seed) at the largest's latency does no better
    top = evolution_search(W12, acc, {"latency_ms": lat}, {"latency_ms": float(lat([large])[0])},
                           np.random.default_rng(11), ENDS, RES)
    assert front_acc.max() >= top.accuracy - 0.002
    assert dev.ends["top"]["gap_points"] <= 0 and dev.ends["bottom"]["gap_points"] <= 0
    assert dev.ends["top"]["budget_latency_ms"] == pytest.approx(float(lat([large])[0]))
    assert dev.floor.get("fastest_measured_ms") is None  # a published table: nothing measured, nothing floored


# ---- 2. never faster than the device has shown -----------------------------------------------------------------

def test_floor_is_the_slowest_measured_subnet_a_config_contains():
    small, large, mid = FMNIST.smallest(24), FMNIST.largest(36), FMNIST.largest(28)
    floor = LatencyFloor.from_measured([{"config_string": small.to_string(), "measured_latency_ms": 0.1},
                                        {"config_string": mid.to_string(), "measured_latency_ms": 0.3}], FMNIST)
    got = floor(FMNIST.encode([small, large, mid, FMNIST.smallest(36), FMNIST.largest(24)]))
    # the largest r36 contains both; the smallest r36 and the largest r24 contain the smallest r24 only
    np.testing.assert_allclose(got, [0.1, 0.3, 0.3, 0.1, 0.1])
    assert floor.fastest_ms == 0.1
    assert LatencyFloor.from_measured([], FMNIST) is None
    lat = FlooredLatency(lambda b: np.full(len(b), 0.2), floor, FMNIST)
    np.testing.assert_allclose(lat([small, large]), [0.2, 0.3])


def test_no_front_point_is_faster_than_the_fastest_measured_subnet(note10):
    acc, lat = note10
    small, large = W12.smallest(min(RES)), W12.largest(max(RES))
    fastest = 1.6 * float(lat([small])[0])  # the device is slower at the bottom than the table says
    measured = [{"config_string": small.to_string(), "resolution": small.r, "measured_latency_ms": fastest,
                 "predicted_accuracy": float(acc([small])[0]), "predicted_latency_ms": float(lat([small])[0])},
                {"config_string": large.to_string(), "resolution": large.r,
                 "measured_latency_ms": float(lat([large])[0]), "predicted_accuracy": float(acc([large])[0]),
                 "predicted_latency_ms": float(lat([large])[0])}]
    dev = build_device_front("note10", W12, acc, lat, np.random.default_rng(1), RES, population=30, generations=15,
                             measured=measured, end_params=ENDS)
    front_ms = dev.front.values["latency_ms"]
    assert front_ms.min() >= fastest - 1e-9
    assert front_ms.min() == pytest.approx(fastest)  # the bottom of the front is the measured floor
    pred = np.asarray(dev.predicted_ms)
    np.testing.assert_allclose(pred, lat(W12.encode(dev.front.configs)))  # the prediction is kept beside it
    np.testing.assert_allclose(front_ms, np.maximum(pred, dev.floor_ms))
    assert dev.floor["fastest_measured_ms"] == pytest.approx(fastest)
    assert dev.floor["n_points_floored"] >= 1
    assert dev.floor["n_points_floored"] == int((pred < np.asarray(dev.floor_ms)).sum())
    rows = dev.points()
    assert all(r["latency_ms"] >= fastest - 1e-9 for r in rows)


# ---- 3. the accuracy predictor's ends --------------------------------------------------------------------------

def test_shipped_predictor_top_end_agrees_with_measured_within_its_error():
    from ofa_core.accuracy import AccuracyPredictor, anchors_path, default_predictor_path

    path = default_predictor_path(FMNIST.name)
    if path is None or not anchors_path(path).is_file():
        pytest.skip("no shipped ofa-mbv3-fmnist predictor with anchors")
    acc = AccuracyPredictor.load(path)
    mlp = AccuracyPredictor.load(path, correct=False)
    assert acc.correction is not None and mlp.correction is None
    ends = acc.correction.metadata["ends_before_correction"]
    rmse = acc.metadata["holdout"]["rmse_points"] / 100  # the predictor's own stated error
    for tag, cfg in (("largest r36", FMNIST.largest(36)), ("largest r32", FMNIST.largest(32)),
                     ("smallest r24", FMNIST.smallest(24))):
        measured = ends[tag]["val_top1"]
        assert abs(acc([cfg])[0] - measured) <= rmse, tag
    # what the correction fixes: the MLP alone predicts the largest more than a point low
    assert ends["largest r36"]["val_top1"] - mlp([FMNIST.largest(36)])[0] > 0.01
    held = acc.correction.metadata["held_out"]
    assert held["corrected_rmse_points"] <= acc.metadata["holdout"]["rmse_points"] < held["mlp_rmse_points"]
    # the search's fast path (features from genes) and the torch reference see the correction too
    batch = FMNIST.sample_batch(np.random.default_rng(0), 64)
    np.testing.assert_allclose(acc.predict_torch(batch), acc(batch), atol=1e-6)
    res = evolution_search(FMNIST, acc, {"macs": FMNIST.macs}, {"macs": float(FMNIST.macs(FMNIST.largest(36)))},
                           np.random.default_rng(0), SearchParams(population=20, generations=5))
    assert res.accuracy == pytest.approx(float(acc([res.config])[0]), abs=1e-9)


def test_anchor_correction_fits_its_pairs_and_survives_save_load(tmp_path):
    from ofa_core.accuracy import AccuracyPredictor, anchors_path

    rng = np.random.default_rng(0)
    b = FMNIST.sample_batch(rng, 200)
    y = 0.85 + 0.01 * (b.r - 24) / 12 + rng.normal(0, 0.001, len(b))
    pred = AccuracyPredictor.fit(b, y, FMNIST, rng=np.random.default_rng(1), hidden=16, epochs=5)
    top = [FMNIST.largest(36), FMNIST.largest(32)]
    fixed = pred.corrected(top, [0.95, 0.94], length=4.0, noise=1e-4)
    np.testing.assert_allclose(fixed(top), [0.95, 0.94], atol=0.001)  # moved onto its measured ends
    far = FMNIST.smallest(24)  # 31 choices from the largest: the pull has (all but) vanished
    assert abs(fixed([far])[0] - pred([far])[0]) < 1e-3
    auto = pred.corrected(list(b.to_configs())[:50] + top, np.r_[y[:50], 0.95, 0.94])  # length, noise by LOO
    assert auto.correction.length in auto.correction.LENGTHS and auto.correction.metadata["n_pairs"] == 52
    path = fixed.save(tmp_path / "p.safetensors")
    assert anchors_path(path).is_file()
    loaded = AccuracyPredictor.load(path)
    np.testing.assert_allclose(loaded(b), fixed(b), atol=1e-9)
    np.testing.assert_allclose(AccuracyPredictor.load(path, correct=False)(b), pred(b))
    pred.save(path)  # these weights without a correction: the measured pairs stay, fitted to them on load
    assert anchors_path(path).is_file()
    np.testing.assert_allclose(AccuracyPredictor.load(path)(b), fixed(b), atol=1e-9)


# ---- 4. the figure: predicted and measured point of one subnet linked, chosen ones highlighted -----------------

def test_figure_links_each_measured_subnet_and_rings_the_chosen(note10, tmp_path):
    acc, lat = note10
    cfgs = [W12.smallest(160), W12.largest(192), W12.largest(224)]
    store = _store_with_subnets(tmp_path / "s.sqlite", "note10", W12,
                                {c: [10.0 + 20 * i, 11.0 + 20 * i, 12.5 + 20 * i] for i, c in enumerate(cfgs)})
    measured = measured_subnets(str(store), "note10", W12, acc, lat)
    chosen = chosen_subnets([{"config_string": cfgs[1].to_string(), "budget": {"latency_ms": 40.0},
                              "predicted_accuracy": float(acc([cfgs[1]])[0])},
                             {"config_string": W12.largest(176).to_string(), "name": "unmeasured",
                              "predicted_accuracy": 0.8, "predicted_latency_ms": 33.0}], measured)
    dev = build_device_front("note10", W12, acc, lat, np.random.default_rng(2), RES, population=20, generations=5,
                             measured=measured, chosen=chosen, end_params=ENDS)
    (d,) = figure_data([dev])
    assert len(d["pairs"]) == 3
    for m, p in zip(measured, d["pairs"]):
        assert p["config"] == m["config_string"]
        assert p["predicted"] == (m["predicted_latency_ms"], 100 * m["predicted_accuracy"])
        assert p["measured"] == (m["measured_latency_ms"], 100 * m["predicted_accuracy"])
    assert [c["label"] for c in d["chosen"]] == ["budget 40 ms", "unmeasured"]
    assert d["chosen"][0]["at"] == "measured" and d["chosen"][0]["xy"][0] == measured[1]["measured_latency_ms"]
    assert d["chosen"][1]["at"] == "predicted" and d["chosen"][1]["xy"] == (33.0, 80.0)
    assert d["floor_ms"] == pytest.approx(11.0)  # the fastest measured subnet (median of its passes)
    assert plot_fronts([dev], tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- 5. one number per fact --------------------------------------------------------------------------------------

def test_report_json_and_csv_give_one_measured_number_per_subnet(note10, tmp_path):
    from bench.demo import one_source, render_report
    from bench.table import subnet_stats
    from bench.store import open_store

    acc, lat = note10
    small, large = W12.smallest(160), W12.largest(224)
    # the last pass of each is not the median: a reader of the latest row alone would see another number
    store = _store_with_subnets(tmp_path / "s.sqlite", "note10", W12,
                                {small: [11.2, 10.4, 7.2], large: [52.0, 53.1, 35.2]})
    measured = measured_subnets(str(store), "note10", W12, acc, lat)
    st = open_store(str(store))
    try:
        fp = st.latest_fingerprint("note10")["id"]
        table_values = {s: v.value_ms for (_, s), v in subnet_stats(st, fp, W12, None)[0].items()}
    finally:
        st.close()
    want = {small.to_string(): 10.4, large.to_string(): 52.0}
    assert {m["config_string"]: m["measured_latency_ms"] for m in measured} == want == table_values

    doc = _demo_doc(small, large, acc, lat)
    one_source(doc, measured)
    dev = build_device_front("note10", W12, acc, lat, np.random.default_rng(3), RES, population=20, generations=5,
                             measured=measured, chosen=chosen_subnets(doc["extremes"] + doc["searches"], measured),
                             end_params=ENDS)
    doc["front"] = {**{k: v for k, v in dev.to_dict().items() if k in ("n_points", "latency_ms", "accuracy", "ends",
                                                                       "floor", "points")},
                    "measured_subnets": len(measured), "chosen": len(dev.chosen)}
    md = render_report(doc)
    js = json.loads(json.dumps(doc))
    rows = list(csv.DictReader(write_csv([dev], tmp_path / "front.csv").open()))
    for cfg in (small, large):
        text = cfg.to_string()
        value = want[text]
        assert f"| {value:.3f} |" in md
        assert [e["measured_latency_ms"] for e in js["extremes"] if e["config_string"] == text] == [value]
        assert [m["measured_latency_ms"] for m in js["measured_subnets"] if m["config_string"] == text] == [value]
        got = {float(r["measured_latency_ms"]) for r in rows if r["config"] == text and r["measured_latency_ms"]}
        assert got == {value}, text
        confirm_reading = next(e for e in js["extremes"] if e["config_string"] == text)["confirm"]["measured_latency_ms"]
        assert f"| {confirm_reading:.3f} |" not in md  # the confirm step's own reading is not shown as a second number
    assert "within ±5% 45%" in md and js["validate"]["within_5pct"] == 0.45
    assert "front.csv" in md


def _demo_doc(small, large, acc, lat) -> dict:
    """A demo report document as run_demo builds it, with the confirm step's readings (not the table's)."""
    def extreme(name, cfg, confirm_ms):
        return {"name": name, "space": W12.name, "config_string": cfg.to_string(), "macs": int(W12.macs(cfg)),
                "predicted_latency_ms": float(lat([cfg])[0]), "confirm": {"measured_latency_ms": confirm_ms}}

    search = {"budget": {"latency_ms": 60.0}, "config_string": large.to_string(),
              "predicted_accuracy": float(acc([large])[0]), "predicted_latency_ms": float(lat([large])[0]),
              "predicted_upper_ms": float(lat.upper([large])[0]), "measured_latency_ms": 35.2,
              "confirm": {"measured_latency_ms": 35.2}, "rounds": [{}], "macs": int(W12.macs(large)),
              "budget_met": True}
    return {"space": W12.name, "device": "note10", "weights": "w.safetensors", "predictor": "p.pth", "store": "s",
            "total_s": 1.0, "settings": {"resolutions": RES}, "steps_s": {"profile": 1.0},
            "profile": {"entries_total": 10, "entries_measured": 10, "entries_reused": 0, "entries_noisy": 0,
                        "subnets_measured": 2, "duration_s": 1.0},
            "validate": {"n": 20, "mape": 0.06, "within_5pct": 0.45, "within_10pct": 0.8, "kendall_tau": 0.9},
            "searches": [search], "extremes": [extreme("smallest", small, 7.2), extreme("largest", large, 35.2)],
            "latency_ratio_largest_to_smallest": 5.0}
