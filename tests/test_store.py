"""The request log: the writer (batches, drops, retention, capture caps, migrations) and one row per kind
of request through a real proxy over real sockets."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollamux.config import RequestLogSettings
from ollamux.observe import RequestRecord
from ollamux.store import SCHEMA_VERSION, Filters, LogReader, RequestLog, connect, migrate, percentile

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI


def _rec(i: int = 0, **kw: Any) -> RequestRecord:
    rec = RequestRecord(id=f"r{i}", api="ollama", route="/api/chat", model_requested="m", status=200)
    rec.end_ns = rec.start_ns + 5_000_000
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def rows(db: Path, where: str = "", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM requests {where} ORDER BY seq", args)]
    finally:
        conn.close()


def wait_rows(db: Path, n: int, timeout: float = 5.0, where: str = "") -> list[dict[str, Any]]:
    """Rows appear after the writer's next batch (a fraction of a second): poll for them."""
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if db.exists():
            try:
                got = rows(db, where)
            except sqlite3.OperationalError:  # the table is not created yet
                got = []
            if len(got) >= n:
                return got
        time.sleep(0.02)
    raise AssertionError(f"expected {n} rows, found {len(got)}: {got}")


@pytest.fixture
def log_factory(tmp_path: Path) -> Any:
    made: list[RequestLog] = []

    def make(**kw: Any) -> RequestLog:
        rl = RequestLog(RequestLogSettings(path=tmp_path / "log.sqlite", **kw), flush_interval=0.02)
        made.append(rl)
        return rl

    yield make
    for rl in made:
        rl.close()


# ------------------------------------------------------------------------------------ writer, unit level
def test_schema_wal_and_migrations(tmp_path: Path) -> None:
    db = tmp_path / "a" / "log.sqlite"
    conn = connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrate(conn) == SCHEMA_VERSION  # a second run applies nothing
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    conn.close()
    conn = connect(db)  # reopening an existing file is fine
    conn.close()


def test_rows_written_in_batches_with_derived_columns(log_factory: Callable[..., RequestLog]) -> None:
    rl = log_factory()
    rl.open()
    rec = _rec(1, streamed=True, completion_tokens=20, prompt_tokens=7, key_name="team-a")
    rec.first_token_ns = rec.start_ns + 1_000_000  # ttft 1 ms; 20 tokens over the remaining 4 ms
    for i in range(1000):
        rl.request_finished(_rec(100 + i))
    rl.request_finished(rec)
    assert rl.flush()
    got = rows(rl.path, "WHERE id = 'r1'")[0]
    assert got["latency_ms"] == pytest.approx(5.0) and got["ttft_ms"] == pytest.approx(1.0)
    assert got["tokens_per_s"] == pytest.approx(20 / 0.004)
    assert (got["prompt_tokens"], got["completion_tokens"], got["key_name"]) == (7, 20, "team-a")
    assert got["streamed"] == 1 and got["request_body"] is None
    assert rl.written == 1001 and rl.dropped == 0


def test_full_queue_drops_and_counts_never_blocks(log_factory: Callable[..., RequestLog]) -> None:
    rl = log_factory(queue_size=10)
    rl.open()
    # the writer thread is free to drain at any moment, so fill faster than it can possibly wake
    t0 = time.perf_counter()
    for i in range(5000):
        rl.request_finished(_rec(i))
    elapsed = time.perf_counter() - t0
    assert rl.dropped > 0
    assert elapsed < 0.5  # ~0.1-1 us per call: a full queue costs nothing
    assert rl.flush()
    assert rl.written + rl.dropped == 5000


def test_not_opened_drops(log_factory: Callable[..., RequestLog]) -> None:
    rl = log_factory()
    rl.request_finished(_rec())
    assert rl.dropped == 1 and rl.status()["state"] == "stopped"


def test_unwritable_path_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rl = RequestLog(RequestLogSettings(path=blocker / "log.sqlite"))
    rl.open()  # the server keeps serving without a log
    assert rl.status()["state"] == "failed" and "cannot open" in (rl.error or "")
    rl.request_finished(_rec())
    assert rl.dropped == 1
    rl.close()


def test_close_writes_everything_queued(log_factory: Callable[..., RequestLog]) -> None:
    rl = log_factory()
    rl.flush_interval = 60  # only close() can make it write
    rl.open()
    for i in range(50):
        rl.request_finished(_rec(i))
    rl.close()
    assert len(rows(rl.path)) == 50


def test_retention_by_rows_and_age(log_factory: Callable[..., RequestLog]) -> None:
    rl = log_factory(retention_rows=10, retention_days=1)
    rl.open()
    for i in range(30):
        rl.request_finished(_rec(i, started=time.time() - (3 * 86400 if i < 5 else 0)))
    assert rl.flush()
    rl.retain_now()
    deadline = time.monotonic() + 5
    while len(rows(rl.path)) != 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r["id"] for r in rows(rl.path)] == [f"r{i}" for i in range(20, 30)]
    # age: rows older than a day go, whatever the count
    rl.request_finished(_rec(99, started=time.time() - 2 * 86400))
    assert rl.flush()
    rl.retain_now()
    deadline = time.monotonic() + 5
    while any(r["id"] == "r99" for r in rows(rl.path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(r["id"] == "r99" for r in rows(rl.path))


def test_capture_caps_bodies(log_factory: Callable[..., RequestLog]) -> None:
    rl = log_factory(capture_bodies=True, body_cap_bytes=10)
    rl.open()
    rl.request_finished(_rec(1, request_body=b'{"messages": "0123456789abcdef"}', response_text="short"))
    rl.request_finished(_rec(2, request_body=b"tiny", response_text="\u00e9" * 20))
    assert rl.flush()
    r1, r2 = rows(rl.path)
    assert r1["request_body"].startswith('{"messages') and r1["request_body"].endswith("more bytes]")
    assert r1["response_text"] == "short" and r2["request_body"] == "tiny"
    assert r2["response_text"] == "\u00e9" * 5 + "...[30 more bytes]"  # cut on a character boundary


def test_reader_filters_and_stats(log_factory: Callable[..., RequestLog]) -> None:
    rl = log_factory()
    rl.open()
    now = time.time()
    for i in range(10):
        rl.request_finished(_rec(i, model_requested="a", started=now - 100 + i, prompt_tokens=1, completion_tokens=2))
    rl.request_finished(_rec(10, model_requested="b", status=502, error="boom", api="openai"))
    rl.request_finished(_rec(11, model_requested="b", status=499, abandoned=True))
    assert rl.flush()
    with LogReader(rl.path) as r:
        assert [x["id"] for x in r.last(3)] == ["r9", "r10", "r11"]
        assert [x["id"] for x in r.last(5, Filters(status="5xx"))] == ["r10"]
        assert [x["id"] for x in r.last(5, Filters(status="error"))] == ["r10", "r11"]
        assert [x["id"] for x in r.last(5, Filters(api="openai"))] == ["r10"]
        assert len(r.last(50, Filters(model="a", since=now - 95))) == 5
        assert len(r.last(50, Filters(until=now - 95))) == 5
        assert [x["id"] for x in r.after(10)] == ["r10", "r11"]
        stats = {s["model"]: s for s in r.stats()}
        assert stats["a"]["count"] == 10 and stats["a"]["completion_tokens"] == 20
        assert stats["b"]["errors"] == 1 and stats["b"]["abandoned"] == 1
        assert stats["a"]["latency_p50_ms"] == pytest.approx(5.0)
        with pytest.raises(ValueError):
            r.last(1, Filters(status="bad"))


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert percentile([7.0], 95) == 7.0


# ------------------------------------------------------------------------------------ through the proxy
@pytest.fixture
def logged(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path) -> tuple[str, Path]:
    return start_proxy(basic_config(fake_openai[1])), tmp_path / "requests.sqlite"


def _chat(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def test_row_per_kind_of_ollama_request(logged: tuple[str, Path]) -> None:
    url, db = logged
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/api/chat", json=_chat("fake-model", True), headers={"x-request-id": "streamed-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "streamed-1"
        assert c.post("/api/chat", json=_chat("llama3.2:3b", False)).status_code == 200
        assert c.post("/api/chat", json=_chat("x-server-error", False)).status_code >= 500
        assert c.post("/api/chat", json=_chat("no-such-model", False)).status_code == 404
        r = c.post("/api/chat", json=_chat("x-midstream", True))
        assert r.status_code == 200 and '"error"' in r.text
        assert (
            c.post(
                "/api/generate", json={"model": "fake-model", "prompt": "p", "raw": True, "stream": False}
            ).status_code
            == 200
        )
        assert c.post("/api/embed", json={"model": "embed-model", "input": ["abcdefgh"]}).status_code == 200
    got = wait_rows(db, 7)
    by_model = {(g["route"], g["model_requested"]): g for g in got}
    streamed = by_model[("/api/chat", "fake-model")]
    assert streamed["id"] == "streamed-1" and streamed["streamed"] == 1 and streamed["status"] == 200
    assert streamed["ttft_ms"] is not None and 0 < streamed["ttft_ms"] <= streamed["latency_ms"]
    assert streamed["upstream_url"].endswith("/v1/chat/completions") and streamed["backend"] == "fake"
    assert streamed["client"] == "127.0.0.1" and streamed["api"] == "ollama"
    # token counts are the backend's usage (the fake reports 11 prompt and 3 completion tokens)
    assert (streamed["prompt_tokens"], streamed["completion_tokens"]) == (11, 3)
    assert streamed["tokens_per_s"] > 0
    plain = by_model[("/api/chat", "llama3.2:3b")]
    assert plain["model_served"] == "fake-model" and plain["streamed"] == 0
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == (11, 3)
    failed = by_model[("/api/chat", "x-server-error")]
    assert failed["status"] >= 500 and "backend exploded" in failed["error"]
    missing = by_model[("/api/chat", "no-such-model")]
    assert missing["status"] == 404 and missing["backend"] is None and "not found" in missing["error"]
    mid = by_model[("/api/chat", "x-midstream")]
    assert mid["streamed"] == 1 and mid["status"] >= 500 and "crashed" in mid["error"]
    raw = by_model[("/api/generate", "fake-model")]
    assert (raw["prompt_tokens"], raw["completion_tokens"]) == (4, 3)
    assert raw["upstream_url"].endswith("/v1/completions")
    emb = by_model[("/api/embed", "embed-model")]
    assert emb["prompt_tokens"] == 2 and emb["completion_tokens"] is None
    assert all(g["request_body"] is None and g["response_text"] is None for g in got)  # capture is off


def test_abandoned_stream_is_logged(logged: tuple[str, Path]) -> None:
    url, db = logged
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(_chat("x-slow", True)).encode()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"x-request-id: gone-1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 200")  # headers (and maybe the first chunk), then go
    got = wait_rows(db, 1, where="WHERE id = 'gone-1'")[0]
    assert got["abandoned"] == 1 and got["status"] == 499 and got["streamed"] == 1
    assert got["model_requested"] == "x-slow" and got["latency_ms"] < 600  # logged when it stopped


def test_capture_bodies_through_proxy(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    db = tmp_path / "cap.sqlite"
    url = start_proxy(
        {
            **basic_config(fake_openai[1]),
            "request_log": {"path": str(db), "capture_bodies": True, "body_cap_bytes": 1000},
        }
    )
    with httpx.Client(base_url=url, timeout=10) as c:
        assert (
            c.post(
                "/api/chat", json=_chat("fake-model", True), headers={"Authorization": "Bearer sk-client-secret"}
            ).status_code
            == 200
        )
    got = wait_rows(db, 1)[0]
    assert json.loads(got["request_body"])["messages"] == [{"role": "user", "content": "hi"}]
    assert got["response_text"] == "Hello from the fake!"
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    assert "sk-client-secret" not in dump and "sk-backend-secret" not in dump  # never a key


def test_log_disabled(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path) -> None:
    db = tmp_path / "off.sqlite"
    url = start_proxy({**basic_config(fake_openai[1]), "request_log": {"path": str(db), "enabled": False}})
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.post("/api/chat", json=_chat("fake-model", False)).status_code == 200
        assert c.get("/health/ready").json()["request_log"]["state"] == "disabled"
    assert not db.exists()


# ------------------------------------------------------------------------------------ the OpenAI API
def test_row_per_kind_of_openai_request(logged: tuple[str, Path]) -> None:
    import openai

    url, db = logged
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    try:
        msgs: Any = [{"role": "user", "content": "hi"}]
        chunks = list(
            client.chat.completions.create(
                model="fake-model",
                messages=msgs,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-request-id": "oa-stream"},
            )
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        r = client.chat.completions.create(model="llama3.2", messages=msgs, extra_headers={"x-request-id": "oa-plain"})
        assert r.usage is not None and r.usage.prompt_tokens == 11
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="x-bad-request", messages=msgs, extra_headers={"x-request-id": "oa-bad"}
            )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=msgs, extra_headers={"x-request-id": "oa-404"})
        client.embeddings.create(model="embed-model", input=["abcdefgh"], extra_headers={"x-request-id": "oa-emb"})
    finally:
        client.close()
    got = {g["id"]: g for g in wait_rows(db, 5, where="WHERE api = 'openai'")}
    s = got["oa-stream"]
    assert s["route"] == "/v1/chat/completions" and s["streamed"] == 1 and s["status"] == 200
    assert (s["prompt_tokens"], s["completion_tokens"]) == (11, 3) and s["ttft_ms"] is not None
    p = got["oa-plain"]
    assert p["model_requested"] == "llama3.2" and p["model_served"] == "fake-model" and p["streamed"] == 0
    assert (p["prompt_tokens"], p["completion_tokens"]) == (11, 3)
    assert got["oa-bad"]["status"] == 400 and "too hot" in got["oa-bad"]["error"]
    assert got["oa-404"]["status"] == 404
    assert got["oa-emb"]["route"] == "/v1/embeddings" and got["oa-emb"]["prompt_tokens"] == 2


def test_abandoned_openai_stream_is_logged(logged: tuple[str, Path]) -> None:
    url, db = logged
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "x-slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"x-request-id: oa-gone\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    got = wait_rows(db, 1, where="WHERE id = 'oa-gone'")[0]
    assert got["abandoned"] == 1 and got["status"] == 499 and got["api"] == "openai"


def test_key_name_logged_never_the_key(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    db = tmp_path / "keys.sqlite"
    secret = "sk-team-alpha-0123456789"
    cfg = {
        **basic_config(fake_openai[1]),
        "auth": {"keys": {"alpha": {"key": secret}}},
        "request_log": {"path": str(db), "capture_bodies": True},
    }
    url = start_proxy(cfg)
    with httpx.Client(base_url=url, timeout=10) as c:
        auth = {"Authorization": f"Bearer {secret}"}
        assert c.post("/v1/chat/completions", json=_chat("fake-model", False), headers=auth).status_code == 200
        assert c.post("/api/chat", json=_chat("fake-model", False), headers=auth).status_code == 200
        assert c.post("/api/chat", json=_chat("fake-model", False)).status_code == 401
    got = wait_rows(db, 3)
    assert [g["key_name"] for g in got] == ["alpha", "alpha", None]
    assert got[2]["status"] == 401
    with sqlite3.connect(db) as conn:
        assert secret not in "\n".join(conn.iterdump())


def test_odd_rows_do_not_cost_the_batch(log_factory: Callable[..., RequestLog]) -> None:
    rl = log_factory()
    rl.flush_interval = 60  # everything lands in one batch, written by close()
    rl.open()
    rl.request_finished(_rec(1))
    rl.request_finished(_rec(2, error="bad \udcff bytes", model_requested="m\udcfe"))  # surrogate-escaped input
    rl.request_finished(_rec(3, completion_tokens=2**70))
    rl.request_finished(_rec(4))
    rl.close()
    got = {r["id"]: r for r in rows(rl.path)}
    assert sorted(got) == ["r1", "r2", "r3", "r4"] and rl.dropped == 0
    assert got["r2"]["error"] == "bad ? bytes" and got["r3"]["completion_tokens"] is None
