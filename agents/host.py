"""The host side of measuring: an `Agent` holds a transport to one device, pushes the runner and models (cached
by content hash), runs the runner with a timeout, and applies the profile's thermal and noise policy."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from agents.errors import AgentError, ModelFileError, RunnerOutputError, UnknownRuntimeError, one_line
from agents.measurement import Measurement
from agents.transports.base import Transport, TransportError

SUFFIXES = {"onnx": (".onnx",), "tflite": (".tflite",), "pt2": (".pt2",)}
RUNNER_RUNTIMES = ("onnxruntime", "litert", "torch", "null")


class Agent:
    """Measures models on one device. Subclasses say how one batch is measured (`_measure_once`); this class
    adds the policy: cooldown between measurements, re-measuring while the coefficient of variation exceeds
    the profile's threshold, and marking a measurement `noisy` if it never settles."""

    def __init__(self, profile, transport: Transport | None = None, sleep=time.sleep):
        self.profile = profile
        self.transport = transport
        self.name = profile.name
        self._sleep = sleep  # injectable so policy tests need not wait
        self._measured_before = False
        self._fingerprint: dict | None = None

    # ----- what subclasses provide
    def open(self) -> None:
        """Reach the device and prepare it (push the runner); raises a one-line error if it cannot."""

    def fingerprint(self) -> dict:
        raise NotImplementedError

    def read_temperature(self) -> float | None:
        return None

    def _measure_once(self, models: list[Path], rounds: int) -> list[Measurement]:
        raise NotImplementedError

    # ----- the policy
    def measure(self, models, rounds: int = 1) -> list[Measurement]:
        """One `Measurement` per model, in the given order. `rounds` interleaves the models round-robin."""
        models = list(models)
        paths = [self._check_model(Path(m)) for m in models]
        if not paths:
            return []
        rounds = max(1, int(rounds))
        best: dict[int, Measurement] = {}
        attempts: dict[int, int] = {}
        pending = list(range(len(paths)))
        for _ in range(1 + max(0, self.profile.max_remeasure)):
            cooldown = self._cooldown()
            got = self._measure_once([paths[i] for i in pending], rounds)
            if len(got) != len(pending):
                raise RunnerOutputError(f"{self.name}: expected {len(pending)} results, got {len(got)} "
                                        f"({', '.join(paths[i].name for i in pending)})")
            still = []
            for i, m in zip(pending, got):
                attempts[i] = attempts.get(i, 0) + 1
                m = m.with_(env={**m.env, "cooldown": cooldown})
                if i not in best or _cv(m) < _cv(best[i]):
                    best[i] = m
                if not self._settled(m):
                    still.append(i)
            pending = still
            if not pending:
                break
        out = []
        for i in range(len(paths)):
            m = best[i]
            env = {**m.env, "attempts": attempts[i], "cv_threshold": self.profile.cv_threshold}
            out.append(m.with_(noisy=i in pending, env=env, model=str(models[i])))
        return out

    def _strip(self, exc: Exception) -> str:
        """The error's one-line text without a leading device name (the caller's message starts with it)."""
        text = one_line(exc)
        for prefix in (f"{self.name}: ", f"{getattr(self.transport, 'name', '')}: "):
            if prefix != ": " and text.startswith(prefix):
                text = text[len(prefix):]
        return text

    def _settled(self, m: Measurement) -> bool:
        spread = m.robust_cv
        return spread is None or spread <= self.profile.cv_threshold

    def _cooldown(self) -> dict[str, Any]:
        """Pause before every measurement but the first: a fixed delay, then (if set) until the device is cooler
        than the threshold, at most `cooldown_max_s`. Returns what was done, for the record."""
        first = not self._measured_before
        self._measured_before = True
        info: dict[str, Any] = {"waited_s": 0.0}
        if first:
            return info
        start = time.monotonic()
        if self.profile.cooldown_s > 0:
            self._sleep(self.profile.cooldown_s)
        limit = self.profile.cooldown_temp_c
        if limit is not None:
            temp = self.read_temperature()
            if temp is None:
                info["temperature"] = "unreadable"
            else:
                deadline = time.monotonic() + self.profile.cooldown_max_s
                while temp is not None and temp > limit and time.monotonic() < deadline:
                    self._sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    temp = self.read_temperature()
                info["temperature_c"] = temp
                info["reached"] = temp is not None and temp <= limit
        info["waited_s"] = round(time.monotonic() - start, 3)
        return info

    def _check_model(self, path: Path) -> Path:
        if not path.is_file():
            raise ModelFileError(f"{self.name}: model file not found: {path}")
        if path.stat().st_size == 0:
            raise ModelFileError(f"{self.name}: model file is empty: {path}")
        wanted = SUFFIXES.get(self.profile.model_format, ())
        if wanted and path.suffix.lower() not in wanted:
            raise ModelFileError(f"{self.name}: {path} is not a {self.profile.model_format} file "
                                 f"(the device's runtime {self.profile.runtime} takes {'/'.join(wanted)})")
        return path

    # ----- lifetime
    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cv(m: Measurement) -> float:
    spread = m.robust_cv
    return spread if spread is not None else 0.0


class RunnerAgent(Agent):
    """A device with Python: the zipapp runner measures, one invocation per batch of models."""

    runner_remote: str | None = None

    def open(self) -> None:
        from agents.bundle import build_runner

        try:
            self.runner_remote = self.transport.push(build_runner(), timeout_s=self.profile.timeout_s)
        except TransportError as exc:
            raise TransportError(f"{self.name}: cannot push the runner: {self._strip(exc)}") from None

    def _argv(self, extra: list[str]) -> list[str]:
        p = self.profile
        # On this host the runner needs the runtime installed beside ofa-bench (a virtual environment that may
        # not be on PATH), so the default interpreter is this one; a profile that names another keeps it.
        python = sys.executable if p.kind == "local" and p.python == "python3" and sys.executable else p.python
        argv = [python, self.runner_remote, "--runtime", p.runtime, "--threads", str(p.threads),
                "--device", p.device]
        if p.cores:
            argv += ["--cores", ",".join(str(c) for c in p.cores)]
        return argv + extra

    def _call(self, extra: list[str], timeout_s: float, files: dict[str, str], wanted: tuple[str, ...]) -> list[dict]:
        """Run the runner and return its JSON lines (at least one holding a `wanted` key); `files` maps remote
        paths to the user's names."""
        label = ", ".join(dict.fromkeys(files.values())) or "runner"
        try:
            res = self.transport.run(self._argv(extra), timeout_s=timeout_s)
        except TransportError as exc:
            raise TransportError(f"{self.name}: {self._strip(exc)} (while measuring {label})") from None
        docs, bad = [], None
        for line in res.stdout.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                bad = bad or line
                continue
            if not isinstance(doc, dict):
                bad = bad or line
                continue
            docs.append(doc)
        for doc in docs:
            if "error" in doc:
                msg = _rename(one_line(doc["error"]), files)
                kind = doc.get("kind")
                if kind == "runtime":
                    raise UnknownRuntimeError(f"{self.name}: {msg}")
                if kind == "model":
                    raise ModelFileError(f"{self.name}: {msg}")
                raise AgentError(f"{self.name}: runner failed on {label}: {msg}")
        if res.returncode != 0:
            why = one_line(res.stderr.strip().splitlines()[-1]) if res.stderr.strip() else "no message"
            what = f"killed by signal {-res.returncode}" if res.returncode < 0 else f"exit status {res.returncode}"
            raise AgentError(f"{self.name}: runner failed on {label} ({what}): {_rename(why, files)[:300]}")
        if not any(key in doc for doc in docs for key in wanted):
            # Shells that merge stderr into stdout (adb's legacy shell) can add runtime log lines; they are
            # tolerated beside the results, but output without any result is an error.
            shown = bad if bad is not None else (res.stdout.strip()[:120] or "empty output")
            raise RunnerOutputError(f"{self.name}: runner output is not JSON ({label}): {shown[:120]!r}")
        return docs

    def _measure_once(self, models: list[Path], rounds: int) -> list[Measurement]:
        p = self.profile
        remote: list[str] = []
        for m in models:
            try:
                remote.append(self.transport.push(m, timeout_s=p.timeout_s))
            except TransportError as exc:
                raise TransportError(f"{self.name}: cannot push {m}: {self._strip(exc)}") from None
        names = dict(zip(remote, (str(m) for m in models)))
        extra = ["--warmup-runs", str(p.warmup_runs), "--warmup-s", repr(p.warmup_s), "--min-runs", str(p.min_runs),
                 "--min-duration-s", repr(p.min_duration_s), "--max-runs", str(p.max_runs),
                 "--max-duration-s", repr(p.max_duration_s), "--rounds", str(rounds), "--clock", p.clock,
                 *remote]
        budget = p.timeout_s + len(models) * (p.max_duration_s + p.warmup_s + 2.0)
        docs = [d for d in self._call(extra, budget, names, ("median_ms",)) if "median_ms" in d]
        out = []
        for i, (path_remote, local) in enumerate(zip(remote, models)):
            doc = docs[i] if i < len(docs) else None
            if doc is None or doc.get("model") != path_remote:
                raise RunnerOutputError(f"{self.name}: the runner printed no result for {local}")
            extra_env = {k: doc[k] for k in ("load_ms", "warmup_runs", "rounds", "inputs") if k in doc}
            try:
                out.append(Measurement.from_record(doc, model=str(local), env_extra=extra_env))
            except (TypeError, ValueError) as exc:
                raise RunnerOutputError(f"{self.name}: unusable runner result for {local}: {exc}") from None
        return out

    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            docs = self._call(["--fingerprint"], self.profile.timeout_s, {}, ("fingerprint",))
            fp = next((d["fingerprint"] for d in docs if "fingerprint" in d), None)
            if not isinstance(fp, dict):
                raise RunnerOutputError(f"{self.name}: the runner printed no fingerprint")
            from devices.fingerprint import complete_fingerprint

            self._fingerprint = complete_fingerprint(fp, self.profile)
        return dict(self._fingerprint)

    def read_temperature(self) -> float | None:
        docs = self._call(["--temperature"], self.profile.timeout_s, {}, ("temperature_c",))
        value = next((d.get("temperature_c") for d in docs if "temperature_c" in d), None)
        return float(value) if value is not None else None


def _rename(text: str, files: dict[str, str]) -> str:
    for remote, local in files.items():
        text = text.replace(remote, local)
    return text


def connect(profile, transport: Transport | None = None) -> Agent:
    """An open `Agent` for a device profile (or a device name): the FPGA model, a user binary, or the runner."""
    if isinstance(profile, str):
        from devices import get_device

        profile = get_device(profile)
    if profile.kind == "fpga":
        from agents.fpga import FpgaAgent

        return FpgaAgent(profile)
    if profile.binary:
        from agents.binary_agent import BinaryAgent

        cls = BinaryAgent
    else:
        if profile.runtime not in RUNNER_RUNTIMES:
            raise UnknownRuntimeError(f"{profile.name}: unknown runtime {profile.runtime!r} for the runner "
                                      f"(known: {', '.join(RUNNER_RUNTIMES)})")
        cls = RunnerAgent
    if transport is None:
        from agents.transports import make_transport

        transport = make_transport(profile)
    agent = cls(profile, transport)
    try:
        agent.open()
    except BaseException:
        agent.close()
        raise
    return agent
