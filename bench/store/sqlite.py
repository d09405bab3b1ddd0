"""SQLite backend of the store: one file, WAL mode, a busy timeout, write transactions taken with BEGIN IMMEDIATE.

WAL lets readers proceed while one process writes; BEGIN IMMEDIATE takes the write lock up front so that two
profilers never deadlock upgrading a read transaction, and the busy timeout makes the second one wait its turn.

SQLite does not always call its busy handler. Switching a new file to WAL while another connection writes it in
rollback-journal mode fails at once with "database is locked" (two profilers starting on one new store met
this in CI), and in WAL mode a connection that opens the file while the last other one is closing or recovering
it can get the same (https://sqlite.org/wal.html). So every point where a lock is first taken — BEGIN
[IMMEDIATE] with the read that starts a snapshot, a statement outside a transaction, the switch to WAL — is
retried here with a short backoff until the busy timeout has passed. A statement inside a transaction is
never retried: the transaction already holds its lock or snapshot.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

from bench.store.migrations import SQLITE_TYPES
from bench.store.errors import StoreError, one_line

SQLITE_HEADER = b"SQLite format 3\x00"

T = TypeVar("T")


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED as the sqlite3 module reports them."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "database is busy" in text


def retry_busy(fn: Callable[[], T], timeout_s: float, on_busy: Callable[[], None] | None = None) -> T:
    """Call `fn` until it does not fail with a busy error or `timeout_s` has passed (then the error is raised).
    `on_busy` runs after each busy failure (to roll back a half-begun transaction)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
            if on_busy is not None:
                on_busy()
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


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

    def check_exists(self) -> None:
        """Refuse a path where no store is (a mistyped `--store` must not become a new, empty store)."""
        if not self.path.exists():
            raise StoreError(f"store {self.path} does not exist (`ofa-bench profile`, `lut import` or "
                             f"`store migrate` create one)")

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
        mode = retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0], self.busy_timeout_s)
        if str(mode).lower() != "wal":
            raise StoreError(f"store {self.path}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")

    def begin(self, conn: sqlite3.Connection, write: bool) -> None:
        """BEGIN IMMEDIATE takes the write lock; a read transaction takes its snapshot with a first read, so
        nothing inside either one waits for a lock again."""
        def start() -> None:
            if write:
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn.execute("BEGIN")
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()

        def undo() -> None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

        retry_busy(start, self.busy_timeout_s, undo)

    def lock_schema(self, conn: sqlite3.Connection) -> None:
        """Migrations run inside BEGIN IMMEDIATE, which already excludes every other writer."""

    def lock_name(self, conn: sqlite3.Connection, name: str) -> None:
        """A write transaction (BEGIN IMMEDIATE) already excludes every other writer."""

    def sql(self, text: str) -> str:
        return text

    def execute(self, conn: sqlite3.Connection, sql: str, params=()):
        if conn.in_transaction:
            return conn.execute(sql, params)
        return retry_busy(lambda: conn.execute(sql, params), self.busy_timeout_s)  # its own transaction

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
