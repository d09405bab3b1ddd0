"""The metadata keys that cross from measuring to the tables are declared once and checked on the way in."""
import re
from pathlib import Path

import pytest

from bench.measure import keys

ROOT = Path(__file__).resolve().parents[1]


def test_declared_keys_are_checked():
    keys.check_env({keys.REFERENCE_MS: 0.16, keys.PROTOCOL: "reference/1", keys.ATTEMPTS: 2, "runtime": "x"})
    keys.check_env({keys.REFERENCE_MS: None})  # not known (raw/1)
    for bad in ({keys.REFERENCE_MS: "0.16"}, {keys.ATTEMPTS: 1.5}, {keys.REFERENCE_MS: True},
                {keys.TRANSFER: ["a"]}):
        with pytest.raises(keys.MetadataError, match=next(iter(bad))):
            keys.check_env(bad)


def test_readers_name_keys_through_the_registry():
    """No module of bench/ reads a declared key from a record's env by its bare string."""
    names = "|".join(re.escape(k) for k in keys.REGISTRY)
    pattern = re.compile(r"""env[^\n]{0,40}(\.get\(|\[)["'](%s)["']""" % names)
    found = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "bench").rglob("*.py") if "perf" not in p.parts
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
