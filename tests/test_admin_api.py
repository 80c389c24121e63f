"""The dashboard's admin JSON API (/admin/...) over real sockets: real requests through both APIs first, then
what the overview, the request rows, the live stream, the models page (a managed `cmd:` model loaded and
unloaded, its log followed) and the backends page say about them; the admin-key rule, the Host guard and
CORS on /admin; /admin itself never lands in the request log."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ollamux import create_app
from ollamux.cli.serve_banner import dashboard_line
from ollamux.config import ConfigError, parse_settings
from ollamux.state import STATE, AppState

from .conftest import basic_config
from .dashboard_helpers import seed_history
from .fakes.openai_upstream import FakeOpenAI
from .servers import LoopThread, free_port, start_serve

pytestmark = pytest.mark.timeout(60)

TINY = str(Path(__file__).parent / "fakes" / "tiny_model_server.py")
ADMIN_KEY = "sk-admin-0123456789abcdef"
USER_KEY = "sk-user-fedcba9876543210"
HI = [{"role": "user", "content": "hi"}]


class App:
    """A running ollamux app: its URL, its state (to flush the request log) and its log file."""

    def __init__(self, url: str, state: AppState, db: Path) -> None:
        self.url, self.state, self.db = url, state, db

    def flush(self) -> None:
        assert self.state.request_log is not None and self.state.request_log.flush()

    def get(self, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(self.url + path, headers={**headers, **kw.pop("headers", {})}, timeout=20, **kw)

    def post(self, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + path, headers=headers, timeout=30, **kw)

    def logged_routes(self) -> list[str]:
        self.flush()
        con = sqlite3.connect(self.db)
        try:
            return [r[0] for r in con.execute("SELECT route FROM requests")]
        finally:
            con.close()


@pytest.fixture
def start(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], App]]:
    runners = []

    def run(config: dict[str, Any]) -> App:
        config = dict(config)
        db = tmp_path / "requests.sqlite"
        config.setdefault("request_log", {"path": str(db)})
        runner, url = loop_thread.start_app(create_app(parse_settings(config, dict(os.environ))))
        runners.append(runner)
        return App(url, runner.app[STATE], db)

    yield run
    for r in runners:
        loop_thread.stop_app(r)


@pytest.fixture
def app(fake_openai: tuple[FakeOpenAI, str], start: Callable[[dict[str, Any]], App]) -> App:
    return start(basic_config(fake_openai[1]))


def _traffic(app: App) -> None:
    """One request through each API, and one for a model that does not exist."""
    r = app.post("/api/chat", json={"model": "fake-model", "messages": HI, "stream": False})
    assert r.status_code == 200, r.text
    r = app.post("/v1/chat/completions", json={"model": "llama3.2", "messages": HI})
    assert r.status_code == 200, r.text
    assert app.post("/api/chat", json={"model": "nope", "messages": HI}).status_code == 404


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"}
    message = err["message"]
    assert isinstance(message, str)
    return message


# ------------------------------------------------------------------------------------------ overview
def test_overview_counts_requests_of_both_apis_per_bucket_model_and_backend(app: App) -> None:
    _traffic(app)
    app.flush()
    r = app.get("/admin/overview?window=3600")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert (body["window"], body["bucket"]) == (3600, 60)
    series = body["series"]
    assert all(len(v) == 60 for v in series.values())
    assert sum(series["requests"]) == 3 and sum(series["errors"]) == 1
    busy = [i for i, n in enumerate(series["requests"]) if n]
    assert busy and min(busy) >= 58  # just now: the last bucket (or the one before, at a minute's turn)
    assert all(series["p50_ms"][i] is not None for i in busy) and series["p50_ms"][0] is None
    assert sum(series["tokens_per_s"]) > 0  # the fake reports usage
    totals = body["totals"]
    assert (totals["requests"], totals["errors"]) == (3, 1)
    assert totals["completion_tokens"] > 0 and totals["prompt_tokens"] > 0
    models = {g["model"]: g for g in body["by_model"]}
    assert models["fake-model"]["requests"] == 1 and models["llama3.2"]["requests"] == 1
    assert models["nope"]["errors"] == 1
    assert {g["backend"]: g["requests"] for g in body["by_backend"]}["fake"] == 2
    live = body["live"]
    assert live["log"] == "ok" and live["dropped_rows"] == 0 and live["in_flight"] == 0 and live["uptime_s"] > 0
    # narrowed to one model or backend
    one = app.get("/admin/overview?window=86400&model=fake-model").json()
    assert one["bucket"] == 1440 and one["totals"]["requests"] == 2  # asked for, or served (llama3.2)
    assert app.get("/admin/overview?backend=fake").json()["totals"]["requests"] == 2
    assert "window" in _error(app.get("/admin/overview?window=soon"), 400)
    # the dashboard's own requests are not model requests: not in the request log, so not in the charts
    assert not [route for route in app.logged_routes() if route.startswith("/admin")]
    assert app.get("/admin/overview").json()["totals"]["requests"] == 3
    metrics = app.get("/metrics").text
    assert 'route="/api/chat"' in metrics and "/admin" not in metrics


def test_the_admin_api_is_not_rate_limited_as_inference(
    fake_openai: tuple[FakeOpenAI, str], start: Callable[[dict[str, Any]], App]
) -> None:
    app = start({**basic_config(fake_openai[1]), "limits": {"requests_per_minute": 1, "burst": 1}})
    assert app.get("/api/tags").status_code == 200
    assert app.get("/api/tags").status_code == 429  # the client's one request a minute is spent
    for path in ("/admin/whoami", "/admin/overview", "/admin/models", "/admin/requests", "/admin/backends"):
        assert app.get(path).status_code == 200, path


def test_with_the_request_log_off_the_overview_is_empty_and_says_why(
    fake_openai: tuple[FakeOpenAI, str], start: Callable[[dict[str, Any]], App]
) -> None:
    app = start({**basic_config(fake_openai[1]), "request_log": {"enabled": False}})
    assert app.post("/api/chat", json={"model": "fake-model", "messages": HI, "stream": False}).status_code == 200
    body = app.get("/admin/overview").json()
    assert body["live"]["log"] == "off" and "request_log.enabled" in body["note"]
    assert body["totals"]["requests"] == 0 and body["series"]["requests"] == [0] * 60
    assert "request_log.enabled" in _error(app.get("/admin/requests"), 404)


# ------------------------------------------------------------------------------------------ requests
def test_requests_rows_newest_first_with_filters_and_a_poll_after_a_position(app: App) -> None:
    _traffic(app)
    app.flush()
    body = app.get("/admin/requests").json()
    rows = body["rows"]
    assert [r["route"] for r in rows] == ["/api/chat", "/v1/chat/completions", "/api/chat"]
    assert [r["seq"] for r in rows] == sorted((r["seq"] for r in rows), reverse=True)
    assert body["last_seq"] == rows[0]["seq"]
    newest = rows[0]
    assert newest["status"] == 404 and newest["model_requested"] == "nope" and "not found" in newest["error"]
    ok = rows[1]
    assert ok["api"] == "openai" and ok["model_served"] == "fake-model" and ok["backend"] == "fake"
    assert ok["streamed"] is False and ok["latency_ms"] > 0 and ok["completion_tokens"] > 0
    assert "request_body" not in ok and "response_text" not in ok  # bodies only in a request's detail
    # the filters of `ollamux logs`
    assert [r["status"] for r in app.get("/admin/requests?status=error").json()["rows"]] == [404]
    assert [r["api"] for r in app.get("/admin/requests?api=openai").json()["rows"]] == ["openai"]
    assert len(app.get("/admin/requests?model=fake-model").json()["rows"]) == 2  # asked for, or served
    assert len(app.get("/admin/requests?limit=1").json()["rows"]) == 1
    assert app.get(f"/admin/requests?since={time.time() + 60}").json()["rows"] == []
    assert len(app.get("/admin/requests?since=1h").json()["rows"]) == 3
    assert "status filter 'sometimes'" in _error(app.get("/admin/requests?status=sometimes"), 400)
    assert "since" in _error(app.get("/admin/requests?since=yesterday-ish"), 400)
    # the page's poll: nothing new, then exactly the new row
    last = body["last_seq"]
    assert app.get(f"/admin/requests?after={last}").json() == {"rows": [], "last_seq": last}
    assert app.post("/api/generate", json={"model": "fake-model", "prompt": "hi", "stream": False}).status_code == 200
    app.flush()
    polled = app.get(f"/admin/requests?after={last}").json()
    assert [r["route"] for r in polled["rows"]] == ["/api/generate"] and polled["last_seq"] > last


def test_the_stream_delivers_a_request_made_after_it_opened(app: App) -> None:
    got: list[dict[str, Any]] = []
    opened = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", app.url + "/admin/requests/stream?api=ollama", timeout=20) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in r.iter_lines():
                opened.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "request":
                    got.append(orjson.loads(line[6:]))
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert opened.wait(10)
    # an OpenAI request the filter leaves out, then the Ollama one the stream is waiting for
    assert app.post("/v1/chat/completions", json={"model": "fake-model", "messages": HI}).status_code == 200
    r = httpx.post(
        app.url + "/api/chat",
        json={"model": "fake-model", "messages": HI, "stream": False},
        headers={"x-request-id": "stream-me"},
        timeout=20,
    )
    assert r.status_code == 200
    t.join(15)
    assert [row["id"] for row in got] == ["stream-me"]
    assert got[0]["route"] == "/api/chat" and got[0]["status"] == 200


def _sse_events(r: httpx.Response) -> Iterator[tuple[str | None, str, Any]]:
    """A text/event-stream's events as (id, event, parsed data), comments skipped."""
    eid, event, data = None, "message", ""
    for line in r.iter_lines():
        if not line:
            if data:
                yield eid, event, orjson.loads(data)
            eid, event, data = None, "message", ""
        elif line.startswith("id: "):
            eid = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data += line[6:]


def test_the_stream_resumes_after_a_seq_with_what_it_missed_first(app: App) -> None:
    _traffic(app)
    app.flush()
    rows = app.get("/admin/requests").json()["rows"][::-1]  # oldest first: ollama chat, openai chat, 404
    first = rows[0]["seq"]
    with httpx.stream("GET", app.url + f"/admin/requests/stream?after={first}", timeout=20) as r:
        assert r.status_code == 200
        events = _sse_events(r)
        # what was written after `first`, oldest first, each event's id its row's seq: a reconnecting
        # client resumes from the last id it saw and gets neither a gap nor a twin
        assert [next(events), next(events)] == [(str(row["seq"]), "request", row) for row in rows[1:]]
        # then the stream goes on live
        r = app.post("/api/generate", json={"model": "fake-model", "prompt": "hi", "stream": False})
        assert r.status_code == 200
        eid, event, row = next(events)
        assert (event, row["route"]) == ("request", "/api/generate") and int(eid or 0) == row["seq"] > first
    # the header a reconnecting EventSource sends resumes the same way, and the filters still apply
    headers = {"Last-Event-ID": str(first)}
    with httpx.stream("GET", app.url + "/admin/requests/stream?api=ollama", headers=headers, timeout=20) as r:
        eid, _, row = next(_sse_events(r))
        assert (row["id"], eid) == (rows[2]["id"], str(rows[2]["seq"]))  # the 404; the OpenAI row is filtered out
    assert "must be from 0" in _error(app.get("/admin/requests/stream?after=-1"), 400)
    for bad in ("yesterday", "-3", "²"):
        r = app.get("/admin/requests/stream", headers={"Last-Event-ID": bad.encode()})
        assert "Last-Event-ID" in _error(r, 400)


def test_a_resumed_stream_sends_a_backlog_longer_than_one_read_whole(
    fake_openai: tuple[FakeOpenAI, str], start: Callable[[dict[str, Any]], App], tmp_path: Path
) -> None:
    seed_history(tmp_path / "requests.sqlite", minutes=100)  # 600 rows, more than the stream reads at once
    app = start(basic_config(fake_openai[1]))
    assert app.get("/admin/requests?limit=1").json()["last_seq"] == 600
    seqs = []
    with httpx.stream("GET", app.url + "/admin/requests/stream?after=0", timeout=20) as r:
        for eid, _, row in _sse_events(r):
            assert eid == str(row["seq"])
            seqs.append(row["seq"])
            if len(seqs) == 600:
                break
    assert seqs == list(range(1, 601))


def test_request_detail_has_the_bodies_when_they_are_captured(
    fake_openai: tuple[FakeOpenAI, str], start: Callable[[dict[str, Any]], App], tmp_path: Path
) -> None:
    db = tmp_path / "captured.sqlite"
    app = start({**basic_config(fake_openai[1]), "request_log": {"path": str(db), "capture_bodies": True}})
    app.db = db
    r = httpx.post(
        app.url + "/api/chat",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "what is up?"}], "stream": False},
        headers={"x-request-id": "detail-1"},
        timeout=20,
    )
    assert r.status_code == 200
    app.flush()
    row = app.get("/admin/requests/detail-1").json()
    assert row["id"] == "detail-1" and row["status"] == 200 and row["model_requested"] == "fake-model"
    assert "what is up?" in row["request_body"]
    assert "Hello from the fake!" in row["response_body"]
    assert row["latency_ms"] > 0 and row["key_name"] is None
    assert "no request 'missing'" in _error(app.get("/admin/requests/missing"), 404)


# -------------------------------------------------------------------------------------------- models
def _tiny_config(fake_url: str, tmp: Path) -> dict[str, Any]:
    cfg = basic_config(fake_url)
    cmd = [sys.executable, TINY, "--port", "${PORT}", "--ctx", "${CTX}"]
    cfg["models"]["tiny"] = {"runtime": {"cmd": cmd, "ctx": 512, "startup_timeout": 30}}
    cfg["runtime"] = {"log_dir": str(tmp / "logs")}
    return cfg


def _ps_names(app: App) -> list[str]:
    return [m["name"] for m in app.get("/api/ps").json()["models"]]


def test_models_lists_every_served_name_and_loads_unloads_a_managed_one_with_its_log(
    fake_openai: tuple[FakeOpenAI, str], start: Callable[[dict[str, Any]], App], tmp_path: Path
) -> None:
    app = start(_tiny_config(fake_openai[1], tmp_path))
    models = {m["name"]: m for m in app.get("/admin/models").json()["models"]}
    tags = {m["name"] for m in app.get("/api/tags").json()["models"]}
    assert tags <= set(models)  # every name /api/tags lists (and the configured aliases besides)
    assert models["fake-model:latest"]["source"] == "configured"
    assert models["fake-model:latest"]["backend"] == "fake" and models["fake-model:latest"]["managed"] is None
    assert models["fake-model:latest"]["aliases"] == ["fm:7b"]
    assert models["fm:7b"]["source"] == "alias"
    assert models["embed-model:latest"]["capabilities"] == ["embedding"]
    tiny = models["tiny:latest"]
    assert tiny["source"] == "managed" and tiny["context_length"] == 512
    assert tiny["managed"]["state"] == "stopped" and tiny["managed"]["log"] is False
    assert tiny["managed"]["pinned"] is False and tiny["managed"]["expires_at"] is None
    assert "has no log yet" in _error(app.get("/admin/models/tiny/logs"), 404)

    # load: ready when it answers, /api/ps lists it
    r = app.post("/admin/models/tiny/load", json={"keep_alive": 600})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "tiny:latest", "state": "ready"}
    assert _ps_names(app) == ["tiny:latest"]
    managed = {m["name"]: m for m in app.get("/admin/models").json()["models"]}["tiny:latest"]["managed"]
    assert managed["state"] == "ready" and managed["ctx"] == 512 and managed["log"] is True
    assert managed["expires_at"] > time.time() + 500  # the keep_alive asked for
    assert managed["memory_bytes"] is not None

    # its log: the tail, then (followed) the lines a restart appends
    tail = app.get("/admin/models/tiny:latest/logs?tail=5")
    assert tail.status_code == 200 and tail.headers["content-type"] == "text/plain; charset=utf-8"
    assert "ollamux starts:" in tail.text and TINY in tail.text
    seen: list[str] = []
    following = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", app.url + "/admin/models/tiny/logs?follow=1&tail=0", timeout=20) as r:
            assert r.status_code == 200
            following.set()
            for line in r.iter_lines():
                seen.append(line)
                if "ollamux starts:" in line:
                    return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert following.wait(10)

    # unload: gone from /api/ps; a second load appends a start line to the followed log
    r = app.post("/admin/models/tiny/unload")
    assert r.status_code == 200 and r.json() == {"name": "tiny:latest", "state": "stopped"}
    assert _ps_names(app) == []
    assert app.post("/admin/models/tiny/load").status_code == 200
    t.join(15)
    assert any("ollamux starts:" in line for line in seen)
    assert app.post("/admin/models/tiny/unload").json()["state"] == "stopped"

    # only managed models have buttons; unknown names are 404s
    assert "not run by ollamux itself" in _error(app.post("/admin/models/fake-model/load"), 400)
    assert "not run by ollamux itself" in _error(app.post("/admin/models/fake-model/unload"), 400)
    assert "model 'nope' not found" in _error(app.post("/admin/models/nope/load"), 404)
    assert "keep_alive" in _error(app.post("/admin/models/tiny/load", json={"keep_alive": True}), 400)


def test_a_failed_load_is_the_managers_error_and_the_listing_keeps_it(
    fake_openai: tuple[FakeOpenAI, str], start: Callable[[dict[str, Any]], App], tmp_path: Path
) -> None:
    cfg = basic_config(fake_openai[1])
    crash = [sys.executable, TINY, "--port", "${PORT}", "--crash"]
    cfg["models"]["broken"] = {"runtime": {"cmd": crash, "restart": "never"}}
    cfg["runtime"] = {"log_dir": str(tmp_path / "logs")}
    app = start(cfg)
    message = _error(app.post("/admin/models/broken/load"), 500)
    assert "failed to start" in message and "the model file is corrupt" in message
    managed = {m["name"]: m for m in app.get("/admin/models").json()["models"]}["broken:latest"]["managed"]
    assert managed["state"] == "failed" and "failed to start" in managed["error"] and managed["log"] is True
    assert "the model file is corrupt" in app.get("/admin/models/broken/logs").text


# ------------------------------------------------------------------------------------------ backends
def test_backends_show_a_dead_replica_down_with_its_breaker_open_and_no_password(
    fake_openai: tuple[FakeOpenAI, str], start: Callable[[dict[str, Any]], App]
) -> None:
    dead = f"http://ops:hunter22-secret@127.0.0.1:{free_port()}/v1"
    cfg = basic_config(fake_openai[1])
    cfg["backends"]["fake"]["urls"] = [dead, f"{fake_openai[1]}/v1"]
    del cfg["backends"]["fake"]["url"]
    # credentials in a URL and an api_key do not mix (aiohttp refuses to send both): the URL's alone here
    del cfg["backends"]["fake"]["api_key"]
    cfg["backends"]["fake"]["breaker"] = {"failures": 1, "cooldown": 600}
    cfg["backends"]["fake"]["health_interval"] = 0  # only the page's own probe: no checks in the background
    cfg["limits"] = {"concurrency": {"backends": {"fake": {"max": 4}}}}
    app = start(cfg)
    for _ in range(3):  # the dead one is tried first at least once (least in flight, in order), then skipped
        r = app.post("/v1/chat/completions", json={"model": "fake-model", "messages": HI})
        assert r.status_code == 200, r.text
    r = app.get("/admin/backends")
    assert r.status_code == 200
    assert "hunter22" not in r.text
    (fake,) = r.json()["backends"]
    assert fake["name"] == "fake" and fake["type"] == "openai" and fake["models"] >= 5
    assert fake["concurrency"] == {"max": 4, "active": 0, "waiting": 0}
    down, up = fake["replicas"]
    assert down["url"] == dead.replace("hunter22-secret", "***")
    assert down["up"] is False and down["breaker"] == "open" and down["failures"] >= 1
    assert down["last_error"] and down["in_flight"] == 0
    assert up["url"] == f"{fake_openai[1]}/v1" and up["up"] is True and up["breaker"] == "closed"
    assert up["last_error"] is None and up["failures"] == 0


# -------------------------------------------------------------------------------------------- access
def _keyed(fake_url: str) -> dict[str, Any]:
    cfg = basic_config(fake_url)
    cfg["auth"] = {"keys": {"ops": {"key": ADMIN_KEY, "admin": True}, "user": {"key": USER_KEY}}}
    return cfg


def test_with_keys_on_only_an_admin_key_opens_the_admin_api(
    fake_openai: tuple[FakeOpenAI, str], start: Callable[[dict[str, Any]], App]
) -> None:
    app = start(_keyed(fake_openai[1]))
    # whoami answers anyone, and says only this much
    anon = app.get("/admin/whoami").json()
    assert set(anon) == {"auth", "admin", "key", "version", "instance"}
    assert (anon["auth"], anon["admin"], anon["key"]) == (True, False, None)
    assert app.get("/admin/whoami", "not-a-key-at-all").json()["key"] is None
    assert app.get("/admin/whoami", USER_KEY).json() == {**anon, "key": "user"}
    assert app.get("/admin/whoami", ADMIN_KEY).json() == {**anon, "admin": True, "key": "ops"}
    for path in ("/admin/overview", "/admin/requests", "/admin/models", "/admin/backends", "/admin/requests/x"):
        r = app.get(path)
        assert "admin: true" in _error(r, 401) and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "'user' is not an admin key" in _error(app.get(path, USER_KEY), 403)
        assert "auth.keys.NAME.admin" in _error(app.get(path, USER_KEY), 403)
        assert _error(app.get(path, headers={"x-api-key": "wrong-key-123"}), 401)
    assert app.post("/admin/models/fake-model/load").status_code == 401
    assert app.get("/admin/overview", ADMIN_KEY).status_code == 200
    assert app.get("/admin/models", headers={"x-api-key": ADMIN_KEY}).status_code == 200
    # the user key still runs models; the admin key may too (its models default to all)
    for key in (USER_KEY, ADMIN_KEY):
        r = app.post("/v1/chat/completions", key, json={"model": "fake-model", "messages": HI})
        assert r.status_code == 200, r.text
    # refusals on /admin are operator-log lines, not request-log rows
    assert app.logged_routes() == ["/v1/chat/completions", "/v1/chat/completions"]


def test_with_keys_off_the_admin_api_is_open(app: App) -> None:
    who = app.get("/admin/whoami").json()
    assert (who["auth"], who["admin"], who["key"]) == (False, True, None)
    assert app.get("/admin/backends").status_code == 200


def test_host_guard_and_cors_apply_to_the_admin_api(app: App) -> None:
    r = app.get("/admin/overview", headers={"Host": "evil.example"})
    assert "host 'evil.example' is not allowed" in _error(r, 403)
    assert r.json()["error"]["code"] == "host_not_allowed"
    r = app.get("/admin/whoami", headers={"Origin": "http://evil.example"})
    assert _error(r, 403) and r.json()["error"]["code"] == "origin_not_allowed"
    assert app.get("/admin/whoami", headers={"Host": "localhost"}).status_code == 200
    assert "Invalid URL" in _error(app.get("/admin/nothing-here"), 404)  # in the admin envelope too


# ------------------------------------------------------------------------------------ config, banner
def test_admin_is_a_key_setting_false_by_default() -> None:
    s = parse_settings({"auth": {"keys": {"a": {"key": ADMIN_KEY, "admin": True}, "b": {"key": USER_KEY}}}}, {})
    assert [(k.name, k.admin) for k in s.auth.keys] == [("a", True), ("b", False)]
    with pytest.raises(ConfigError, match=r"auth\.keys\.a\.admin.*true or false"):
        parse_settings({"auth": {"keys": {"a": {"key": ADMIN_KEY, "admin": "sometimes"}}}}, {})


def test_the_banner_names_the_dashboard() -> None:
    open_server = parse_settings({"server": {"port": 8080}}, {})
    assert dashboard_line(open_server) == "dashboard: http://127.0.0.1:8080/ui"
    keyed = parse_settings({"server": {"host": "0.0.0.0"}, "auth": {"keys": {"a": {"key": ADMIN_KEY}}}}, {})
    assert dashboard_line(keyed) == "dashboard: http://127.0.0.1:11434/ui (needs an admin key)"
    v6 = parse_settings({"server": {"host": "::1", "port": 9}}, {})
    assert dashboard_line(v6) == "dashboard: http://[::1]:9/ui"


def test_serve_prints_the_dashboard_url(fake_openai: tuple[FakeOpenAI, str], tmp_path: Path) -> None:
    cfg = {**basic_config(fake_openai[1]), "request_log": {"enabled": False}}
    proc, url, err = start_serve(cfg, tmp_path)
    try:
        assert f"dashboard: {url}/ui\n" in err.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
