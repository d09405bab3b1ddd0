"""What a measurement was taken on: device model, SoC or CPU, OS, runtime build and threads, read on the device;
on a GPU, its name and driver and the runtime's execution provider. Tables measured under different fingerprints
are never mixed; `fingerprint_id` is a stable short hash."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

# Keys that identify a device; anything volatile (frequency, temperature, load) stays out.
FINGERPRINT_KEYS = ("model", "cpu", "soc", "cpu_count", "arch", "os", "runtime", "runtime_version", "runtime_build",
                    "threads", "cores", "device", "provider", "gpu", "kind", "simulated")


def fingerprint_id(fp: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON (sorted keys): the same dict always gives the same id."""
    text = json.dumps(fp, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def complete_fingerprint(fp: dict[str, Any], profile) -> dict[str, Any]:
    """Add what the profile decides (core mask, device kind, torch device) to what the device reported."""
    out = {k: fp.get(k) for k in FINGERPRINT_KEYS if k in fp}
    out.update({k: v for k, v in fp.items() if k not in out and k not in ("python",)})
    out["cores"] = list(profile.cores) or None
    out["kind"] = profile.kind
    out["threads"] = profile.threads
    if profile.runtime == "torch":
        out["device"] = profile.device
    provider = getattr(profile, "provider", "cpu")
    if provider != "cpu":  # tables of different execution providers are never mixed (CPU ones keep their id)
        out["provider"] = provider
    out.setdefault("simulated", False)
    if getattr(profile, "clock", "wall") != "wall":  # CPU-time tables are never mixed with wall-clock ones
        out["clock"] = profile.clock
    if getattr(profile, "precision", "fp32") != "fp32":  # int8 tables are never mixed with fp32 ones
        out["precision"] = profile.precision
    return out


def _first(text: str, *keys: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in keys and value.strip():
            return value.strip()
    return None


def shell_fingerprint(transport, profile, binary_name: str, binary_sha256: str) -> dict[str, Any]:
    """Fingerprint of a device without Python (e.g. a stock phone), from plain shell commands; the measuring
    binary's content hash stands for the runtime build."""

    def out(argv: list[str]) -> str:
        res = transport.run(argv, timeout_s=profile.timeout_s)
        return res.stdout.strip() if res.returncode == 0 else ""

    uname = out(["uname", "-s", "-r", "-m"]).split()
    cpuinfo = out(["cat", "/proc/cpuinfo"])
    android = out(["getprop", "ro.build.version.release"])
    model = out(["getprop", "ro.product.model"]) or out(["cat", "/sys/firmware/devicetree/base/model"]).strip("\x00")
    soc = out(["getprop", "ro.soc.model"]) or out(["getprop", "ro.board.platform"]) or _first(cpuinfo, "hardware")
    n_cpu = len(re.findall(r"^processor\s*:", cpuinfo, flags=re.M)) or None
    fp = {
        "model": model or None,
        "cpu": _first(cpuinfo, "model name", "cpu model", "processor name"),
        "soc": soc or None,
        "cpu_count": n_cpu,
        "arch": uname[2] if len(uname) > 2 else None,
        "os": f"Android {android}" if android else (" ".join(uname[:2]) or None),
        "runtime": profile.runtime,
        "runtime_version": f"{binary_name}@{binary_sha256[:12]}",
        "runtime_build": {"binary": binary_name, "sha256": binary_sha256},
        "threads": profile.threads,
        "simulated": out(["getprop", "ro.ofa_bench.simulated"]) == "1",
    }
    return complete_fingerprint(fp, profile)
