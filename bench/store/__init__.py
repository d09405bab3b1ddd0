"""The store: where every measurement lives (the second stage of profile -> store -> table -> predictor ->
search).

Writers (profile, validate, nightly, the farm worker) append measurements with their raw samples and metadata,
grouped in runs, under the fingerprint of the device that took them; the table stage (`bench.table`) reads the
latest good ones back. One `Store` API over two backends: an SQLite file (the embedded default) or a PostgreSQL
database (a farm of hosts), with the schema as explicit migrations.

    api         open_store, Store (fingerprints, runs, measurements, transactions, schema version)
    sqlite      the SQLite backend         postgres   the PostgreSQL backend
    rows        checking records before they are written, decoding rows read back
    migrations  the schema, in order       copy       one store into another (SQLite <-> PostgreSQL)
    errors      StoreError, StoreConflict  pgserver   a throwaway local PostgreSQL server (tests, demos)
    maintenance a store as a whole: migrate, copy, info (the `store` commands)
    handle      using_store: a use case's store, handed over open (one handle for many steps) or by address
"""
from bench.store.api import RUN_STATUSES, Store, check_store_exists, fingerprint_id, open_store
from bench.store.copy import copy_store
from bench.store.errors import StoreConflict, StoreError
from bench.store.handle import StoreLike, store_address, store_exists, using_store
from bench.store.maintenance import copy_stores, migrate_store, store_info
from bench.store.migrations import LATEST_VERSION
from bench.store.postgres import is_postgres_url
from bench.store.rows import MEASUREMENT_COLUMNS, measurement_row

__all__ = ["RUN_STATUSES", "Store", "check_store_exists", "fingerprint_id", "open_store", "copy_store", "StoreConflict",
           "StoreError", "LATEST_VERSION", "is_postgres_url", "MEASUREMENT_COLUMNS", "measurement_row", "copy_stores",
           "migrate_store", "store_info", "StoreLike", "store_address", "store_exists", "using_store"]
