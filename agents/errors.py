"""Errors of measuring on a device. Each message is one line naming the device and, where there is one, the file."""
from agents.transports.base import TransportError
from ofa_core.errors import OFABenchError


class AgentError(OFABenchError):
    """A measurement could not be taken (bad model file, runner failure, unusable output)."""


class ModelFileError(AgentError, ValueError):
    """A model file that is missing, empty, corrupt or of the wrong format for the device's runtime."""


class RunnerOutputError(AgentError):
    """The runner or measuring binary printed something that is not the expected JSON / text."""


class UnknownRuntimeError(AgentError, LookupError):
    """A runtime the device does not have, or that does not exist."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


__all__ = ["AgentError", "ModelFileError", "RunnerOutputError", "TransportError", "UnknownRuntimeError", "one_line"]
