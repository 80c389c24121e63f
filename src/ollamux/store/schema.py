"""The request log's SQLite schema: numbered migrations, applied once each, recorded in `schema_migrations`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

__all__ = ["COLUMNS", "MIGRATIONS", "SCHEMA_VERSION", "connect", "migrate"]

# Append only: a database written by an older ollamux is brought forward by the migrations it lacks.
# Each migration is a list of statements (not one script: sqlite3's executescript would commit midway).
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """
        CREATE TABLE requests (
            seq               INTEGER PRIMARY KEY,  -- insertion order: retention by count and `logs --follow`
            id                TEXT NOT NULL,        -- the x-request-id (a client may reuse one: not unique)
            ts                REAL NOT NULL,        -- unix seconds when the request arrived
            api               TEXT NOT NULL,        -- ollama | openai | responses | anthropic
            method            TEXT NOT NULL,
            route             TEXT NOT NULL,
            model_requested   TEXT,
            model_served      TEXT,
            backend           TEXT,
            upstream_url      TEXT,
            status            INTEGER NOT NULL,
            streamed          INTEGER NOT NULL,
            abandoned         INTEGER NOT NULL,
            latency_ms        REAL NOT NULL,
            ttft_ms           REAL,
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            tokens_per_s      REAL,
            error             TEXT,
            client            TEXT,
            key_name          TEXT,                 -- the API key's configured name, never the key
            request_body      TEXT,                 -- only with request_log.capture_bodies, capped
            response_text     TEXT                  -- idem
        )
            """,
            # one index only, as each one costs every insert: model filters scan (fine up to millions of rows)
            "CREATE INDEX requests_ts ON requests (ts)",
        ),
    ),
    # which ollamux wrote the row (server.instance_id), so one shared log tells many instances apart; older
    # rows keep NULL
    (2, ("ALTER TABLE requests ADD COLUMN instance TEXT",)),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# The columns the writer fills, in order (seq is assigned by SQLite).
COLUMNS: tuple[str, ...] = (
    "id",
    "ts",
    "api",
    "method",
    "route",
    "model_requested",
    "model_served",
    "backend",
    "upstream_url",
    "status",
    "streamed",
    "abandoned",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "tokens_per_s",
    "error",
    "client",
    "key_name",
    "request_body",
    "response_text",
    "instance",
)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode (readers never block the writer); the writer side creates and migrates."""
    if readonly:
        if not path.exists():
            raise FileNotFoundError(f"no request log at {path}")
        # mode=rw, not ro: a reader of a WAL database must be able to create the -shm file when no writer
        # runs; query_only keeps it from ever changing the log
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
        return conn
    path.parent.mkdir(parents=True, exist_ok=True)
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
