"""A throwaway PostgreSQL server on 127.0.0.1 in a temporary folder, for tests, benchmarks and demos.

`initdb` + `pg_ctl` from the Debian packages (or `$OFA_BENCH_PG_BIN`); as root the server runs as the
`postgres` OS user. Trust authentication for the `postgres` superuser on 127.0.0.1, plus one password user
(`ofa_pw`) to exercise wrong credentials. Never for real data: `fast=True` turns fsync off.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ofa_core.errors import OFABenchError

PASSWORD_USER = "ofa_pw"
PASSWORD = "right-password"


class PgServerError(OFABenchError):
    """PostgreSQL binaries missing, or the server would not start."""


def find_pg_bindir() -> Path | None:
    """`$OFA_BENCH_PG_BIN`, else the newest /usr/lib/postgresql/*/bin, else the folder of `initdb` on PATH."""
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
class LocalPgServer:
    """A running server; `url(db)` is a psycopg URL for the trusted superuser."""

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
        return ["runuser", "-u", "postgres", "--", *argv] if self.as_root else argv

    def admin(self, sql: str, params: tuple = ()) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql, params)

    def create_db(self, prefix: str = "t") -> str:
        """A new empty database owned by the password user; returns its superuser URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.admin(f'CREATE DATABASE "{name}" OWNER {PASSWORD_USER} STRATEGY FILE_COPY')
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

    def __enter__(self) -> "LocalPgServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_local_server(bindir: Path | None = None, fast: bool = True, extra: tuple[str, ...] = ()) -> LocalPgServer:
    """initdb + pg_ctl start in a fresh temporary folder (listening on 127.0.0.1 only)."""
    bindir = bindir or find_pg_bindir()
    if bindir is None:
        raise PgServerError("PostgreSQL binaries not found (apt-get install postgresql, or set OFA_BENCH_PG_BIN)")
    as_root = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="ofa-pg-"))
    if as_root:
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o700)
    server = LocalPgServer(bindir, root, free_port(), as_root)

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(server._cmd(argv), capture_output=True, text=True, timeout=120)

    out = run([str(bindir / "initdb"), "-D", str(server.datadir), "-U", "postgres", "--no-locale", "-E", "UTF8",
               "--auth-local=trust", "--auth-host=trust", "--no-sync"])
    if out.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PgServerError(f"initdb failed: {' '.join((out.stderr or out.stdout).split())}")
    hba_path = server.datadir / "pg_hba.conf"
    hba_path.write_text(f"local all all trust\nhost all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
                        f"host all all 127.0.0.1/32 trust\n")
    if as_root:
        shutil.chown(hba_path, "postgres", "postgres")
    options = ["-c listen_addresses=127.0.0.1", f"-p {server.port}", f"-c unix_socket_directories={root}",
               "-c max_connections=200", *extra]
    if fast:
        options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    out = run([str(bindir / "pg_ctl"), "start", "-D", str(server.datadir), "-w", "-t", "60",
               "-l", str(root / "server.log"), "-o", " ".join(options)])
    if out.returncode != 0:
        log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise PgServerError(f"pg_ctl start failed: {' '.join(out.stderr.split())} {' '.join(log[-1000:].split())}")
    server.admin(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")
    return server
