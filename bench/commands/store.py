"""`ofa-bench store migrate|copy|info`: schema upgrades and moving a store between SQLite and PostgreSQL."""
from __future__ import annotations

import typer

from bench.commands._common import JsonOption, StoreOption, emit_json, info, resolve_store


def register(app: typer.Typer) -> None:
    store_app = typer.Typer(help="Manage the measurement store (SQLite file or PostgreSQL).", no_args_is_help=True)
    app.add_typer(store_app, name="store")

    @store_app.command("migrate")
    def migrate_cmd(store: str = StoreOption, json_out: bool = JsonOption) -> None:
        """Create the store if new and apply every pending schema migration."""
        from bench.store import LATEST_VERSION, open_store

        with open_store(resolve_store(store), migrate=False) as s:
            before = s.version
            applied = s.migrate() if before < LATEST_VERSION else []
            doc = {"store": s.target, "backend": s.backend, "from_version": before, "to_version": s.version,
                   "applied": applied}
        if json_out:
            emit_json(doc)
        else:
            info(f"{doc['store']}: schema version {before} -> {doc['to_version']}"
                 + (f" (applied {', '.join(map(str, applied))})" if applied else " (up to date)"))

    @store_app.command("copy")
    def copy_cmd(
        src: str = typer.Argument(..., help="source store: SQLite file or postgresql:// URL"),
        dst: str = typer.Argument(..., help="destination store (created if new)"),
        json_out: bool = JsonOption,
    ) -> None:
        """Copy every row of SRC into DST, skipping rows DST already holds (safe to run again)."""
        from bench.store import copy_store, open_store

        with open_store(src, create=False) as a, open_store(dst) as b:
            report = copy_store(a, b)
            doc = {"source": a.target, "destination": b.target, "tables": report,
                   "source_counts": a.counts(), "destination_counts": b.counts()}
        if json_out:
            emit_json(doc)
        else:
            for table, r in report.items():
                info(f"{table}: {r['copied']} copied, {r['present']} already there, {r['updated']} updated")

    @store_app.command("info")
    def info_cmd(store: str = StoreOption, json_out: bool = JsonOption) -> None:
        """Backend, schema version and row counts of a store."""
        from bench.store import open_store

        with open_store(resolve_store(store), create=False) as s:
            doc = {"store": s.target, "backend": s.backend, "schema_version": s.version, "counts": s.counts(),
                   "devices": s.devices()}
        if json_out:
            emit_json(doc)
        else:
            info(f"{doc['store']} ({doc['backend']}, schema {doc['schema_version']}): "
                 + ", ".join(f"{n} {t}" for t, n in doc["counts"].items()))
