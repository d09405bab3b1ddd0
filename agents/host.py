"""The host side of measuring: an `Agent` holds a transport to one device and applies the profile's thermal and
noise policy; its subclasses (the runner, a measuring binary, the simulated FPGA) say how one batch is measured,
and register themselves in `agents.registry`, which `connect(profile)` chooses from."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agents.errors import ModelFileError, RunnerOutputError, one_line
from agents.measurement import Measurement
from agents.transports.base import Transport

SUFFIXES = {"onnx": (".onnx",), "tflite": (".tflite",), "pt2": (".pt2",)}


class Agent:
    """Measures models on one device. Subclasses say how one batch is measured (`_measure_once`); this class
    adds the policy: cooldown between measurements, re-measuring while the coefficient of variation exceeds
    the profile's threshold, and marking a measurement `noisy` if it never settles."""

    #: whether `connect` gives the agent a transport to the device (a simulated device has none)
    needs_transport = True

    def __init__(self, profile, transport: Transport | None = None, sleep=time.sleep):
        self.profile = profile
        self.transport = transport
        self.name = profile.name
        self._sleep = sleep  # injectable so policy tests need not wait
        self._measured_before = False
        self._fingerprint: dict | None = None

    # ----- what subclasses provide
    @classmethod
    def check_profile(cls, profile) -> None:
        """Refuse, with a one-line error, a profile this agent cannot serve; called before any transport."""

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
