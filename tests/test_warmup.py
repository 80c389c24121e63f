"""A streamed request for a model that is still starting gets its status line at once and keep-alives the
client's format ignores until the model answers (pipeline/warmup.py); a start that fails after the
status line is one final error frame in the client's format. The model is a real process that takes
2.5 s to listen (tests/fakes/tiny_model_server.py as a `cmd:` model)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from .conftest import ProxyFactory

SERVER = str(Path(__file__).parent / "fakes" / "tiny_model_server.py")
DELAY = 2.5


def cmd(delay: float) -> list[str]:
    return [sys.executable, SERVER, "--port", "${PORT}", "--ctx", "${CTX}", "--delay", str(delay)]


@pytest.fixture
def proxy(start_proxy: ProxyFactory, tmp_path: Path) -> str:
    return start_proxy(
        {
            "runtime": {"log_dir": str(tmp_path / "logs")},
            "models": {
                "slow": {"runtime": {"cmd": cmd(DELAY), "ctx": 512}},
                "never": {"runtime": {"cmd": cmd(30), "ctx": 512, "startup_timeout": 2}},
            },
        }
    )


def timed_stream(url: str, body: dict[str, Any], **headers: str) -> tuple[float, int, str, bytes]:
    """Seconds to the status line, the status, the content type and the whole body."""
    t0 = time.monotonic()
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as r:
        head = time.monotonic() - t0
        return head, r.status_code, r.headers["content-type"], r.read()


def test_openai_stream_opens_at_once_and_is_kept_alive(proxy: str) -> None:
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    head, status, ctype, data = timed_stream(proxy + "/v1/chat/completions", body)
    assert status == 200 and ctype.startswith("text/event-stream")
    assert head < DELAY - 0.5  # the status line did not wait for the model
    assert data.startswith(b": loading\n\n")  # an SSE comment: every SSE client skips it
    assert b'"content": "hi"' in data and data.endswith(b"data: [DONE]\n\n")


def test_the_sdks_read_a_kept_alive_stream(proxy: str) -> None:
    with openai.OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0) as c:
        chunks = list(
            c.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "hi"
    with anthropic.Anthropic(base_url=proxy, api_key="unused", max_retries=0) as a:
        with a.messages.stream(model="slow", max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
            assert "".join(s.text_stream) == "hi"


def test_anthropic_keep_alive_is_its_ping_event(proxy: str, tmp_path: Path) -> None:
    body = {"model": "slow", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    head, status, _, data = timed_stream(proxy + "/v1/messages", body)
    assert status == 200 and head < DELAY - 0.5
    assert data.startswith(b'event: ping\ndata: {"type": "ping"}\n\n') and b"event: message_stop" in data


def test_a_start_that_fails_after_the_status_line_is_one_error_frame(proxy: str) -> None:
    body = {"model": "never", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    _, status, _, data = timed_stream(proxy + "/v1/chat/completions", body)
    assert status == 200 and data.startswith(b": loading\n\n")
    frames = [f for f in data.split(b"\n\n") if f.startswith(b"data: ")]
    assert len(frames) == 1 and b'"error"' in frames[0] and b"did not become ready" in frames[0]
    with anthropic.Anthropic(base_url=proxy, api_key="unused", max_retries=0) as a:
        with pytest.raises(anthropic.APIError, match="did not become ready"):
            with a.messages.stream(model="never", max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
                list(s)
    with openai.OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.APIError, match="did not become ready"):
            list(c.responses.create(model="never", input="hi", stream=True))


def test_a_model_ready_at_once_answers_as_usual(proxy: str) -> None:
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    timed_stream(proxy + "/v1/chat/completions", body)  # started now
    _, status, _, data = timed_stream(proxy + "/v1/chat/completions", body)
    assert status == 200 and data.startswith(b"data: ")  # no keep-alive for a model already running
    r = httpx.post(proxy + "/v1/chat/completions", json={**body, "stream": False}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hi"
