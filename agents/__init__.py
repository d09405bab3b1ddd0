"""Device agents: the on-device runner, its runtimes, transports, parsers of measuring tools, simulated devices
(`agents.sim`), and the host side (`connect(profile)` -> `Agent.measure(models)` -> `Measurement`).

The built-in agents are imported here, once, and each registers itself in `agents.registry`, where `connect`
finds the one that serves a profile."""
from agents import binary_agent, runner_agent  # noqa: F401  (register the built-in agents)
from agents.errors import AgentError, ModelFileError, RunnerOutputError, TransportError, UnknownRuntimeError
from agents.host import Agent
from agents.measurement import Measurement
from agents.registry import connect, known_agents, register_agent
from agents.sim import fpga  # noqa: F401  (registers the simulated FPGA agent)

__all__ = ["Agent", "AgentError", "Measurement", "ModelFileError", "RunnerOutputError", "TransportError",
           "UnknownRuntimeError", "connect", "known_agents", "register_agent"]
