"""The request log's schema: its columns, once, in both dialects; SQLite's migrations built from them, applied
once each and recorded in `schema_migrations` (PostgreSQL's, `pg.py`, are built from the same table).

Standard library only: the SQLite writer process loads this file by path, without the ollamux package.
"""

from __future__ import annotations

import os
import sqlite3
import time

# Annotations only: pathlib (with re, urllib.parse, ipaddress behind it) would add ~1 MB to the writer process
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = [
    "COLUMNS",
    "ENTRY_FIELDS",
    "MIGRATIONS",
    "POSTGRES",
    "REQUEST_COLUMNS",
    "SCHEMA_VERSION",
    "SQLITE",
    "connect",
    "derived_sql",
    "migrate",
    "migrations",
    "row_of",
]

# Which type a `REQUEST_COLUMNS` entry gives: its index in the entry.
SQLITE, POSTGRES = 1, 2

# The `requests` table: (name, SQLite type, PostgreSQL type, the migration that added it), in table order.
# Append only: a column is one line here and its value in `writer.record_row`; the migration a later one
# names adds it to existing databases (so it must allow NULL: older rows have none). What a migration
# created is never changed, or a database made before would differ from one made after.
REQUEST_COLUMNS: tuple[tuple[str, str, str, int], ...] = (
    # insertion order: retention by count and `logs --follow`; PostgreSQL's identity gives many instances one
    ("seq", "INTEGER PRIMARY KEY", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", 1),
    ("id", "TEXT NOT NULL", "TEXT NOT NULL", 1),  # the x-request-id (a client may reuse one: not unique)
    ("ts", "REAL NOT NULL", "DOUBLE PRECISION NOT NULL", 1),  # unix seconds when the request arrived
    ("api", "TEXT NOT NULL", "TEXT NOT NULL", 1),  # ollama | openai | responses | anthropic
    ("method", "TEXT NOT NULL", "TEXT NOT NULL", 1),
    ("route", "TEXT NOT NULL", "TEXT NOT NULL", 1),
    ("model_requested", "TEXT", "TEXT", 1),
    ("model_served", "TEXT", "TEXT", 1),
    ("backend", "TEXT", "TEXT", 1),
    ("upstream_url", "TEXT", "TEXT", 1),
    ("status", "INTEGER NOT NULL", "INTEGER NOT NULL", 1),
    ("streamed", "INTEGER NOT NULL", "SMALLINT NOT NULL", 1),
    ("abandoned", "INTEGER NOT NULL", "SMALLINT NOT NULL", 1),
    ("latency_ms", "REAL NOT NULL", "DOUBLE PRECISION NOT NULL", 1),
    ("ttft_ms", "REAL", "DOUBLE PRECISION", 1),
    ("prompt_tokens", "INTEGER", "BIGINT", 1),
    ("completion_tokens", "INTEGER", "BIGINT", 1),
    ("tokens_per_s", "REAL", "DOUBLE PRECISION", 1),
    ("error", "TEXT", "TEXT", 1),
    ("client", "TEXT", "TEXT", 1),
    ("key_name", "TEXT", "TEXT", 1),  # the API key's configured name, never the key
    ("request_body", "TEXT", "TEXT", 1),  # only with request_log.capture_bodies, capped
    ("response_text", "TEXT", "TEXT", 1),  # idem
    # which ollamux wrote the row (server.instance_id), so one shared log tells many instances apart; older
    # rows keep NULL
    ("instance", "TEXT", "TEXT", 2),
)

# What a migration does besides creating or adding columns, the same in both dialects.
_OTHER: dict[int, tuple[str, ...]] = {
    # one index only, as each one costs every insert: model filters scan (fine up to millions of rows)
    1: ("CREATE INDEX requests_ts ON requests (ts)",),
}


def migrations(
    dialect: int, columns: tuple[tuple[str, str, str, int], ...] = REQUEST_COLUMNS
) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """The numbered migrations of `columns` in one dialect (`SQLITE` or `POSTGRES`): version 1 creates the
    table, a later one adds the columns that name it; version N means the same columns in both dialects.
    Each is a list of statements (not one script: sqlite3's executescript would commit midway)."""
    if dialect not in (SQLITE, POSTGRES):
        raise ValueError(f"no such dialect: {dialect!r}")
    out: list[tuple[int, tuple[str, ...]]] = []
    for version in sorted({c[3] for c in columns} | set(_OTHER)):
        cols = [(c[0], c[1] if dialect == SQLITE else c[2]) for c in columns if c[3] == version]
        if version == 1:
            body = ",\n".join(f"    {name} {kind}" for name, kind in cols)
            statements = [f"CREATE TABLE requests (\n{body}\n)"]
        else:
            for name, kind in cols:
                if "NOT NULL" in kind or "PRIMARY KEY" in kind:
                    raise ValueError(f"request log column {name!r}, added by migration {version}, must allow NULL")
            statements = [f"ALTER TABLE requests ADD COLUMN {name} {kind}" for name, kind in cols]
        out.append((version, (*statements, *_OTHER.get(version, ()))))
    return tuple(out)


# Append only (through REQUEST_COLUMNS and _OTHER): a database written by an older ollamux is brought forward
# by the migrations it lacks.
MIGRATIONS = migrations(SQLITE)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# The columns the writer fills, in order (seq is assigned by the database): what the sinks insert and the
# readers select after seq.
COLUMNS: tuple[str, ...] = tuple(c[0] for c in REQUEST_COLUMNS if c[0] != "seq")

# What the request log hands its sink for one request (built on the event loop, `writer.RequestLog`): the
# record's values in `COLUMNS` order, except that the derived columns' places hold what they come from: the
# latency and TTFT in integer nanoseconds (small ints: cheap to marshal, exact), and no tokens/s (None). The sink
# derives them: `row_of` in Python (PostgreSQL), the same arithmetic in the SQLite writer's SQL (`derived_sql`),
# so the server's GIL pays for no float and no branch a row.
_RAW = {"latency_ms": "latency_ns", "ttft_ms": "ttft_ns"}
ENTRY_FIELDS: tuple[str, ...] = tuple(_RAW.get(c, c) for c in COLUMNS)
LATENCY, TTFT, SPEED = (COLUMNS.index(c) for c in ("latency_ms", "ttft_ms", "tokens_per_s"))
STREAMED, ABANDONED, COMPLETION = (COLUMNS.index(c) for c in ("streamed", "abandoned", "completion_tokens"))


def row_of(entry: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row (`COLUMNS` order) of one entry (`ENTRY_FIELDS` order): latency and TTFT in ms, and the decode
    speed, from the first token on when streamed, else over the whole request. `derived_sql` is the same."""
    latency, ttft, streamed, ct = entry[LATENCY], entry[TTFT], entry[STREAMED], entry[COMPLETION]
    tps = None
    if ct:
        gen_ns = latency - ttft if streamed and ttft is not None else 0
        if gen_ns <= 0:
            gen_ns = latency
        tps = ct / (gen_ns / 1e9) if gen_ns > 0 else None
    row = list(entry)
    row[LATENCY] = latency / 1e6
    row[TTFT] = None if ttft is None else ttft / 1e6
    row[SPEED] = tps
    row[STREAMED] = int(streamed)
    row[ABANDONED] = int(entry[ABANDONED])
    return tuple(row)


def derived_sql(cells: list[str]) -> list[str]:
    """One row of a statement's VALUES, `cells` the SQL of each entry value (a parameter, or NULL), with the
    derived columns computed by SQLite: `row_of`'s arithmetic, operation for operation (int - int, then
    int / real, in the same IEEE doubles), so both give the very same values."""
    latency, ttft, streamed, ct = cells[LATENCY], cells[TTFT], cells[STREAMED], cells[COMPLETION]
    gen = (
        f"CASE WHEN {streamed} AND {latency} - {ttft} > 0 THEN {latency} - {ttft} WHEN {latency} > 0 THEN {latency} END"
    )
    out = list(cells)
    out[LATENCY] = f"{latency} / 1e6"
    out[TTFT] = f"{ttft} / 1e6"
    out[SPEED] = f"CASE WHEN {ct} <> 0 THEN {ct} / (({gen}) / 1e9) END"
    return out


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode (readers never block the writer); the writer side creates and migrates."""
    if readonly:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no request log at {path}")
        # mode=rw, not ro: a reader of a WAL database must be able to create the -shm file when no writer
        # runs; query_only keeps it from ever changing the log
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
        return conn
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # isolation_level=None: transactions are explicit (BEGIN ... COMMIT), one per batch
    conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a power cut may lose the last batches, never corrupts; a process kill loses nothing
    conn.execute("PRAGMA synchronous=NORMAL")
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations this database lacks; return its schema version."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}
    if (
        done
        and conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'").fetchone() is None
    ):
        # the table was dropped after it was made (by hand, a clean-up): made again, not taken as done by the
        # record of migrations that made it once (as store/pg.py does)
        conn.execute("DELETE FROM schema_migrations")
        done = set()
    for version, statements in MIGRATIONS:
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-check under the write lock: two processes may open a fresh file at once
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                conn.execute("ROLLBACK")
                continue
            for stmt in statements:
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)
