"""Ollama requests as OpenAI requests: the pure mapping, case by case."""

from __future__ import annotations

import pytest

from ollamux.errors import BadRequest
from ollamux.translate import to_openai
from ollamux.translate.images import sniff_mime


def test_openai_dialect_drops_extended_sampling() -> None:
    opts = {"num_predict": -1, "top_k": 5, "min_p": 0.1, "repeat_penalty": 1.2, "temperature": 0.5, "seed": -1}
    assert to_openai.sampling_params(opts, "openai") == {"temperature": 0.5}
    assert to_openai.sampling_params(opts, "vllm") == {
        "temperature": 0.5,
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
    }


def test_option_type_errors() -> None:
    with pytest.raises(BadRequest, match="temperature"):
        to_openai.sampling_params({"temperature": "hot"}, "llama.cpp")
    with pytest.raises(BadRequest, match="stop"):
        to_openai.sampling_params({"stop": [1]}, "llama.cpp")


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        (True, {"chat_template_kwargs": {"enable_thinking": True}}),
        (False, {"chat_template_kwargs": {"enable_thinking": False}}),
        (
            "high",
            {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}, "reasoning_effort": "high"},
        ),
        (
            "max",
            {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}, "reasoning_effort": "high"},
        ),
    ],
)
def test_think(think: object, expected: dict[str, object]) -> None:
    body = to_openai.chat_request(
        {"messages": [{"role": "user", "content": "x"}], "think": think}, "m", stream=False, dialect="llama.cpp"
    )
    for k, v in expected.items():
        assert body[k] == v


def test_bad_think_and_format() -> None:
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(BadRequest, match="think"):
        to_openai.chat_request({"messages": msgs, "think": "extreme"}, "m", stream=False, dialect="llama.cpp")
    with pytest.raises(BadRequest, match="invalid format"):
        to_openai.chat_request({"messages": msgs, "format": "yaml"}, "m", stream=False, dialect="llama.cpp")


def test_content_must_be_string_and_any_role_is_taken() -> None:
    with pytest.raises(BadRequest, match="content must be a string"):
        to_openai.chat_request(
            {"messages": [{"role": "user", "content": ["a"]}]}, "m", stream=False, dialect="llama.cpp"
        )
    # issue 22 row 20: any role is taken, as Ollama's api.Message (was a 400 for a role outside the five)
    body = to_openai.chat_request(
        {"messages": [{"role": "wizard", "content": "a"}, {"role": "User", "content": "b"}]},
        "m",
        stream=False,
        dialect="llama.cpp",
    )
    assert [m["role"] for m in body["messages"]] == ["wizard", "user"]
    with pytest.raises(BadRequest, match="role must be a string"):
        to_openai.chat_request({"messages": [{"role": 5, "content": "a"}]}, "m", stream=False, dialect="llama.cpp")


def test_tool_results_pair_by_id_then_name_then_order() -> None:
    msgs = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "A", "function": {"name": "f", "arguments": {"x": 1}}},
                {"function": {"name": "g", "arguments": '{"y":2}'}},
            ],
        },
        {"role": "tool", "tool_name": "g", "content": "g-result"},
        {"role": "tool", "content": "f-result"},
    ]
    body = to_openai.chat_request({"messages": msgs}, "m", stream=False, dialect="llama.cpp")
    calls = body["messages"][0]["tool_calls"]
    assert calls[0]["id"] == "A" and calls[1]["function"]["arguments"] == '{"y":2}'
    assert body["messages"][0]["content"] is None
    assert body["messages"][1]["tool_call_id"] == calls[1]["id"]
    assert body["messages"][2]["tool_call_id"] == "A"


def test_stream_requests_usage() -> None:
    body = to_openai.chat_request({"messages": []}, "m", stream=True, dialect="openai")
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        ("0", 0.0),
        (-1, -1.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("-1s", -1.0),
        (1800, 1800.0),
        ("2.5s", 2.5),
        ("300ms", 0.3),
    ],
)
def test_keep_alive(value: object, seconds: float | None) -> None:
    assert to_openai.parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["-1", "5", "soon", True, [1]])
def test_keep_alive_errors(value: object) -> None:
    with pytest.raises(BadRequest):
        to_openai.parse_keep_alive(value)


def test_mime_sniffing() -> None:
    assert sniff_mime(b"\x89PNG\r\n\x1a\nxxxx") == "image/png"
    assert sniff_mime(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WEBPVP8") == "image/webp"
    assert sniff_mime(b"GIF89a") == "image/gif"


def test_bad_image_is_400() -> None:
    with pytest.raises(BadRequest, match="base64"):
        to_openai.chat_request(
            {"messages": [{"role": "user", "content": "x", "images": ["!!notb64!!"]}]},
            "m",
            stream=False,
            dialect="llama.cpp",
        )


def test_embed_inputs() -> None:
    assert to_openai.embed_inputs("a") == ["a"]
    assert to_openai.embed_inputs(["a", "b"]) == ["a", "b"]
    assert to_openai.embed_inputs(None) == []
    with pytest.raises(BadRequest, match="invalid input type"):
        to_openai.embed_inputs([1, 2])
