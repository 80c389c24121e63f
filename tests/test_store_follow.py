"""Following the request log (`store.follow.Follower`: the dashboard's live stream, `ollamux logs -f`): every
matching row once, including rows that two instances sharing one PostgreSQL log commit out of seq order (a
real PostgreSQL 15, two writers, one transaction held open while the other commits)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ollamux.store import Filters, LogReader
from ollamux.store.follow import HOLE_TTL, Follower
from ollamux.store.pg import PgTarget
from ollamux.store.pg import connect as pg_connect
from ollamux.store.pg import migrate as pg_migrate
from ollamux.store.pg_reader import PostgresLogReader
from ollamux.store.schema import migrate

from .pg_server import PgServer

INSERT = (
    "INSERT INTO requests (id, ts, api, method, route, status, streamed, abandoned, latency_ms) "
    "VALUES ({p}, 1.0, 'openai', 'POST', '/v1/chat/completions', {p}, 0, 0, 1.0)"
)
AT_SEQ = (  # SQLite lets a test choose the seq, as a late commit leaves it
    "INSERT INTO requests (seq, id, ts, api, method, route, status, streamed, abandoned, latency_ms) "
    "VALUES (?, ?, 1.0, 'openai', 'POST', '/v1/chat/completions', 200, 0, 0, 1.0)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


@pytest.fixture
def sqlite_log(tmp_path: Path) -> tuple[sqlite3.Connection, LogReader]:
    path = tmp_path / "requests.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn)
    return conn, LogReader(path)


def test_rows_once_each_in_order_with_filters_and_a_limit(sqlite_log: tuple[sqlite3.Connection, LogReader]) -> None:
    conn, reader = sqlite_log
    add = INSERT.format(p="?")
    conn.execute(add, ("before", 200))
    f = Follower(reader, Filters(), reader.max_seq(), limit=3)
    errors = Follower(reader, Filters(status="error"), reader.max_seq())
    assert f.poll() == [] and errors.poll() == []
    for i, status in enumerate([200, 500, 200, 502]):
        conn.execute(add, (f"r{i}", status))
    assert ids(f.poll()) == ["r0", "r1", "r2"] and f.full  # the limit: more are waiting
    assert ids(f.poll()) == ["r3"] and not f.full
    assert f.poll() == []  # nothing twice
    assert ids(errors.poll()) == ["r1", "r3"] and errors.poll() == []
    assert f.holes == [] and errors.holes == []  # rows a filter leaves out are no gap in the seqs


def test_a_gap_is_asked_for_until_it_is_old(sqlite_log: tuple[sqlite3.Connection, LogReader]) -> None:
    conn, reader = sqlite_log
    clock = Clock()
    f = Follower(reader, Filters(), 0, clock=clock)
    conn.execute(AT_SEQ, (5, "late-5"))
    assert ids(f.poll()) == ["late-5"] and f.holes == [(1, 4)]
    conn.execute(AT_SEQ, (3, "late-3"))
    assert ids(f.poll()) == ["late-3"] and f.holes == [(1, 2), (4, 4)]  # the gap split around it
    clock.now += HOLE_TTL + 1
    assert f.poll() == [] and f.holes == []  # never filled (a rolled-back batch): given up


def test_two_instances_committing_out_of_order_on_postgresql(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    target = PgTarget(url, "postgresql://shown")
    slow, fast = pg_connect(target), pg_connect(target)
    pg_migrate(slow)
    add = INSERT.format(p="%s")
    reader = PostgresLogReader(url, "postgresql://shown")
    try:
        f = Follower(reader, Filters(), reader.max_seq())
        before = Follower(reader, Filters(), reader.max_seq())  # what a reader asking only `seq > last` sees
        with slow.transaction():  # instance A's batch takes its seq first, and commits last
            slow.execute(add, ("from-a", 200))
            fast.execute(add, ("from-b", 200))  # instance B's commits at once (autocommit)
            assert ids(f.poll()) == ["from-b"] and len(f.holes) == 1
            last = before.poll()[-1]["seq"]
        assert ids(f.poll()) == ["from-a"] and f.holes == []  # A's row, once committed, is not lost
        # asking only for what is after the last seq seen (the old way) never finds A's row: it is behind
        assert reader.query("SELECT id FROM requests WHERE seq > ?", [last]) == []
        assert f.poll() == []
    finally:
        reader.close()
        slow.close()
        fast.close()
