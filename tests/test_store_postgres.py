"""The request log and the Responses store in a real PostgreSQL 15 (started by the `pg_server` fixture):
many instances write one log that `ollamux logs` reads in full; a database that restarts mid-load loses no
row up to the queue bound and counts exactly what did not fit; the URL's password is never shown.
Also SQLite's migration that adds the `instance` column to an older file, and the config rules of `url`."""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
import yaml

from ollamux.cli import main
from ollamux.config import ConfigError, RequestLogSettings, parse_settings
from ollamux.observe import RequestRecord
from ollamux.store import LogReader, RequestLog
from ollamux.store.schema import MIGRATIONS, SCHEMA_VERSION

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .pg_server import PASSWORD, PgServer, ids_in, until


def _config(upstream: str, url: str, instance: str, **log: Any) -> dict[str, Any]:
    return {**basic_config(upstream), "server": {"instance_id": instance}, "request_log": {"url": url, **log}}


def _chat(base: str, ids: list[str]) -> None:
    with httpx.Client(base_url=base, timeout=10) as c:
        for rid in ids:
            r = c.post(
                "/v1/chat/completions",
                json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-request-id": rid},
            )
            assert r.status_code == 200, r.text


def _ready(base: str) -> httpx.Response:
    return httpx.get(base + "/health/ready", timeout=10)  # logs no row


def _log_state(base: str) -> dict[str, Any]:
    state: dict[str, Any] = _ready(base).json()["request_log"]
    return state


def _logs(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["logs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _rec(i: int, **kw: Any) -> RequestRecord:
    rec = RequestRecord(id=f"r-{i}", api="openai", route="/v1/chat/completions", model_requested="m", status=200)
    rec.end_ns = rec.start_ns + 1_000_000
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


# ---------------------------------------------------------------------------------------- many instances
def test_two_instances_write_one_log_that_ollamux_logs_reads_in_full(
    pg_server: PgServer,
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = pg_server.new_database()
    a = start_proxy(_config(fake_openai[1], url, "inst-a"))
    b = start_proxy(_config(fake_openai[1], url, "inst-b"))
    a_ids, b_ids = [f"a-{i}" for i in range(15)], [f"b-{i}" for i in range(12)]
    _chat(a, a_ids[:8])
    _chat(b, b_ids)
    _chat(a, a_ids[8:])
    until(lambda: _log_state(a)["written"] == 15 and _log_state(b)["written"] == 12, "both logs written")
    assert _log_state(a)["url"] == url.replace(PASSWORD, "***")

    code, out, err = _logs(capsys, "--url", url, "-n", "1000", "--json")
    assert code == 0, err
    rows = [yaml.safe_load(line) for line in out.splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(a_ids + b_ids)
    assert {r["id"]: r["instance"] for r in rows} == {
        **dict.fromkeys(a_ids, "inst-a"),
        **dict.fromkeys(b_ids, "inst-b"),
    }
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)  # one order over both instances
    assert all(r["status"] == 200 and r["model_requested"] == "fake-model" and r["latency_ms"] > 0 for r in rows)

    code, out, _ = _logs(capsys, "--url", url, "--stats", "--json")
    stats = {s["model"]: s for s in yaml.safe_load(out)}
    assert code == 0 and stats["fake-model"]["count"] == 27 and stats["fake-model"]["errors"] == 0
    assert stats["fake-model"]["latency_p50_ms"] is not None

    # the config file names the database, the password through ${VAR} as elsewhere in the config
    cfg = tmp_path / "ollamux.yaml"
    cfg.write_text(yaml.safe_dump({"request_log": {"url": url.replace(PASSWORD, "${PG_TEST_PASSWORD}")}}))
    monkeypatch.setenv("PG_TEST_PASSWORD", PASSWORD)
    code, out, _ = _logs(capsys, "--config", str(cfg), "-n", "100", "--model", "fake-model")
    lines = out.splitlines()
    # rows are in the order they were written (each instance writes its batches when it flushes)
    assert code == 0 and len(lines) == 27
    assert sum("on=inst-a" in line for line in lines) == 15 and sum("on=inst-b" in line for line in lines) == 12


def test_follow_reads_new_rows_of_postgres(pg_server: PgServer) -> None:
    from ollamux.cli.logs import follow
    from ollamux.store import Filters, open_reader

    url = pg_server.new_database()
    settings = RequestLogSettings(url=url, shown_url="shown")
    rl = RequestLog(settings, instance="x", flush_interval=0.02)
    rl.open()
    try:
        rl.request_finished(_rec(0))
        assert rl.flush(10)
        with open_reader(settings) as reader:
            start = reader.max_seq()
            for i in range(1, 4):
                rl.request_finished(_rec(i))
            assert rl.flush(10)
            seen: list[str] = []
            follow(
                reader,
                Filters(),
                start,
                lambda rows: seen.extend(r["id"] for r in rows),
                interval=0.01,
                should_stop=lambda: len(seen) >= 3,
            )
            assert seen == ["r-1", "r-2", "r-3"]
    finally:
        rl.close()


def test_dashboard_reads_every_instance_from_postgres(
    pg_server: PgServer, fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    url = pg_server.new_database()
    a = start_proxy(_config(fake_openai[1], url, "inst-a"))
    b = start_proxy(_config(fake_openai[1], url, "inst-b"))
    _chat(a, ["a-0"])
    _chat(b, ["b-0", "b-1"])
    until(lambda: _log_state(a)["written"] == 1 and _log_state(b)["written"] == 2, "both logs written")
    with httpx.Client(base_url=a, timeout=10) as c:
        rows = c.get("/admin/requests").json()["rows"]  # asked of one instance, rows of both
        assert sorted((r["id"], r["instance"]) for r in rows) == [
            ("a-0", "inst-a"),
            ("b-0", "inst-b"),
            ("b-1", "inst-b"),
        ]
        detail = c.get("/admin/requests/b-1")
        assert detail.status_code == 200 and detail.json()["instance"] == "inst-b"
        overview = c.get("/admin/overview").json()
        assert overview["totals"]["requests"] == 3


# ---------------------------------------------------------------------------------------- outages
def test_postgres_restart_mid_load_loses_no_row(
    pg_server: PgServer, fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    url = pg_server.new_database()
    base = start_proxy(_config(fake_openai[1], url, "inst-a"))
    before, during, after = [f"pre-{i}" for i in range(20)], [f"out-{i}" for i in range(60)], ["post-0"]
    _chat(base, before)
    until(lambda: _log_state(base)["written"] == 20, "rows before the outage written")
    pg_server.stop()
    try:
        _chat(base, during[:30])  # requests go on, and succeed, while the database is away
        state = until(lambda: (s := _log_state(base))["state"] == "degraded" and s, "log degraded")
        assert state["error"] and state["queued"] > 0 and state["dropped"] == 0
        r = _ready(base)
        # a shared database away is no reason for every instance to leave the load balancer
        assert r.status_code == 200 and r.json()["request_log"]["state"] == "degraded"
        _chat(base, during[30:])
    finally:
        pg_server.start()
    _chat(base, after)
    state = until(lambda: (s := _log_state(base))["written"] == 81 and s, "every queued row written")
    assert state["state"] == "ok" and state["dropped"] == 0 and state["error"] is None and state["restarts"] >= 1
    assert ids_in(url) == before + during + after  # each once, in order


def test_queue_smaller_than_the_outage_drops_and_counts_exactly_the_overflow(
    pg_server: PgServer, fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    url = pg_server.new_database()
    base = start_proxy(_config(fake_openai[1], url, "inst-q", queue_size=10))
    _chat(base, ["pre-0"])
    until(lambda: _log_state(base)["written"] == 1, "first row written")
    pg_server.stop()
    try:
        _chat(base, [f"out-{i}" for i in range(25)])
        state = _log_state(base)
        assert state["queued"] == 10 and state["dropped"] == 15
    finally:
        pg_server.start()
    state = until(lambda: (s := _log_state(base))["written"] == 11 and s, "the queued rows written")
    assert state["dropped"] == 15 and state["queued"] == 0
    assert ids_in(url) == ["pre-0", *(f"out-{i}" for i in range(10))]  # the first ten waited, the rest dropped
    metrics = httpx.get(base + "/metrics", timeout=10).text
    assert "ollamux_log_rows_dropped_total 15.0" in metrics


def test_database_down_at_start_queues_until_it_comes(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    pg_server.stop()
    rl = RequestLog(RequestLogSettings(url=url, shown_url="pg"), instance="x", flush_interval=0.02)
    try:
        rl.open()  # an instance may start before its database (compose, Kubernetes): rows wait
        assert rl.status()["state"] == "degraded" and "cannot open request log pg" in (rl.error or "")
        for i in range(5):
            rl.request_finished(_rec(i))
        assert rl.queued == 5 and rl.dropped == 0
    finally:
        pg_server.start()
    try:
        assert rl.flush(40)
        assert rl.status()["state"] == "ok" and rl.written == 5 and rl.schema_version == SCHEMA_VERSION
    finally:
        rl.close()
    assert ids_in(url) == [f"r-{i}" for i in range(5)]


# ---------------------------------------------------------------------------------------- the password
def test_password_never_in_readiness_operator_log_or_cli_errors(
    pg_server: PgServer,
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = pg_server.new_database()
    base = start_proxy(_config(fake_openai[1], url, "inst-p"))
    _chat(base, ["p-0"])
    until(lambda: _log_state(base)["written"] == 1, "row written")
    texts = [_ready(base).text]
    pg_server.stop()
    try:
        _chat(base, ["p-1"])
        until(lambda: _log_state(base)["state"] == "degraded", "log degraded")
        texts.append(_ready(base).text)
        code, _, err = _logs(capsys, "--url", url)  # the database is down
        assert code == 1 and "***" in err
        texts.append(err)
    finally:
        pg_server.start()
    wrong = pg_server.url(url.rsplit("/", 1)[1], password="Wrong-" + PASSWORD)
    code, _, err = _logs(capsys, "--url", wrong)
    assert code == 1 and "password authentication failed" in err
    texts.append(err)
    # the password as a query parameter is masked too
    as_query = f"postgresql://ollamux_test@127.0.0.1:{pg_server.port}/nosuchdb?password=Other-{PASSWORD}"
    code, _, err = _logs(capsys, "--url", as_query)
    assert code == 1 and "nosuchdb" in err
    texts.append(err)
    until(lambda: _log_state(base)["written"] == 2, "row written after the restart")
    texts.append(caplog.text)
    assert "cannot" in caplog.text or "lost" in caplog.text  # the outage was logged, by masked URL
    for text in texts:
        assert PASSWORD not in text


# ---------------------------------------------------------------------------------------- responses store
def test_responses_stored_retrieved_deleted_across_instances(
    pg_server: PgServer,
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    oai: Callable[[str], openai.OpenAI],
) -> None:
    url = pg_server.new_database()
    a = oai(start_proxy(_config(fake_openai[1], url, "inst-a")))
    b = oai(start_proxy(_config(fake_openai[1], url, "inst-b")))
    first = a.responses.create(model="fake-model", input="My name is Ada.")
    # the other instance continues and reads it: the store is the shared database, not a process
    second = until(
        lambda: _retry_not_found(
            lambda: b.responses.create(model="fake-model", input="What is my name?", previous_response_id=first.id)
        ),
        "first response visible to the other instance",
    )
    got = a.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text
    b.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(first.id)
    with psycopg.connect(url) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM responses")] == [second.id]


def _retry_not_found(call: Callable[[], Any]) -> Any:
    # a put is written in the background: readable at once on its own instance, a moment later elsewhere
    try:
        return call()
    except openai.BadRequestError:
        return None


# ---------------------------------------------------------------------------------------- store details
def test_retention_on_postgres(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    rl = RequestLog(
        RequestLogSettings(url=url, shown_url="pg", retention_rows=5, retention_days=1), flush_interval=0.02
    )
    rl.open()
    try:
        rl.request_finished(_rec(0, started=time.time() - 3 * 86400))  # past retention_days
        for i in range(1, 12):
            rl.request_finished(_rec(i))
        assert rl.flush(10)
        rl.retain_now()
        until(lambda: ids_in(url) == [f"r-{i}" for i in range(7, 12)], "retention applied")
    finally:
        rl.close()


def test_odd_rows_are_repaired_not_dropped(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    rl = RequestLog(RequestLogSettings(url=url, shown_url="pg"), flush_interval=0.02)
    rl.open()
    try:
        rl.request_finished(_rec(0, error="nul\x00inside"))
        rl.request_finished(_rec(1, model_requested="lone \ud800 surrogate"))
        rl.request_finished(_rec(2, prompt_tokens=2**70))
        rl.request_finished(_rec(3))
        assert rl.flush(10)
        assert rl.written == 4 and rl.dropped == 0
    finally:
        rl.close()
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, error, model_requested, prompt_tokens FROM requests ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == ["r-0", "r-1", "r-2", "r-3"]
    assert rows[0][1] == "nulinside" and rows[1][2] == "lone ? surrogate" and rows[2][3] is None


def test_sqlite_migration_adds_instance_to_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for stmt in MIGRATIONS[0][1]:
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    conn.execute(
        "INSERT INTO requests (id, ts, api, method, route, status, streamed, abandoned, latency_ms) "
        "VALUES ('old-1', ?, 'ollama', 'POST', '/api/chat', 200, 0, 0, 5.0)",
        (time.time() - 60,),
    )
    conn.commit()
    conn.close()
    rl = RequestLog(RequestLogSettings(path=path), instance="host:11434", flush_interval=0.02)
    rl.open()
    try:
        assert rl.schema_version == SCHEMA_VERSION == 2
        rl.request_finished(_rec(1))
        assert rl.flush()
    finally:
        rl.close()
    with LogReader(path) as reader:
        rows = reader.last(10)
    assert [(r["id"], r["instance"]) for r in rows] == [("old-1", None), ("r-1", "host:11434")]


# ---------------------------------------------------------------------------------------- config
def test_config_url_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"PGPW": "s3cret-pass"}
    s = parse_settings({"request_log": {"url": "postgresql://u:${PGPW}@db:5432/log"}}, env)
    assert s.request_log.url == "postgresql://u:s3cret-pass@db:5432/log"
    assert s.request_log.shown_url == "postgresql://u:***@db:5432/log"
    assert "s3cret-pass" not in repr(s)
    assert s.server.instance_id is None
    assert parse_settings({"server": {"instance_id": "pod-7"}}, {}).server.instance_id == "pod-7"
    with pytest.raises(ConfigError, match="exclusive") as e:
        parse_settings({"request_log": {"url": "postgresql://u:s3cret-pass@db/log", "path": "x.sqlite"}}, env)
    assert "s3cret-pass" not in str(e.value)
    with pytest.raises(ConfigError, match="postgresql://") as e:
        parse_settings({"request_log": {"url": "mysql://u:s3cret-pass@db/log"}}, env)
    assert "s3cret-pass" not in str(e.value)
    with pytest.raises(ConfigError, match="instance_ids"):
        parse_settings({"server": {"instance_ids": "x"}}, {})
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the postgres extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'ollamux\[postgres\]'"):
        parse_settings({"request_log": {"url": "postgresql://db/log"}}, {})
