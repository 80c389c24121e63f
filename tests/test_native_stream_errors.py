"""A stream relayed untouched from a backend that serves the Messages or Responses API itself, failing after
its first event (the connection cut, or the backend gone quiet past `idle_timeout`), ends in the one error
frame the client's own SDK raises on: Anthropic's `event: error`, OpenAI's Responses `error` event.

Before, the pass-through wrote the chat API's bare `data: {"error": ...}` whatever the front: the anthropic
SDK skips a frame without an event name, so a Messages stream cut before its `message_start` ended as
"stream ended without message_start" with the cause lost (seen once against llama.cpp in CI).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from .conftest import ProxyFactory
from .servers import LoopThread

MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"up","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":3,"output_tokens":0}}}\n\n'
)
RESPONSE_CREATED = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1",'
    b'"object":"response","created_at":1,"status":"in_progress","model":"up","output":[],"parallel_tool_calls":'
    b'true,"tool_choice":"auto","tools":[]}}\n\n'
)


SECRET = "sk-native-SECRET-789"


def _failing_app() -> web.Application:
    """Each answer sends its first event (or none, for `cut-early`), then fails as the model name says."""

    async def stream(request: web.Request, first: bytes) -> web.StreamResponse:
        body = await request.json()
        if body["model"] == "secret":  # a backend that echoes the key it was sent, as some gateways do
            said = f"invalid key {request.headers.get('Authorization')}"
            return web.json_response(
                {"type": "error", "error": {"type": "authentication_error", "message": said}}, status=401
            )
        if body["model"] == "secret-midstream":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(first)
            said = f"invalid key {request.headers.get('Authorization')}"
            await resp.write(
                b"event: error\ndata: " + json.dumps({"type": "error", "error": {"message": said}}).encode() + b"\n\n"
            )
            await resp.write_eof()
            return resp
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        how = body["model"]
        if how != "cut-early":
            await resp.write(first)
        if how == "stall":
            await asyncio.sleep(30)
        assert request.transport is not None
        request.transport.close()  # cut mid-stream: no last chunk, no end of the chunked body
        return resp

    async def messages(request: web.Request) -> web.StreamResponse:
        return await stream(request, MESSAGE_START)

    async def responses(request: web.Request) -> web.StreamResponse:
        return await stream(request, RESPONSE_CREATED)

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/responses", responses)
    return app


@pytest.fixture(scope="module")
def upstream(loop_thread: LoopThread) -> Iterator[str]:
    runner, url = loop_thread.start_app(_failing_app())
    yield url
    loop_thread.stop_app(runner)


@pytest.fixture
def proxy(upstream: str, start_proxy: ProxyFactory) -> str:
    backend = {
        "url": upstream + "/v1",
        "apis": ["responses", "messages"],
        "idle_timeout": 0.5,
        "retries": 0,
        "api_key": SECRET,
    }
    return start_proxy(
        {
            "backends": {"native": backend},
            "models": {
                name: {"backend": "native", "upstream": name}
                for name in ("cut", "cut-early", "stall", "secret", "secret-midstream")
            },
        }
    )


@pytest.mark.parametrize("how", ["cut", "cut-early", "stall"])
def test_messages_stream_failure_raises_in_the_anthropic_sdk(proxy: str, how: str) -> None:
    claude = anthropic.Anthropic(base_url=proxy, api_key="unused", max_retries=0, timeout=20)
    with pytest.raises(anthropic.APIStatusError) as caught:
        with claude.messages.stream(model=how, max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
    assert caught.value.status_code == 200  # the error came as a frame inside the 200 stream
    assert "native" in caught.value.message  # it names the backend that failed
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "api_error"


@pytest.mark.parametrize("how", ["cut", "stall"])
def test_responses_stream_failure_raises_in_the_openai_sdk(proxy: str, how: str) -> None:
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0, timeout=20)
    events = []
    with pytest.raises(openai.APIError, match="native") as caught:
        for event in client.responses.create(model=how, input="hi", stream=True):
            events.append(event.type)
    assert events == ["response.created"]  # what came before the failure reached the client
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "api_error"
    # on the wire it is the documented `error` event (what clients that read events by type, as Codex does,
    # look for), not a bare data frame
    with httpx.stream("POST", proxy + "/v1/responses", json={"model": how, "input": "hi", "stream": True}) as r:
        frames = r.read().split(b"\n\n")
    name, data = frames[-2].split(b"\n")
    assert name == b"event: error"
    error = json.loads(data.removeprefix(b"data: "))
    assert error["type"] == "error" and error["code"] == "api_error" and "native" in error["message"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
@pytest.mark.parametrize("model", ["secret", "secret-midstream"])
def test_a_key_echoed_by_a_native_backend_never_reaches_the_client(proxy: str, path: str, model: str) -> None:
    body = {
        "model": model,
        "max_tokens": 8,
        "stream": True,
        "input": "hi",
        "messages": [{"role": "user", "content": "hi"}],
    }
    r = httpx.post(proxy + path, json=body)
    assert r.status_code == (401 if model == "secret" else 200)
    assert "invalid key" in r.text  # what went wrong still reaches the client
    assert "SECRET-789" not in r.text and "SECRET-789" not in str(r.headers)
