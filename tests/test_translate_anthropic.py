"""Anthropic's Messages API to and from the pivot, with the official `anthropic` SDK as the oracle.

Answers must validate as `anthropic.types.Message`; every stream event as `RawMessageStreamEvent`, and
the SDK's own accumulator (`lib/streaming/_messages.py`) must rebuild the message from them. The SDK's
clients are also run over a mock transport, to see them read the stream and raise on the error frame.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.parsed_message import ParsedMessage
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from ollamux.errors import BackendUnavailable, BadRequest, UpstreamError
from ollamux.observe import RequestRecord
from ollamux.streams.pivot_to_anthropic import PivotToAnthropicStream
from ollamux.translate.anthropic import (
    IMAGE_TOKENS,
    MessageMeta,
    count_images,
    count_text,
    estimate_tokens,
    from_pivot,
    to_pivot,
)
from ollamux.translate.to_openai import Dialect

META = MessageMeta(id="msg_abc123", model="claude-sonnet-4-5")
EVENTS: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
DIALECTS: list[Dialect] = ["openai", "llama.cpp", "vllm"]
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def body_of(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": list(messages), **extra}


def pivot_of(*messages: dict[str, Any], dialect: Dialect = "llama.cpp", **extra: Any) -> dict[str, Any]:
    return to_pivot(body_of(*messages, **extra), "up-model", dialect=dialect)


# ------------------------------------------------------------------------------------------ request
def test_minimal_request() -> None:
    pivot = pivot_of(user("Hello"))
    assert pivot == {
        "model": "up-model",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 1024,
        "stream": False,
    }


def test_system_string_and_blocks_with_cache_control() -> None:
    assert pivot_of(user("hi"), system="Be brief.")["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Use tools.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    pivot = pivot_of(user([{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]), system=blocks)
    assert pivot["messages"] == [
        {"role": "system", "content": "You are Claude Code.\n\nUse tools."},
        {"role": "user", "content": "hi"},
    ]
    assert b"cache_control" not in orjson.dumps(pivot)


def test_system_role_inside_messages_stays_in_place() -> None:
    pivot = pivot_of(
        user("first"),
        {"role": "assistant", "content": "ok"},
        {"role": "system", "content": [{"type": "text", "text": "Now be terse."}]},
        user("second"),
        system="top",
    )
    assert [(m["role"], m["content"]) for m in pivot["messages"]] == [
        ("system", "top"),
        ("user", "first"),
        ("assistant", "ok"),
        ("system", "Now be terse."),
        ("user", "second"),
    ]


def test_images_base64_url_and_unfetchable_file() -> None:
    pivot = pivot_of(
        user(
            [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "base64", "data": PNG_B64}},  # no media_type: sniffed
                {"type": "image", "source": {"type": "file", "file_id": "file_123"}},  # Files API: dropped
            ]
        )
    )
    assert pivot["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
    ]


def test_tool_use_and_tool_result_round_trip() -> None:
    pivot = pivot_of(
        user("Weather in Paris and Rome?"),
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "two calls", "signature": "sig=="},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        user(
            [
                {"type": "text", "text": "here you go"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C", "cache_control": {"type": "x"}},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [
                        {"type": "text", "text": "station down"},
                        {"type": "image", "source": {"type": "url", "url": "https://x/map.png"}},
                    ],
                },
            ]
        ),
    )
    assert pivot["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
                {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        # the results first, right after the calls; the user's own content (and result images) after them
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: station down"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/map.png"}},
                {"type": "text", "text": "here you go"},
            ],
        },
    ]


def test_turn_of_only_tool_results_and_assistant_of_only_calls() -> None:
    pivot = pivot_of(
        user("go"),
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}]},
        user([{"type": "tool_result", "tool_use_id": "t1"}]),
    )
    assert pivot["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "t1", "content": ""},
    ]


def test_documents_and_unknown_blocks() -> None:
    pivot = pivot_of(
        user(
            [
                {
                    "type": "document",
                    "title": "Notes",
                    "source": {"type": "text", "media_type": "text/plain", "data": "a"},
                },
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
                {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "b"}]}},
                {"type": "search_result", "source": "s", "title": "t", "content": [{"type": "text", "text": "c"}]},
                {"type": "tool_reference", "tool_name": "x"},
                {"type": "some_future_block", "payload": 1},
                {"text": "no type at all"},
                {"type": "text", "text": "question"},
            ]
        ),
        {
            "role": "assistant",
            "content": [
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "text", "text": "answer"},
            ],
        },
    )
    assert pivot["messages"] == [
        {"role": "user", "content": "Notes\n\na\n\nb\n\nc\n\nquestion"},
        {"role": "assistant", "content": "answer"},
    ]


CLIENT_TOOL = {
    "name": "Read",
    "description": "Read a file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}


def test_tools_client_kept_server_dropped_extra_keys_ignored() -> None:
    tools = [
        {**CLIENT_TOOL, "cache_control": {"type": "ephemeral"}, "input_examples": [{"path": "/x"}], "strict": True},
        {"name": "Lazy", "description": "deferred", "input_schema": {"type": "object"}, "defer_loading": True},
        {"type": "custom", "name": "NoDesc", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "tool_search_tool_regex_20251119", "name": "tool_search"},
    ]
    pivot = pivot_of(user("hi"), tools=tools)
    assert pivot["tools"] == [
        {
            "type": "function",
            "function": {"name": "Read", "description": "Read a file", "parameters": CLIENT_TOOL["input_schema"]},
        },
        {"type": "function", "function": {"name": "Lazy", "description": "deferred", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "NoDesc", "parameters": {"type": "object"}}},
    ]
    assert "tool_choice" not in pivot
    only_server = pivot_of(user("hi"), tools=tools[3:], tool_choice={"type": "any"})
    assert "tools" not in only_server and "tool_choice" not in only_server


@pytest.mark.parametrize(
    ("choice", "dialect", "expected"),
    [
        ({"type": "auto"}, "vllm", {"tool_choice": "auto"}),
        ({"type": "any"}, "openai", {"tool_choice": "required"}),
        ({"type": "none"}, "llama.cpp", {"tool_choice": "none"}),
        ({"type": "tool", "name": "Read"}, "vllm", {"tool_choice": {"type": "function", "function": {"name": "Read"}}}),
        (
            {"type": "tool", "name": "Read"},
            "openai",
            {"tool_choice": {"type": "function", "function": {"name": "Read"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            "vllm",
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        ({"type": "any", "disable_parallel_tool_use": False}, "vllm", {"tool_choice": "required"}),
        ({"type": "tool", "name": "web_search"}, "vllm", {}),  # a dropped server tool: the model chooses
        ({"type": "some_new_choice"}, "vllm", {}),
    ],
)
def test_tool_choice(choice: dict[str, Any], dialect: Dialect, expected: dict[str, Any]) -> None:
    tools = [CLIENT_TOOL, {**CLIENT_TOOL, "name": "Write"}, {"type": "web_search_20250305", "name": "web_search"}]
    pivot = pivot_of(user("hi"), dialect=dialect, tools=tools, tool_choice=choice)
    assert {k: pivot[k] for k in ("tool_choice", "parallel_tool_calls") if k in pivot} == expected
    assert [t["function"]["name"] for t in pivot["tools"]] == ["Read", "Write"]


def test_tool_choice_named_on_llama_cpp_narrows_the_tools() -> None:
    # llama.cpp's server takes only "auto"/"none"/"required" (common/chat.cpp)
    tools = [CLIENT_TOOL, {**CLIENT_TOOL, "name": "Write"}]
    pivot = pivot_of(user("hi"), dialect="llama.cpp", tools=tools, tool_choice={"type": "tool", "name": "Write"})
    assert pivot["tool_choice"] == "required"
    assert [t["function"]["name"] for t in pivot["tools"]] == ["Write"]


def test_tool_choice_without_tools_is_dropped() -> None:
    pivot = pivot_of(user("hi"), tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert "tool_choice" not in pivot and "parallel_tool_calls" not in pivot


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sampling_fields_and_top_k_per_dialect(dialect: Dialect) -> None:
    pivot = pivot_of(
        user("hi"), dialect=dialect, max_tokens=128000, temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["\n\nH:"]
    )
    assert pivot["max_tokens"] == 128000
    assert pivot["temperature"] == 0.2
    assert pivot["top_p"] == 0.9
    assert pivot["stop"] == ["\n\nH:"]
    if dialect == "openai":
        assert "top_k" not in pivot  # OpenAI refuses unknown parameters
    else:
        assert pivot["top_k"] == 40


def test_max_tokens_absent_is_tolerated() -> None:
    pivot = to_pivot({"messages": [user("hi")]}, "up", dialect="vllm")
    assert "max_tokens" not in pivot


def test_stream_asks_for_usage() -> None:
    pivot = pivot_of(user("hi"), stream=True)
    assert pivot["stream"] is True
    assert pivot["stream_options"] == {"include_usage": True}
    assert "stream_options" not in pivot_of(user("hi"), stream=False)


@pytest.mark.parametrize(
    ("thinking", "output_config", "llama", "openai"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, ("low", True), "low"),
        ({"type": "enabled", "budget_tokens": 4096}, None, ("medium", True), "medium"),
        ({"type": "enabled", "budget_tokens": 16383}, None, ("medium", True), "medium"),
        ({"type": "enabled", "budget_tokens": 31999}, None, ("high", True), "high"),
        ({"type": "enabled"}, None, (None, True), None),
        ({"type": "adaptive"}, None, (None, True), None),
        ({"type": "adaptive"}, {"effort": "low"}, ("low", True), "low"),
        ({"type": "adaptive", "display": "omitted"}, {"effort": "max"}, ("high", True), "high"),
        ({"type": "adaptive"}, {"effort": "xhigh", "format": None}, ("high", True), "high"),
        ({"type": "adaptive"}, {"effort": "unheard-of"}, (None, True), None),
        ({"type": "enabled", "budget_tokens": 2000}, {"effort": "high"}, ("low", True), "low"),  # the budget rules
        ({"type": "disabled"}, {"effort": "high"}, (None, False), None),
        ({"type": "between_tools"}, None, (None, True), None),
    ],
)
def test_thinking_per_dialect(
    thinking: dict[str, Any],
    output_config: dict[str, Any] | None,
    llama: tuple[str | None, bool],
    openai: str | None,
) -> None:
    extra: dict[str, Any] = {"thinking": thinking}
    if output_config is not None:
        extra["output_config"] = output_config
    for dialect in ("llama.cpp", "vllm"):
        pivot = pivot_of(user("hi"), dialect=dialect, **extra)
        level, enabled = llama
        kwargs = pivot["chat_template_kwargs"]
        assert kwargs["enable_thinking"] is enabled
        assert kwargs.get("reasoning_effort") == level
        assert pivot.get("reasoning_effort") == level
    pivot = pivot_of(user("hi"), dialect="openai", **extra)
    assert "chat_template_kwargs" not in pivot
    assert pivot.get("reasoning_effort") == openai


def test_no_thinking_sends_no_switch() -> None:
    for dialect in DIALECTS:
        pivot = pivot_of(
            user("hi"), dialect=dialect, thinking={"type": "some_future_mode"}, output_config={"effort": "low"}
        )
        assert "chat_template_kwargs" not in pivot and "reasoning_effort" not in pivot


def test_anthropic_only_fields_are_dropped() -> None:
    pivot = pivot_of(
        user("hi"),
        dialect="vllm",
        metadata={"user_id": "u"},
        context_management={"edits": [{"type": "clear_tool_uses_20250919"}]},
        service_tier="auto",
        container="c",
        mcp_servers=[{"type": "url", "url": "https://mcp", "name": "m"}],
        output_config={"format": {"type": "json_schema", "schema": {}}},
        anthropic_version="x",
        betas=["b"],
        some_future_field={"a": 1},
    )
    assert set(pivot) == {"model", "messages", "max_tokens", "stream"}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": "m", "max_tokens": 5}, "messages is required"),
        ({"messages": {"role": "user"}}, "messages must be a list"),
        ({"messages": []}, "at least one message"),
        ({"messages": ["hi"]}, "messages[0] must be an object"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role must be 'user' or 'assistant' (got missing)"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role must be 'user' or 'assistant'"),
        ({"messages": [{"role": "user"}]}, "messages[0].content must be a string or a list"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string or a list"),
        ({"messages": [user(["hi"])]}, "messages[0].content[0] must be a content block object"),
        ({"messages": [user([{"type": "text", "text": 5}])]}, "messages[0].content[0].text must be a string"),
        ({"messages": [user([{"type": "image", "source": "x"}])]}, "messages[0].content[0].source must be an object"),
        ({"messages": [user([{"type": "image", "source": {"type": "base64"}}])]}, "source.data must be a base64"),
        ({"messages": [user([{"type": "image", "source": {"type": "url"}}])]}, "source.url must be a string"),
        ({"messages": [user([{"type": "tool_result", "content": "x"}])]}, "tool_use_id must be a string"),
        ({"messages": [user([{"type": "tool_result", "tool_use_id": "t", "content": 3}])]}, ".content must be"),
        ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t"}]}]}, "name must be a string"),
        ({"messages": [user("hi")], "max_tokens": "1024"}, "max_tokens must be an integer, not a string"),
        ({"messages": [user("hi")], "max_tokens": True}, "max_tokens must be an integer"),
        ({"messages": [user("hi")], "max_tokens": 0}, "max_tokens must be at least 1"),
        ({"messages": [user("hi")], "temperature": "0.5"}, "temperature must be a number, not a string"),
        ({"messages": [user("hi")], "top_p": [1]}, "top_p must be a number"),
        ({"messages": [user("hi")], "top_k": "40"}, "top_k must be a number"),
        ({"messages": [user("hi")], "top_k": 1.5}, "top_k must be an integer"),
        ({"messages": [user("hi")], "stop_sequences": "END"}, "stop_sequences must be a list of strings"),
        ({"messages": [user("hi")], "stream": "yes"}, "stream must be a boolean"),
        ({"messages": [user("hi")], "system": 5}, "system must be a string or a list of text blocks"),
        ({"messages": [user("hi")], "system": ["x"]}, "system[0] must be a text block object"),
        ({"messages": [user("hi")], "thinking": "on"}, "thinking must be an object"),
        ({"messages": [user("hi")], "thinking": {"type": "enabled", "budget_tokens": "9"}}, "budget_tokens must be"),
        ({"messages": [user("hi")], "tools": {"name": "x"}}, "tools must be a list"),
        ({"messages": [user("hi")], "tools": ["x"]}, "tools[0] must be an object"),
        ({"messages": [user("hi")], "tools": [{"input_schema": {}}]}, "tools[0].name must be a string"),
        ({"messages": [user("hi")], "tools": [{"name": "x", "input_schema": "s"}]}, "input_schema must be an object"),
        ({"messages": [user("hi")], "tools": [CLIENT_TOOL], "tool_choice": "auto"}, "tool_choice must be an object"),
        ({"messages": [user("hi")], "tools": [CLIENT_TOOL], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ],
)
def test_wrong_types_are_bad_requests(body: dict[str, Any], says: str) -> None:
    with pytest.raises(BadRequest) as info:
        to_pivot(body, "up", dialect="llama.cpp")
    assert says in info.value.message
    assert info.value.status == 400
    assert info.value.anthropic_payload()["error"]["type"] == "invalid_request_error"


def claude_code_body(*, adaptive: bool) -> dict[str, Any]:
    """A body shaped like Claude Code's (`POST /v1/messages?beta=true`), as observed."""
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"command": {"type": "string", "description": "The command"}, "timeout": {"type": "number"}},
        "required": ["command"],
        "additionalProperties": False,
    }
    tools: list[dict[str, Any]] = [
        {"name": name, "description": f"{name} tool. " + "Details. " * 400, "input_schema": schema}
        for name in (
            "Task",
            "Bash",
            "Glob",
            "Grep",
            "LS",
            "Read",
            "Edit",
            "MultiEdit",
            "Write",
            "WebFetch",
            "TodoWrite",
        )
    ]
    tools.append(
        {"name": "mcp__ide__getDiagnostics", "description": "d", "input_schema": schema, "defer_loading": True}
    )
    tools[-2]["cache_control"] = {"type": "ephemeral"}
    body: dict[str, Any] = {
        "model": "claude-opus-4-6" if adaptive else "claude-sonnet-4-5-20250929",
        "max_tokens": 128000 if adaptive else 32000,
        "stream": True,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "You are an interactive CLI tool. " * 400, "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            user(
                [
                    {"type": "text", "text": "<system-reminder>\nAs you answer, use the context.\n</system-reminder>"},
                    {"type": "text", "text": "list the files", "cache_control": {"type": "ephemeral"}},
                ]
            ),
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should run ls.", "signature": "EqQBCkgIBRABGAIiQ"},
                    {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {"command": "ls"}},
                ],
            },
            user(
                [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "a.py\nb.py", "is_error": False},
                    {"type": "text", "text": "thanks", "cache_control": {"type": "ephemeral"}},
                ]
            ),
        ],
        "tools": tools,
        "metadata": {"user_id": "user_abc_account_def_session_123"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "temperature": 1,
    }
    if adaptive:
        body["thinking"] = {"type": "adaptive"}
        body["output_config"] = {"effort": "high"}
        body["messages"].insert(2, {"role": "system", "content": "Auto mode is on."})
    else:
        body["thinking"] = {"type": "enabled", "budget_tokens": 31999}
    return body


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_claude_code_body(adaptive: bool, dialect: Dialect) -> None:
    body = claude_code_body(adaptive=adaptive)
    assert len(orjson.dumps(body)) > 50_000
    pivot = to_pivot(body, "qwen3-coder", dialect=dialect)
    assert pivot["stream"] is True and pivot["stream_options"] == {"include_usage": True}
    assert pivot["max_tokens"] == body["max_tokens"]
    assert [t["function"]["name"] for t in pivot["tools"]][-1] == "mcp__ide__getDiagnostics"
    assert len(pivot["tools"]) == 12
    roles = [m["role"] for m in pivot["messages"]]
    assert roles == (
        ["system", "user", "assistant", "system", "tool", "user"]
        if adaptive
        else ["system", "user", "assistant", "tool", "user"]
    )
    assert pivot["messages"][1]["content"].endswith("list the files")
    assert pivot["messages"][2]["tool_calls"][0]["function"] == {"name": "Bash", "arguments": '{"command":"ls"}'}
    assert pivot.get("reasoning_effort") == "high"
    dumped = orjson.dumps(pivot)
    for anthropic_only in (b"cache_control", b"defer_loading", b"context_management", b"metadata", b"signature"):
        assert anthropic_only not in dumped
    assert estimate_tokens(body) > 10_000


# ----------------------------------------------------------------------------------------- count_tokens
def test_count_text_and_estimate() -> None:
    body = body_of(
        user([{"type": "text", "text": "hello"}, {"type": "image", "source": {"type": "url", "url": "https://x/i"}}]),
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "SECRET-THOUGHT", "signature": ""},
                {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "/etc/hosts"}},
            ],
        },
        user([{"type": "tool_result", "tool_use_id": "t1", "content": "127.0.0.1 localhost"}]),
        system=[{"type": "text", "text": "SYS"}],
        tools=[CLIENT_TOOL, {"type": "web_search_20250305", "name": "web_search"}],
    )
    text = count_text(body)
    assert text.split("\n")[:6] == [
        "SYS",
        "hello",
        "Read",
        '{"path":"/etc/hosts"}',
        "127.0.0.1 localhost",
        text.split("\n")[5],
    ]
    assert json.loads(text.split("\n")[5]) == {
        "name": "Read",
        "description": "Read a file",
        "parameters": CLIENT_TOOL["input_schema"],
    }
    assert "SECRET-THOUGHT" not in text and "web_search" not in text
    assert count_images(body) == 1
    messages = 4  # system, user, assistant, tool
    assert estimate_tokens(body) == -(-len(text) // 4) + 3 * (messages + 1) + IMAGE_TOKENS
    with pytest.raises(BadRequest):
        count_text({"messages": "nope"})


# ------------------------------------------------------------------------------------------- answer
def completion(message: dict[str, Any], finish: str | None = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        **extra,
    }


def test_from_pivot_text_thinking_and_tools_validate_as_message() -> None:
    pivot = completion(
        {
            "content": "Let me look.",
            "reasoning_content": "the user wants files",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"path": "/a"}'}},
                {"type": "function", "function": {"name": "LS", "arguments": ""}},
                {"id": "call_3", "type": "function", "function": {"name": "Bash", "arguments": '{"command": "ls'}},
                {"id": "call_4", "type": "function", "function": {"name": "Num", "arguments": "[1, 2]"}},
            ],
        },
        "tool_calls",
        usage={"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    )
    out = from_pivot(pivot, META)
    msg = Message.model_validate(out)
    assert msg.id == "msg_abc123" and msg.model == "claude-sonnet-4-5" and msg.role == "assistant"
    assert msg.stop_reason == "tool_use" and msg.stop_sequence is None
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use", "tool_use", "tool_use", "tool_use"]
    assert out["content"][0] == {"type": "thinking", "thinking": "the user wants files", "signature": ""}
    assert out["content"][1] == {"type": "text", "text": "Let me look."}
    uses = out["content"][2:]
    assert uses[0] == {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"path": "/a"}}
    assert uses[1] == {"type": "tool_use", "id": "toolu_abc123_1", "name": "LS", "input": {}}
    assert uses[2]["input"] == {"arguments": '{"command": "ls'}  # broken JSON kept, not lost
    assert uses[3]["input"] == {"value": [1, 2]}
    assert out["usage"] == {
        "input_tokens": 100,
        "output_tokens": 20,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_from_pivot_reasoning_key_and_cached_tokens() -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 60}}
    out = from_pivot(completion({"content": "hi", "reasoning": "hm"}, usage=usage), META)
    Message.model_validate(out)
    assert out["content"][0]["thinking"] == "hm"
    # Anthropic's input_tokens exclude cache reads: total input = input + cache_creation + cache_read
    assert out["usage"]["input_tokens"] == 40 and out["usage"]["cache_read_input_tokens"] == 60


def test_from_pivot_empty_and_content_parts() -> None:
    out = from_pivot({"choices": [{"message": {"content": None}, "finish_reason": "length"}]}, META)
    assert Message.model_validate(out).content == [] and out["stop_reason"] == "max_tokens"
    assert out["usage"]["input_tokens"] == 0
    parts = from_pivot(completion({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}), META)
    # an answer's content parts are pieces of one text, read the same way for every front (pivot_answer)
    assert parts["content"] == [{"type": "text", "text": "ab"}]


@pytest.mark.parametrize(
    ("finish", "calls", "stop"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("function_call", True, "tool_use"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        ("something_new", False, "end_turn"),
        ("stop", True, "tool_use"),  # Ollama ends tool calls with "stop"
        ("length", True, "max_tokens"),
    ],
)
def test_stop_reason_mapping(finish: str | None, calls: bool, stop: str) -> None:
    message: dict[str, Any] = {"content": "x"}
    if calls:
        message["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    out = from_pivot(completion(message, finish), META)
    assert Message.model_validate(out).stop_reason == stop


@pytest.mark.parametrize(
    "pivot",
    [
        {"choices": "nope"},
        {"choices": ["nope"]},
        {"choices": [{"message": "oops"}]},
        {"choices": [{"message": {"content": 5}}]},
        {"choices": [{"message": {"tool_calls": {}}}]},
    ],
)
def test_from_pivot_broken_backend_is_502(pivot: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError) as info:
        from_pivot(pivot, META)
    assert info.value.status == 502


def sdk_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="test",
        base_url="http://ollamux.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def test_from_pivot_through_the_sdk_client() -> None:
    out = from_pivot(completion({"content": "Hi!"}, usage={"prompt_tokens": 3, "completion_tokens": 2}), META)
    client = sdk_client(lambda req: httpx2.Response(200, json=out))
    msg = client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].type == "text" and msg.content[0].text == "Hi!"
    assert msg.usage.input_tokens == 3 and msg.usage.output_tokens == 2


# ------------------------------------------------------------------------------------------- stream
def sse(*objs: Any) -> bytes:
    return b"".join(b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n" for o in objs)


def chunk(delta: dict[str, Any], fr: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "finish_reason": fr}],
    }


def call(index: int, *, id: str | None = None, name: str | None = None, args: str | None = None) -> dict[str, Any]:
    fn: dict[str, Any] = {}
    if name is not None:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    frag: dict[str, Any] = {"index": index, "function": fn}
    if id is not None:
        frag["id"] = id
        frag["type"] = "function"
    return frag


USAGE = {"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}}

FULL_STREAM = sse(
    chunk({"role": "assistant", "content": None}),
    chunk({"reasoning_content": "The user "}),
    chunk({"reasoning_content": "wants two files."}),
    chunk({"content": "Reading "}),
    chunk({"content": "both. ✓\u2028"}),
    chunk({"tool_calls": [call(0, id="call_a", name="Read", args="")]}),
    chunk({"tool_calls": [call(0, args='{"path": ')]}),
    chunk({"tool_calls": [call(0, args='"/a.py"}')]}),
    chunk({"tool_calls": [call(1, id="call_b", name="Read", args='{"path": "/b.py"}')]}),
    chunk({}, "tool_calls"),
    USAGE,
    b"[DONE]",
)


def run(data: bytes, parts: list[int] | None = None, meta: MessageMeta = META) -> tuple[bytes, PivotToAnthropicStream]:
    """The translator fed `data` cut at `parts` (offsets), and its finish."""
    tr = PivotToAnthropicStream(meta)
    out = b""
    start = 0
    for cut in [*(parts or []), len(data)]:
        out += tr.feed(data[start:cut])
        start = cut
    return out + tr.finish(), tr


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Each `event: <type>\\ndata: <json>` frame, its event name checked against its data's type."""
    out = []
    assert raw.endswith(b"\n\n")
    for frame in raw[:-2].split(b"\n\n"):
        event_line, data_line = frame.split(b"\n")
        assert event_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        name, data = event_line[7:].decode(), json.loads(data_line[6:])
        assert data["type"] == name
        out.append((name, data))
    return out


def accumulate(raw: bytes) -> ParsedMessage[Any]:
    """The message the SDK builds from the stream (every event validated first), with the block
    discipline checked on the way: one block open at a time, numbered in order, each closed."""
    snapshot: ParsedMessage[Any] | None = None
    bufs: dict[int, bytes] = {}
    open_index: int | None = None
    next_index = 0
    names = [name for name, _ in frames(raw)]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    for name, data in frames(raw):
        if name == "ping":
            continue
        event = EVENTS.validate_python(data)
        if event.type == "content_block_start":
            assert open_index is None and event.index == next_index
            open_index = event.index
            next_index += 1
        elif event.type == "content_block_delta":
            assert event.index == open_index
        elif event.type == "content_block_stop":
            assert event.index == open_index
            open_index = None
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    assert open_index is None and snapshot is not None
    return snapshot


def tool_inputs(msg: ParsedMessage[Any]) -> dict[str, Any]:
    return {b.id: (b.name, b.input) for b in msg.content if b.type == "tool_use"}


def test_full_stream_through_the_sdk_accumulator() -> None:
    raw, tr = run(FULL_STREAM)
    events = frames(raw)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"] == "msg_abc123"
    assert start["model"] == "claude-sonnet-4-5"
    msg = accumulate(raw)
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text = msg.content[0], msg.content[1]
    assert thinking.type == "thinking" and thinking.thinking == "The user wants two files." and thinking.signature == ""
    assert text.type == "text" and text.text == "Reading both. ✓\u2028"
    assert tool_inputs(msg) == {"call_a": ("Read", {"path": "/a.py"}), "call_b": ("Read", {"path": "/b.py"})}
    assert msg.stop_reason == "tool_use" and msg.stop_sequence is None
    assert msg.usage.input_tokens == 42 and msg.usage.output_tokens == 17
    # a thinking block ends with its signature, as Anthropic's do
    kinds = [(n, d.get("delta", {}).get("type")) for n, d in events]
    sig = kinds.index(("content_block_delta", "signature_delta"))
    assert kinds[sig + 1] == ("content_block_stop", None)
    # the tool input streamed in pieces, not re-assembled
    pieces = [d["delta"]["partial_json"] for n, d in events if d.get("delta", {}).get("type") == "input_json_delta"]
    assert pieces == ['{"path": ', '"/a.py"}', '{"path": "/b.py"}']
    rec = RequestRecord(id="r", api="anthropic", route="/v1/messages")
    tr.report(rec)
    assert rec.prompt_tokens == 42 and rec.completion_tokens == 17
    assert rec.response_text == "Reading both. ✓\u2028"
    assert rec.first_token_ns is not None


def test_full_stream_through_the_sdk_client() -> None:
    raw, _ = run(FULL_STREAM)

    def handler(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    client = sdk_client(handler)
    with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "Reading both. ✓\u2028"
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.usage.input_tokens == 42
    events = list(client.messages.create(model="m", max_tokens=10, messages=[], stream=True))
    assert events[0].type == "message_start" and events[-1].type == "message_stop"


def test_every_byte_split_gives_the_same_frames() -> None:
    whole, _ = run(FULL_STREAM)
    bytewise, _ = run(FULL_STREAM, list(range(1, len(FULL_STREAM))))
    assert bytewise == whole


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(FULL_STREAM)), max_size=30).map(sorted))
def test_any_split_gives_the_same_frames(cuts: list[int]) -> None:
    assert run(FULL_STREAM, cuts)[0] == run(FULL_STREAM)[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.dictionaries(st.text(max_size=6), json_values, max_size=4), min_size=1, max_size=4),
    st.randoms(use_true_random=False),
)
def test_interleaved_tool_fragments(inputs: list[dict[str, Any]], rnd: random.Random) -> None:
    """Calls whose fragments come interleaved by index, in any read split: each block gets its own
    arguments whole, and blocks never overlap."""
    queues: list[list[dict[str, Any]]] = []
    for i, value in enumerate(inputs):
        args = json.dumps(value)
        cuts = sorted(rnd.sample(range(1, len(args)), min(len(args) - 1, rnd.randint(0, 5))))
        pieces = [args[a:b] for a, b in zip([0, *cuts], [*cuts, len(args)], strict=True)]
        frags = [call(i, id=f"call_{i}", name=f"tool_{i}", args="")] + [call(i, args=p) for p in pieces]
        queues.append(frags)
    events = [chunk({"content": "Working."})]
    while any(queues):
        q = rnd.choice([q for q in queues if q])
        events.append(chunk({"tool_calls": [q.pop(0)]}))
    events += [chunk({}, "tool_calls"), USAGE]
    data = sse(*events, b"[DONE]")
    cuts = sorted(rnd.sample(range(len(data)), min(len(data), 20)))
    raw, _ = run(data, cuts)
    msg = accumulate(raw)
    assert tool_inputs(msg) == {f"call_{i}": (f"tool_{i}", v) for i, v in enumerate(inputs)}
    assert msg.content[0].type == "text" and msg.stop_reason == "tool_use"


def test_call_held_until_the_open_one_is_whole() -> None:
    raw, _ = run(
        sse(
            chunk({"tool_calls": [call(0, id="a", name="A", args='{"x": ')]}),
            chunk({"tool_calls": [call(1, id="b", name="B", args='{"y": 2}')]}),  # held: A is not whole
            chunk({"tool_calls": [call(0, args="1}")]}),
            chunk({"tool_calls": [call(1, args="")]}),  # A is whole now: B opens with what it held
            chunk({}, "tool_calls"),
            b"[DONE]",
        )
    )
    seen = [
        d["content_block"]["name"]
        if n == "content_block_start"
        else d["delta"]["partial_json"]
        if n == "content_block_delta"
        else n
        for n, d in frames(raw)[2:-2]
    ]
    assert seen == ["A", '{"x": ', "1}", "content_block_stop", "B", '{"y": 2}', "content_block_stop"]
    assert tool_inputs(accumulate(raw)) == {"a": ("A", {"x": 1}), "b": ("B", {"y": 2})}


def test_tool_call_quirks() -> None:
    raw, _ = run(
        sse(
            # a name repeated in every fragment, no id anywhere, an index reused for a second call by id
            chunk({"tool_calls": [call(0, name="Glob", args='{"p": ')]}),
            chunk({"tool_calls": [call(0, name="Glob", args='"*"}')]}),
            chunk({"tool_calls": [call(0, id="second", name="LS", args="{}")]}),
            chunk({"tool_calls": [{"function": {"arguments": ""}}, "junk"]}),  # no index: the last call
            chunk({}, "stop"),  # Ollama says stop after tool calls
        )
    )
    msg = accumulate(raw)
    assert tool_inputs(msg) == {"toolu_abc123_0": ("Glob", {"p": "*"}), "second": ("LS", {})}
    assert msg.stop_reason == "tool_use"


def test_text_after_a_tool_call_and_a_nameless_call() -> None:
    raw, _ = run(
        sse(
            chunk({"tool_calls": [call(0, id="a", name="A", args="{}")]}),
            chunk({"content": "done"}),
            chunk({"tool_calls": [call(1, args='{"k": 1}')]}),  # never named: opened at the end
            chunk({}, "tool_calls"),
        )
    )
    msg = accumulate(raw)
    assert [b.type for b in msg.content] == ["tool_use", "text", "tool_use"]
    assert tool_inputs(msg)["toolu_abc123_1"] == ("", {"k": 1})


def test_thinking_only_and_plain_text_stop_reasons() -> None:
    raw, _ = run(sse(chunk({"reasoning": "hmm"}), chunk({"content": "ok"}, "length"), USAGE, b"[DONE]"))
    msg = accumulate(raw)
    assert msg.content[0].type == "thinking" and msg.content[0].thinking == "hmm"
    assert msg.stop_reason == "max_tokens"
    raw, _ = run(sse(chunk({"content": "no"}, "content_filter")))
    assert accumulate(raw).stop_reason == "refusal"


def test_usage_with_cached_tokens_and_missing_usage() -> None:
    usage = {
        "choices": [],
        "usage": {"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 30}},
    }
    raw, _ = run(sse(chunk({"content": "x"}, "stop"), usage, b"[DONE]"))
    delta = frames(raw)[-2][1]
    assert delta["usage"] == {
        "input_tokens": 20,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 30,
    }
    raw, tr = run(sse(chunk({"content": "x"}, "stop")))  # no usage chunk, no [DONE]: finish() ends it
    assert accumulate(raw).usage.output_tokens == 0
    rec = RequestRecord(id="r", api="anthropic", route="/v1/messages", prompt_tokens=7)
    tr.report(rec)
    assert rec.prompt_tokens == 7 and rec.completion_tokens is None


def test_cut_tail_after_the_finish_is_harmless_but_an_error_tail_is_not() -> None:
    raw, _ = run(sse(chunk({"content": "x"}, "stop")) + b'data: {"choices": [], "usa')
    assert accumulate(raw).content[0].type == "text"
    tr = PivotToAnthropicStream(META)
    tr.feed(sse(chunk({"content": "x"})) + b'data: {"error": {"message": "died"}}')
    with pytest.raises(UpstreamError, match="died"):
        tr.finish()


def test_message_stop_once_and_nothing_after_done() -> None:
    tr = PivotToAnthropicStream(META)
    out = tr.feed(sse(chunk({"content": "a"}, "stop"), b"[DONE]"))
    out += tr.feed(sse(chunk({"content": "late"})))
    out += tr.finish()
    assert [n for n, _ in frames(out)].count("message_stop") == 1
    assert b"late" not in out


def test_upstream_error_event() -> None:
    tr = PivotToAnthropicStream(META)
    head = tr.feed(sse(chunk({"content": "partial"})))
    with pytest.raises(UpstreamError) as info:
        tr.feed(sse(chunk({"content": " more"}), {"error": {"message": "CUDA out of memory", "type": "server_error"}}))
    assert info.value.status == 502 and info.value.message == "CUDA out of memory"
    tail = tr.error_frame(info.value)
    events = frames(head + tail)
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "CUDA out of memory"}})
    assert events[-2][1]["delta"]["text"] == " more"  # what the failing read made still goes out
    with pytest.raises(UpstreamError, match="oops"):
        PivotToAnthropicStream(META).feed(sse({"error": "oops"}))


@pytest.mark.parametrize(
    "data",
    [
        sse(chunk({"content": "cut"})),
        sse(chunk({"content": "cut"})) + b'data: {"choi',
        sse(chunk({"content": "cut"}), b"[DONE]"),
        b"",
    ],
)
def test_stream_cut_before_finish(data: bytes) -> None:
    tr = PivotToAnthropicStream(META)
    with pytest.raises(UpstreamError, match="no finish_reason") as info:
        tr.feed(data)  # [DONE] without a finish_reason raises here, the others in finish()
        tr.finish()
    assert info.value.status == 502
    out = tr.error_frame(info.value)  # the relay sends it after what it already sent
    assert frames(out)[-1][0] == "error"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"data: not json\n\n", "not JSON"),
        (sse({"choices": "x"}), "'choices' is a string"),
        (sse({"choices": [1]}), "choice is an integer"),
        (sse({"choices": [{"delta": {"content": 5}}]}), "'content' is an integer"),
    ],
)
def test_broken_backend_events(data: bytes, says: str) -> None:
    with pytest.raises(UpstreamError, match=says):
        PivotToAnthropicStream(META).feed(data)


def test_ignored_pivot_events() -> None:
    raw, _ = run(
        sse([1, 2], {"choices": []}, chunk({}), {"choices": [{"delta": None, "finish_reason": None}]})
        + b": keep-alive\n\n"
        + sse(chunk({"content": "x"}, "stop"))
    )
    assert accumulate(raw).content[0].type == "text"


@pytest.mark.parametrize("api", ["create", "stream"])
def test_error_frame_raises_in_the_sdk(api: str) -> None:
    tr = PivotToAnthropicStream(META)
    body = tr.feed(sse(chunk({"content": "Hel"})))
    body += tr.error_frame(BackendUnavailable("backend went away"))

    def handler(req: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client = sdk_client(handler)
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        if api == "create":
            for event in client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}], stream=True
            ):
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    texts.append(event.delta.text)
        else:
            with client.messages.stream(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                texts.extend(stream.text_stream)
    assert texts == ["Hel"]
    assert "backend went away" in str(info.value)
    assert info.value.body == {"type": "error", "error": {"type": "api_error", "message": "backend went away"}}


def test_per_token_frames_are_prebuilt() -> None:
    # a token's frame is the block's prefix, the JSON string and `}}`: no dict per token
    raw, _ = run(sse(chunk({"content": 'say "hi"\n'}, "stop")))
    assert (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"say \\"hi\\"\\n"}}\n\n'
    ) in raw
