"""A quick end-to-end check of one device (`ofa-bench devices probe`): connect, push the runner, time a tiny
model built here, and report the device's fingerprint and that latency."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path


def _quick(profile):
    """The profile with short timing settings: a probe answers in seconds, not a measurement to keep."""
    return profile.replace(min_runs=min(profile.min_runs, 20), min_duration_s=min(profile.min_duration_s, 0.3),
                           warmup_s=min(profile.warmup_s, 0.1), max_remeasure=0)


def probe_device(device: str, log: Callable[[str], None] = lambda message: None) -> dict:
    """Fingerprint and one latency of the device `device` (a profile name or an ad-hoc address); `log` gets a
    line before connecting and before measuring."""
    from agents import connect
    from agents.tiny_models import mbconv_onnx, tiny_model
    from devices import fingerprint_id, get_device

    profile = get_device(device)
    quick = _quick(profile)
    with tempfile.TemporaryDirectory(prefix="ofa-bench-probe-") as tmp:
        if profile.kind == "fpga":
            model = mbconv_onnx(Path(tmp) / "probe-mbconv.onnx")
        else:
            model = tiny_model(Path(tmp) / "probe-tiny-dwconv", profile.model_format)
        log(f"{profile.name}: connecting ({profile.kind} {profile.address or 'this host'})")
        with connect(quick) as agent:
            fp = agent.fingerprint()
            log(f"{profile.name}: measuring {model.name}")
            m = agent.measure([model])[0]
    return {"device": profile.name, "fingerprint_id": fingerprint_id(fp), "fingerprint": fp,
            "model": model.name, "latency_ms": m.latency_ms, "n": m.n, "cv": m.cv, "noisy": m.noisy,
            "simulated": bool(fp.get("simulated")), "env": m.env}
