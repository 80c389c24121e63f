"""Rate limits (requests and tokens, per key or per address), concurrency gates, and input limits."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from ollamux.config import ConcurrencyLimit
from ollamux.errors import RateLimited, ServiceUnavailable
from ollamux.guard.limits import json_depth_exceeds
from ollamux.guard.ratelimit import Bucket, Gate, RateLimiter

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .test_guard_auth import ALICE, BOB, keyed_config

HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "fake-model", "messages": HI, "stream": False}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _cfg(upstream: str, **limits: Any) -> dict[str, Any]:
    cfg = basic_config(upstream)
    cfg["limits"] = limits
    return cfg


def test_requests_per_minute_per_address_trips_and_recovers(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client
) -> None:
    url = start_proxy(_cfg(fake_openai[1], requests_per_minute=600, burst=2))  # 10/s after a burst of 2
    assert http.post(url + "/api/chat", json=CHAT).status_code == 200
    assert http.post(url + "/v1/chat/completions", json=CHAT).status_code == 200
    r = http.post(url + "/api/chat", json=CHAT)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert "rate limit exceeded for client 127.0.0.1: 600 requests per minute" in r.json()["error"]
    r = http.post(url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    time.sleep(0.25)  # 2.5 requests' worth of refill
    assert http.post(url + "/api/chat", json=CHAT).status_code == 200
    # health and the banner are never limited
    assert all(http.get(url + "/").status_code == 200 for _ in range(5))


def test_rates_are_per_key(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client) -> None:
    cfg = keyed_config(fake_openai[1], requests_per_minute=600, burst=1)
    cfg["auth"]["keys"]["bob"]["burst"] = 3  # bob's own setting beats the default
    url = start_proxy(cfg)
    a, b = {"x-api-key": ALICE}, {"x-api-key": BOB}
    assert http.post(url + "/api/chat", json=CHAT, headers=a).status_code == 200
    r = http.post(url + "/api/chat", json=CHAT, headers=a)
    assert r.status_code == 429 and "key 'alice'" in r.json()["error"]
    assert [http.post(url + "/api/chat", json=CHAT, headers=b).status_code for _ in range(3)] == [200] * 3
    assert http.post(url + "/api/chat", json=CHAT, headers=b).status_code == 429


def test_tokens_per_minute_trips_and_recovers(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client
) -> None:
    # each answer of the fake costs 11 + 3 tokens; 20 may be spent at once, then 10 a second come back
    url = start_proxy(_cfg(fake_openai[1], tokens_per_minute=600, token_burst=20))
    assert http.post(url + "/api/chat", json=CHAT).status_code == 200  # 20 -> 6
    assert http.post(url + "/api/chat", json=CHAT).status_code == 200  # 6 > 0 admits; -> -8 (debt)
    r = http.post(url + "/api/chat", json=CHAT)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert "600 tokens per minute" in r.json()["error"]
    time.sleep(1.0)
    assert http.post(url + "/api/chat", json=CHAT).status_code == 200


def test_buckets_with_a_fake_clock() -> None:
    now = [0.0]
    rl = RateLimiter((60, 120, None, None), clock=lambda: now[0])
    for _ in range(60):
        rl.admit("ip:a", "a")
    with pytest.raises(RateLimited) as ei:
        rl.admit("ip:a", "a")
    assert ei.value.headers["Retry-After"] == "1"
    rl.admit("ip:b", "b")  # another caller has its own bucket
    now[0] = 1.0
    rl.admit("ip:a", "a")
    rl.charge_tokens("ip:a", 200)  # 120 - 200 = -80: 80 tokens of debt at 2 a second = 40 s
    with pytest.raises(RateLimited) as ei:
        rl.admit("ip:a", "a")
    assert ei.value.headers["Retry-After"] == "41"
    now[0] = 42.0
    rl.admit("ip:a", "a")
    b = Bucket(60, 5, 0.0)
    assert [b.take(1, 0.0) for _ in range(5)] == [0.0] * 5 and b.take(1, 0.0) == pytest.approx(1.0)


def test_gate_queue_and_timeout() -> None:
    async def scenario() -> list[str]:
        gate = Gate("backend 'b'", ConcurrencyLimit(max=1, queue=1, timeout=0.2))
        out: list[str] = []
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        with pytest.raises(ServiceUnavailable) as ei:
            await gate.acquire()  # the queue (1) is full
        out.append(ei.value.message)
        gate.release()  # hands the slot to the waiter
        await waiter
        assert gate.active == 1 and gate.waiting == 0
        with pytest.raises(ServiceUnavailable) as ei:
            await gate.acquire()  # waits 0.2 s, then gives up
        out.append(ei.value.message)
        assert gate.waiting == 0
        gate.release()
        assert gate.active == 0
        return out

    msgs = asyncio.run(scenario())
    assert "1 requests running and 1 waiting" in msgs[0] and "no free slot within 0.2 s" in msgs[1]


def test_backend_concurrency_limit_503_then_recovers(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    # "x-slow" reaches the fake as "slow": ~0.4 s of streamed chunks
    url = start_proxy(_cfg(fake_openai[1], concurrency={"backends": {"fake": {"max": 1, "queue": 0}}}))
    slow = {"model": "x-slow", "messages": HI, "stream": True}

    def call(body: dict[str, Any], path: str = "/api/chat") -> httpx.Response:
        with httpx.Client(timeout=10) as c:
            return c.post(url + path, json=body)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(call, slow)
        time.sleep(0.15)
        r = call(CHAT)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "backend 'fake' is busy" in r.json()["error"]
        r = call({"model": "fake-model", "messages": HI}, "/v1/chat/completions")
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert first.result().status_code == 200
    assert call(CHAT).status_code == 200  # the slot came back when the stream ended


def test_model_concurrency_queue_waits_for_a_slot(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    url = start_proxy(_cfg(fake_openai[1], concurrency={"models": {"x-*": {"max": 1, "queue": 2, "timeout": 5}}}))

    def call(model: str) -> int:
        with httpx.Client(timeout=10) as c:
            return c.post(url + "/api/chat", json={"model": model, "messages": HI, "stream": True}).status_code

    with ThreadPoolExecutor(3) as pool:
        t0 = time.monotonic()
        codes = list(pool.map(call, ["x-slow", "x-slow", "x-slow"]))
        assert codes == [200, 200, 200] and time.monotonic() - t0 > 0.8  # one at a time
        assert call("fake-model") == 200  # other models are not gated


def test_body_too_large_is_413_in_each_envelope(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client
) -> None:
    cfg = basic_config(fake_openai[1])
    cfg["server"] = {"max_body_bytes": 2048}
    url = start_proxy(cfg)
    big = {"model": "fake-model", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = http.post(url + "/api/chat", json=big)
    assert r.status_code == 413 and "larger than 2048 bytes" in r.json()["error"]
    r = http.post(url + "/v1/chat/completions", json=big)
    assert r.status_code == 413 and "server.max_body_bytes" in r.json()["error"]["message"]
    assert http.post(url + "/api/chat", json=CHAT).status_code == 200


def test_json_nesting_limit(proxy: str, http: httpx.Client) -> None:
    deep = b'{"model":"fake-model","messages":' + b"[" * 150 + b"]" * 150 + b"}"
    r = http.post(proxy + "/api/chat", content=deep)
    assert r.status_code == 400 and "more than 100 levels" in r.json()["error"]
    r = http.post(proxy + "/v1/chat/completions", content=deep)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    # brackets inside strings do not count
    ok = {"model": "fake-model", "messages": [{"role": "user", "content": "[" * 5000}], "stream": False}
    assert http.post(proxy + "/api/chat", json=ok).status_code == 200


@pytest.mark.parametrize(
    ("text", "limit", "deeper"),
    [
        (b"[]", 1, False),
        (b"[[]]", 1, True),
        (b"[[]]", 2, False),
        (b'{"a":[{"b":[{}]}]}', 4, True),
        (b'{"a":[{"b":[{}]}]}', 5, False),
        (b'["[[[[[[", "]]]]]]]]"]', 1, False),
        (b'["\\"[[[["]', 1, False),
        (b"[[[[[[[", 3, False),
        (b"]]]]]][[", 3, False),
        (b"[[[[[]]]]]]]", 3, True),
        (b"[][][][][][][]", 1, False),
    ],
)
def test_json_depth_exceeds(text: bytes, limit: int, deeper: bool) -> None:
    assert json_depth_exceeds(text, limit) is deeper


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def test_slow_body_gets_408(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> None:
    url = start_proxy(_cfg(fake_openai[1], body_timeout=0.3))
    with _raw(url) as s:
        s.sendall(b'POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{"model"')
        t0 = time.monotonic()
        data = s.recv(65536)
        assert data.startswith(b"HTTP/1.1 408"), data
        assert b"limits.body_timeout" in data and time.monotonic() - t0 < 3


def test_slow_headers_are_cut_off(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> None:
    url = start_proxy(_cfg(fake_openai[1], header_timeout=1))
    with _raw(url) as s:
        s.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n")  # and never the blank line
        t0 = time.monotonic()
        assert s.recv(65536) == b""  # closed by the server
        assert 0.5 < time.monotonic() - t0 < 4
