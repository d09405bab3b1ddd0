"""PostgreSQL backend of the store (psycopg 3): the same schema and SQL as SQLite, `?` placeholders rewritten.

Connections are in autocommit mode and every transaction is an explicit BEGIN ... COMMIT, exactly like the
SQLite backend, so the store's code is one code path. Nothing waits forever on the server: connecting has a
timeout, TCP keepalives (and a TCP user timeout) notice a vanished host, and a backend opened with
`statement_timeout_s` cancels any statement (a lock wait included) that runs longer and ends a transaction left
idle that long.
"""
from __future__ import annotations

import hashlib

from bench.store.migrations import POSTGRES_TYPES
from bench.store.errors import StoreError, one_line, redact_url

#: tables of ours; a database holding any of them without `schema_version` is not a store we can adopt
OWN_TABLES = ("fingerprints", "runs", "measurements", "jobs", "workers")
SCHEMA_LOCK_ID = 0x0FA_BE4C  # advisory lock serialising migrations across hosts
#: libpq TCP settings: an unanswered connection is declared dead after ~25 s idle or 30 s of unacknowledged data
TCP_SETTINGS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                "tcp_user_timeout": 30_000}


def name_lock_key(name: str) -> int:
    """The 64-bit advisory-lock key of a name."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


def is_postgres_url(target: str) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


class PostgresBackend:
    """Connections and dialect details for one PostgreSQL database URL."""

    name = "postgresql"
    #: appended to the job-claim SELECT: concurrent claimers skip rows another transaction holds
    claim_lock = " FOR UPDATE SKIP LOCKED"
    types = POSTGRES_TYPES

    def __init__(self, url: str, connect_timeout_s: float = 10.0, statement_timeout_s: float | None = None):
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self._sql_cache: dict[str, str] = {}

    def describe(self) -> str:
        return redact_url(self.url)

    def check_target(self) -> None:
        """Nothing to check before connecting (the URL's syntax is checked by the driver)."""

    def connect(self):
        import psycopg

        try:
            from psycopg.rows import dict_row

            return psycopg.connect(self.url, autocommit=True, row_factory=dict_row,
                                   **self.connect_settings(psycopg.conninfo.conninfo_to_dict(self.url)))
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to store {self.describe()}: {one_line(exc)}") from None
        except Exception as exc:  # malformed URL (ProgrammingError is a psycopg.Error; be safe for the rest)
            raise StoreError(f"cannot connect to store {self.describe()}: {one_line(exc)}") from None

    def connect_settings(self, url_settings: dict) -> dict:
        """libpq settings added to the URL's (which win): name, timeouts, keepalives, server-side time limits."""
        extra: dict = {"application_name": "ofa-bench", "connect_timeout": max(1, int(round(self.connect_timeout_s))),
                       **TCP_SETTINGS}
        extra = {k: v for k, v in extra.items() if k not in url_settings}
        if self.statement_timeout_s is not None:
            ms = max(1, int(round(self.statement_timeout_s * 1000)))
            limits = (f"-c statement_timeout={ms} -c lock_timeout={ms} "
                      f"-c idle_in_transaction_session_timeout={ms}")
            extra["options"] = f"{limits} {url_settings.get('options', '')}".strip()  # the URL's -c come last: win
        return extra

    def prepare(self, conn) -> None:
        """No per-session settings needed."""

    def begin(self, conn, write: bool) -> None:
        conn.execute("BEGIN")

    def lock_schema(self, conn) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,))

    def lock_name(self, conn, name: str) -> None:
        """Transaction-scoped lock on a name (a device): serialises submits with the completions they race."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (name_lock_key(name),))

    def sql(self, text: str) -> str:
        out = self._sql_cache.get(text)
        if out is None:
            out = self._sql_cache[text] = text.replace("?", "%s")
        return out

    def execute(self, conn, sql: str, params=()):
        return conn.execute(self.sql(sql), params)

    def fetch_dicts(self, cur) -> list[dict]:
        """Rows as dicts (the connection's row factory builds them), or [] for a statement without rows."""
        from psycopg import pq

        res = cur.pgresult
        if res is None or res.status != pq.ExecStatus.TUPLES_OK:
            return []
        return cur.fetchall()

    def executemany(self, conn, sql: str, rows) -> None:
        with conn.cursor() as cur:
            cur.executemany(self.sql(sql), rows)

    def table_exists(self, conn, table: str) -> bool:
        # pg_tables lists tables the user may not read (information_schema would hide them)
        row = conn.execute("SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
                           "AND tablename = %s", (table,)).fetchone()
        return row is not None

    def has_any_table(self, conn) -> bool:
        return any(self.table_exists(conn, t) for t in OWN_TABLES)

    def is_unique_violation(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.errors.UniqueViolation)

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def error(self, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.describe()}: {one_line(exc)}")
