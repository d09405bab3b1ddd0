"""Table entries and whole subnets as standalone static models, in the format and layout the device runs:
ONNX (NCHW), .tflite as deployed on a phone (NHWC in and out, no layout TRANSPOSE; the optional `convert`
extra), or a torch ExportedProgram (.pt2, NCHW) for the torch runtime, cached on disk by the content of the
model.

The cache key is the model's content (architecture and every weight), its input shape (batch size included: a
model takes a batch of B images, (B, C, R, R)), the format, layout and precision, and the versions of the
exporters: re-exporting the same model is free, and a change in any of them
gives a new file. Files are written to a temporary name and renamed, so concurrent profilers never see half a
model. .tflite files are converted in worker processes (`bench.converters`); an `ExportQueue` converts the
models a command will need next while it measures the ones it has.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

from agents.cache import cache_root
from ofa_core.atomic import atomic_path
from ofa_core.errors import OFABenchError
from ofa_core.onnx_export import EXPORT_LOCK, OPSET, export_onnx
from ofa_core.space import SearchSpace, SubnetConfig

from bench.table import Entry

# Building a module seeds torch's global generator: one build at a time, so two profile threads never mix seeds
# (the weights, and so the cache key, of an entry are the same whoever builds it).
_BUILD_LOCK = threading.Lock()
#: "pt2": a torch.export ExportedProgram (`torch.export.save`), for the torch runtime (CPU, or CUDA events on a GPU)
FORMATS = ("onnx", "tflite", "pt2")
#: formats written in this process in well under a second (on demand); the others go to converter workers
IN_PROCESS = ("onnx", "pt2")
#: "nchw": torch's own layout (ONNX); "nhwc": channel-last inputs and outputs, as LiteRT runs models on phones
LAYOUTS = ("nchw", "nhwc")
#: "int8": static int8 weights and activations (int8 inputs and outputs), .tflite only, calibrated
PRECISIONS = ("fp32", "int8")
#: spaces with a data set: their image-input models calibrate on its training images, others on seeded noise
CALIBRATION_DATA = {"ofa-mbv3-fmnist": "fashion-mnist"}
CALIBRATION_SAMPLES = 64
EXPORTER_TAG = "bench.export/2"  # 2: content keys, layout and precision in the key, .tflite channel-last


class ExportError(OFABenchError):
    """A model that cannot be exported (unknown format, missing optional converter)."""


def cache_dir() -> Path:
    """Exported models: `models` in the host's cache folder (`agents.cache.cache_root`)."""
    return cache_root() / "models"


def default_layout(fmt: str) -> str:
    """The layout a device running `fmt` is fed: channel-last for .tflite (LiteRT), channel-first for ONNX."""
    return "nhwc" if fmt == "tflite" else "nchw"


def check_target(fmt: str, layout: str | None, precision: str = "fp32") -> str:
    """The layout to export `fmt` in (`layout`, else the format's own); a one-line error for what cannot be."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown model format {fmt!r}; known: {', '.join(FORMATS)}")
    layout = layout or default_layout(fmt)
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if fmt in ("onnx", "pt2") and layout != "nchw":
        raise ExportError(f"{'ONNX' if fmt == 'onnx' else '.pt2'} models are exported channel-first (nchw) only")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision == "int8" and fmt != "tflite":
        raise ExportError(f"int8 models are exported as .tflite only, not {fmt}")
    if fmt == "tflite" and importlib.util.find_spec("litert_torch") is None:
        raise ExportError("converting to .tflite needs the optional litert-torch package "
                          "(pip install 'ofa-bench[convert]')")
    if precision == "int8" and importlib.util.find_spec("ai_edge_quantizer") is None:
        raise ExportError("int8 quantisation needs the optional ai-edge-quantizer package "
                          "(pip install 'ofa-bench[convert]')")
    return layout


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return "missing"


def exporter_versions(fmt: str) -> dict:
    """Versions of everything that shapes the exported file (part of every cache key)."""
    return dict(_exporter_versions(fmt))


@functools.lru_cache(maxsize=None)
def _exporter_versions(fmt: str) -> tuple:
    import torch

    out = {"torch": torch.__version__, "tag": EXPORTER_TAG}
    if fmt == "onnx":
        out.update(opset=OPSET, onnx=_version("onnx"))
    if fmt == "tflite":
        out.update({d: _version(d) for d in ("litert-torch", "ai-edge-litert", "litert-converter",
                                               "ai-edge-quantizer")})
    return tuple(sorted(out.items()))


# ---- modules ---------------------------------------------------------------------------------------------
def entry_module(space: SearchSpace, entry: Entry, seed: int = 0):
    """The static module of one table entry, in eval mode with seeded random weights."""
    import torch

    from ofa_core import blocks as B

    torch.manual_seed(seed)
    build = {
        "first_conv": lambda: B.first_conv(space),
        "first_block": lambda: B.first_block(space),
        "mbconv": lambda: B.mbconv(space, entry.spec, entry.kernel, entry.expand),
        "final_expand": lambda: B.final_expand(space),
        "pool": lambda: B.global_pool(),
        "feature_mix": lambda: B.feature_mix(space),
        "logits": lambda: B.classifier(space),
    }
    if entry.kind not in build:
        raise ExportError(f"unknown entry kind {entry.kind!r}")
    return build[entry.kind]().eval()


def subnet_module(space: SearchSpace, cfg: SubnetConfig, seed: int = 0):
    """A whole static subnet built from the same factories as the table entries, seeded random weights."""
    import torch

    from ofa_core import blocks as B

    space.validate(cfg)
    torch.manual_seed(seed)
    specs = space.blocks()
    blocks = [B.first_block(space)] + [B.mbconv(space, specs[i], cfg.ks[i], cfg.e[i]) for i in cfg.active_slots()]
    return B.StaticMobileNetV3(B.first_conv(space), blocks, B.final_expand(space), B.global_pool(),
                               B.feature_mix(space), B.classifier(space)).eval()


def model_key(module, input_shape: Sequence[int], fmt: str, layout: str, precision: str = "fp32",
              calibration: str = "") -> str:
    """Content hash of what the exported file depends on: architecture, weights and buffers, input shape,
    format, layout, precision (and the calibration data of an int8 model), exporter versions."""
    h = hashlib.sha256()
    h.update(json.dumps({"architecture": repr(module), "shape": list(input_shape), "format": fmt, "layout": layout,
                         "precision": precision, "calibration": calibration, "versions": exporter_versions(fmt)},
                        sort_keys=True).encode())
    state = module.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:24]


def calibration_inputs(space: SearchSpace, input_shape: Sequence[int], image_input: bool, seed: int = 0):
    """(NCHW float32 samples, description) to calibrate an int8 model: the space's data set, prepared as in
    training, for a model that takes the image (a whole subnet, the first conv); seeded noise otherwise (an
    inner block, a space without a data set, a data set not installed). Latency hardly depends on the scales."""
    import numpy as np

    n = CALIBRATION_SAMPLES
    if image_input and CALIBRATION_DATA.get(space.name) == "fashion-mnist":
        try:
            return _fmnist_images(int(input_shape[-1]), n, seed), f"fashion-mnist:train:{n}:seed{seed}"
        except OFABenchError:
            pass  # no data set here: noise, and the key says so
    noise = np.random.default_rng(seed).standard_normal((n, *tuple(input_shape)[1:])).astype(np.float32)
    return noise, f"noise:normal:{n}:seed{seed}"


@functools.lru_cache(maxsize=8)
def _fmnist_images(resolution: int, n: int, seed: int):
    import numpy as np
    import torch

    from ofa_core.data import load_fmnist, prepare

    train = load_fmnist().train
    pick = torch.from_numpy(np.random.default_rng(seed).choice(len(train), n, replace=False))
    return prepare(train.images[pick], resolution).contiguous().numpy().astype(np.float32)


# ---- writing ---------------------------------------------------------------------------------------------
class _Job:
    """One model to export: the module, its NCHW input shape, where it goes, how (int8: calibrated on what)."""

    def __init__(self, module, input_shape, path: Path, fmt: str, layout: str, check: bool, what: str,
                 precision: str = "fp32", calibration=None, calibration_doc: str = ""):
        self.module, self.input_shape, self.path = module, tuple(input_shape), path
        self.fmt, self.layout, self.check, self.what = fmt, layout, check, what
        self.precision, self.calibration, self.calibration_doc = precision, calibration, calibration_doc


def _entry_job(space: SearchSpace, entry: Entry, fmt: str, layout: str, cache: Path | None,
               precision: str = "fp32", batch: int = 1) -> _Job:
    with _BUILD_LOCK:
        module = entry_module(space, entry)
    shape = (int(batch), *entry.input_shape[1:])
    data, doc = (calibration_inputs(space, shape, entry.kind == "first_conv") if precision == "int8"
                 else (None, ""))
    digest = model_key(module, shape, fmt, layout, precision, doc)
    path = Path(cache or cache_dir()) / space.name / f"{entry.resolution}" / f"{digest}.{fmt}"
    return _Job(module, shape, path, fmt, layout, check=fmt == "tflite", what=entry.key,
                precision=precision, calibration=data, calibration_doc=doc)


def _subnet_job(space: SearchSpace, cfg: SubnetConfig, fmt: str, layout: str, weights, seed: int,
                cache: Path | None, precision: str = "fp32", batch: int = 1) -> _Job:
    space.validate(cfg)
    if hasattr(weights, "state_dict"):
        module = weights.eval()
    else:
        with _BUILD_LOCK:
            module = subnet_module(space, cfg, seed)
        if weights is not None:
            module.load_state_dict(weights)
    shape = (int(batch), space.in_channels, cfg.r, cfg.r)
    data, doc = calibration_inputs(space, shape, True) if precision == "int8" else (None, "")
    digest = model_key(module, shape, fmt, layout, precision, doc)
    path = Path(cache or cache_dir()) / space.name / "subnets" / f"{digest}.{fmt}"
    return _Job(module, shape, path, fmt, layout, check=True, what=cfg.to_string(), precision=precision,
                calibration=data, calibration_doc=doc)


def _write_onnx(job: _Job) -> None:
    export_onnx(job.module, job.path, job.input_shape, check=job.check)


def _write_pt2(job: _Job) -> None:
    """The module as a torch ExportedProgram of its fixed input shape, written under a temporary name and
    renamed (readers never see half a file); with `check`, the loaded program's output against the module's."""
    import torch

    x = torch.randn(job.input_shape, generator=torch.Generator().manual_seed(0))
    with EXPORT_LOCK, torch.no_grad():  # one export at a time: tracing is not safe across threads
        try:
            program = torch.export.export(job.module, (x,))
        except Exception as exc:
            raise ExportError(f"torch.export failed for {job.what}: {' '.join(str(exc).split())[:300]}") from None
        buf = io.BytesIO()
        torch.export.save(program, buf)
        with atomic_path(job.path) as tmp:
            tmp.write_bytes(buf.getvalue())
        if job.check:
            got = torch.export.load(str(job.path)).module()(x)
            want = job.module(x)
            scale = max(1.0, float(want.abs().max()))
            if not torch.allclose(got, want, atol=1e-4 * scale, rtol=0):
                job.path.unlink(missing_ok=True)
                raise ExportError(f"the exported program of {job.what} does not reproduce the module's output")


def _metadata(job: _Job) -> dict:
    doc = {"exporter": EXPORTER_TAG, "precision": job.precision, "input_shape_nchw": list(job.input_shape),
           "model": job.what}
    if job.precision == "int8":
        doc["calibration"] = job.calibration_doc
    return doc


# Conversions in flight, by target path: two queues (two devices' profiles) asking for one file share a job.
_inflight: dict[Path, Future] = {}
_inflight_lock = threading.Lock()


def _start(job: _Job) -> Future | None:
    """Start converting `job` in a worker (None: the file is already there)."""
    from bench.converters import shared_pool

    with _inflight_lock:
        if job.path in _inflight:
            return _inflight[job.path]
        if job.path.exists():
            return None
        fut = shared_pool().submit("tflite", job.module, job.input_shape, str(job.path), job.layout, _metadata(job),
                                   job.precision, job.calibration)
        _inflight[job.path] = fut
    fut.add_done_callback(lambda f, p=job.path: _finished(p, f))
    return fut


def _finished(path: Path, fut: Future) -> None:
    with _inflight_lock:
        if _inflight.get(path) is fut:
            del _inflight[path]


def _wait(fut: Future) -> dict:
    """The result of a conversion; Ctrl-C while waiting ends the workers, so nothing queued delays the exit."""
    from bench.converters import close_shared_pool

    try:
        return fut.result()
    except (KeyboardInterrupt, SystemExit):
        close_shared_pool(kill=True)
        raise


def _materialise(job: _Job) -> Path:
    if job.path.exists():
        return job.path
    if job.fmt in IN_PROCESS:
        job.path.parent.mkdir(parents=True, exist_ok=True)
        (_write_onnx if job.fmt == "onnx" else _write_pt2)(job)
        return job.path
    fut = _start(job)
    if fut is not None:
        _wait(fut)
    return job.path


def export_entry(space: SearchSpace, entry: Entry, fmt: str = "onnx", cache: Path | None = None,
                 layout: str | None = None, precision: str = "fp32", batch: int = 1) -> Path:
    """The model file of one table entry (a fixed input shape of `batch` samples), exported once and then served
    from the cache."""
    layout = check_target(fmt, layout, precision)
    return _materialise(_entry_job(space, entry, fmt, layout, cache, precision, batch))


def export_subnet(space: SearchSpace, cfg: SubnetConfig, fmt: str = "onnx", weights=None, seed: int = 0,
                  cache: Path | None = None, layout: str | None = None, precision: str = "fp32",
                  batch: int = 1) -> Path:
    """A whole subnet as one model taking (batch, C, R, R), checked against torch: random-but-seeded weights
    (latency does not depend on values), or `weights` (a state dict of the static subnet, or an nn.Module such
    as `supernet.extract(cfg)`)."""
    layout = check_target(fmt, layout, precision)
    return _materialise(_subnet_job(space, cfg, fmt, layout, weights, seed, cache, precision, batch))


def write_subnet(space: SearchSpace, cfg: SubnetConfig, out: str | Path, fmt: str = "onnx",
                 precision: str = "fp32", batch: int = 1) -> dict:
    """The subnet extracted from the supernet (the shipped weights if the space has them, else seeded random
    ones), in the format and layout a device running `fmt` takes, checked against torch, copied to `out`.
    Every command that hands a subnet to a user or a device (`search --export`, `--confirm`, the demo) uses it.
    With shipped weights the subnet's BatchNorm statistics are recalibrated on training images first, as
    `ofa-bench eval` scores it: the supernet's running statistics are not any one subnet's, and an int8 model
    calibrated on such a subnet's skewed activations misses its float output by far more than int8 steps."""
    from ofa_core.checkpoint import load_supernet, shipped_weights_path
    from ofa_core.supernet import OFAMobileNetV3

    layout = check_target(fmt, None, precision)
    cfg = space.validate(cfg)
    bn = "not recalibrated"
    if shipped_weights_path(space.name).is_file():
        net, weights = load_supernet(space), "shipped"
        module, bn = _recalibrated(net, cfg)
    else:
        import torch

        torch.manual_seed(0)
        net, weights = OFAMobileNetV3(space).eval(), "random"
        module = net.extract(cfg).eval()
    cached = export_subnet(space, cfg, fmt, weights=module, layout=layout, precision=precision, batch=batch)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        shutil.copyfile(cached, tmp)
    return {"path": str(out), "format": fmt, "layout": layout, "precision": precision, "batch": int(batch),
            "weights": weights, "batchnorm": bn,
            "note": "" if weights == "shipped" else f"no shipped weights for {space.name}: random weights "
                                                    "(fine for latency, meaningless for accuracy)"}


def _recalibrated(net, cfg: SubnetConfig, images: int = 2000):
    """(the static subnet with its BatchNorm statistics recomputed on `images` training images, what was done);
    without the data set, the supernet's statistics as they are, and said."""
    from ofa_core.data import DatasetError, load_fmnist
    from ofa_core.evaluate import calibrated_subnet, recal_sample

    if CALIBRATION_DATA.get(net.space.name) != "fashion-mnist":
        return net.extract(cfg).eval(), "not recalibrated (no data set for this space)"
    try:
        train = load_fmnist().train
    except DatasetError:
        return net.extract(cfg).eval(), "not recalibrated (no Fashion-MNIST here)"
    return calibrated_subnet(net, cfg, recal_sample(train, images)), f"recalibrated on {images} training images"


# ---- exporting ahead -------------------------------------------------------------------------------------
class ExportQueue:
    """Models a command will measure, exported ahead in converter workers while it measures others.

    `add_entries` / `add_subnets` queue what is not cached yet (in order: what is needed first goes first);
    `entry` / `subnet` return a model's file, waiting for it if it is still converting (and converting it then
    if it was never queued). ONNX and .pt2 exports take milliseconds: they are done on demand, in this process.
    `progress(done, total)` follows the conversions. Leaving the `with` block cancels what was not needed;
    leaving it through an error or Ctrl-C ends the workers at once. Every model of a queue takes `batch` samples.
    """

    def __init__(self, fmt: str, layout: str | None = None, cache: Path | None = None,
                 progress: Callable[[int, int], None] | None = None, precision: str = "fp32", batch: int = 1):
        self.fmt, self.cache, self.progress, self.precision = fmt, cache, progress, precision
        self.batch = int(batch)
        self.layout = check_target(fmt, layout, precision)
        self.converted = 0  # files this queue had converted
        self.queued = 0
        self.convert_s = 0.0  # worker seconds spent converting them (wall time, side by side with the caller)
        self.convert_cpu_s = 0.0  # CPU seconds of those conversions (what they cost, whatever the load)
        self.waited_s = 0.0  # seconds the caller waited for a model
        self._futures: dict[Path, Future] = {}
        self._paths: dict[tuple, Path] = {}
        self._counted: set[int] = set()
        self._lock = threading.Lock()

    # -- queueing
    def add_entries(self, space: SearchSpace, entries: Sequence[Entry]) -> None:
        for e in entries:
            self._add(("entry", space.name, e.resolution, e.key),
                      lambda e=e: _entry_job(space, e, self.fmt, self.layout, self.cache, self.precision, self.batch))

    def add_subnets(self, space: SearchSpace, cfgs: Sequence[SubnetConfig], seed: int = 0) -> None:
        for c in cfgs:
            self._add(("subnet", space.name, c.to_string(), seed),
                      lambda c=c: _subnet_job(space, c, self.fmt, self.layout, None, seed, self.cache,
                                              self.precision, self.batch))

    def _add(self, key: tuple, make: Callable[[], _Job]) -> Path | None:
        """Queue a model unless it is cached or queued; its path (None for ONNX and .pt2: exported when asked
        for). Only the path is kept: the module travels to a worker and is gone once converted."""
        if self.fmt in IN_PROCESS:
            return None
        with self._lock:
            path = self._paths.get(key)
        if path is not None:
            return path
        job = make()
        with self._lock:
            self._paths[key] = job.path
        if job.path.exists():
            return job.path
        fut = _start(job)
        if fut is not None:
            with self._lock:
                self._futures[job.path] = fut
                self.queued += 1
            fut.add_done_callback(self._done)
        return job.path

    def _done(self, fut: Future) -> None:
        """Count a finished conversion once (from its callback, or from `_get` when that wakes first)."""
        if fut.cancelled() or fut.exception() is not None:
            return
        with self._lock:
            if id(fut) in self._counted:
                return
            self._counted.add(id(fut))
            self.converted += 1
            self.convert_s += fut.result()["seconds"]
            self.convert_cpu_s += fut.result().get("cpu_s", 0.0)
            done, total = self.converted, self.queued
        if self.progress:
            self.progress(done, total)

    # -- getting
    def entry(self, space: SearchSpace, entry: Entry) -> Path:
        return self._get(("entry", space.name, entry.resolution, entry.key),
                         lambda: _entry_job(space, entry, self.fmt, self.layout, self.cache, self.precision,
                                            self.batch))

    def subnet(self, space: SearchSpace, cfg: SubnetConfig, seed: int = 0) -> Path:
        return self._get(("subnet", space.name, cfg.to_string(), seed),
                         lambda: _subnet_job(space, cfg, self.fmt, self.layout, None, seed, self.cache,
                                             self.precision, self.batch))

    def _get(self, key: tuple, make: Callable[[], _Job]) -> Path:
        t0 = time.monotonic()
        try:
            path = self._add(key, make)
            if path is None:  # ONNX, .pt2
                return _materialise(make())
            fut = self._futures.get(path)
            if fut is not None:
                _wait(fut)
                self._done(fut)
            return path if path.exists() else _materialise(make())
        finally:
            self.waited_s += time.monotonic() - t0

    # -- ending
    def close(self, kill: bool = False) -> None:
        """Cancel the conversions not started (`kill`: stop the workers now, running conversions too)."""
        from bench.converters import ConverterPool, close_shared_pool

        with self._lock:
            futures = list(self._futures.values())
        if not futures:
            return
        ConverterPool.cancel(futures)
        if kill:
            close_shared_pool(kill=True)

    def __enter__(self) -> "ExportQueue":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(kill=exc_type is not None and not issubclass(exc_type, OFABenchError))
