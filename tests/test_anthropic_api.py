"""Anthropic's Messages API with the official `anthropic` SDK as oracle, in front of both kinds of backend.

Both backends are reached through the chat-completions pivot: an OpenAI-compatible fake (the pivot
itself) and an Ollama fake (the pivot, then Ollama's native API).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import ToolParam

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .fronts import Backend
from .servers import log_row
from .test_metrics import scrape, value

WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HI: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def claude() -> Iterator[Callable[[str], anthropic.Anthropic]]:
    made: list[anthropic.Anthropic] = []

    def make(base: str) -> anthropic.Anthropic:
        made.append(anthropic.Anthropic(base_url=base, api_key="sk-ant-client", max_retries=0, timeout=20))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_text(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    m = claude(pivot_backend.url).messages.create(model="fake-model", max_tokens=64, system="Be brief.", messages=HI)
    assert m.type == "message" and m.role == "assistant" and m.model == "fake-model"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].type == "text" and m.content[0].text == pivot_backend.text
    assert m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == pivot_backend.usage
    messages = pivot_backend.last_messages()
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[-1]["role"] == "user"


def test_streamed_text(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    with claude(pivot_backend.url).messages.stream(model="fake-model", max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == pivot_backend.text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == pivot_backend.usage[1]


def test_streamed_event_sequence(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    events = list(
        claude(pivot_backend.url).messages.create(model="fake-model", max_tokens=64, messages=HI, stream=True)
    )
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "content_block_start" in types and "content_block_stop" in types and "message_delta" in types


def test_system_blocks_and_parameters(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    claude(pivot_backend.url).messages.create(
        model="fake-model",
        max_tokens=42,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=HI,
        stop_sequences=["END"],
        # this SDK has no sampling arguments any more; the API (and older SDKs, and other clients) still do
        extra_body={"temperature": 0.25, "top_p": 0.5, "top_k": 7},
    )
    body = pivot_backend.fake.last().json
    if pivot_backend.kind == "openai":
        assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (0.25, 0.5, 7, 42)
        assert body["stop"] == ["END"]
    else:
        o = body["options"]
        assert (o["temperature"], o["top_p"], o["top_k"], o["num_predict"], o["stop"]) == (0.25, 0.5, 7, 42, ["END"])
    assert "Be brief." in json.dumps(pivot_backend.last_messages()[0])


def test_tool_use_and_result_round_trip(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    c = claude(pivot_backend.url)
    m = c.messages.create(model="tools", max_tokens=64, messages=HI, tools=[WEATHER])
    assert m.stop_reason == "tool_use" or pivot_backend.kind == "ollama"  # Ollama says "stop" for a tool call
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].input == {"city": "Tokyo", "unit": "c"}
    c.messages.create(
        model="fake-model",
        max_tokens=64,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "weather in Tokyo?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": uses[0].id, "name": "get_weather", "input": uses[0].input}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny, 21 C"}]},
        ],
    )
    messages = pivot_backend.last_messages()
    assert messages[-2]["role"] == "assistant" and messages[-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[-1]["role"] == "tool" and "sunny, 21 C" in json.dumps(messages[-1])


def test_tool_use_streamed(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    with claude(pivot_backend.url).messages.stream(
        model="tools", max_tokens=64, messages=HI, tools=[WEATHER]
    ) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].input == {"city": "Tokyo", "unit": "c"}


def test_thinking(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    m = claude(pivot_backend.url).messages.create(
        model="think", max_tokens=64, messages=HI, thinking={"type": "enabled", "budget_tokens": 2048}
    )
    assert m.content[0].type == "thinking" and m.content[0].thinking == "Let me think."
    body = pivot_backend.fake.last().json
    assert body.get("think") if pivot_backend.kind == "ollama" else body["chat_template_kwargs"]["enable_thinking"]


def test_count_tokens(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    c = claude(pivot_backend.url)
    short = c.messages.count_tokens(model="fake-model", messages=HI)
    long = c.messages.count_tokens(
        model="fake-model", messages=[{"role": "user", "content": "hello there " * 50}], system="Be brief."
    )
    assert 0 < short.input_tokens < long.input_tokens
    if pivot_backend.kind == "openai":
        # llama.cpp's tokenizer (the fake counts words) at the server root, not an estimate
        sent = pivot_backend.fake.last("/tokenize")
        assert sent.path == "/tokenize" and "hello there" in sent.json["content"]
        assert long.input_tokens == len(sent.json["content"].split())


def test_unknown_model_is_not_found(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    with pytest.raises(anthropic.NotFoundError, match="no-such-model") as e:
        claude(pivot_backend.url).messages.create(model="no-such-model", max_tokens=8, messages=HI)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_bad_json_is_a_400_in_anthropic_envelope(pivot_backend: Backend) -> None:
    r = httpx.post(
        pivot_backend.url + "/v1/messages", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error" and body["error"]["message"]


def test_backend_error_keeps_its_status(pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]) -> None:
    with pytest.raises(anthropic.BadRequestError, match="temperature too hot"):
        claude(pivot_backend.url).messages.create(model="x-bad-request", max_tokens=8, messages=HI)


def test_error_mid_stream_raises_in_the_sdk(
    pivot_backend: Backend, claude: Callable[[str], anthropic.Anthropic]
) -> None:
    with pytest.raises(anthropic.APIError, match="crashed"):
        with claude(pivot_backend.url).messages.stream(model="x-midstream", max_tokens=8, messages=HI) as stream:
            for _ in stream:
                pass


def test_claude_code_shaped_request(pivot_backend: Backend) -> None:
    """What Claude Code sends: a query string, beta headers, system blocks with cache_control, tools with
    extra keys, metadata, context_management, adaptive thinking, a system message inside messages."""
    body: dict[str, Any] = {
        "model": "fake-model",
        "max_tokens": 128000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be careful."},
        ],
        "messages": [
            {"role": "system", "content": "extra system text"},
            {"role": "user", "content": [{"type": "text", "text": "say pong", "cache_control": {"type": "ephemeral"}}]},
        ],
        "tools": [{**WEATHER, "defer_loading": True}, {"type": "web_search_20250305", "name": "web_search"}],
        "metadata": {"user_id": "u1"},
        "context_management": {"edits": []},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "medium"},
    }
    headers = {
        "x-api-key": "sk-ant",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    r = httpx.post(pivot_backend.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=20)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.startswith("event: message_start\n")
    assert "event: content_block_start\n" in r.text and "event: message_stop\n" in r.text


def test_real_claude_code_body_reaches_the_backend_with_one_system_message(pivot_backend: Backend) -> None:
    """The body Claude Code 2.1.332 really sent (tests/data): its system blocks and the system message it
    puts after the user's become one leading system message, which every chat template accepts."""
    body = json.loads((Path(__file__).parent / "data" / "claude_code_request.json").read_text())
    body["model"] = "fake-model"
    r = httpx.post(pivot_backend.url + "/v1/messages?beta=true", json=body, headers={"x-api-key": "k"}, timeout=20)
    assert r.status_code == 200, r.text
    messages = pivot_backend.last_messages()
    assert [m["role"] for m in messages].count("system") == 1 and messages[0]["role"] == "system"
    assert "working directory" in messages[0]["content"].lower()  # the in-messages system text was kept
    if pivot_backend.kind == "openai":
        assert len(pivot_backend.fake.last().json["tools"]) == len(body["tools"])


@pytest.mark.parametrize(
    ("path", "body", "api"),
    [
        ("/v1/messages", {"model": "fake-model", "max_tokens": 8, "messages": HI}, "anthropic"),
        ("/v1/messages", {"model": "fake-model", "max_tokens": 8, "messages": HI, "stream": True}, "anthropic"),
        ("/v1/responses", {"model": "fake-model", "input": "hi"}, "responses"),
        ("/v1/responses", {"model": "fake-model", "input": "hi", "stream": True}, "responses"),
    ],
)
def test_log_row_and_metrics_name_the_api(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path, path: str, body: Any, api: str
) -> None:
    url = start_proxy(basic_config(fake_openai[1]))
    rid = f"front-{api}-{body.get('stream', False)}"
    r = httpx.post(url + path, json=body, headers={"x-request-id": rid}, timeout=20)
    assert r.status_code == 200, r.text
    row = log_row(tmp_path / "requests.sqlite", rid)
    assert (row["api"], row["route"], row["status"], row["model_requested"]) == (api, path, 200, "fake-model")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 3)
    assert row["streamed"] == int(bool(body.get("stream"))) and row["ttft_ms"] is not None
    with httpx.Client(base_url=url) as c:
        samples = scrape(c)
    assert value(samples, "ollamux_requests_total", api=api, route=path, status="200") == 1
