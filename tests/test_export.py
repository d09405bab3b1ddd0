"""Export: one ONNX file per entry (opset 17, fixed batch-1 shape), cached by content hash; whole subnets."""
import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench.table import candidates
from bench.export import ExportError, export_entry, export_subnet
from ofa_core.space import SearchSpace

SPACE = SearchSpace.get("ofa-mbv3-fmnist")


def _run(path):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    x = np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)
    return inp.shape, sess.run(None, {inp.name: x})[0]


def test_every_kind_exports_and_runs(tmp_path):
    entries = candidates(SPACE, [24])
    picked = {}
    for e in entries:
        picked.setdefault(e.kind, e)
    for kind, e in picked.items():
        path = export_entry(SPACE, e, cache=tmp_path)
        model = onnx.load(str(path))
        assert model.opset_import[0].version == 17
        shape, y = _run(path)
        assert shape == list(e.input_shape)
        if kind == "logits":
            assert y.shape == (1, SPACE.n_classes)
        else:
            assert y.shape == (1, e.out_channels, e.out_hw, e.out_hw)


def test_cache_hit_is_free_and_keys_differ(tmp_path):
    a, b = candidates(SPACE, [24])[5:7]
    pa = export_entry(SPACE, a, cache=tmp_path)
    mtime = pa.stat().st_mtime_ns
    assert export_entry(SPACE, a, cache=tmp_path) == pa and pa.stat().st_mtime_ns == mtime
    pb = export_entry(SPACE, b, cache=tmp_path)
    assert pb != pa
    # another space with the same key text never shares a file
    w10 = SearchSpace.get("ofa-mbv3-w1.0")
    assert export_entry(w10, candidates(w10, [128])[-1], cache=tmp_path).parent != pa.parent
    assert not list(tmp_path.rglob("*.part"))


def test_subnet_seeded_and_given_weights(tmp_path):
    import torch

    from bench.export import subnet_module

    cfg = SPACE.sample(np.random.default_rng(1), 1, [28])[0]
    p1 = export_subnet(SPACE, cfg, cache=tmp_path)
    assert export_subnet(SPACE, cfg, cache=tmp_path) == p1
    assert export_subnet(SPACE, cfg, seed=1, cache=tmp_path) != p1
    shape, y = _run(p1)
    assert shape == [1, 1, 28, 28] and y.shape == (1, 10)
    module = subnet_module(SPACE, cfg, seed=7)
    p2 = export_subnet(SPACE, cfg, weights=module, cache=tmp_path)
    _, y2 = _run(p2)
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y2, want, rtol=1e-4, atol=1e-4)


def test_unknown_format_and_missing_converter(tmp_path):
    e = candidates(SPACE, [24])[0]
    with pytest.raises(ExportError):
        export_entry(SPACE, e, "pdf", cache=tmp_path)
    if importlib.util.find_spec("litert_torch") is None:
        with pytest.raises(ExportError, match="litert-torch"):
            export_entry(SPACE, e, "tflite", cache=tmp_path)


def test_one_cache_folder_rule(monkeypatch, tmp_path):
    """Exported models, runner bundles and the local device's work folder all live under one cache folder:
    `$OFA_BENCH_CACHE`, else `ofa-bench` under `$XDG_CACHE_HOME` (they once disagreed on the latter)."""
    from pathlib import Path

    from agents.cache import cache_root
    from agents.transports.local import default_workdir
    from bench.export import cache_dir

    monkeypatch.delenv("OFA_BENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "ofa-bench"
    assert cache_dir().parent == cache_root() and Path(default_workdir()).parent == cache_root()
    monkeypatch.setenv("OFA_BENCH_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "models" and Path(default_workdir()) == tmp_path / "mine" / "device-local"


def test_the_subnet_handed_out_is_the_one_eval_scores(tmp_path):
    """`search --export` / `--confirm` hand out the subnet with its BatchNorm statistics recalibrated as `eval`
    does: the exported file scores what `evaluate_subnet` scores, image for image."""
    from bench.export import write_subnet
    from ofa_core.checkpoint import load_supernet
    from ofa_core.data import load_fmnist, prepare
    from ofa_core.evaluate import evaluate_subnet

    space = SearchSpace.get("ofa-mbv3-fmnist")
    cfg = space.sample(np.random.default_rng(3))
    doc = write_subnet(space, cfg, tmp_path / "subnet.onnx")
    assert doc["weights"] == "shipped" and doc["batchnorm"].startswith("recalibrated")
    data = load_fmnist()
    test = data.test.head(500)
    sess = ort.InferenceSession(doc["path"], providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    hits = sum(int(sess.run(None, {name: prepare(test.images[i:i + 1], cfg.r).contiguous().numpy()})[0].argmax()
                   == int(test.labels[i])) for i in range(len(test)))
    expected = evaluate_subnet(load_supernet(space), cfg, test, data.train, recal_images=2000, seed=0)
    assert abs(hits / len(test) - expected) <= 1 / len(test)


def test_pt2_programs_for_the_torch_runtime(tmp_path):
    """Entries and subnets as torch ExportedPrograms (.pt2): cached by content, loaded and run by the torch
    runtime, the same output as the module; channel-last and int8 .pt2 are one-line errors."""
    import torch

    from agents.runtimes import get_runtime
    from bench.export import entry_module

    e = next(x for x in candidates(SPACE, [24]) if x.kind == "mbconv")
    path = export_entry(SPACE, e, "pt2", cache=tmp_path)
    assert path.suffix == ".pt2" and export_entry(SPACE, e, "pt2", cache=tmp_path) == path
    assert export_entry(SPACE, e, "onnx", cache=tmp_path) != path
    x = torch.randn(e.input_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        np.testing.assert_allclose(torch.export.load(str(path)).module()(x).numpy(),
                                   entry_module(SPACE, e)(x).numpy(), rtol=1e-5, atol=1e-5)
    cfg = SPACE.sample(np.random.default_rng(2), 1, [28])[0]
    sub = export_subnet(SPACE, cfg, "pt2", cache=tmp_path, batch=2)
    loaded = get_runtime("torch").load(str(sub), 1, "cpu")
    assert loaded.inputs[0]["shape"] == [2, 1, 28, 28]
    assert tuple(loaded.run().shape) == (2, SPACE.n_classes)
    with pytest.raises(ExportError, match="channel-first"):
        export_entry(SPACE, e, "pt2", cache=tmp_path, layout="nhwc")
    with pytest.raises(ExportError, match="int8"):
        export_entry(SPACE, e, "pt2", cache=tmp_path, precision="int8")
    assert not list(tmp_path.rglob("*.part"))


def test_an_export_queue_writes_pt2_in_process(tmp_path):
    """.pt2 programs take milliseconds, like ONNX: a queue writes them on demand, never in a .tflite converter
    worker (which once wrote a file no torch could load under a .pt2 name)."""
    import torch

    from bench.export import ExportQueue

    entries = [e for e in candidates(SPACE, [24]) if e.kind == "mbconv"][:3]
    with ExportQueue("pt2", cache=tmp_path) as q:
        q.add_entries(SPACE, entries)
        assert q.queued == 0
        path = q.entry(SPACE, entries[0])
    assert path.suffix == ".pt2" and torch.export.load(str(path)) is not None
