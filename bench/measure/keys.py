"""The metadata keys that travel with a measurement from the protocol into the store and on to the tables.

A record's `env` holds what the runner reported about the device (runtime, threads, temperature, ...) and what
the protocol adds about how the value was taken. The keys on the second list are read back by other stages
(the table builder normalises by the reference, the nightly job compares speed-normalised latencies, a
few-shot table says where its entries came from), so they are declared here once, with their type and
meaning, and every writer and reader names them through these constants. `check_env` rejects a record
whose declared keys carry the wrong type, before it reaches the store.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ofa_core.errors import OFABenchError


@dataclass(frozen=True)
class MetadataKey:
    name: str
    types: tuple[type, ...]
    meaning: str
    optional: bool = True  # None is allowed


REGISTRY: dict[str, MetadataKey] = {}


def _key(name: str, types: tuple[type, ...], meaning: str) -> str:
    REGISTRY[name] = MetadataKey(name, types, meaning)
    return name


PROTOCOL = _key("protocol", (str,), "how the value was taken: reference/1, raw/1, transfer/1")
REFERENCE_MS = _key("reference_ms", (int, float),
                    "the reference block's median latency in the same runner invocation (the device's speed then)")
REFERENCE_STATS = _key("reference_stats", (dict,), "the reference block's sample statistics in that invocation")
ATTEMPTS = _key("attempts", (int,), "invocations the value took (re-measured while not settled)")
PREEMPTED_RUNS = _key("preempted_runs", (int,), "runs left out because the measuring thread was off the CPU")
PREEMPTION_FILTER = _key("preemption_filter", (bool,), "whether preempted runs were left out")
LOADAVG = _key("loadavg", (list, tuple), "the host's 1, 5 and 15 minute load averages at the end of the invocation")
TRANSFER = _key("transfer", (dict,), "a transferred entry's provenance: source devices, model, K")
IMPORTED_FROM = _key("imported_from", (str,), "the file a published table was imported from")


class MetadataError(OFABenchError):
    """A measurement's metadata carries a declared key with the wrong type."""


def check_env(env: Mapping, where: str = "measurement") -> None:
    """Every declared key present in `env` has its declared type (bool is not taken for a number)."""
    for name, value in env.items():
        key = REGISTRY.get(name)
        if key is None or (value is None and key.optional):
            continue
        numeric = int in key.types or float in key.types
        if not isinstance(value, key.types) or (numeric and isinstance(value, bool)):
            raise MetadataError(f"{where}: env[{name!r}] must be {' or '.join(t.__name__ for t in key.types)} "
                                f"({key.meaning}), got {type(value).__name__}")
