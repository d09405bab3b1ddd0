"""Which agent measures a device. Each agent module registers its class with `register_agent`, saying which
profiles it serves; `connect(profile)` picks the one registered agent that serves the profile, gives it a
transport when it needs one, and opens it. The built-in agents are imported once, by the package
(`agents/__init__.py`), so no agent module imports the module that imports it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.errors import AgentError

if TYPE_CHECKING:
    from agents.host import Agent
    from agents.transports.base import Transport


@dataclass(frozen=True)
class AgentKind:
    """One registered agent: its name, the profiles it serves (`selects`, and the same in words for errors)."""

    name: str
    cls: type[Agent]
    selects: Callable[[Any], bool]
    serves: str


_AGENTS: dict[str, AgentKind] = {}


def register_agent(name: str, cls: type[Agent], selects: Callable[[Any], bool], serves: str) -> None:
    """Make `cls` the agent of every profile for which `selects(profile)` is true (`serves` says which)."""
    if name in _AGENTS and _AGENTS[name].cls is not cls:
        raise ValueError(f"agent {name!r} is already registered ({_AGENTS[name].cls.__qualname__})")
    _AGENTS[name] = AgentKind(name, cls, selects, serves)


def known_agents() -> dict[str, str]:
    """{agent name: the profiles it serves}, in registration order."""
    return {kind.name: kind.serves for kind in _AGENTS.values()}


def agent_kind(profile) -> AgentKind:
    """The one registered agent serving `profile`; a one-line `AgentError` naming the known ones otherwise."""
    found = [kind for kind in _AGENTS.values() if kind.selects(profile)]
    if len(found) == 1:
        return found[0]
    if not found:
        known = "; ".join(f"{name}: {serves}" for name, serves in known_agents().items())
        raise AgentError(f"{profile.name}: no agent measures a {profile.kind!r} device with runtime "
                         f"{profile.runtime!r} (known agents: {known})")
    raise AgentError(f"{profile.name}: several agents serve this device ({', '.join(k.name for k in found)})")


def connect(profile, transport: Transport | None = None) -> Agent:
    """An open `Agent` for a device profile (or a device name), chosen from the registered agents."""
    if isinstance(profile, str):
        from devices import get_device

        profile = get_device(profile)
    cls = agent_kind(profile).cls
    cls.check_profile(profile)
    if transport is None and cls.needs_transport:
        from agents.transports import make_transport

        transport = make_transport(profile)
    agent = cls(profile, transport)
    try:
        agent.open()
    except BaseException:
        agent.close()
        raise
    return agent
