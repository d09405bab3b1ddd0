"""A real PostgreSQL server for the tests: one per test session on 127.0.0.1, a fresh database per test.

The server (`bench.store.pgserver`) runs from a temporary folder with trust authentication for `postgres` on
127.0.0.1 and one password user (`ofa_pw`) for the wrong-credentials tests; as root it runs as the `postgres`
OS user. Tests skip if no PostgreSQL binaries are found. Import the fixtures into a test module:
`from tests._fixtures_pg import pg_server, pg_url, store_target`.
"""
from __future__ import annotations

import atexit

import pytest

from bench.store.pgserver import (LocalPgServer, PASSWORD, PASSWORD_USER, find_pg_bindir, free_port,  # noqa: F401
                                  start_local_server)

_SESSION: dict[str, LocalPgServer] = {}  # one server per session, shared by every module importing these fixtures


def session_server() -> LocalPgServer:
    if "server" not in _SESSION:
        bindir = find_pg_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL binaries not found (apt-get install postgresql, or set OFA_BENCH_PG_BIN)")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.skip("psycopg 3 is not installed")
        server = start_local_server(bindir, fast=True)
        _SESSION["server"] = server
        atexit.register(server.stop)
    return _SESSION["server"]


@pytest.fixture(scope="session")
def pg_server() -> LocalPgServer:
    return session_server()


@pytest.fixture
def pg_url(pg_server):
    """URL of a fresh, empty database on the session's server (dropped after the test)."""
    url = pg_server.create_db()
    yield url
    pg_server.drop_db(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_target(request, tmp_path):
    """A fresh store target on each backend: an SQLite path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "store" / "store.sqlite")
    else:
        server = session_server()
        url = server.create_db()
        yield url
        server.drop_db(url)
