"""/health, /health/ready, request ids on every response, and the operator log lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from ollamux.observe import CURRENT_REQUEST_ID, RequestRecord
from ollamux.oplog import JSONFormatter, RequestLines, TextFormatter, configure

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI


@pytest.fixture
def client(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=start_proxy(basic_config(fake_openai[1])), timeout=10) as c:
        yield c


def test_liveness_is_cheap_and_plain(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert client.head("/health").status_code == 200


def test_readiness_reports_everything(client: httpx.Client, tmp_path: object) -> None:
    r = client.get("/health/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["problems"] == []
    assert body["version"] == "0.12.0" and body["uptime_s"] >= 0 and body["ollamux_version"]
    fake = body["backends"]["fake"]
    assert fake["reachable"] is True and fake["type"] == "openai"
    assert fake["replicas"][0]["status"] == 200 and fake["replicas"][0]["url"].endswith("/v1/models")
    assert body["models"] == []
    log = body["request_log"]
    assert log["state"] == "ok" and log["schema_version"] >= 1 and log["dropped"] == 0
    assert log["path"].endswith("requests.sqlite")


def test_readiness_degraded_when_a_backend_is_down(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    cfg = basic_config(fake_openai[1])
    cfg["backends"]["dead"] = {"type": "ollama", "url": "http://127.0.0.1:9"}
    with httpx.Client(base_url=start_proxy(cfg), timeout=10) as c:
        r = c.get("/health/ready")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "degraded" and body["problems"] == ["backend dead unreachable"]
        dead = body["backends"]["dead"]
        assert dead["reachable"] is False and dead["replicas"][0]["error"]
        assert dead["replicas"][0]["url"] == "http://127.0.0.1:9/api/version"
        assert body["backends"]["fake"]["reachable"] is True
        assert c.get("/health").status_code == 200  # liveness does not depend on backends


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("HEAD", "/"),
        ("GET", "/api/version"),
        ("GET", "/health"),
        ("GET", "/health/ready"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
        ("GET", "/api/tags"),
        ("POST", "/api/chat"),
    ],
)
def test_every_response_has_a_request_id(client: httpx.Client, method: str, path: str) -> None:
    r = client.request(method, path)
    generated = r.headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    r = client.request(method, path, headers={"x-request-id": "client-id-42"})
    assert r.headers["x-request-id"] == "client-id-42"


def test_request_id_forwarded_upstream(client: httpx.Client, fake_openai: tuple[FakeOpenAI, str]) -> None:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    r = client.post("/api/chat", json=body, headers={"x-request-id": "trace-me"})
    assert r.headers["x-request-id"] == "trace-me"
    assert _upstream_request_id(fake_openai[0]) == "trace-me"
    r = client.post("/api/chat", json=body)
    assert _upstream_request_id(fake_openai[0]) == r.headers["x-request-id"]


def _upstream_request_id(fake: FakeOpenAI) -> str | None:
    headers = {k.lower(): v for k, v in fake.last("/chat/completions").headers.items()}
    return headers.get("x-request-id")


# ------------------------------------------------------------------------------------ operator logs
def _record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("ollamux", logging.WARNING, __file__, 1, msg, None, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_lines_carry_the_request_id() -> None:
    line = json.loads(JSONFormatter().format(_record("hello", request_id="abc", model="m")))
    assert line["msg"] == "hello" and line["request_id"] == "abc" and line["model"] == "m"
    assert line["level"] == "warning" and line["ts"].endswith("+00:00")
    token = CURRENT_REQUEST_ID.set("from-context")
    try:
        assert json.loads(JSONFormatter().format(_record("x")))["request_id"] == "from-context"
        assert "[request from-context]" in TextFormatter().format(_record("x"))
    finally:
        CURRENT_REQUEST_ID.reset(token)
    assert "request_id" not in json.loads(JSONFormatter().format(_record("x")))


def test_request_lines_observer() -> None:
    buf = io.StringIO()
    handler = configure("json", "info", stream=buf)
    try:
        lines = RequestLines()
        ok = RequestRecord(id="ok-1", api="ollama", route="/api/chat", status=200)
        bad = RequestRecord(id="bad-1", api="openai", route="/v1/chat/completions", status=502, error="down")
        lines.request_finished(ok)  # success is debug: not written at info
        lines.request_finished(bad)
        out = [json.loads(x) for x in buf.getvalue().splitlines()]
        assert len(out) == 1 and out[0]["request_id"] == "bad-1" and out[0]["status"] == 502
        assert out[0]["level"] == "warning" and "down" in out[0]["msg"]
    finally:
        logging.getLogger().removeHandler(handler)


def test_json_lines_survive_undecodable_text() -> None:
    line = json.loads(JSONFormatter().format(_record("bad \udcff byte", request_id="r")))
    assert line["msg"] == "bad \udcff byte" and line["request_id"] == "r"


def test_readiness_reuses_recent_probes_instead_of_one_upstream_call_per_request(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    # one prober serves the health checks, the backend_up metric and readiness: a burst of readiness
    # calls must not become a burst of upstream calls carrying the backend's key
    fake, url = fake_openai
    cfg = basic_config(url)
    cfg["metrics"] = {"backend_probe_interval": 0}
    with httpx.Client(base_url=start_proxy(cfg), timeout=10) as c:
        before = sum(1 for r in fake.requests if r.path.endswith("/models"))
        statuses = [c.get("/health/ready").status_code for _ in range(30)]
        probes = sum(1 for r in fake.requests if r.path.endswith("/models")) - before
    assert statuses == [200] * 30
    assert probes == 1
