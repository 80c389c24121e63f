"""The OpenAI API, with the official `openai` client as oracle, in front of both kinds of backend.

OpenAI-compatible backends get a byte-for-byte pass-through; Ollama backends a full translation; and a
chain of two ollamux servers proves nothing is lost going OpenAI -> Ollama -> OpenAI and back.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam, ChatCompletionToolParam

from .conftest import ProxyFactory
from .fakes.ollama_upstream import FakeOllama
from .fakes.openai_upstream import FakeOpenAI

WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n0000").decode()


def ollama_backend_config(url: str, **backend: Any) -> dict[str, Any]:
    return {
        "backends": {"ol": {"type": "ollama", "url": url, "discover": True, **backend}},
        "models": {
            "my-qwen": {"backend": "ol", "upstream": "qwen3:latest"},
            "length": {"backend": "ol"},
            "midstream": {"backend": "ol"},
            "bad-request": {"backend": "ol"},
            "empty": {"backend": "ol"},
            "gone": {"backend": "ol"},
        },
    }


@pytest.fixture
def ollama_proxy(fake_ollama: tuple[FakeOllama, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(ollama_backend_config(fake_ollama[1]))


def collect(
    stream: Iterable[ChatCompletionChunk],
) -> tuple[str, list[dict[str, str]], CompletionUsage | None, list[ChatCompletionChunk]]:
    """Content, assembled tool calls, the usage chunk's usage and the chunks of a streamed chat."""
    chunks = list(stream)
    text = ""
    calls: dict[int, dict[str, str]] = {}
    for ch in chunks:
        for choice in ch.choices:
            d = choice.delta
            text += d.content or ""
            for tc in d.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.id or ""
                if tc.function:
                    call["name"] += tc.function.name or ""
                    call["arguments"] += tc.function.arguments or ""
    usage = chunks[-1].usage if chunks and not chunks[-1].choices else None
    return text, [calls[i] for i in sorted(calls)], usage, chunks


def finish_of(chunks: list[ChatCompletionChunk]) -> str | None:
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(reasons) == 1
    return reasons[0]


# =========================================================================== OpenAI-compatible backend
def test_chat_passthrough(proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    r = oai(proxy).chat.completions.create(model="fake-model", messages=HI)
    assert r.choices[0].message.content == "Hello from the fake!"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 3)


def test_chat_passthrough_streamed_with_usage(proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    stream = oai(proxy).chat.completions.create(
        model="fm:7b",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, _, usage, chunks = collect(stream)
    assert text == "Hello from the fake!" and finish_of(chunks) == "stop"
    assert usage is not None and usage.total_tokens == 14


def test_tool_calls_passthrough(proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(proxy)
    r = c.chat.completions.create(model="tools", messages=HI, tools=[WEATHER_TOOL])
    tool_calls = r.choices[0].message.tool_calls
    assert tool_calls is not None and len(tool_calls) == 1
    call = tool_calls[0]
    assert call.type == "function"
    assert json.loads(call.function.arguments) == {"city": "Tokyo", "unit": "c"}
    _, calls, _, chunks = collect(
        c.chat.completions.create(model="tools", messages=HI, tools=[WEATHER_TOOL], stream=True)
    )
    assert calls == [{"id": "call_abc", "name": "get_weather", "arguments": '{"city": "Tokyo", "unit": "c"}'}]
    assert finish_of(chunks) == "tool_calls"


def test_completions_passthrough(proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(proxy)
    r = c.completions.create(model="fake-model", prompt="Tell me")
    assert r.choices[0].text == "Once upon a time" and r.usage is not None and r.usage.total_tokens == 7
    chunks = list(c.completions.create(model="fake-model", prompt="Tell me", stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "Once upon a time"


def test_embeddings_passthrough(proxy: str, oai: Callable[[str], openai.OpenAI], fake_openai: Any) -> None:
    c = oai(proxy)
    r = c.embeddings.create(model="embed-model", input=["abc", "d"], encoding_format="float")
    assert [d.embedding for d in r.data] == [[3.0, 1.0, 2.0, 0.0], [1.0, 1.0, 2.0, 1.0]]
    r = c.embeddings.create(model="embed-model", input="abc")  # the SDK asks for base64 by default
    assert r.data[0].embedding == [3.0, 1.0, 2.0, 0.0]
    assert fake_openai[0].last("/embeddings").json["encoding_format"] == "base64"  # passed on as sent


def test_models_list_and_retrieve(proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(proxy)
    ids = {m.id for m in c.models.list()}
    assert {"fake-model", "llama3.2", "tools", "think", "embed-model"} <= ids
    m = c.models.retrieve("llama3.2:3b")
    assert m.id == "llama3.2:3b" and m.object == "model" and m.owned_by == "fake"
    assert c.models.retrieve("x-org/some-model:q4").id == "x-org/some-model:q4"  # '/' and ':' in the id
    with pytest.raises(openai.NotFoundError) as info:
        c.models.retrieve("nope")
    body = info.value.body
    assert isinstance(body, dict) and body["message"].startswith("model 'nope' not found; try one of: ")


def test_errors_in_openai_envelope(proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(proxy)
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        c.chat.completions.create(model="nope", messages=HI)
    with pytest.raises(openai.BadRequestError, match="temperature too hot"):
        c.chat.completions.create(model="x-bad-request", messages=HI)
    with pytest.raises(openai.InternalServerError, match="backend exploded"):
        c.chat.completions.create(model="x-server-error", messages=HI)
    with pytest.raises(openai.APIError, match="the model crashed"):
        collect(c.chat.completions.create(model="x-midstream", messages=HI, stream=True))
    r = httpx.post(proxy + "/v1/chat/completions", content=b'{"model": ')
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and set(err) == {"message", "type", "param", "code"}
    assert httpx.post(proxy + "/v1/chat/completions", content=b"").status_code == 400


def test_backend_down_is_502(start_proxy: ProxyFactory, oai: Callable[[str], openai.OpenAI]) -> None:
    from .servers import free_port

    url = start_proxy(
        {
            "backends": {"down": {"type": "openai", "url": f"http://127.0.0.1:{free_port()}/v1"}},
            "models": {"m": {"backend": "down"}},
        }
    )
    with pytest.raises(openai.APIStatusError) as info:
        oai(url).chat.completions.create(model="m", messages=HI)
    assert info.value.status_code == 502 and "cannot be reached" in info.value.message


def test_capture_byte_for_byte_and_key_replacement(proxy: str, fake_openai: tuple[FakeOpenAI, str]) -> None:
    fake = fake_openai[0]
    raw = (
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "caf\\u00e9"}, '
        b'{"type": "image_url", "image_url": {"url": "data:image/png;base64,' + PNG_B64.encode() + b'"}}]}],\n'
        b' "model": "fm:7b", "slot_id": 2, "cache_prompt": true, "n_probs": 3, "seed": 7, "temperature": 0.10,'
        b' "guided_json": {"type": "object", "properties": {"model": {"type": "string"}}},'
        b' "tools": [], "response_format": {"type": "json_object"}, "x_unknown": [1, 2.50, null]}'
    )
    headers = {"Authorization": "Bearer sk-client-key", "Content-Type": "application/json", "x-request-id": "rq-42"}
    r = httpx.post(proxy + "/v1/chat/completions", content=raw, headers=headers)
    assert r.status_code == 200 and r.headers["x-request-id"] == "rq-42"
    got = fake.last("/chat/completions")
    assert got.body == raw.replace(b'"fm:7b"', b'"fake-model"')  # only the model changed, byte for byte
    assert got.headers["Authorization"] == "Bearer sk-backend-secret"  # the backend's key, not the client's
    sent = {k.lower(): v for k, v in got.headers.items()}
    assert sent["x-request-id"] == "rq-42"  # forwarded upstream
    assert sent["accept-encoding"] == r.request.headers["accept-encoding"]  # the body is relayed as encoded
    same = b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],"cache_prompt":false}'
    httpx.post(proxy + "/v1/chat/completions", content=same)
    assert fake.last("/chat/completions").body == same


def test_stream_relayed_unmodified_and_as_it_arrives(proxy: str, fake_openai: tuple[FakeOpenAI, str]) -> None:
    body = {"model": "fake-model", "messages": HI, "stream": True}
    direct = httpx.post(fake_openai[1] + "/v1/chat/completions", json=body)
    relayed = httpx.post(proxy + "/v1/chat/completions", json=body)
    assert relayed.content == direct.content and relayed.headers["content-type"] == direct.headers["content-type"]
    assert relayed.headers["x-request-id"]
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", proxy + "/v1/chat/completions", json={**body, "model": "x-slow"}) as resp,
    ):
        start = time.monotonic()
        arrivals = [time.monotonic() - start for chunk in resp.iter_bytes() if b'"content"' in chunk]
    assert arrivals and arrivals[-1] - arrivals[0] >= 0.3  # 0.2 s apart upstream, so not buffered


# ================================================================================== Ollama backend
def test_chat_via_ollama(
    ollama_proxy: str, oai: Callable[[str], openai.OpenAI], fake_ollama: tuple[FakeOllama, str]
) -> None:
    r = oai(ollama_proxy).chat.completions.create(
        model="my-qwen",
        messages=HI,
        max_tokens=50,
        seed=1,
        response_format={"type": "json_object"},
    )
    assert r.model == "my-qwen" and r.object == "chat.completion"
    assert r.choices[0].message.content == "Hello from Ollama!" and r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (7, 3, 10)
    sent = fake_ollama[0].last("/api/chat").json
    assert sent["model"] == "qwen3:latest" and sent["stream"] is False and sent["format"] == "json"
    assert sent["options"] == {"num_predict": 50, "seed": 1, "temperature": 1.0, "top_p": 1.0}


def test_chat_via_ollama_streamed_with_usage(ollama_proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    stream = oai(ollama_proxy).chat.completions.create(
        model="my-qwen",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, _, usage, chunks = collect(stream)
    assert text == "Hello from Ollama!"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish_of(chunks) == "stop"
    finish = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finish.choices[0].delta.content is None  # a separate finish chunk
    assert usage is not None and usage.total_tokens == 10 and chunks[-1].choices == []
    assert all(c.model == "my-qwen" for c in chunks)


def test_thinking_via_ollama(
    ollama_proxy: str, oai: Callable[[str], openai.OpenAI], fake_ollama: tuple[FakeOllama, str]
) -> None:
    c = oai(ollama_proxy)
    r = c.chat.completions.create(model="think", messages=HI, reasoning_effort="high")
    assert fake_ollama[0].last("/api/chat").json["think"] == "high"
    extra = r.choices[0].message.model_extra or {}
    assert extra["reasoning_content"] == "Let me think." and r.choices[0].message.content == "Hello from Ollama!"
    chunks = list(c.chat.completions.create(model="think", messages=HI, stream=True))
    reasoning = "".join(
        (ch.choices[0].delta.model_extra or {}).get("reasoning_content", "") for ch in chunks if ch.choices
    )
    assert reasoning == "Let me think."


def test_tool_calls_via_ollama(ollama_proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(ollama_proxy)
    r = c.chat.completions.create(model="tools", messages=HI, tools=[WEATHER_TOOL])
    assert r.choices[0].finish_reason == "tool_calls"
    tool_calls = r.choices[0].message.tool_calls
    assert tool_calls is not None and len(tool_calls) == 1
    call = tool_calls[0]
    assert call.type == "function"
    assert call.id == "call_x1y2z3w4" and call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Tokyo","unit":"c"}'
    _, calls, _, chunks = collect(
        c.chat.completions.create(model="tools", messages=HI, tools=[WEATHER_TOOL], stream=True)
    )
    assert calls == [{"id": "call_x1y2z3w4", "name": "get_weather", "arguments": '{"city":"Tokyo","unit":"c"}'}]
    assert finish_of(chunks) == "tool_calls"


def test_history_and_images_translated(
    ollama_proxy: str, oai: Callable[[str], openai.OpenAI], fake_ollama: tuple[FakeOllama, str]
) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"x": 1}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
    ]
    oai(ollama_proxy).chat.completions.create(model="my-qwen", messages=messages)
    sent = fake_ollama[0].last("/api/chat").json["messages"]
    assert sent[1]["images"] == [PNG_B64]
    assert sent[2]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert sent[3] == {"role": "tool", "content": "a cat", "tool_name": "look", "tool_call_id": "c1"}


def test_completions_via_ollama(
    ollama_proxy: str, oai: Callable[[str], openai.OpenAI], fake_ollama: tuple[FakeOllama, str]
) -> None:
    c = oai(ollama_proxy)
    r = c.completions.create(model="my-qwen", prompt="Once", max_tokens=8)
    assert r.choices[0].text == "Once upon a time" and r.object == "text_completion"
    assert r.usage is not None and r.usage.total_tokens == 10
    sent = fake_ollama[0].last("/api/generate").json
    assert sent["raw"] is True and sent["prompt"] == "Once" and sent["options"]["num_predict"] == 8
    chunks = list(
        c.completions.create(model="my-qwen", prompt="Once", stream=True, stream_options={"include_usage": True})
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "Once upon a time"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_embeddings_via_ollama(ollama_proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(ollama_proxy)
    r = c.embeddings.create(model="nomic:v1", input=["a", "b"], encoding_format="float")
    assert [d.embedding for d in r.data] == [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, -0.5]]
    assert r.model == "nomic:v1" and r.usage.prompt_tokens == 4
    r = c.embeddings.create(model="nomic:v1", input="a")  # base64 on the wire, decoded by the SDK
    assert r.data[0].embedding == [0.5, 0.5, 0.5, 0.5]
    with pytest.raises(openai.BadRequestError, match="invalid input"):
        c.embeddings.create(model="nomic:v1", input=[])


def test_models_via_ollama_discovery(ollama_proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(ollama_proxy)
    ids = {m.id for m in c.models.list()}
    assert {"my-qwen", "qwen3:latest", "tools:latest", "think:latest", "nomic:v1"} <= ids
    m = c.models.retrieve("qwen3")
    assert m.id == "qwen3" and m.owned_by == "ol"
    assert m.created == 1746889608  # the backend's modified_at, 2025-05-10T08:06:48-07:00


def test_errors_via_ollama(ollama_proxy: str, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(ollama_proxy)
    with pytest.raises(openai.BadRequestError, match="temperature too hot"):
        c.chat.completions.create(model="bad-request", messages=HI)
    with pytest.raises(openai.NotFoundError, match="model 'gone' not found"):
        c.chat.completions.create(model="gone", messages=HI)
    with pytest.raises(openai.APIError, match="the model crashed"):
        collect(c.chat.completions.create(model="midstream", messages=HI, stream=True))
    r = httpx.post(
        ollama_proxy + "/v1/chat/completions", json={"model": "my-qwen", "messages": [{"role": "user", "content": 2}]}
    )
    assert r.status_code == 400 and r.json() == {
        "error": {
            "message": "invalid message content type: float64",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert "x-request-id" in r.headers
    _, _, _, chunks = collect(c.chat.completions.create(model="empty", messages=HI, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and finish_of(chunks) == "stop"


# ================================================================================ round-trip chain
@pytest.fixture
def chain(proxy: str, start_proxy: ProxyFactory, tmp_path: Any) -> str:
    """ollamux #1 (OpenAI API) -> ollamux #2's Ollama API -> the fake OpenAI upstream."""
    return start_proxy(
        {
            "backends": {"two": {"type": "ollama", "url": proxy}},
            "models": {
                "chain": {"backend": "two", "upstream": "fake-model"},
                "chain-tools": {"backend": "two", "upstream": "tools"},
            },
            "request_log": {"path": str(tmp_path / "chain.sqlite")},
        }
    )


def test_round_trip_chain(chain: str, oai: Callable[[str], openai.OpenAI]) -> None:
    c = oai(chain)
    r = c.chat.completions.create(model="chain", messages=HI)
    assert r.choices[0].message.content == "Hello from the fake!" and r.model == "chain"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 3)
    text, _, usage, chunks = collect(
        c.chat.completions.create(model="chain", messages=HI, stream=True, stream_options={"include_usage": True})
    )
    assert text == "Hello from the fake!" and finish_of(chunks) == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (11, 3)

    r = c.chat.completions.create(model="chain-tools", messages=HI, tools=[WEATHER_TOOL])
    tool_calls = r.choices[0].message.tool_calls
    assert tool_calls is not None and len(tool_calls) == 1
    call = tool_calls[0]
    assert call.type == "function"
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Tokyo", "unit": "c"}
    _, calls, usage, chunks = collect(
        c.chat.completions.create(
            model="chain-tools",
            messages=HI,
            tools=[WEATHER_TOOL],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [(x["name"], json.loads(x["arguments"])) for x in calls] == [("get_weather", {"city": "Tokyo", "unit": "c"})]
    assert calls[0]["id"] == "call_abc" and finish_of(chunks) == "tool_calls"
    assert usage is not None and usage.total_tokens == 14
