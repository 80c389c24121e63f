"""A real PostgreSQL 15 for the tests: Debian's binaries, run as the `postgres` user (PostgreSQL refuses
root) in a temp dir, on a free loopback port, with password (SCRAM) authentication, so a password in a URL
is a real one that the tests can look for.

`PgServer.start()` runs initdb (about a second, fsync off) and the server; `stop()`/`start()` again restart
it on the same port and data (a database that goes away and comes back); `close()` removes everything.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .servers import free_port

__all__ = ["PASSWORD", "PG_BIN", "PgServer", "missing_reason", "running_pg_server"]

PG_BIN = Path(os.environ.get("OLLAMUX_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "ollamux_test"
# long and unusual: the tests look for it in every text that leaves the server
PASSWORD = "pg-Secret-7f3a9c2e-in-the-url"


def missing_reason() -> str | None:
    """Why no PostgreSQL can run here, or None."""
    try:
        import psycopg  # noqa: F401 - imported where used: conftest imports this module for every test
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        return f"PostgreSQL binaries not found in {PG_BIN} (scripts/debian_tools.sh installs postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


class PgServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ollamux-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr.decode(errors='replace')[-2000:]}")

    def init(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--pwfile",
            str(pwfile),
            "-A",
            "scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale",
            "C",
        )
        pwfile.unlink()

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: every connection is cut, as when the server is restarted."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def running_pg_server() -> Iterator[PgServer]:
    """For a session fixture: one server for every test that wants it, skipped with the reason where
    PostgreSQL cannot run; a test that stops it starts it again."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PgServer()
    try:
        server.init()
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.close()


def until(ok: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
    """Poll until `ok()` is truthy (the deadline only keeps a broken build from hanging)."""
    deadline = time.monotonic() + timeout
    while True:
        got = ok()
        if got:
            return got
        assert time.monotonic() < deadline, f"never got there: {what}"
        time.sleep(0.05)


def ids_in(url: str) -> list[str]:
    """The request ids in a PostgreSQL request log, in seq order."""
    import psycopg  # the postgres extra's: only where a test reads the database itself

    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM requests ORDER BY seq")]
