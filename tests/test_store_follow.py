"""Following the request log (`store.follow.Follower`: the dashboard's live stream, `ollamux logs -f`): every
matching row once, including rows that two instances sharing one PostgreSQL log commit out of seq order (a
real PostgreSQL 15, two writers, one transaction held open while the other commits)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from ollamux.config import RequestLogSettings, parse_settings
from ollamux.store import Filters, LogReader
from ollamux.store.follow import HOLE_TTL, Follower, settled_seq
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


# ---------------------------------------------------------------------- settled_seq: readers that keep no gaps
NOW_ROW = (  # a row that ended now (ts + latency), as a request just finished writes it
    "INSERT INTO requests (id, ts, api, method, route, status, streamed, abandoned, latency_ms) "
    "VALUES (%s, %s, 'openai', 'POST', '/v1/chat/completions', 200, 0, 0, 5.0)"
)


def _poll(settings: RequestLogSettings, after: int | None, limit: int = 100) -> dict[str, Any]:
    from ollamux.api.admin_requests import _read_page

    return _read_page(settings, Filters(), after, limit)


def test_the_stateless_poll_loses_no_row_committed_out_of_order_on_postgresql(pg_server: PgServer) -> None:
    # what `GET /admin/requests?after=SEQ` (the dashboard's polling mode, any API client) reads
    url = pg_server.new_database()
    target = PgTarget(url, "postgresql://shown")
    slow, fast = pg_connect(target), pg_connect(target)
    pg_migrate(slow)
    settings = parse_settings({"request_log": {"url": url}}, {}).request_log
    try:
        fast.execute(NOW_ROW, ("first", time.time()))
        page = _poll(settings, None)
        assert ids(page["rows"]) == ["first"]
        last = page["last_seq"]
        with slow.transaction():  # instance A's batch takes its seq first, and commits last
            slow.execute(NOW_ROW, ("from-a", time.time()))
            fast.execute(NOW_ROW, ("from-b", time.time()))  # instance B's commits at once
            held = _poll(settings, last)
            # B's row waits above A's uncommitted seq: polling on from B's seq would never see A's
            assert held == {"rows": [], "last_seq": last}
            assert _poll(settings, None)["last_seq"] == last  # the first page stops there too
        page = _poll(settings, last)
        assert ids(page["rows"]) == ["from-a", "from-b"]  # once A committed: both, in seq order
        assert _poll(settings, page["last_seq"]) == {"rows": [], "last_seq": page["last_seq"]}
    finally:
        slow.close()
        fast.close()


def test_a_gap_that_cannot_fill_does_not_hold_the_poll_on_postgresql(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    conn = pg_connect(PgTarget(url, "postgresql://shown"))
    pg_migrate(conn)
    reader = PostgresLogReader(url, "postgresql://shown")
    try:
        conn.execute(NOW_ROW, ("kept", time.time()))
        with pytest.raises(RuntimeError), conn.transaction():  # a batch that rolled back: its seq is gone
            conn.execute(NOW_ROW, ("rolled-back", time.time()))
            raise RuntimeError
        conn.execute(NOW_ROW, ("after", time.time()))
        kept, after = (int(r[0]) for r in reader.query_tuples("SELECT seq FROM requests ORDER BY seq"))
        assert after == kept + 2
        assert settled_seq(reader, kept) == kept  # a young gap: a batch may still be committing into it
        assert settled_seq(reader, kept, now=time.time() + HOLE_TTL + 1) == after  # old: it never fills
        # a gap below the oldest row is rows retention removed: a reader far behind is not held by it
        conn.execute("DELETE FROM requests WHERE seq = %s", (kept,))
        assert settled_seq(reader, kept - 5) == after
    finally:
        reader.close()
        conn.close()


def test_one_writer_settles_at_the_highest_seq(sqlite_log: tuple[sqlite3.Connection, LogReader]) -> None:
    # SQLite has one writer process, which commits in seq order: a gap there never fills, so none holds a
    # reader (the retention of a busy small log leaves one below rows that are seconds old)
    conn, reader = sqlite_log
    conn.execute(AT_SEQ, (1, "one"))
    conn.execute(AT_SEQ, (9, "nine"))
    assert settled_seq(reader) == 9 and settled_seq(reader, 1) == 9 and settled_seq(reader, 20) == 20
