"""Hostile Redis for the shared limits: one that takes connections and never answers, and a read-only
replica (PING answers, every write is refused). Requests must be served (fail-open) or refused in their own
envelope (fail-closed), and the operator log must say it once, not once per request or per probe."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .fakes.silent_server import SilentServer
from .redis_server import REDIS_SERVER, RedisServer, redis_server
from .servers import free_port

HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "fake-model", "messages": HI, "stream": False}
KEY: dict[str, Any] = {"key": "sk-hostile-0123456789", "requests_per_minute": 600, "burst": 1000}
AUTH = {"Authorization": f"Bearer {KEY['key']}"}


def _config(upstream: str, redis_url: str, **shared: Any) -> dict[str, Any]:
    cfg = basic_config(upstream)
    cfg["auth"] = {"keys": {"k": KEY}}
    cfg["shared_state"] = {"redis_url": redis_url, **shared}
    cfg["request_log"] = {"enabled": False}
    return cfg


class Replica:
    """A redis-server that is a replica of a master that does not exist: it answers PING and reads, and
    refuses every write with READONLY (a failover that left the URL on a replica)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(workdir), "--replicaof", "127.0.0.1", str(free_port())]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis replica did not start"
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    r = Replica(tmp_path)
    yield r
    r.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path)


def _ready(url: str) -> dict[str, Any]:
    r = httpx.get(url + "/health/ready", headers=AUTH, timeout=10)
    state: dict[str, Any] = r.json()["shared_state"]
    return state


# ---------------------------------------------------------------------------------------- a Redis that hangs
def test_silent_redis_fail_open_serves_every_request_and_warns_once(
    silent: SilentServer,
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ollamux")
    url = start_proxy(_config(fake_openai[1], f"redis://127.0.0.1:{silent.port}/0", timeout=0.2))
    with httpx.Client(timeout=10) as http:
        answers = [http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH) for _ in range(20)]
    assert [r.status_code for r in answers] == [200] * 20
    st = _ready(url)
    assert st["state"] == "degraded" and st["using"] == "local limits"
    assert "no answer within 0.2 s" in st["error"]
    assert caplog.text.count("is unreachable") == 1, caplog.text


def test_silent_redis_fail_closed_refuses_in_each_envelope(
    silent: SilentServer, fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    url = start_proxy(_config(fake_openai[1], f"redis://127.0.0.1:{silent.port}/0", timeout=0.2, fail_closed=True))
    with httpx.Client(timeout=10) as http:
        r = http.post(url + "/api/chat", json=CHAT, headers=AUTH)
        assert r.status_code == 503 and "shared_state.fail_closed" in r.json()["error"]
        r = http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH)
        assert r.status_code == 503 and r.json()["error"]["code"] == "shared_state_unavailable"
        r = http.post(
            url + "/v1/messages",
            json={"model": "fake-model", "max_tokens": 8, "messages": HI},
            headers={"x-api-key": KEY["key"]},
        )
        assert r.status_code == 503 and r.json()["type"] == "error"
        assert r.json()["error"]["type"] in {"api_error", "overloaded_error"}


# ---------------------------------------------------------------------------------------- a read-only replica
def test_read_only_replica_is_down_until_it_takes_writes_warned_once(
    replica: Replica,
    fake_openai: tuple[FakeOpenAI, str],
    start_proxy: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ollamux")
    url = start_proxy(_config(fake_openai[1], replica.url, timeout=0.5))
    with httpx.Client(timeout=10) as http:
        for _ in range(40):
            assert http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
            time.sleep(0.05)  # long enough for a probe that only PINGs to say "answers again" in between
    st = _ready(url)
    assert st["state"] == "degraded", st
    assert "read only replica" in st["error"], st  # what to fix: the URL names a replica
    assert caplog.text.count("is unreachable") == 1, caplog.text
    assert "limits are shared again" not in caplog.text, caplog.text
