"""Looking after a store as a whole (`ofa-bench store migrate|copy|info`): its schema version, copying it into
another store, and what it holds; each returns the report the command prints."""
from __future__ import annotations

from bench.store.api import open_store
from bench.store.copy import copy_store
from bench.store.migrations import LATEST_VERSION


def migrate_store(target: str) -> dict:
    """Create the store if new and apply every pending schema migration."""
    with open_store(target, migrate=False) as s:
        before = s.version
        applied = s.migrate() if before < LATEST_VERSION else []
        return {"store": s.target, "backend": s.backend, "from_version": before, "to_version": s.version,
                "applied": applied}


def copy_stores(src: str, dst: str) -> dict:
    """Copy every row of the store `src` into `dst` (created if new), skipping rows `dst` already holds."""
    with open_store(src, create=False) as a, open_store(dst) as b:
        report = copy_store(a, b)
        return {"source": a.target, "destination": b.target, "tables": report,
                "source_counts": a.counts(), "destination_counts": b.counts()}


def store_info(target: str) -> dict:
    """Backend, schema version, row counts and devices of an existing store."""
    with open_store(target, create=False) as s:
        return {"store": s.target, "backend": s.backend, "schema_version": s.version, "counts": s.counts(),
                "devices": s.devices()}
