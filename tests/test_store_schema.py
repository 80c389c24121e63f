"""The request log's schema, built from one column table (`store.schema.REQUEST_COLUMNS`) for SQLite and
PostgreSQL: released migrations never change, a file made by an older ollamux still opens, and a new column is
one line that becomes one ALTER in each dialect."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from ollamux.config import RequestLogSettings
from ollamux.observe import RequestRecord
from ollamux.store import LogReader, RequestLog, connect
from ollamux.store import pg as pg_schema
from ollamux.store.schema import MIGRATIONS, POSTGRES, REQUEST_COLUMNS, SCHEMA_VERSION, SQLITE, migrations

# Migration 1 as ollamux released it, written out by hand in each dialect (before the table was derived):
# what databases in the field were created with.
_V1_SQLITE = """
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
"""
_V1_POSTGRES = """
CREATE TABLE requests (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                TEXT NOT NULL,
    ts                DOUBLE PRECISION NOT NULL,
    api               TEXT NOT NULL,
    method            TEXT NOT NULL,
    route             TEXT NOT NULL,
    model_requested   TEXT,
    model_served      TEXT,
    backend           TEXT,
    upstream_url      TEXT,
    status            INTEGER NOT NULL,
    streamed          SMALLINT NOT NULL,
    abandoned         SMALLINT NOT NULL,
    latency_ms        DOUBLE PRECISION NOT NULL,
    ttft_ms           DOUBLE PRECISION,
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    tokens_per_s      DOUBLE PRECISION,
    error             TEXT,
    client            TEXT,
    key_name          TEXT,
    request_body      TEXT,
    response_text     TEXT
)
"""
_INDEX = "CREATE INDEX requests_ts ON requests (ts)"
_V2 = "ALTER TABLE requests ADD COLUMN instance TEXT"


def _same_sql(stmt: str) -> str:
    """A statement without comments and layout: what the database runs, not how it was written."""
    stmt = re.sub(r"--[^\n]*", "", stmt)
    return re.sub(r"\s+", " ", stmt).replace("( ", "(").replace(" )", ")").strip()


def _normal(ms: tuple[tuple[int, tuple[str, ...]], ...]) -> list[tuple[int, list[str]]]:
    return [(v, [_same_sql(s) for s in stmts]) for v, stmts in ms]


@pytest.mark.parametrize(
    ("derived", "v1"), [(MIGRATIONS, _V1_SQLITE), (pg_schema.MIGRATIONS, _V1_POSTGRES)], ids=["sqlite", "postgres"]
)
def test_released_migrations_are_what_was_released(derived: tuple[tuple[int, tuple[str, ...]], ...], v1: str) -> None:
    # a database made before the table was derived must equal one made after, in both dialects
    released = ((1, (v1, _INDEX)), (2, (_V2,)))
    assert _normal(derived[: len(released)]) == _normal(released)


def test_a_file_made_before_opens_migrated_like_a_new_one(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    conn.execute(_V1_SQLITE)
    conn.execute(_INDEX)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    conn.execute(
        "INSERT INTO requests (id, ts, api, method, route, status, streamed, abandoned, latency_ms) "
        "VALUES ('old-1', ?, 'ollama', 'POST', '/api/chat', 200, 0, 0, 5.0)",
        (time.time() - 60,),
    )
    conn.commit()
    conn.close()

    rl = RequestLog(RequestLogSettings(path=old), instance="host:11434", flush_interval=0.02)
    rl.open()
    try:
        assert rl.schema_version == SCHEMA_VERSION
        rec = RequestRecord(id="new-1", api="ollama", route="/api/chat", model_requested="m", status=200)
        rec.end_ns = rec.start_ns + 5_000_000
        rl.request_finished(rec)
        assert rl.flush()
    finally:
        rl.close()
    with LogReader(old) as reader:
        assert [(r["id"], r["instance"]) for r in reader.last(10)] == [("old-1", None), ("new-1", "host:11434")]

    def table(path: Path) -> list[tuple[object, ...]]:
        c = connect(path)
        try:
            return [tuple(r) for r in c.execute("PRAGMA table_info(requests)")]
        finally:
            c.close()

    # name, type, not null, default and primary key of every column, in order
    assert table(old) == table(tmp_path / "new.sqlite")
    assert [r[1] for r in table(old)] == [c[0] for c in REQUEST_COLUMNS]


def test_a_new_column_is_one_line_and_one_alter_in_each_dialect(tmp_path: Path) -> None:
    later = (*REQUEST_COLUMNS, ("cost_usd", "REAL", "DOUBLE PRECISION", SCHEMA_VERSION + 1))
    assert migrations(SQLITE, later)[-1] == (SCHEMA_VERSION + 1, ("ALTER TABLE requests ADD COLUMN cost_usd REAL",))
    assert migrations(POSTGRES, later)[-1] == (
        SCHEMA_VERSION + 1,
        ("ALTER TABLE requests ADD COLUMN cost_usd DOUBLE PRECISION",),
    )
    assert migrations(SQLITE, later)[:-1] == MIGRATIONS  # the released ones stay as they were
    # existing rows have no value for it: a later column that cannot be NULL is refused when the table is read
    strict = (*REQUEST_COLUMNS, ("cost_usd", "REAL NOT NULL", "DOUBLE PRECISION NOT NULL", SCHEMA_VERSION + 1))
    with pytest.raises(ValueError, match=f"'cost_usd', added by migration {SCHEMA_VERSION + 1}, must allow NULL"):
        migrations(SQLITE, strict)
