"""A real PostgreSQL server for the tests: one per test session on 127.0.0.1, a fresh database per test.

The server runs from a temporary folder (data dir and unix socket inside it), with trust authentication for
the `postgres` superuser on 127.0.0.1 and one password user (`ofa_pw`) for the wrong-credentials tests. Run
as root, the server runs as the `postgres` OS user (`runuser -u postgres --`). Tests skip if no PostgreSQL
binaries are found. Import the fixtures into a test module: `from tests._fixtures_pg import pg_server, ...`.
"""
from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD_USER = "ofa_pw"
PASSWORD = "right-password"


def find_pg_bindir() -> Path | None:
    """`$OFA_BENCH_PG_BIN`, else the newest /usr/lib/postgresql/*/bin, else `initdb` on PATH."""
    env = os.environ.get("OFA_BENCH_PG_BIN")
    candidates = [env] if env else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running test server; `url(db)` gives a psycopg URL for the trusted superuser."""

    bindir: Path
    root: Path
    port: int
    as_root: bool

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, db: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        cred = f"{user}:{password}" if password is not None else user
        return f"postgresql://{cred}@127.0.0.1:{self.port}/{db}"

    def _cmd(self, argv: list[str]) -> list[str]:
        return (["runuser", "-u", "postgres", "--", *argv]) if self.as_root else argv

    def admin(self, sql: str, params: tuple = ()) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql, params)

    def create_db(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.admin(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        self.admin(f'GRANT ALL ON DATABASE "{name}" TO {PASSWORD_USER}')
        self.admin(f'ALTER DATABASE "{name}" OWNER TO {PASSWORD_USER}')
        return self.url(name)

    def drop_db(self, url: str) -> None:
        name = url.rsplit("/", 1)[-1]
        try:
            self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:
            pass

    def stop(self) -> None:
        subprocess.run(self._cmd([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", "immediate",
                                  "-w"]), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_server(bindir: Path, extra: tuple[str, ...] = ()) -> PgServer:
    """initdb + pg_ctl start in a fresh temporary folder; raises RuntimeError with the log on failure."""
    as_root = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="ofa-pg-"))
    if as_root:
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o700)
    server = PgServer(bindir, root, free_port(), as_root)
    run = lambda argv: subprocess.run(server._cmd(argv), capture_output=True, text=True, timeout=120)  # noqa: E731
    out = run([str(bindir / "initdb"), "-D", str(server.datadir), "-U", "postgres", "--no-locale", "-E", "UTF8",
               "--auth-local=trust", "--auth-host=trust", "--no-sync"])
    if out.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {out.stderr.strip() or out.stdout.strip()}")
    hba = (f"local all all trust\n"
           f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
           f"host all all 127.0.0.1/32 trust\n")
    hba_path = server.datadir / "pg_hba.conf"
    hba_path.write_text(hba)
    if as_root:
        shutil.chown(hba_path, "postgres", "postgres")
    options = ["-c listen_addresses=127.0.0.1", f"-p {server.port}", f"-c unix_socket_directories={root}",
               "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off", "-c max_connections=200",
               *extra]
    out = run([str(bindir / "pg_ctl"), "start", "-D", str(server.datadir), "-w", "-t", "60",
               "-l", str(root / "server.log"), "-o", " ".join(options)])
    if out.returncode != 0:
        log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {out.stderr.strip()} {log[-2000:]}")
    server.admin(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")
    return server


_SESSION: dict[str, PgServer] = {}  # one server per test session, shared by every module importing these fixtures


def session_server() -> PgServer:
    if "server" not in _SESSION:
        bindir = find_pg_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL binaries not found (apt-get install postgresql, or set OFA_BENCH_PG_BIN)")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.skip("psycopg 3 is not installed")
        server = start_server(bindir)
        _SESSION["server"] = server
        atexit.register(server.stop)
    return _SESSION["server"]


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
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
