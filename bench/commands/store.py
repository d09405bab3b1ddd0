"""`ofa-bench store migrate|copy|info`: schema upgrades and moving a store between SQLite and PostgreSQL."""
from __future__ import annotations

import typer

from bench.commands._common import JsonOption, StoreOption, emit_json, info, resolve_store


def migrate_cmd(store: str = StoreOption, json_out: bool = JsonOption) -> None:
    """Create the store if new and apply every pending schema migration."""
    from bench.store import migrate_store

    doc = migrate_store(resolve_store(store))
    if json_out:
        emit_json(doc)
    else:
        applied = doc["applied"]
        info(f"{doc['store']}: schema version {doc['from_version']} -> {doc['to_version']}"
             + (f" (applied {', '.join(map(str, applied))})" if applied else " (up to date)"))


def copy_cmd(
    src: str = typer.Argument(..., help="source store: SQLite file or postgresql:// URL"),
    dst: str = typer.Argument(..., help="destination store (created if new)"),
    json_out: bool = JsonOption,
) -> None:
    """Copy every row of SRC into DST, skipping rows DST already holds (safe to run again)."""
    from bench.store import copy_stores

    doc = copy_stores(src, dst)
    if json_out:
        emit_json(doc)
    else:
        for table, r in doc["tables"].items():
            info(f"{table}: {r['copied']} copied, {r['present']} already there, {r['updated']} updated")


def info_cmd(store: str = StoreOption, json_out: bool = JsonOption) -> None:
    """Backend, schema version and row counts of a store."""
    from bench.store import store_info

    doc = store_info(resolve_store(store))
    if json_out:
        emit_json(doc)
    else:
        info(f"{doc['store']} ({doc['backend']}, schema {doc['schema_version']}): "
             + ", ".join(f"{n} {t}" for t, n in doc["counts"].items()))


def register(app: typer.Typer) -> None:
    store_app = typer.Typer(help="Manage the measurement store (SQLite file or PostgreSQL).", no_args_is_help=True)
    app.add_typer(store_app, name="store")
    store_app.command("migrate")(migrate_cmd)
    store_app.command("copy")(copy_cmd)
    store_app.command("info")(info_cmd)
