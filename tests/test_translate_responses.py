"""OpenAI's Responses API to and from the pivot: requests, JSON answers, streams (pure translators).

The oracle is the official `openai` SDK: every Response is validated by `openai.types.responses.
Response`, every stream event by its `ResponseStreamEvent` union, and streams are accumulated by the
SDK's own `ResponseStreamState` (what `client.responses.stream()` runs) or read by a real client over a
mock transport.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, cast

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ollamux.errors import BadRequest, EventTooLarge, UpstreamError
from ollamux.observe import RequestRecord
from ollamux.streams.codecs import SSEDecoder
from ollamux.streams.pivot_to_responses import PivotToResponsesStream
from ollamux.translate.responses import ResponseMeta, conversation, from_pivot, to_pivot
from ollamux.translate.to_openai import Dialect

META = ResponseMeta(id="resp_0123abcd", created_at=1_700_000_000, model="qwen3:8b")
EVENT: TypeAdapter[Any] = TypeAdapter(cast(Any, ResponseStreamEvent))


def pivot(body: dict[str, Any], dialect: Dialect = "llama.cpp", **kw: Any) -> dict[str, Any]:
    return to_pivot(body, "up-model", dialect=dialect, **kw)


def bad(body: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        pivot(body)
    return info.value


# ===================================================================================== to_pivot
def test_string_input_is_one_user_message_with_instructions_first() -> None:
    out = pivot({"model": "m", "input": "Hi", "instructions": "Be brief."})
    assert out == {
        "model": "up-model",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": False,
    }


def test_message_items_of_every_role_and_content_shape() -> None:
    url = "https://example.com/cat.png"
    data_url = "data:image/png;base64,iVBORw0KGgo="
    out = pivot(
        {
            "input": [
                {"type": "message", "role": "developer", "content": "Rules."},
                {"role": "system", "content": [{"type": "input_text", "text": "More rules."}]},
                {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": "Sure.", "annotations": []},
                        {"type": "refusal", "refusal": "Not that."},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": url, "detail": "low"},
                        {"type": "input_image", "image_url": data_url, "detail": "original"},
                        {"type": "input_audio_future", "data": "..."},
                    ],
                },
            ]
        }
    )
    assert out["messages"] == [
        {"role": "system", "content": "Rules."},
        {"role": "system", "content": "More rules."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "Sure.\nNot that."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": data_url}},
            ],
        },
    ]


def test_image_file_id_and_file_inputs_are_refused_with_their_param() -> None:
    img = {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1", "detail": "auto"}]}]}
    err = bad(img)
    assert err.param == "input[0].content[0].file_id" and "not supported" in err.message
    err = bad({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]})
    assert err.param == "input[0].content[0]" and "not supported" in err.message


def test_function_calls_and_outputs_become_one_assistant_message_and_tool_messages() -> None:
    out = pivot(
        {
            "input": [
                {"role": "user", "content": "Weather and time in Paris?"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "reasoning", "id": "rs_2", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}", "id": "fc_2"},
                {"type": "function_call_output", "call_id": "c1", "output": "18C"},
                {
                    "type": "function_call_output",
                    "output": [{"type": "input_text", "text": "12:00"}],
                    "name": "get_time",
                },
                {"type": "function_call", "call_id": "c3", "name": "get_weather", "arguments": {"city": "Rome"}},
                {"type": "function_call_output", "call_id": "c3", "output": "20C"},
            ]
        }
    )
    assert out["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": "12:00"},  # paired by name: no call_id was sent
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c3", "content": "20C"},
    ]


def test_unknown_and_hosted_tool_items_are_dropped_not_refused() -> None:
    out = pivot(
        {
            "input": [
                {"type": "item_reference", "id": "msg_9"},
                {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
                {"type": "local_shell_call", "id": "lsh_1", "call_id": "x", "action": {}, "status": "completed"},
                {"type": "compaction", "encrypted_content": "..."},
                {"type": "brand_new_item_kind"},
                {"role": "user", "content": "hi"},
            ]
        }
    )
    assert out["messages"] == [{"role": "user", "content": "hi"}]


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
NAMESPACE = {
    "type": "namespace",
    "name": "mcp__docs",
    "description": "The docs server.",
    "tools": [
        {"type": "function", "name": "search", "description": "Search the docs."},
        {"type": "function", "name": "get_weather", "description": "A second one of that name."},
        {"type": "custom", "name": "freeform"},
    ],
}
HOSTED = [
    {"type": "web_search"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"},
    {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
    {"type": "local_shell"},
    {"type": "mcp", "server_label": "x", "server_url": "https://x"},
    {"type": "tool_from_the_future"},
]


def test_tools_function_namespaced_and_hosted() -> None:
    out = pivot({"input": "hi", "tools": [*HOSTED, WEATHER, NAMESPACE], "parallel_tool_calls": False})
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city.",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        },
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "Search the docs.",
                "parameters": {"type": "object", "properties": {}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "mcp__docs__get_weather",  # its own name was taken by a top-level function
                "description": "A second one of that name.",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    assert out["parallel_tool_calls"] is False
    assert "tool_choice" not in out


def test_a_call_of_a_namespaced_tool_goes_back_under_its_pivot_name() -> None:
    calls = [
        {"type": "function_call", "call_id": "a", "name": "search", "namespace": "mcp__docs", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "get_weather", "namespace": "mcp__docs", "arguments": "{}"},
    ]
    out = pivot({"input": calls, "tools": [WEATHER, NAMESPACE]})
    names = [c["function"]["name"] for c in out["messages"][0]["tool_calls"]]
    assert names == ["search", "mcp__docs__get_weather"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
        ({"type": "web_search_preview"}, "auto"),
        ({"type": "mcp", "server_label": "x"}, "auto"),
        ({"type": "custom", "name": "apply_patch"}, "auto"),
    ],
)
def test_tool_choice(choice: Any, expected: Any) -> None:
    out = pivot({"input": "hi", "tools": [WEATHER, *HOSTED], "tool_choice": choice})
    assert out["tool_choice"] == expected


def test_allowed_tools_narrow_the_tool_list() -> None:
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "search"}, {"type": "web_search"}],
    }
    out = pivot({"input": "hi", "tools": [WEATHER, NAMESPACE], "tool_choice": choice})
    assert [t["function"]["name"] for t in out["tools"]] == ["search"]
    assert out["tool_choice"] == "required"


def test_no_tool_left_means_no_tool_choice_nor_parallel_flag() -> None:
    out = pivot({"input": "hi", "tools": HOSTED, "tool_choice": "required", "parallel_tool_calls": True})
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & out.keys()


def test_text_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True, "description": "A thing."}
    out = pivot({"input": "hi", "text": {"format": fmt, "verbosity": "low"}})
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "description": "A thing.", "strict": True},
    }
    assert pivot({"input": "hi", "text": {"format": {"type": "json_object"}}})["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in pivot({"input": "hi", "text": {"format": {"type": "text"}}})


@pytest.mark.parametrize(
    ("effort", "dialect", "expected"),
    [
        ("high", "llama.cpp", {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}}),
        ("minimal", "vllm", {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "low"}}),
        ("none", "llama.cpp", {"chat_template_kwargs": {"enable_thinking": False}}),
        ("xhigh", "llama.cpp", {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}}),
        ("medium", "openai", {"reasoning_effort": "medium"}),
        ("minimal", "openai", {"reasoning_effort": "low"}),
        ("none", "openai", {}),  # OpenAI's chat API has no switch for "off": nothing is sent
    ],
)
def test_reasoning_effort_per_dialect(effort: str, dialect: Dialect, expected: dict[str, Any]) -> None:
    out = pivot({"input": "hi", "reasoning": {"effort": effort, "summary": "auto"}}, dialect)
    thinking = {k: out[k] for k in ("chat_template_kwargs", "reasoning_effort") if k in out}
    level = expected.get("chat_template_kwargs", {}).get("reasoning_effort")
    if level is not None:
        expected = {**expected, "reasoning_effort": level}
    assert thinking == expected


def test_sampling_and_max_output_tokens() -> None:
    body = {"input": "hi", "max_output_tokens": 64, "temperature": 0.2, "top_p": 0.9}
    out = pivot(body)
    assert (out["max_tokens"], out["temperature"], out["top_p"]) == (64, 0.2, 0.9)
    # OpenAI's reasoning models refuse max_tokens on the chat API
    openai_out = pivot(body, "openai")
    assert openai_out["max_completion_tokens"] == 64 and "max_tokens" not in openai_out


def test_stream_asks_for_usage_and_unknown_fields_are_dropped() -> None:
    body = {
        "model": "m",
        "input": "hi",
        "stream": True,
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "k",
        "metadata": {"a": "b"},
        "user": "u",
        "truncation": "auto",
        "service_tier": "flex",
        "background": False,
        "safety_identifier": "s",
        "stream_options": {"include_obfuscation": False},
        "a_field_from_next_year": {"x": 1},
    }
    out = pivot(body)
    assert out == {
        "model": "up-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_history_comes_after_the_new_instructions_and_before_the_input() -> None:
    history = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]
    out = pivot({"input": "3", "instructions": "New rules."}, history=history)
    assert [m["content"] for m in out["messages"]] == ["New rules.", "1", "2", "3"]


def test_missing_input_is_openais_error() -> None:
    err = bad({"model": "m"})
    assert (err.message, err.param, err.status) == ("Missing required parameter: 'input'.", "input", 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 5}, "input"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": 3}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]}, "input[0].content[0].text"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].image_url"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call", "call_id": "c"}]}, "input[0].name"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": 1}]}, "input[0].arguments"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 1}]}, "input[0].output"),
        ({"input": "x", "instructions": ["a"]}, "instructions"),
        ({"input": "x", "tools": {"type": "function"}}, "tools"),
        ({"input": "x", "tools": ["get_weather"]}, "tools[0]"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": "{}"}]}, "tools[0].parameters"),
        ({"input": "x", "tools": [{"type": "namespace", "name": "n", "tools": 1}]}, "tools[0].tools"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "tool_choice": 1}, "tool_choice"),
        ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "top_p": True}, "top_p"),
        ({"input": "x", "max_output_tokens": 10.5}, "max_output_tokens"),
        ({"input": "x", "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"input": "x", "stream": "true"}, "stream"),
        ({"input": "x", "text": "json"}, "text"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "s"}}}, "text.format.schema"),
        ({"input": "x", "reasoning": "high"}, "reasoning"),
        ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ],
)
def test_wrong_types_are_bad_requests_naming_the_param(body: dict[str, Any], param: str) -> None:
    err = bad(body)
    assert err.param == param and err.status == 400
    assert err.message.endswith(".") and (param in err.message or "Invalid value" in err.message)


# =================================================================================== from_pivot
def completion(message: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def test_a_text_answer_is_a_response_the_sdk_validates() -> None:
    usage = {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    obj = from_pivot(completion({"content": "Hello!"}, usage=usage), {"model": "qwen3:8b", "input": "hi"}, META)
    resp = Response.model_validate(obj)
    assert (resp.id, resp.object, resp.status, resp.model, resp.output_text) == (
        "resp_0123abcd",
        "response",
        "completed",
        "qwen3:8b",
        "Hello!",
    )
    assert obj["output"] == [
        {
            "id": "msg_0123abcd_0",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}],
        }
    ]
    assert obj["usage"] == {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 18,
    }
    # OpenAI's defaults where the request said nothing
    assert (obj["temperature"], obj["top_p"], obj["store"], obj["tool_choice"], obj["tools"]) == (
        1.0,
        1.0,
        True,
        "auto",
        [],
    )
    assert obj["error"] is None and obj["incomplete_details"] is None and obj["text"]["format"] == {"type": "text"}


def test_reasoning_and_tool_calls_in_order_with_stable_ids() -> None:
    message = {
        "content": "Let me check.",
        "reasoning_content": "The user wants weather.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"type": "function", "function": {"name": "search", "arguments": {"q": "x"}}},
        ],
    }
    request = {"input": "hi", "tools": [WEATHER, NAMESPACE]}
    obj = from_pivot(completion(message, "tool_calls"), request, META)
    resp = Response.model_validate(obj)
    assert [o.type for o in resp.output] == ["reasoning", "message", "function_call", "function_call"]
    assert obj["output"][0] == {
        "id": "rs_0123abcd_0",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "The user wants weather."}],
    }
    assert obj["output"][2:] == [
        {
            "id": "fc_0123abcd_2",
            "type": "function_call",
            "status": "completed",
            "arguments": '{"city":"Paris"}',
            "call_id": "call_1",
            "name": "get_weather",
        },
        {
            "id": "fc_0123abcd_3",
            "type": "function_call",
            "status": "completed",
            "arguments": '{"q":"x"}',
            "call_id": "call_0123abcd_1",  # the backend sent no id: a stable one
            "name": "search",
            "namespace": "mcp__docs",  # the client routes a namespaced call by it
        },
    ]
    assert from_pivot(completion(message, "tool_calls"), request, META)["output"] == obj["output"]
    # the `reasoning` spelling (vLLM, OpenRouter) counts too
    alt = from_pivot(completion({"content": "x", "reasoning": "why"}), request, META)
    assert alt["output"][0]["summary"][0]["text"] == "why"


def test_length_is_an_incomplete_response() -> None:
    obj = from_pivot(completion({"content": "Once upon a"}, "length"), {"input": "hi", "max_output_tokens": 3}, META)
    resp = Response.model_validate(obj)
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens" and resp.max_output_tokens == 3
    assert obj["output"][-1]["status"] == "incomplete" and "completed_at" not in obj


def test_the_request_settings_are_echoed_as_openai_does() -> None:
    schema = {"type": "object", "properties": {}}
    request = {
        "model": "qwen3:8b",
        "input": "hi",
        "instructions": "Be brief.",
        "tools": [WEATHER, NAMESPACE, {"type": "web_search"}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "temperature": 0.5,
        "top_p": 0.8,
        "max_output_tokens": 100,
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "s", "schema": schema, "strict": True}},
        "reasoning": {"effort": "low", "summary": "auto"},
        "previous_response_id": "resp_prev",
        "store": False,
        "metadata": {"k": "v"},
        "user": "u1",
    }
    obj = from_pivot(completion({"content": "{}"}), request, META)
    resp = Response.model_validate(obj)
    assert resp.instructions == "Be brief." and resp.previous_response_id == "resp_prev"
    assert obj["tools"] == [WEATHER]  # the function tools, as the client sent them
    assert obj["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert (resp.temperature, resp.top_p, resp.max_output_tokens, resp.parallel_tool_calls) == (0.5, 0.8, 100, False)
    assert obj["text"]["format"] == {"type": "json_schema", "name": "s", "schema": schema, "strict": True}
    assert obj["reasoning"] == {"effort": "low", "summary": "auto"}
    assert (obj["store"], resp.metadata, resp.user) == (False, {"k": "v"}, "u1")


def test_a_broken_chat_answer_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError) as info:
        from_pivot({"error": {"message": "out of memory"}}, {"input": "x"}, META)
    assert info.value.message == "out of memory" and info.value.status == 502
    with pytest.raises(UpstreamError):
        from_pivot({"choices": []}, {"input": "x"}, META)
    with pytest.raises(UpstreamError):
        from_pivot({"choices": [{"message": {"content": 5}}]}, {"input": "x"}, META)


# ================================================================================= conversation
def test_conversation_drops_the_instructions_and_keeps_the_answer() -> None:
    request = {"input": "Weather?", "instructions": "Be brief.", "tools": [WEATHER]}
    first = pivot(request)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    answer = from_pivot(completion({"content": "Checking.", "tool_calls": [call]}, "tool_calls"), request, META)
    kept = conversation(first, answer)
    assert kept == [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call]},
    ]
    # the next turn: new instructions, the kept exchange, the tool's output
    nxt = pivot(
        {"input": [{"type": "function_call_output", "call_id": "call_1", "output": "18C"}], "instructions": "New."},
        history=kept,
    )
    assert [m["role"] for m in nxt["messages"]] == ["system", "user", "assistant", "tool"]
    assert nxt["messages"][0]["content"] == "New."


def test_conversation_keeps_system_messages_of_the_input_and_namespaced_pivot_names() -> None:
    request: dict[str, Any] = {
        "input": [{"role": "developer", "content": "Input rules."}, {"role": "user", "content": "x"}],
        "tools": [WEATHER, NAMESPACE],
    }
    first = pivot(request)
    calls = [{"id": "c", "type": "function", "function": {"name": "mcp__docs__get_weather", "arguments": "{}"}}]
    answer = from_pivot(completion({"content": None, "tool_calls": calls}, "tool_calls"), request, META)
    assert answer["output"][0]["namespace"] == "mcp__docs" and answer["output"][0]["name"] == "get_weather"
    kept = conversation(first, answer)
    assert kept[0] == {"role": "system", "content": "Input rules."}
    assert kept[-1] == {"role": "assistant", "content": None, "tool_calls": calls}


# ======================================================================================= stream
def sse(*objs: Any) -> bytes:
    return b"".join(b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n" for o in objs)


def chunk(delta: dict[str, Any], fr: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": fr}],
    }


USAGE = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}}
TOOLS_REQUEST = {"model": "qwen3:8b", "input": "hi", "stream": True, "tools": [WEATHER, NAMESPACE]}
TOOL_STREAM = sse(
    chunk({"role": "assistant", "content": None}),
    chunk({"reasoning_content": "Two "}),
    chunk({"reasoning_content": "tools."}),
    chunk({"content": "Let me "}),
    chunk({"content": "check ☀."}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "search", "arguments": '{"q"'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': "rain"}'}}]}),
    chunk({}, "tool_calls"),
    USAGE,
    b"[DONE]",
)


def run(data: bytes, parts: list[bytes] | None = None, request: dict[str, Any] | None = None) -> bytes:
    tr = PivotToResponsesStream(request or TOOLS_REQUEST, META)
    out = b"".join(tr.feed(p) for p in (parts if parts is not None else [data]))
    return out + tr.finish()


def events(data: bytes) -> list[dict[str, Any]]:
    """Every frame: `event:` equal to its data's type, valid for the SDK, numbered 0, 1, 2..."""
    dec = SSEDecoder()
    evs = [*dec.feed(data), *dec.flush()]
    objs = [json.loads(ev.data) for ev in evs]
    for ev, obj in zip(evs, objs, strict=True):
        assert ev.event == obj["type"]
        EVENT.validate_python(obj)
    assert [o["sequence_number"] for o in objs] == list(range(len(objs)))
    return objs


def accumulate(objs: list[dict[str, Any]]) -> Any:
    """The SDK's own accumulator (client.responses.stream) over the events: its final response."""
    state: ResponseStreamState[None] = ResponseStreamState(input_tools=omit, text_format=omit)
    for obj in objs:
        state.handle_event(EVENT.validate_python(obj))
    return state._completed_response


def without_clock(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for o in objs:
        if isinstance(o.get("response"), dict):
            o["response"].pop("completed_at", None)
    return objs


def test_a_tool_stream_as_events_the_sdk_accumulates() -> None:
    objs = events(run(TOOL_STREAM))
    assert [o["type"] for o in objs] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    created = objs[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    final = accumulate(objs)
    assert final.output_text == "Let me check ☀."
    calls = [
        (o.call_id, o.name, o.namespace, json.loads(o.arguments)) for o in final.output if o.type == "function_call"
    ]
    assert calls == [
        ("call_1", "get_weather", None, {"city": "Paris"}),
        ("call_2", "search", "mcp__docs", {"q": "rain"}),
    ]
    assert final.usage.input_tokens == 10 and final.usage.output_tokens == 9 and final.usage.total_tokens == 19
    assert final.output[0].summary[0].text == "Two tools."


def test_the_streamed_response_is_the_json_answers_response() -> None:
    tr = PivotToResponsesStream(TOOLS_REQUEST, META)
    tr.feed(TOOL_STREAM)
    tr.finish()
    assert tr.response is not None
    Response.model_validate(tr.response)
    message = {
        "content": "Let me check ☀.",
        "reasoning_content": "Two tools.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": '{"q": "rain"}'}},
        ],
    }
    usage = USAGE["usage"]
    assert isinstance(usage, dict)
    answer = from_pivot(completion(message, "tool_calls", usage), TOOLS_REQUEST, META)
    assert without_clock([tr.response]) == without_clock([answer])


def stable(data: bytes) -> bytes:
    """A stream's bytes without its one clock reading (the final response's `completed_at`)."""
    return re.sub(rb'"completed_at":\d+,', b"", data)


def test_split_at_every_byte() -> None:
    whole = stable(run(TOOL_STREAM))
    assert stable(run(TOOL_STREAM, [TOOL_STREAM[i : i + 1] for i in range(len(TOOL_STREAM))])) == whole
    for cut in range(1, len(TOOL_STREAM)):
        assert stable(run(TOOL_STREAM, [TOOL_STREAM[:cut], TOOL_STREAM[cut:]])) == whole, cut


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TOOL_STREAM)), max_size=25))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(TOOL_STREAM)]
    parts = [TOOL_STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert stable(run(TOOL_STREAM, parts)) == stable(run(TOOL_STREAM))


def test_a_reused_index_with_a_new_id_is_a_new_call_and_a_missing_id_a_stable_one() -> None:
    data = sse(
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "get_weather", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "call_b", "function": {"name": "search", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"name": "search", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "late", "function": {"arguments": ""}}]}),  # the call_id stays
        chunk({}, "tool_calls"),
        b"[DONE]",
    )
    final = accumulate(events(run(data)))
    assert [(o.call_id, o.name) for o in final.output] == [
        ("call_a", "get_weather"),
        ("call_b", "search"),
        ("call_0123abcd_2", "search"),
    ]


def test_text_after_tool_calls_and_reasoning_after_text_are_new_items() -> None:
    data = sse(
        chunk({"content": "A"}),
        chunk({"reasoning_content": "hm"}),
        chunk({"content": "B"}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": "{}"}}]}),
        chunk({"content": "C"}),
        chunk({}, "stop"),
        b"[DONE]",
    )
    final = accumulate(events(run(data)))
    assert [o.type for o in final.output] == ["message", "reasoning", "message", "function_call", "message"]
    assert final.output_text == "ABC"


def test_a_plain_text_stream_through_the_sdk_client() -> None:
    request = {"model": "qwen3:8b", "input": "hi", "stream": True}
    data = sse(chunk({"role": "assistant"}), chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk({}, "stop"))
    data += sse(USAGE, b"[DONE]")
    body = run(data, [data[i : i + 5] for i in range(0, len(data), 5)], request)
    with client(body) as c:
        with c.responses.stream(model="qwen3:8b", input="hi") as stream:
            kinds = [ev.type for ev in stream]
            final = stream.get_final_response()
        assert final.output_text == "Hello" and final.status == "completed" and final.id == META.id
        assert kinds.count("response.output_text.delta") == 2 and kinds[-1] == "response.completed"
        raw = [ev.type for ev in c.responses.create(model="qwen3:8b", input="hi", stream=True)]
        assert raw == kinds


def test_reasoning_deltas_and_usage_in_the_record() -> None:
    data = sse(
        chunk({"reasoning": "Think"}),  # vLLM's spelling
        chunk({"reasoning_content": "ing."}),
        chunk({"content": "Done."}),
        chunk({}, "stop"),
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}},
        b"[DONE]",
    )
    tr = PivotToResponsesStream({"input": "x", "reasoning": {"effort": "high"}}, META)
    objs = events(tr.feed(data) + tr.finish())
    deltas = [o["delta"] for o in objs if o["type"] == "response.reasoning_summary_text.delta"]
    assert deltas == ["Think", "ing."]
    rec = RequestRecord(id="r", api="responses", route="/v1/responses")
    tr.report(rec)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.response_text) == (3, 4, "Done.")
    assert rec.first_token_ns is not None
    assert tr.response is not None and tr.response["reasoning"]["effort"] == "high"


def test_length_ends_in_response_incomplete() -> None:
    data = sse(chunk({"content": "Once upon"}), chunk({}, "length"), USAGE, b"[DONE]")
    objs = events(run(data, request={"input": "x", "max_output_tokens": 2}))
    last = objs[-1]
    assert last["type"] == "response.incomplete"
    resp = Response.model_validate(last["response"])
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert last["response"]["output"][0]["status"] == "incomplete" and resp.output_text == "Once upon"
    state: ResponseStreamState[None] = ResponseStreamState(input_tools=omit, text_format=omit)
    for obj in objs:
        state.handle_event(EVENT.validate_python(obj))  # the SDK's accumulator takes it


def test_the_final_event_goes_out_at_done_and_a_stream_without_done_ends_at_finish() -> None:
    tr = PivotToResponsesStream({"input": "x"}, META)
    out = tr.feed(sse(chunk({"content": "a"}), chunk({}, "stop"), USAGE, b"[DONE]"))
    assert b"event: response.completed" in out and tr.finish() == b""
    tr = PivotToResponsesStream({"input": "x"}, META)
    out = tr.feed(sse(chunk({"content": "a"}), chunk({}, "stop"), USAGE))
    assert b"response.completed" not in out
    assert events(out + tr.finish())[-1]["type"] == "response.completed"


def test_an_upstream_error_event_raises_and_the_error_frame_fails_the_sdk() -> None:
    tr = PivotToResponsesStream({"input": "x"}, META)
    head = tr.feed(sse(chunk({"content": "partial"})))
    with pytest.raises(UpstreamError) as info:
        tr.feed(sse(chunk({"content": " more"}), {"error": {"message": "CUDA out of memory", "code": 500}}))
    assert info.value.message == "CUDA out of memory" and info.value.status == 502
    tail = tr.error_frame(info.value)
    objs = events(head + tail)
    assert [o["type"] for o in objs[-3:]] == ["response.output_text.delta", "response.failed", "error"]
    assert objs[-3]["delta"] == " more"  # made in the read that failed, still sent
    failed = Response.model_validate(objs[-2]["response"])
    assert failed.status == "failed" and failed.error is not None and failed.error.message == "CUDA out of memory"
    assert failed.output_text == "partial more"
    assert objs[-1]["message"] == "CUDA out of memory" and tr.response is None
    sdk_raises(head + tail, "CUDA out of memory")


def test_a_stream_cut_before_its_finish_reason() -> None:
    tr = PivotToResponsesStream({"input": "x"}, META)
    head = tr.feed(sse(chunk({"content": "half"})))
    with pytest.raises(UpstreamError) as info:
        tr.finish()
    assert info.value.status == 502
    sdk_raises(head + tr.error_frame(info.value), info.value.message)
    tr = PivotToResponsesStream({"input": "x"}, META)
    tr.feed(sse(chunk({"content": "half"}), b"[DONE]"))  # [DONE] without a finish_reason is no end either
    with pytest.raises(UpstreamError):
        tr.finish()


def test_an_error_before_any_upstream_byte_still_opens_the_stream() -> None:
    tr = PivotToResponsesStream({"input": "x"}, META)
    objs = events(tr.error_frame(EventTooLarge(10)))
    assert [o["type"] for o in objs] == ["response.created", "response.in_progress", "response.failed", "error"]


def test_too_large_an_upstream_event_raises() -> None:
    tr = PivotToResponsesStream({"input": "x"}, META, max_event_bytes=64)
    with pytest.raises(EventTooLarge):
        tr.feed(sse(chunk({"content": "x" * 100})))


def test_the_documented_error_event_alone_would_not_fail_the_sdk() -> None:
    """Why `error_frame` adds the `error` object: OpenAI's documented event alone is yielded, not raised."""
    frame = b'event: error\ndata: {"type":"error","code":"server_error","message":"boom","param":null,'
    frame += b'"sequence_number":0}\n\n'
    with client(frame) as c:
        kinds = [ev.type for ev in c.responses.create(model="m", input="x", stream=True)]
    assert kinds == ["error"]


# -------------------------------------------------------------------------------- the SDK client
class client:
    """An `openai.OpenAI` whose every request gets `body` as its SSE answer."""

    def __init__(self, body: bytes) -> None:
        def answer(request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

        self.http = httpx2.Client(transport=httpx2.MockTransport(answer))
        self.sdk = openai.OpenAI(api_key="k", base_url="http://ollamux.test/v1", http_client=self.http, max_retries=0)

    def __enter__(self) -> openai.OpenAI:
        return self.sdk

    def __exit__(self, *exc: object) -> None:
        self.sdk.close()


def sdk_raises(body: bytes, message: str) -> None:
    """Both ways of streaming with the SDK raise an APIError carrying `message`."""
    with client(body) as c:
        with pytest.raises(openai.APIError) as info:
            for _ in c.responses.create(model="m", input="x", stream=True):
                pass
        assert info.value.message == message
        with pytest.raises(openai.APIError) as info:
            with c.responses.stream(model="m", input="x") as stream:
                for _ in stream:
                    pass
        assert info.value.message == message
