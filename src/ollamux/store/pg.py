"""PostgreSQL for the request log and the responses store: connecting, the schema and its migrations, and
keeping the URL's password out of every message.

The schema is SQLite's, built from the one column table in `schema.py` (column for column and migration for
migration) in PostgreSQL's types; `seq` is an identity column, so rows of many instances get one order.
Migrations run under an advisory lock: several instances starting at once against a fresh database apply each
one once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from ..backends.redact import Redactor
from .schema import COLUMNS, POSTGRES, migrations

__all__ = ["COPY_REQUESTS", "MIGRATIONS", "PgTarget", "connect", "migrate", "missing", "schema_lock"]

# schema.py's migrations in PostgreSQL's types, from the same column table: version N means the same columns
MIGRATIONS = migrations(POSTGRES)

COPY_REQUESTS = f"COPY requests ({', '.join(COLUMNS)}) FROM STDIN"

log = logging.getLogger("ollamux.store")

_LOCK_ID = 0x6F6C6C616D7578  # "ollamux": one advisory lock for every schema change


class PgTarget:
    """A database URL, the text shown for it (password masked) and the redactor for what its server says."""

    def __init__(self, url: str, shown: str) -> None:
        self.url = url
        self.shown = shown
        secrets = [url]
        try:
            password = psycopg.conninfo.conninfo_to_dict(url).get("password")
        except psycopg.ProgrammingError:
            password = None
        if password:
            secrets.append(str(password))
        self.redactor = Redactor(secrets)

    def error(self, exc: BaseException) -> str:
        """An exception's message, first line only, with no secret of the URL in it."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return self.redactor.text(text)


def connect(target: PgTarget, *, timeout: float = 5.0) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit, one per batch) that notices a dead peer:
    TCP keepalives and a send timeout, so a partitioned network fails a write instead of hanging it."""
    return psycopg.connect(
        target.url,
        autocommit=True,
        connect_timeout=max(1, int(timeout)),
        application_name="ollamux",
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        tcp_user_timeout=30_000,
    )


def schema_lock(conn: psycopg.Connection[Any]) -> None:
    """Within a transaction: wait for any other instance changing the schema."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))


def missing(conn: psycopg.Connection[Any], table: str) -> bool:
    """Whether `table` is absent (from the search path). Asked before any CREATE, never `CREATE ... IF NOT
    EXISTS`: PostgreSQL checks the privilege to create before it looks, so a role that may only read and write
    rows (its schema made by a migration role) would be refused a CREATE that had nothing to do."""
    row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    return row is None or row[0] is None


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Apply the migrations this database lacks, in one transaction (PostgreSQL's DDL is transactional);
    return its schema version."""
    with conn.transaction():
        schema_lock(conn)
        if missing(conn, "schema_migrations"):
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION)")
        done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
        if done and missing(conn, "requests"):
            # the table was dropped under a database that remembers its migrations: without this, no
            # restart would ever make it again and every write would fail
            log.warning("request log: the table 'requests' is gone from the database; creating it again")
            conn.execute("DELETE FROM schema_migrations")
            done = set()
        for version, statements in MIGRATIONS:
            if version in done:
                continue
            for stmt in statements:
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, time.time()))
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0) if row else 0
