"""Device agents: the on-device runner, its runtimes, transports, parsers of measuring tools, the FPGA model,
and the host side (`connect(profile)` -> `Agent.measure(models)` -> `Measurement`)."""
from agents.errors import AgentError, ModelFileError, RunnerOutputError, TransportError, UnknownRuntimeError
from agents.host import Agent, connect
from agents.measurement import Measurement

__all__ = ["Agent", "AgentError", "Measurement", "ModelFileError", "RunnerOutputError", "TransportError",
           "UnknownRuntimeError", "connect"]
