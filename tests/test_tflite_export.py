""".tflite as phones run it: channel-last in and out with no layout TRANSPOSE, equal to torch, cached by
content, converted in workers whose output never reaches stdout; the device's format wherever a subnet goes out.

Needs the `convert` extra (litert-torch): skipped without it. The small Fashion-MNIST space at 24 px, a few
entries; the whole-table profile over the loopback ADB device is `slow`.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from bench.table import candidates  # noqa: E402
from bench.export import ExportQueue, export_entry, model_key  # noqa: E402
from bench.tflite import CHECK_ATOL, run_tflite, tflite_metadata, tflite_ops  # noqa: E402
from ofa_core.space import SearchSpace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.get("ofa-mbv3-fmnist")
RES = 24
ENTRIES = candidates(SPACE, [RES])

LITERT_PROFILE = """
name = "{name}"
kind = "local"
description = "this host, LiteRT (.tflite), 1 thread, short timings: for tests"
runtime = "litert"
threads = 1
warmup_runs = 2
warmup_s = 0.02
min_runs = 5
min_duration_s = 0.05
max_duration_s = 2.0
max_remeasure = 1
"""


def _pick(*kinds, se=None):
    for e in ENTRIES:
        if e.kind in kinds and (se is None or f"-se:{int(se)}-" in e.key):
            return e
    raise LookupError(kinds)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A few entries converted once for the module (through the workers): the first conv, an MBConv with
    squeeze-excite, the pool and the classifier."""
    cache = tmp_path_factory.mktemp("tflite-cache")
    picked = [_pick("first_conv"), _pick("mbconv", se=True), _pick("pool"), _pick("logits")]
    with ExportQueue("tflite", cache=cache) as queue:
        queue.add_entries(SPACE, picked)
        paths = [queue.entry(SPACE, e) for e in picked]
        assert queue.converted == len(picked) and queue.convert_cpu_s > 0
    return cache, list(zip(picked, paths))


def _nhwc(shape):
    return (shape[0], *shape[2:], shape[1])


def test_channel_last_without_transpose_and_equal_to_torch(converted):
    import torch

    from bench.export import entry_module

    _, pairs = converted
    for entry, path in pairs:
        assert path.suffix == ".tflite"
        ops = tflite_ops(path)
        assert "TRANSPOSE" not in ops, (entry.kind, ops)
        meta = tflite_metadata(path)
        assert meta["layout"] == "nhwc" and meta["input_shape_nchw"] == list(entry.input_shape)
        x = np.random.default_rng(1).standard_normal(entry.input_shape).astype(np.float32)
        with torch.no_grad():
            want = entry_module(SPACE, entry)(torch.from_numpy(x)).numpy()  # the same seeded weights
        if want.ndim == 4:
            want = want.transpose(0, 2, 3, 1)
        got = run_tflite(path, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= CHECK_ATOL * max(1.0, np.abs(want).max()), entry.kind
    assert "MEAN" in tflite_ops(pairs[2][1]) and tflite_ops(pairs[3][1]) == ["FULLY_CONNECTED"]


def test_the_runner_feeds_the_models_own_channel_last_shape(converted, capsys):
    from agents import runner

    _, pairs = converted
    entry, path = pairs[1]
    assert runner.main([str(path), "--runtime", "litert", "--warmup-runs", "1", "--warmup-s", "0",
                        "--min-runs", "3", "--min-duration-s", "0"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert rec["inputs"][0]["shape"] == list(_nhwc(entry.input_shape)) and rec["n"] >= 3


def test_a_cached_model_is_not_converted_again(converted, monkeypatch):
    import bench.export as export

    cache, pairs = converted
    entry, path = pairs[0]
    mtime = path.stat().st_mtime_ns

    def no_conversion(job):
        raise AssertionError(f"converted {job.what} again")

    monkeypatch.setattr(export, "_start", no_conversion)
    assert export_entry(SPACE, entry, "tflite", cache=cache) == path and path.stat().st_mtime_ns == mtime
    with ExportQueue("tflite", cache=cache) as queue:
        queue.add_entries(SPACE, [e for e, _ in pairs])
        assert [queue.entry(SPACE, e) for e, _ in pairs] == [p for _, p in pairs] and queue.queued == 0


def test_the_key_is_the_content_the_layout_and_the_format():
    from bench.export import entry_module

    e = _pick("mbconv")
    m = entry_module(SPACE, e)
    key = model_key(m, e.input_shape, "tflite", "nhwc")
    assert key == model_key(entry_module(SPACE, e), e.input_shape, "tflite", "nhwc")  # seeded: same content
    assert key != model_key(m, e.input_shape, "tflite", "nchw")  # an old channel-first file is never reused
    assert key != model_key(m, e.input_shape, "onnx", "nchw")
    assert key != model_key(entry_module(SPACE, e, seed=1), e.input_shape, "tflite", "nhwc")  # other weights


def test_converter_output_never_reaches_stdout(tmp_path):
    """A new conversion in a command that prints one JSON document: stdout holds exactly that document, and
    stderr none of the converter's chatter or FutureWarnings."""
    code = ("import json; from bench.table import candidates; from bench.export import export_entry; "
            "from ofa_core.space import SearchSpace; s = SearchSpace.get('ofa-mbv3-fmnist'); "
            f"p = export_entry(s, candidates(s, [{RES}])[7], 'tflite'); print(json.dumps({{'path': str(p)}}))")
    env = dict(os.environ, OFA_BENCH_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert Path(doc["path"]).suffix == ".tflite" and r.stdout.count("\n") == 1
    assert "Warning" not in r.stderr and "INFO" not in r.stderr and r.stderr.strip() == "", r.stderr[-2000:]


@pytest.fixture
def litert_device():
    folder = Path(os.environ["OFA_BENCH_DEVICES"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "litert-test.toml").write_text(LITERT_PROFILE.format(name="litert-test"))
    return "litert-test"


def test_search_export_writes_what_a_litert_device_runs(litert_device, monkeypatch, tmp_path):
    import bench.search as search_cmd
    from _answers import search_answer

    cfg = SPACE.smallest(RES)
    monkeypatch.setattr(search_cmd, "run_search", lambda *args: search_answer(SPACE, cfg))
    assert search_cmd.device_format(litert_device) == "tflite" and search_cmd.device_format("local-cpu") == "onnx"
    out = tmp_path / "best.tflite"
    doc = search_cmd.search_confirmed(litert_device, 1.0, None, None, "store", None, None, 0, 10, 5, None, out,
                                      say=lambda m: None).to_dict()
    assert out.is_file() and doc["export"]["format"] == "tflite" and doc["export"]["layout"] == "nhwc"
    assert "TRANSPOSE" not in tflite_ops(out)
    interp_shape = _nhwc((1, SPACE.in_channels, RES, RES))
    assert run_tflite(out, np.zeros(interp_shape, np.float32)).shape == (1, SPACE.n_classes)


def test_search_refuses_an_export_name_in_another_format(litert_device, tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench.cli", "search", "--device", litert_device, "--latency-ms", "1",
                        "--export", str(tmp_path / "best.onnx"), "--store", str(tmp_path / "s.sqlite")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and ".tflite" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "best.onnx").exists()


@pytest.mark.slow
@pytest.mark.adb
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_profile_json_and_confirm_on_a_litert_device_over_loopback_adb(tmp_path, precision):
    """The whole table over the loopback ADB device with LiteRT at each precision: `--json` prints one
    document, stderr carries progress only, every model is channel-last and of the device's precision; then
    `pareto` draws the table's front and `search --confirm` times the .tflite subnet there."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _fixtures_adb import start_loopback_process

    device = start_loopback_process(tmp_path / "phone")
    try:
        devices = tmp_path / "devices"
        devices.mkdir()
        (devices / "litert-adb.toml").write_text(
            LITERT_PROFILE.format(name="litert-adb").replace('kind = "local"', 'kind = "adb"')
            + f'address = "{device.serial}"\npython = "{sys.executable}"\ntimeout_s = 60.0\n'
            + f'precision = "{precision}"\n')
        env = dict(os.environ, OFA_BENCH_DEVICES=str(devices), OFA_BENCH_CACHE=str(tmp_path / "cache"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        store = str(tmp_path / "s.sqlite")
        r = subprocess.run([sys.executable, "-m", "bench.cli", "profile", "litert-adb", "--space", SPACE.name,
                            "--resolutions", str(RES), "--store", store, "--json"],
                           capture_output=True, text=True, timeout=1200, env=env, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        doc = json.loads(r.stdout)
        assert doc["entries_measured"] == len(ENTRIES) and doc["simulated"] is True
        assert "Warning" not in r.stderr, r.stderr[-3000:]
        models = list((tmp_path / "cache").rglob("*.tflite"))
        assert models and all(tflite_metadata(m)["layout"] == "nhwc" for m in models)
        assert {tflite_metadata(m)["precision"] for m in models} == {precision}
        assert not any("TRANSPOSE" in tflite_ops(m) for m in models)
        r = subprocess.run([sys.executable, "-m", "bench.cli", "pareto", "--device", "litert-adb", "--out",
                            str(tmp_path / "front.png"), "--generations", "20", "--store", store, "--json"],
                           capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["devices"][0]["n_points"] >= 2 and (tmp_path / "front.png").stat().st_size
        r = subprocess.run([sys.executable, "-m", "bench.cli", "search", "--device", "litert-adb", "--latency-ms",
                            "100", "--generations", "20", "--confirm", "--confirm-rounds", "1", "--store", store,
                            "--json"], capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        found = json.loads(r.stdout)
        assert found["confirm"]["measured_latency_ms"] > 0 and found["export"]["format"] == "tflite"
        assert found["export"]["precision"] == precision
    finally:
        device.stop()


# ---- int8 ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_models(tmp_path_factory):
    pytest.importorskip("ai_edge_quantizer")
    cache = tmp_path_factory.mktemp("int8-cache")
    picked = [_pick("first_conv"), _pick("mbconv", se=True)]
    with ExportQueue("tflite", cache=cache, precision="int8") as queue:
        queue.add_entries(SPACE, picked)
        return cache, [(e, queue.entry(SPACE, e)) for e in picked]


def test_int8_models_are_quantised_channel_last_and_calibrated(int8_models):
    from bench.export import calibration_inputs, entry_module

    _, pairs = int8_models
    for entry, path in pairs:
        meta = tflite_metadata(path)
        assert meta["precision"] == "int8" and meta["layout"] == "nhwc"
        assert "TRANSPOSE" not in tflite_ops(path) and "QUANTIZE" not in tflite_ops(path)  # int8 in, int8 out
        data, doc = calibration_inputs(SPACE, entry.input_shape, entry.kind == "first_conv")
        assert meta["calibration"] == doc and data.shape[1:] == entry.input_shape[1:]
        import torch

        with torch.no_grad():
            want = entry_module(SPACE, entry)(torch.from_numpy(data[:1])).numpy().transpose(0, 2, 3, 1)
        got = run_tflite(path, np.ascontiguousarray(data[:1].transpose(0, 2, 3, 1)))
        assert np.abs(got - want).max() <= 0.25 * max(1.0, np.abs(want).max())
    first_conv_calibration = tflite_metadata(pairs[0][1])["calibration"]
    from ofa_core.data import DatasetError, load_fmnist

    try:
        load_fmnist()
        assert first_conv_calibration.startswith("fashion-mnist:")  # the image goes in: the data set's images
    except DatasetError:
        assert first_conv_calibration.startswith("noise:")
    assert tflite_metadata(pairs[1][1])["calibration"].startswith("noise:")  # an inner block: seeded noise


def test_int8_has_its_own_cache_entries_and_runs_in_the_runner(int8_models, converted, capsys):
    from agents import runner

    int8_cache, int8_pairs = int8_models
    _, fp32_pairs = converted
    assert int8_pairs[0][1].name != fp32_pairs[0][1].name  # same entry, other precision: another file
    path = int8_pairs[1][1]
    assert runner.main([str(path), "--runtime", "litert", "--warmup-runs", "1", "--warmup-s", "0",
                        "--min-runs", "3", "--min-duration-s", "0"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert rec["inputs"][0]["dtype"] == "int8" and rec["inputs"][0]["shape"] == list(_nhwc(int8_pairs[1][0].input_shape))


def test_precision_in_profiles_and_fingerprints(tmp_path):
    from devices.fingerprint import complete_fingerprint, fingerprint_id
    from devices.profile import DeviceProfile, DeviceProfileError

    fp32 = DeviceProfile(name="phone", runtime="litert")
    int8 = fp32.replace(precision="int8")
    reported = {"model": "Pixel", "runtime": "litert", "runtime_version": "2.3.0"}
    assert fingerprint_id(complete_fingerprint(reported, fp32)) != fingerprint_id(complete_fingerprint(reported, int8))
    assert "precision" not in complete_fingerprint(reported, fp32)  # fp32 tables keep the ids they had
    with pytest.raises(DeviceProfileError, match="int8"):
        DeviceProfile(name="cpu", runtime="onnxruntime", precision="int8")
    with pytest.raises(DeviceProfileError, match="precision"):
        DeviceProfile(name="phone", runtime="litert", precision="fp16")
    r = subprocess.run([sys.executable, "-m", "bench.cli", "devices", "add", "int8-phone", "--kind", "adb",
                        "--address", "127.0.0.1:5555", "--runtime", "litert", "--precision", "int8", "--json"],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=dict(os.environ, OFA_BENCH_DEVICES=str(tmp_path / "devices")))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["profile"]["precision"] == "int8"
    assert 'precision = "int8"' in (tmp_path / "devices" / "int8-phone.toml").read_text()


def test_eval_scores_the_int8_tflite_through_litert(capsys):
    """`eval --precision int8` scores the int8 .tflite as a phone runs it, close to the float subnet's top-1;
    the same file at fp32 through LiteRT agrees with onnxruntime image for image (one image may flip)."""
    from bench.cli import main

    args = ["eval", "--config", "smallest", "--split", "test", "--limit", "300", "--recal-images", "300", "--json"]
    docs = {}
    for extra in ([], ["--runtime", "litert"], ["--precision", "int8"]):
        assert main(args + extra) == 0
        doc = json.loads(capsys.readouterr().out)
        docs[(doc["precision"], doc["runtime"])] = doc
    ort, fp32, int8 = docs["fp32", "onnxruntime"], docs["fp32", "litert"], docs["int8", "litert"]
    assert fp32["model"].endswith(".tflite") and int8["model"].endswith(".tflite") and ort["model"] is None
    assert abs(fp32["top1"] - ort["top1"]) <= 1 / 300
    assert ort["top1"] > 0.6 and abs(int8["top1"] - ort["top1"]) <= 0.05  # the shipped weights are trained
    assert tflite_metadata(int8["model"])["precision"] == "int8"
    assert main(args + ["--precision", "int8", "--runtime", "onnxruntime"]) == 2
    assert main(args + ["--precision", "int4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--runtime litert" in err[0] and "--precision" in err[1]
