"""SQLite backend of the store: one file, WAL mode, a busy timeout, write transactions taken with BEGIN IMMEDIATE.

WAL lets readers proceed while one process writes; BEGIN IMMEDIATE takes the write lock up front so that two
profilers never deadlock upgrading a read transaction, and the busy timeout makes the second one wait its turn.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.migrations import SQLITE_TYPES
from bench.store_errors import StoreError, one_line

SQLITE_HEADER = b"SQLite format 3\x00"


class SqliteBackend:
    """Connections and dialect details for one SQLite file."""

    name = "sqlite"
    #: appended to the job-claim SELECT; BEGIN IMMEDIATE already makes the claim exclusive
    claim_lock = ""
    types = SQLITE_TYPES

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser().resolve()
        self.busy_timeout_s = busy_timeout_s

    def describe(self) -> str:
        return str(self.path)

    def check_target(self) -> None:
        """Refuse anything that is not an SQLite file before SQLite touches it (no -wal beside a foreign file)."""
        p = self.path
        if p.exists():
            if not p.is_file():
                raise StoreError(f"store {p} is not a file")
            try:
                with open(p, "rb") as f:
                    head = f.read(len(SQLITE_HEADER))
            except OSError as exc:
                raise StoreError(f"cannot read store {p}: {exc.strerror or exc}") from None
            if head and head != SQLITE_HEADER:
                raise StoreError(f"{p} is not an SQLite database (not an ofa-bench store)")
        else:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder of store {p}: {exc.strerror or exc}") from None

    def connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {one_line(exc)}") from None
        return conn

    def prepare(self, conn: sqlite3.Connection) -> None:
        """Session settings that write (WAL) — called only once the file is known to be ours."""
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"store {self.path}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")

    def begin(self, conn: sqlite3.Connection, write: bool) -> None:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def lock_schema(self, conn: sqlite3.Connection) -> None:
        """Migrations run inside BEGIN IMMEDIATE, which already excludes every other writer."""

    def lock_name(self, conn: sqlite3.Connection, name: str) -> None:
        """A write transaction (BEGIN IMMEDIATE) already excludes every other writer."""

    def sql(self, text: str) -> str:
        return text

    def execute(self, conn: sqlite3.Connection, sql: str, params=()):
        return conn.execute(sql, params)

    def fetch_dicts(self, cur) -> list[dict]:
        if cur.description is None:
            return []
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def executemany(self, conn: sqlite3.Connection, sql: str, rows) -> None:
        conn.executemany(sql, rows)

    def table_exists(self, conn: sqlite3.Connection, table: str) -> bool:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        return row is not None

    def has_any_table(self, conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone() is not None

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc).upper()

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            return StoreError(f"{self.path} is not an SQLite database (not an ofa-bench store)")
        return StoreError(f"store {self.path}: {one_line(exc)}")
