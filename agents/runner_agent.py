"""Devices with Python (this host, Linux boards over ssh, the loopback phone): the runner zipapp is pushed once
(content-hash cache) and measures a batch of models per invocation, printing JSON lines the host reads."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from agents.errors import AgentError, ModelFileError, RunnerOutputError, UnknownRuntimeError, one_line
from agents.host import Agent
from agents.measurement import Measurement
from agents.registry import register_agent
from agents.transports import TRANSPORT_KINDS
from agents.transports.base import TransportError

RUNNER_RUNTIMES = ("onnxruntime", "litert", "torch", "null")


class RunnerAgent(Agent):
    """A device with Python: the zipapp runner measures, one invocation per batch of models."""

    runner_remote: str | None = None

    @classmethod
    def check_profile(cls, profile) -> None:
        if profile.runtime not in RUNNER_RUNTIMES:
            raise UnknownRuntimeError(f"{profile.name}: unknown runtime {profile.runtime!r} for the runner "
                                      f"(known: {', '.join(RUNNER_RUNTIMES)})")

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
        provider = getattr(p, "provider", "cpu")
        if provider != "cpu":  # TensorRT engines are kept beside the pushed files, so later calls reuse them
            argv += ["--provider", provider, "--cache-dir", f"{self.transport.workdir}/ort-cache"]
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
        # on a GPU the runner also waits for the clocks to settle (--settle-s, 2 s at most per model)
        settle_s = 2.0 if p.device == "cuda" or getattr(p, "provider", "cpu") != "cpu" else 0.0
        budget = p.timeout_s + len(models) * (p.max_duration_s + p.warmup_s + settle_s + 2.0)
        docs = [d for d in self._call(extra, budget, names, ("median_ms",)) if "median_ms" in d]
        out = []
        for i, (path_remote, local) in enumerate(zip(remote, models)):
            doc = docs[i] if i < len(docs) else None
            if doc is None or doc.get("model") != path_remote:
                raise RunnerOutputError(f"{self.name}: the runner printed no result for {local}")
            extra_env = {k: doc[k] for k in ("load_ms", "warmup_runs", "settle_runs", "rounds", "inputs",
                                             "preempted_runs", "preemption_filter") if k in doc}
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




register_agent("runner", RunnerAgent, lambda p: p.kind in TRANSPORT_KINDS and not p.binary,
               serves=f"a {'/'.join(TRANSPORT_KINDS)} device without a measuring binary")
