"""A backend that serves the Responses or Messages API itself (`apis: [responses, messages]`) gets the
client's request untouched (only `model` swapped) and its answer comes back as it came; a backend without
them is reached through the pivot. The recording fake shows what arrived."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from .conftest import ProxyFactory
from .fakes.recording_upstream import RecordingUpstream
from .servers import LoopThread


@pytest.fixture(scope="module")
def upstream(loop_thread: LoopThread) -> Iterator[tuple[RecordingUpstream, str]]:
    fake = RecordingUpstream()
    runner, url = loop_thread.start_app(fake.app())
    yield fake, url
    loop_thread.stop_app(runner)


@pytest.fixture
def proxy(upstream: tuple[RecordingUpstream, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(
        {
            "backends": {
                "native": {"url": upstream[1] + "/v1", "api_key": "sk-backend", "apis": ["responses", "messages"]},
            },
            "models": {"native-model": {"backend": "native", "upstream": "up-model"}},
        }
    )


RAW_RESPONSES = b'{"model": "native-model", "input": "hi",  "store": false, "x_future": [1, 2.50]}'
RAW_MESSAGES = b'{"model":"native-model","max_tokens":8,"messages":[{"role":"user","content":"hi"}],"x_future":1}'


def test_responses_go_through_untouched(proxy: str, upstream: tuple[RecordingUpstream, str]) -> None:
    fake = upstream[0]
    r = httpx.post(
        proxy + "/v1/responses",
        content=RAW_RESPONSES,
        headers={"Content-Type": "application/json", "x-request-id": "native-resp"},
    )
    assert r.status_code == 200
    seen = fake.one("native-resp")
    assert (seen.method, seen.path) == ("POST", "/v1/responses")
    # every byte as the client wrote it, but the model name (spacing and number spellings included)
    assert seen.body == RAW_RESPONSES.replace(b'"native-model"', b'"up-model"')
    assert seen.headers["Authorization"] == "Bearer sk-backend"
    assert json.loads(r.json()["body"]) == json.loads(seen.body)  # the echo came back as it was sent


def test_messages_go_through_untouched_with_anthropic_headers(
    proxy: str, upstream: tuple[RecordingUpstream, str]
) -> None:
    fake = upstream[0]
    headers = {
        "Content-Type": "application/json",
        "x-request-id": "native-msg",
        "x-api-key": "sk-ant-client",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "tools-2024-04-04",
    }
    r = httpx.post(proxy + "/v1/messages?beta=true", content=RAW_MESSAGES, headers=headers)
    assert r.status_code == 200
    seen = fake.one("native-msg")
    assert (seen.path, seen.body) == ("/v1/messages", RAW_MESSAGES.replace(b'"native-model"', b'"up-model"'))
    assert seen.headers["anthropic-version"] == "2023-06-01" and seen.headers["anthropic-beta"] == "tools-2024-04-04"
    assert "x-api-key" not in seen.headers  # the client's key is not the backend's


def test_count_tokens_goes_to_the_backend(proxy: str, upstream: tuple[RecordingUpstream, str]) -> None:
    r = httpx.post(
        proxy + "/v1/messages/count_tokens",
        content=b'{"model": "native-model", "messages": [{"role": "user", "content": "hi"}]}',
        headers={"Content-Type": "application/json", "x-request-id": "native-count"},
    )
    assert r.status_code == 200 and upstream[0].one("native-count").path == "/v1/messages/count_tokens"
