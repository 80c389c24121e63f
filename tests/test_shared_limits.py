"""Limits shared by many instances through a real Redis: three `ollamux serve` processes with one config
count one key's requests and tokens together, fall back to their own limits while Redis is away (saying
so once, and in readiness), and share again when it is back; fail_closed refuses instead; a wrong
password degrades without ever showing the password."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
import yaml

from ollamux import create_app
from ollamux.config import parse_settings
from ollamux.state import STATE

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .redis_server import RedisServer, redis_server
from .servers import LoopThread, free_port

HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "fake-model", "messages": HI, "stream": False}
# one key per scenario, so that the scenarios of one set of instances never spend each other's budget
KEYS: dict[str, dict[str, Any]] = {
    "six": {"key": "sk-six-0123456789", "requests_per_minute": 1, "burst": 6},  # 6 now, then one a minute
    "tok": {"key": "sk-tok-0123456789", "tokens_per_minute": 1, "token_burst": 20},  # each answer costs 14
    "down": {"key": "sk-down-0123456789", "requests_per_minute": 1, "burst": 2},
    "again": {"key": "sk-again-0123456789", "requests_per_minute": 1, "burst": 6},
    "ops": {"key": "sk-ops-0123456789"},  # no limit: readiness details and /metrics (neither is counted)
}
ROUTES = ("/api/chat", "/v1/chat/completions")  # alternated: the Ollama and the OpenAI envelope


def _config(upstream: str, redis_url: str, **shared: Any) -> dict[str, Any]:
    cfg = basic_config(upstream)
    cfg["auth"] = {"keys": KEYS}
    cfg["shared_state"] = {"redis_url": redis_url, **shared}
    return cfg


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]['key']}"}


def _wait_until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


class Instance:
    """One `ollamux serve --config <the one file> --port N`, its operator log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as err:
            cmd = [sys.executable, "-m", "ollamux", "serve", "--config", str(config), "--port", str(self.port)]
            cmd += ["--log-format", "text"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ))

    def wait_ready(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"ollamux exited: {self.log.read_text()}")
            try:
                return httpx.get(self.url + "/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        _wait_until(f"ollamux on port {self.port} answers", up)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def shared_state(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/health/ready", headers=_auth("ops"), timeout=5)  # details need a key
        return dict(r.json()["shared_state"], http_status=r.status_code)


@pytest.fixture(scope="module")
def redis_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="module")
def instances(
    redis_module: RedisServer, fake_openai_server: tuple[FakeOpenAI, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Instance]]:
    tmp = tmp_path_factory.mktemp("instances")
    cfg = _config(fake_openai_server[1], redis_module.url)
    cfg["request_log"] = {"enabled": False}
    path = tmp / "ollamux.yaml"
    path.write_text(yaml.safe_dump(cfg))
    started = [Instance(path, tmp / f"instance{i}.log") for i in range(3)]
    try:
        for inst in started:
            inst.wait_ready()
        yield started
    finally:
        for inst in started:
            inst.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path)


RIGHT = "right-pass-7f3a91"


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path, password=RIGHT)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _round_robin(http: httpx.Client, instances: list[Instance], key: str, n: int) -> list[httpx.Response]:
    return [
        http.post(instances[i % len(instances)].url + ROUTES[i % 2], json=CHAT, headers=_auth(key)) for i in range(n)
    ]


def _assert_refusals(answers: list[httpx.Response], key: str) -> None:
    for i, r in enumerate(answers):
        if r.status_code != 429:
            continue
        assert int(r.headers["Retry-After"]) >= 1
        if ROUTES[i % 2] == "/api/chat":
            assert f"rate limit exceeded for key '{key}'" in r.json()["error"]  # Ollama's {"error": "..."}
        else:
            err = r.json()["error"]
            assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
            assert f"key '{key}'" in err["message"]


# --------------------------------------------------------------------------------------- shared limits
def test_three_instances_enforce_one_request_limit(instances: list[Instance], http: httpx.Client) -> None:
    answers = _round_robin(http, instances, "six", 10)
    assert [r.status_code for r in answers] == [200] * 6 + [429] * 4
    _assert_refusals(answers, "six")
    assert "1 requests per minute" in answers[6].json()["error"]
    assert all(inst.shared_state()["state"] == "shared" for inst in instances)


def test_three_instances_share_one_token_budget(
    instances: list[Instance], redis_module: RedisServer, http: httpx.Client
) -> None:
    client = redis_sync.Redis.from_url(redis_module.url)
    bucket = "ollamux:rl:{key:tok}:tokens"

    def level() -> float | None:
        v = client.hget(bucket, "level")
        return float(v) if v is not None else None

    try:
        first = http.post(instances[0].url + "/api/chat", json=CHAT, headers=_auth("tok"))
        assert first.status_code == 200  # 20 -> 6 (11 prompt + 3 completion tokens)
        # the charge is sent after the answer, off the request's way: wait until Redis holds it
        _wait_until("the first charge reaches Redis", lambda: (lv := level()) is not None and lv < 7)
        second = http.post(instances[1].url + "/v1/chat/completions", json=CHAT, headers=_auth("tok"))
        assert second.status_code == 200  # 6 > 0 admits; -> -8, in debt
        _wait_until("the second charge reaches Redis", lambda: (lv := level()) is not None and lv < 0)
        third = http.post(instances[2].url + "/api/chat", json=CHAT, headers=_auth("tok"))
        assert third.status_code == 429 and "1 tokens per minute" in third.json()["error"]
        assert int(third.headers["Retry-After"]) > 400  # 8 tokens of debt at one a minute
        fourth = http.post(instances[0].url + "/v1/chat/completions", json=CHAT, headers=_auth("tok"))
        assert fourth.status_code == 429 and fourth.json()["error"]["type"] == "rate_limit_error"
    finally:
        client.close()


def test_redis_away_local_limits_then_shared_again(
    instances: list[Instance], redis_module: RedisServer, http: httpx.Client
) -> None:
    redis_module.stop()
    try:
        # each instance now counts on its own: a burst of 2 per instance, 6 in all (shared would allow 2)
        answers = [
            http.post(inst.url + ROUTES[n], json=CHAT, headers=_auth("down")) for inst in instances for n in (0, 1)
        ]
        assert [r.status_code for r in answers] == [200] * 6
        over = [http.post(inst.url + "/api/chat", json=CHAT, headers=_auth("down")) for inst in instances]
        assert [r.status_code for r in over] == [429] * 3  # the local limits still hold
        for inst in instances:
            st = inst.shared_state()
            assert st["state"] == "degraded" and st["using"] == "local limits"
            assert st["http_status"] == 200  # fail-open: still ready to serve
            assert "error" in st and st["redis"] == redis_module.url
            assert "ollamux_shared_state_up 0.0" in httpx.get(inst.url + "/metrics", headers=_auth("ops")).text
        for inst in instances:
            text = inst.log.read_text()
            assert text.count("is unreachable") == 1, text  # one warning, not one per request
            assert "using this instance's local limits until it answers again" in text
    finally:
        redis_module.start()  # empty again: nothing is saved
    for inst in instances:
        _wait_until("shared limits again", lambda inst=inst: inst.shared_state()["state"] == "shared")
        assert inst.log.read_text().count("answers again; limits are shared again") == 1
        assert "ollamux_shared_state_up 1.0" in httpx.get(inst.url + "/metrics", headers=_auth("ops")).text
    answers = _round_robin(http, instances, "again", 10)
    assert [r.status_code for r in answers] == [200] * 6 + [429] * 4  # shared, not 6 per instance
    _assert_refusals(answers, "again")


# --------------------------------------------------------------------------------------- fail closed
def test_fail_closed_refuses_while_redis_is_away(
    redis: RedisServer, fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client
) -> None:
    url = start_proxy(_config(fake_openai[1], redis.url, fail_closed=True, timeout=0.5))
    assert http.post(url + "/api/chat", json=CHAT, headers=_auth("six")).status_code == 200
    redis.stop()
    r = http.post(url + "/api/chat", json=CHAT, headers=_auth("six"))
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "shared rate-limit store is unreachable" in r.json()["error"]
    r = http.post(url + "/v1/chat/completions", json=CHAT, headers=_auth("six"))
    assert r.status_code == 503 and r.json()["error"]["code"] == "shared_state_unavailable"
    assert "shared_state.fail_closed" in r.json()["error"]["message"]
    ready = http.get(url + "/health/ready", headers=_auth("ops"))
    assert ready.status_code == 503 and "shared limit store unreachable" in ready.json()["problems"]
    assert ready.json()["shared_state"]["using"] == "refusing limited requests"
    assert http.get(url + "/health").status_code == 200  # not a limited request
    redis.start()
    ops = _auth("ops")
    _wait_until("ready again", lambda: http.get(url + "/health/ready", headers=ops).status_code == 200)
    assert http.post(url + "/api/chat", json=CHAT, headers=_auth("six")).status_code == 200


# --------------------------------------------------------------------------------------- passwords
def test_wrong_password_degrades_and_never_shows_the_password(
    redis_with_password: RedisServer,
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv, right, wrong = redis_with_password, RIGHT, "wrong-pass-5c2e08"
    caplog.set_level(logging.INFO, logger="ollamux")
    bad = start_proxy(_config(fake_openai[1], srv.url_with(wrong)))
    ready = http.get(bad + "/health/ready", headers=_auth("ops"))
    st = ready.json()["shared_state"]
    assert ready.status_code == 200 and st["state"] == "degraded" and st["using"] == "local limits"
    assert st["redis"] == f"redis://:***@127.0.0.1:{srv.port}/0"
    assert st["error"].startswith("AuthenticationError: invalid username-password pair")  # redis-py's words
    assert http.post(bad + "/api/chat", json=CHAT, headers=_auth("six")).status_code == 200  # local limits
    assert "ollamux_shared_state_up 0.0" in http.get(bad + "/metrics", headers=_auth("ops")).text

    good = start_proxy(_config(fake_openai[1], srv.url_with(right)))
    st = http.get(good + "/health/ready", headers=_auth("ops")).json()["shared_state"]
    assert st["state"] == "shared" and st["redis"] == f"redis://:***@127.0.0.1:{srv.port}/0"
    assert http.post(good + "/api/chat", json=CHAT, headers=_auth("six")).status_code == 200

    for page in (
        ready.text,
        http.get(good + "/health/ready", headers=_auth("ops")).text,
        http.get(bad + "/metrics", headers=_auth("ops")).text,
    ):
        assert wrong not in page and right not in page
    assert "shared limits: Redis at redis://:***@" in caplog.text and "is unreachable" in caplog.text
    assert wrong not in caplog.text and right not in caplog.text


# --------------------------------------------------------------------------------------- config reload
def test_reloaded_limits_apply_to_the_shared_buckets(
    redis: RedisServer, fake_openai: tuple[FakeOpenAI, str], loop_thread: LoopThread, http: httpx.Client
) -> None:
    cfg = _config(fake_openai[1], redis.url)
    app = create_app(parse_settings(cfg, dict(os.environ)))
    runner, url = loop_thread.start_app(app)
    try:
        assert http.get(url + "/health/ready", headers=_auth("ops")).json()["shared_state"]["state"] == "shared"
        tighter = copy.deepcopy(cfg)
        tighter["auth"]["keys"]["six"]["burst"] = 2
        guard = app[STATE].guard
        assert guard is not None
        guard.reconfigure(parse_settings(tighter, dict(os.environ)))  # what a SIGHUP reload does
        answers = [http.post(url + "/api/chat", json=CHAT, headers=_auth("six")).status_code for _ in range(3)]
        assert answers == [200, 200, 429]
    finally:
        loop_thread.stop_app(runner)
