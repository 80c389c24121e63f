"""The request log in a hostile PostgreSQL: its table dropped while serving, the database made read-only,
a response text far over the cap. The log must say what is wrong once (not once per batch), name what to do,
come back by itself once the database can take rows again, and never cost a request."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ollamux.config import RequestLogSettings
from ollamux.observe import RequestRecord
from ollamux.store import RequestLog
from ollamux.store.pg_responses import PostgresResponses, StoreUnavailable
from ollamux.store.responses import StoredResponse

from .pg_server import PASSWORD, PgServer, ids_in, until


def _rec(i: int, **kw: Any) -> RequestRecord:
    rec = RequestRecord(id=f"r-{i}", api="openai", route="/v1/chat/completions", model_requested="m", status=200)
    rec.end_ns = rec.start_ns + 1_000_000
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def _sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def _log(url: str, **kw: Any) -> RequestLog:
    settings = RequestLogSettings(url=url, shown_url="postgresql://u:***@db/x", **kw)
    return RequestLog(settings, instance="i", flush_interval=0.02)


def test_a_dropped_table_is_said_once_and_made_again(pg_server: PgServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ollamux.store")
    url = pg_server.new_database()
    rl = _log(url)
    rl.open()
    try:
        rl.request_finished(_rec(0))
        assert rl.flush(10) and rl.written == 1
        _sql(url, "DROP TABLE requests")
        for i in range(1, 30):  # one batch each: the writer wakes every 20 ms
            rl.request_finished(_rec(i))
            time.sleep(0.03)
        until(lambda: rl.written >= 2, "the table made again and rows written")
        for i in range(30, 35):
            rl.request_finished(_rec(i))
        assert rl.flush(20)
        assert rl.status()["state"] == "ok" and rl.error is None
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) <= 2, [r.getMessage() for r in errors]  # the fault, not one line per batch
        assert "requests" in errors[0].getMessage()
    finally:
        rl.close()
    # the rows waited while the table was gone (the database all instances share: degraded, not failed),
    # and went into the table made again: none lost
    assert ids_in(url) == [f"r-{i}" for i in range(1, 35)]
    assert rl.dropped == 0
    assert PASSWORD not in caplog.text


def test_a_read_only_database_is_said_once_and_written_again_after(
    pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ollamux.store")
    url = pg_server.new_database()
    db = url.rsplit("/", 1)[1]
    rl = _log(url)
    rl.open()
    try:
        rl.request_finished(_rec(0))
        assert rl.flush(10) and rl.written == 1
        # new sessions are read-only; the writer's own session is cut, so it reconnects into one
        _sql(
            pg_server.url(),
            f"ALTER DATABASE {db} SET default_transaction_read_only = on",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{db}' AND pid <> pg_backend_pid()",
        )
        for i in range(1, 30):
            rl.request_finished(_rec(i))
            time.sleep(0.03)
        st = until(lambda: (s := rl.status())["error"] and "read-only" in s["error"] and s, "said in readiness")
        # a primary demoted in a failover: every instance sees it, so none may leave the load balancer over it
        assert st["state"] == "degraded", st
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) <= 4, errors  # not one per batch
        _sql(pg_server.url(), f"ALTER DATABASE {db} RESET default_transaction_read_only")
        rl.request_finished(_rec(99))
        until(lambda: "r-99" in ids_in(url), "written again once the database takes rows", timeout=60)
        until(lambda: rl.status()["state"] == "ok", "ok again")
        assert rl.dropped == 0
        assert ids_in(url) == [f"r-{i}" for i in (*range(30), 99)]  # the rows waited: none lost
    finally:
        rl.close()
        _sql(pg_server.url(), f"ALTER DATABASE {db} RESET default_transaction_read_only")


def test_a_huge_response_text_is_capped_and_stored(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    rl = _log(url, capture_bodies=True, body_cap_bytes=64 * 1024)
    rl.open()
    try:
        rl.request_finished(_rec(0, request_body=b"x" * 5_000_000, response_text="\u00e9" * 3_000_000))
        assert rl.flush(20) and rl.written == 1 and rl.dropped == 0
    finally:
        rl.close()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT length(request_body), octet_length(response_text) FROM requests").fetchone()
    assert row is not None
    assert row[0] < 64 * 1024 + 100 and row[1] < 64 * 1024 + 100


# ---------------------------------------------------------------------------------------- SQLite, the sibling
def _sqlite_log(path: Path) -> RequestLog:
    return RequestLog(RequestLogSettings(path=path), instance="i", flush_interval=0.02)


def test_sqlite_dropped_table_is_said_once_and_made_again_at_the_reopen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ollamux.store")
    path = tmp_path / "requests.sqlite"
    rl = _sqlite_log(path)
    rl.open()
    try:
        rl.request_finished(_rec(0))
        assert rl.flush(10) and rl.written == 1
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE requests")
        for i in range(1, 40):  # over ~3 s: a batch (its writer retries take 0.3 s) every 0.3 s or so
            rl.request_finished(_rec(i))
            time.sleep(0.08)
        # the refused batch marks the sink down; its reopen migrates, which makes the table again
        until(lambda: rl.flush(1) and rl.written == 40, "every row written once the table is back")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert 1 <= len(errors) <= 2 and "no such table: requests" in errors[0], errors  # not one per batch
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 39  # none lost since the drop
        assert rl.status()["dropped"] == 0
    finally:
        rl.close()


def test_sqlite_dropped_table_is_made_again(tmp_path: Path) -> None:
    path = tmp_path / "requests.sqlite"
    rl = _sqlite_log(path)
    rl.open()
    rl.request_finished(_rec(0))
    assert rl.flush(10)
    rl.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE requests")
    rl = _sqlite_log(path)
    rl.open()  # a restart
    try:
        rl.request_finished(_rec(1))
        assert rl.flush(10)
        assert rl.written == 1, rl.status()
    finally:
        rl.close()


# ---------------------------------------------------------------------------------------- least privilege
LEAST_PASSWORD = "app-Secret-4b9d1e"


def _least_privileged(pg_server: PgServer, url: str, tables: str) -> str:
    """A role that may read, add and delete rows in `tables`, and create nothing: what an operator gives an
    application whose schema a migration role made."""
    db = url.rsplit("/", 1)[1]
    role = f"app_{db}"
    _sql(
        url,
        f"CREATE ROLE {role} LOGIN PASSWORD '{LEAST_PASSWORD}'",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO {role}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    )
    return f"postgresql://{role}:{LEAST_PASSWORD}@127.0.0.1:{pg_server.port}/{db}"


def test_a_role_without_create_writes_into_a_made_schema(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    rl = _log(url)
    rl.open()  # the schema, made by a role that may
    rl.close()
    app = _least_privileged(pg_server, url, "requests, schema_migrations")
    rl = _log(app)
    rl.open()
    try:
        assert rl.status()["state"] == "ok", rl.status()
        rl.request_finished(_rec(7))
        assert rl.flush(10) and rl.written == 1
    finally:
        rl.close()
    assert ids_in(url) == ["r-7"]


def _stored(n: int) -> StoredResponse:
    return StoredResponse({"id": f"resp_{n}", "output": []}, [{"role": "user", "content": "hi"}], None)


def test_responses_store_with_a_role_without_create(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    maker = PostgresResponses(url, "pg", None)
    try:
        maker._put("resp_0", _stored(0))  # the table, made by a role that may
    finally:
        maker._close()
    app = _least_privileged(pg_server, url, "responses")
    store = PostgresResponses(app, "pg", None)
    try:
        store._put("resp_1", _stored(1))
        got = store._fetch("resp_1", None)
        assert got is not None and got.response["id"] == "resp_1"
    finally:
        store._close()


def test_responses_store_makes_a_dropped_table_again(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    store = PostgresResponses(url, "pg", None)
    try:
        store._put("resp_1", _stored(1))
        _sql(url, "DROP TABLE responses")
        with pytest.raises(StoreUnavailable, match="responses"):
            store._put("resp_2", _stored(2))  # the one call that finds it gone: said, with the table's name
        store._put("resp_3", _stored(3))  # and the next makes it again
        got = store._fetch("resp_3", None)
        assert got is not None and got.response["id"] == "resp_3"
    finally:
        store._close()


# ---------------------------------------------------------------------------------------- responses, database away
async def _settled(store: PostgresResponses) -> None:
    """Until the background writes in flight have ended (stored or not)."""
    if store._writes:
        await asyncio.wait(list(store._writes))


def test_responses_written_while_the_database_is_away_are_said_once(
    pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    url = pg_server.new_database()

    async def scenario() -> None:
        store = PostgresResponses(url, "postgresql://u:***@db/x", None, timeout=1.0)
        try:
            store.put("resp_0", _stored(0))
            await _settled(store)
            pg_server.stop()
            try:
                for i in range(1, 6):  # each answer of the Responses API stores itself in the background
                    store.put(f"resp_{i}", _stored(i))
                await _settled(store)
                gc.collect()  # an exception no one retrieved is logged now, with its traceback
                await asyncio.sleep(0)
            finally:
                pg_server.start()
            pg_server.wait_ready()
            deadline = time.monotonic() + 40
            while True:  # the pool reconnects with its own backoff
                store.put("resp_9", _stored(9))
                await _settled(store)
                with contextlib.suppress(StoreUnavailable):
                    if await store.get("resp_9", None) is not None:
                        break
                assert time.monotonic() < deadline, "the store never came back"
                await asyncio.sleep(0.2)
        finally:
            await asyncio.to_thread(store.close)

    asyncio.run(scenario())
    assert "exception was never retrieved" not in caplog.text
    said = [r.getMessage() for r in caplog.records if r.name.startswith("ollamux")]
    assert len(said) == 2, said  # away (once, not once per response), and back
    assert "postgresql://u:***@db/x" in said[0] and "not stored" in said[0]
    assert PASSWORD not in caplog.text
