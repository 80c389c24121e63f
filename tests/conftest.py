from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import openai
import pytest

from ollamux import create_app
from ollamux.config import parse_settings

from .fakes.ollama_upstream import FakeOllama
from .fakes.openai_upstream import FakeOpenAI
from .fakes.silent_server import SilentServer
from .fronts import Backend, ollama_config
from .pg_server import PgServer, running_pg_server
from .servers import LoopThread

ProxyFactory = Callable[[dict[str, Any]], str]
F = TypeVar("F", FakeOpenAI, FakeOllama)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL 15 on loopback, password auth (tests/pg_server.py); skipped where it cannot run."""
    yield from running_pg_server()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    """A TCP server that accepts and never answers (a hung Redis or collector: fakes/silent_server.py)."""
    s = SilentServer()
    yield s
    s.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def _served(loop_thread: LoopThread, fake: F) -> Iterator[tuple[F, str]]:
    """A fake upstream served on a real socket for the fixture's lifetime."""
    runner, url = loop_thread.start_app(fake.app())
    yield fake, url
    loop_thread.stop_app(runner)


@pytest.fixture(scope="session")
def fake_openai_server(loop_thread: LoopThread) -> Iterator[tuple[FakeOpenAI, str]]:
    yield from _served(loop_thread, FakeOpenAI())


@pytest.fixture
def fake_openai(fake_openai_server: tuple[FakeOpenAI, str]) -> tuple[FakeOpenAI, str]:
    """The session's fake OpenAI backend, its "held" signals cleared: a test that held a request leaves
    `held` set, and the next one's `held.wait()` would return before its own request is in."""
    fake_openai_server[0].reset_holds()
    return fake_openai_server


@pytest.fixture(scope="session")
def fake_ollama(loop_thread: LoopThread) -> Iterator[tuple[FakeOllama, str]]:
    yield from _served(loop_thread, FakeOllama())


@pytest.fixture
def start_proxy(loop_thread: LoopThread, tmp_path: Any) -> Iterator[ProxyFactory]:
    """Start an ollamux app from a config dict (as the YAML would hold it); returns its base URL."""
    runners = []

    def start(config: dict[str, Any]) -> str:
        config = dict(config)
        config.setdefault("request_log", {"path": str(tmp_path / "requests.sqlite")})
        settings = parse_settings(config, dict(os.environ))
        runner, url = loop_thread.start_app(create_app(settings))
        runners.append(runner)
        return url

    yield start
    for r in runners:
        loop_thread.stop_app(r)


def basic_config(upstream_url: str) -> dict[str, Any]:
    return {
        "backends": {"fake": {"type": "openai", "url": f"{upstream_url}/v1", "api_key": "sk-backend-secret"}},
        "models": {
            "fake-model": {"backend": "fake", "aliases": ["fm:7b"]},
            "llama3.2": {"backend": "fake", "upstream": "fake-model", "aliases": ["llama3.2:3b"]},
            "tools": {"backend": "fake"},
            "think": {"backend": "fake", "capabilities": ["completion", "tools", "thinking"]},
            "embed-model": {"backend": "fake", "capabilities": ["embedding"]},
            "x-*": {"backend": "fake"},
        },
    }


@pytest.fixture
def proxy(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(basic_config(fake_openai[1]))


@pytest.fixture(params=["openai", "ollama"])
def pivot_backend(  # the Responses and Messages suites: each test against both kinds of backend
    request: pytest.FixtureRequest,
    fake_openai: tuple[FakeOpenAI, str],
    fake_ollama: tuple[FakeOllama, str],
    start_proxy: ProxyFactory,
) -> Backend:
    if request.param == "openai":
        return Backend(
            "openai", start_proxy(basic_config(fake_openai[1])), fake_openai[0], "Hello from the fake!", (11, 3)
        )
    return Backend("ollama", start_proxy(ollama_config(fake_ollama[1])), fake_ollama[0], "Hello from Ollama!", (7, 3))


@pytest.fixture
def oai() -> Iterator[Callable[[str], openai.OpenAI]]:
    """Official openai clients for a base URL (no retries: a test sees the first answer), closed at the end."""
    made: list[openai.OpenAI] = []

    def make(base: str) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=base + "/v1", api_key="sk-client", max_retries=0, timeout=20))
        return made[-1]

    yield make
    for c in made:
        c.close()
