"""The pure OpenAI -> Ollama translators, with Ollama's own test vectors (reference §2.4)."""

from __future__ import annotations

import base64
import json
import random
import struct
from typing import Any

import orjson
import pytest

from ollamux.errors import BadRequest, OllamuxError, UpstreamError
from ollamux.streams.ollama_to_openai import DONE, OllamaToOpenAIStream, error_frame
from ollamux.streams.rewrite import ModelLineRewriter
from ollamux.translate import from_ollama, to_ollama
from ollamux.translate.passthrough import replace_model_in_body

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really-a-png").decode()


def frames(data: bytes) -> list[Any]:
    """SSE frames as parsed JSON (or the string '[DONE]')."""
    out: list[Any] = []
    for frame in data.split(b"\n\n"):
        if not frame:
            continue
        assert frame.startswith(b"data: ")
        payload = frame[len(b"data: ") :]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


# ------------------------------------------------------------------------------------- requests
def test_vector_1_defaults() -> None:
    req = to_ollama.chat_request({"model": "test-model", "messages": [{"role": "user", "content": "Hello"}]}, "up")
    assert req == {
        "model": "up",
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": False,
        "options": {"temperature": 1.0, "top_p": 1.0},
    }


def test_vector_2_options() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": True,
        "max_tokens": 999,
        "seed": 123,
        "stop": ["\n", "stop"],
        "temperature": 3.0,
        "frequency_penalty": 4.0,
        "presence_penalty": 5.0,
        "top_p": 6.0,
        "response_format": {"type": "json_object"},
    }
    req = to_ollama.chat_request(body, "m")
    assert req["options"] == {
        "num_predict": 999,
        "seed": 123,
        "stop": ["\n", "stop"],
        "temperature": 3.0,
        "frequency_penalty": 4.0,
        "presence_penalty": 5.0,
        "top_p": 6.0,
    }
    assert req["format"] == "json" and req["stream"] is True
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert to_ollama.chat_request(body, "m")["format"] == schema


def test_vector_3_content_parts_become_messages() -> None:
    content = [
        {"type": "text", "text": "Hello"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
    ]
    req = to_ollama.chat_request({"messages": [{"role": "user", "content": content}]}, "m")
    assert req["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "", "images": [PNG_B64]},
    ]
    assert base64.b64decode(req["messages"][1]["images"][0]).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com/cat.png", "image URLs are not currently supported, please use base64 encoded data"),
        ("data:image/gif;base64,R0lG", "invalid image input"),
    ],
)
def test_image_url_errors(url: str, message: str) -> None:
    msg = {"role": "user", "content": [{"type": "image_url", "image_url": url}]}
    with pytest.raises(BadRequest, match=message):
        to_ollama.chat_request({"messages": [msg]}, "m")


def test_vector_4_5_6_tool_history() -> None:
    args = '{"location": "Paris, France", "format": "celsius"}'
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "reasoning": "Let's see...",
            "tool_calls": [
                {"id": "id_abc", "type": "function", "function": {"name": "get_current_weather", "arguments": args}}
            ],
        },
        {"role": "tool", "tool_call_id": "id_abc", "content": "sunny"},
    ]
    req = to_ollama.chat_request({"messages": messages}, "m")
    assistant, tool = req["messages"][1], req["messages"][2]
    assert assistant["thinking"] == "Let's see..."
    assert assistant["tool_calls"] == [
        {
            "id": "id_abc",
            "function": {
                "name": "get_current_weather",
                "arguments": {"location": "Paris, France", "format": "celsius"},
            },
        }
    ]
    assert tool == {"role": "tool", "content": "sunny", "tool_name": "get_current_weather", "tool_call_id": "id_abc"}
    messages[1]["tool_calls"][0]["function"]["arguments"] = "{not json"  # type: ignore[index]
    with pytest.raises(BadRequest, match="invalid tool call arguments"):
        to_ollama.chat_request({"messages": messages}, "m")


def test_vector_7_content_type() -> None:
    with pytest.raises(BadRequest) as info:
        to_ollama.chat_request({"messages": [{"role": "user", "content": 2}]}, "m")
    assert info.value.status == 400
    assert orjson.loads(info.value.openai_body()) == {
        "error": {
            "message": "invalid message content type: float64",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    with pytest.raises(BadRequest, match=r"\[\] is too short - 'messages'"):
        to_ollama.chat_request({"messages": []}, "m")


def test_vector_8_completions() -> None:
    req = to_ollama.completion_request(
        {"prompt": "Hello", "temperature": 0.8, "stop": ["\n", "stop"], "suffix": "suffix"}, "m"
    )
    assert req["options"] == {
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "temperature": 0.8,
        "top_p": 1.0,
        "stop": ["\n", "stop"],
    }
    assert req["suffix"] == "suffix" and "raw" not in req
    assert to_ollama.completion_request({"prompt": "Hi"}, "m")["raw"] is True
    with pytest.raises(BadRequest, match="invalid type for 'stop' field: float64"):
        to_ollama.completion_request({"prompt": "Hello", "stop": [1, 2]}, "m")
    req = to_ollama.completion_request({"prompt": ["Hi"], "logprobs": 3, "max_tokens": 5}, "m")
    assert req["prompt"] == "Hi" and req["top_logprobs"] == 3 and req["options"]["num_predict"] == 5


def test_vector_9_embeddings() -> None:
    assert to_ollama.embed_request({"input": ["Hello", "World"]}, "m") == {"model": "m", "input": ["Hello", "World"]}
    assert to_ollama.embed_request({"input": "", "dimensions": 2}, "m") == {
        "model": "m",
        "input": [""],
        "dimensions": 2,
    }
    bads: list[dict[str, Any]] = [{}, {"input": []}, {"input": [1, 2]}]
    for bad in bads:
        with pytest.raises(BadRequest, match="invalid input"):
            to_ollama.embed_request(bad, "m")
    with pytest.raises(BadRequest, match=r"Supported values: \['float', 'base64'\]"):
        to_ollama.embed_request({"input": "x", "encoding_format": "int8"}, "m")


def test_vector_18_reasoning_effort() -> None:
    def think(effort: str) -> Any:
        return to_ollama.chat_request(
            {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": effort}, "m"
        ).get("think")

    assert think("minimal") == "low" and think("high") == "high"
    assert think("xhigh") == "max" and think("ultra") == "max"
    assert think("none") is False
    with pytest.raises(BadRequest, match="invalid reasoning value"):
        think("extreme")
    nested = {"messages": [{"role": "user", "content": "x"}], "reasoning": {"effort": "low"}}
    assert to_ollama.chat_request(nested, "m")["think"] == "low"
    assert "think" not in to_ollama.chat_request({"messages": [{"role": "user", "content": "x"}]}, "m")


# ------------------------------------------------------------------------------------ responses
def test_vectors_12_13_usage_and_tool_calls() -> None:
    assert from_ollama.usage({"prompt_eval_count": 10, "eval_count": 20}) == {
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "total_tokens": 30,
    }
    fn = {"index": 2, "name": "get_weather", "arguments": {"location": "Seattle"}}
    calls = [{"id": "call_abc123", "function": fn}]
    assert from_ollama.openai_tool_calls(calls) == [
        {
            "id": "call_abc123",
            "index": 2,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Seattle"}'},
        }
    ]


@pytest.mark.parametrize(
    ("reason", "called", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("stop", True, "tool_calls"),
        ("length", True, "length"),
        ("", False, "stop"),
        ("unload", False, "unload"),
        ("unload", True, "unload"),
    ],
)
def test_vector_14_finish_reason(reason: str, called: bool, expected: str) -> None:
    assert from_ollama.finish_reason(reason, called) == expected


def test_vector_15_chat_completion() -> None:
    native = {
        "model": "m",
        "message": {
            "role": "assistant",
            "content": "",
            "thinking": "hmm",
            "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
        },
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 4,
    }
    out = from_ollama.chat_completion(native, "client-name", id="chatcmpl-1", created=5)
    choice = out["choices"][0]
    assert out["model"] == "client-name" and out["object"] == "chat.completion"
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["reasoning_content"] == "hmm"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"a":1}' and call["id"].startswith("call_")
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    native["done_reason"] = "length"
    assert from_ollama.chat_completion(native, "m", id="x", created=0)["choices"][0]["finish_reason"] == "length"


def test_embeddings_base64_is_float32_le() -> None:
    out = from_ollama.embeddings({"embeddings": [[0.5, -1.0]], "prompt_eval_count": 2}, "m", encoding_format="base64")
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.0)
    assert out["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


def test_vector_10_models() -> None:
    obj = from_ollama.model_object("test-model", 1686935002, "library")
    assert from_ollama.models_list([obj]) == {
        "object": "list",
        "data": [{"id": "test-model", "object": "model", "created": 1686935002, "owned_by": "library"}],
    }


# --------------------------------------------------------------------------------------- streams
def _line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def _stream(include_usage: bool = True, kind: Any = "chat") -> OllamaToOpenAIStream:
    return OllamaToOpenAIStream("client", kind, id="chatcmpl-1", created=7, include_usage=include_usage)


def test_vector_16_content_finish_usage_done() -> None:
    s = _stream()
    out = s.feed(_line({"message": {"role": "assistant", "content": "Hi"}, "done": False}))
    out += s.feed(
        _line(
            {
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 3,
                "eval_count": 1,
            }
        )
    )
    out += s.finish()
    got = frames(out)
    assert len(got) == 4
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert got[1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert got[2]["choices"] == [] and got[2]["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "total_tokens": 4,
    }
    assert got[3] == "[DONE]" and out.endswith(DONE)
    assert all(f["created"] == 7 and f["id"] == "chatcmpl-1" and f["model"] == "client" for f in got[:3])


def test_vector_17_single_done_chunk_with_content() -> None:
    s = _stream(include_usage=False)
    got = frames(s.feed(_line({"message": {"content": "partial"}, "done": True, "done_reason": "length"})) + s.finish())
    assert len(got) == 3
    assert got[0]["choices"][0]["delta"]["content"] == "partial" and got[0]["choices"][0]["finish_reason"] is None
    assert got[1]["choices"][0]["finish_reason"] == "length" and got[2] == "[DONE]"


def test_vectors_19_20_thinking_split_and_empty_first() -> None:
    s = _stream(include_usage=False)
    got = frames(s.feed(_line({"message": {"thinking": "step-by-step", "content": "final answer"}, "done": False})))
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "reasoning_content": "step-by-step"}
    assert got[1]["choices"][0]["delta"] == {"content": "final answer"}
    s = _stream(include_usage=False)
    got = frames(s.feed(_line({"message": {"role": "assistant", "content": ""}, "done": False})))
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_stream_tool_calls_finish_as_tool_calls() -> None:
    s = _stream(include_usage=False)
    call = {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}
    out = s.feed(_line({"message": {"content": "", "tool_calls": [call]}, "done": False}))
    out += s.feed(_line({"message": {"content": "", "tool_calls": [{**call, "id": "call_2"}]}, "done": False}))
    out += s.feed(_line({"message": {"content": ""}, "done": True, "done_reason": "stop"}))
    got = frames(out + s.finish())
    deltas = [f["choices"][0]["delta"] for f in got[:2]]
    assert [d["tool_calls"][0]["index"] for d in deltas] == [0, 1]  # never two calls on one index
    assert deltas[0]["tool_calls"][0]["function"]["arguments"] == '{"x":1}'
    assert got[2]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_completion_kind() -> None:
    s = _stream(kind="completion")
    out = s.feed(
        _line({"response": "Once", "done": False})
        + _line({"response": "", "done": True, "done_reason": "stop", "eval_count": 1})
    )
    got = frames(out + s.finish())
    assert got[0]["object"] == "text_completion" and got[0]["choices"][0]["text"] == "Once"
    assert got[1]["choices"][0]["finish_reason"] == "stop" and got[2]["usage"]["completion_tokens"] == 1


def test_stream_errors() -> None:
    s = _stream()
    with pytest.raises(UpstreamError, match="the model crashed"):
        s.feed(_line({"error": "the model crashed"}))
    s = _stream()
    s.feed(_line({"message": {"content": "cut"}, "done": False}))
    with pytest.raises(UpstreamError, match="ended before"):
        s.finish()
    frame = frames(error_frame(OllamuxError("boom", status=500)))[0]
    assert frame == {"error": {"message": "boom", "type": "api_error", "param": None, "code": None}}


NATIVE_STREAM = b"".join(
    [
        _line({"model": "up", "message": {"role": "assistant", "content": "", "thinking": "Let me"}, "done": False}),
        _line({"model": "up", "message": {"role": "assistant", "content": "Héllo \u2028 wörld"}, "done": False}),
        _line(
            {
                "model": "up",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"k": "v"}}}],
                },
                "done": False,
            }
        ),
        _line(
            {
                "model": "up",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 5,
                "eval_count": 6,
            }
        ),
    ]
)


def _run_split(pieces: list[bytes]) -> list[Any]:
    s = _stream()
    out = b""
    for p in pieces:
        out += s.feed(p)
    return frames(out + s.finish())


def test_stream_any_split_gives_the_same_frames() -> None:
    whole = _run_split([NATIVE_STREAM])
    assert _run_split([NATIVE_STREAM[i : i + 1] for i in range(len(NATIVE_STREAM))]) == whole
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(NATIVE_STREAM)), rng.randint(1, 12)))
        pieces = [NATIVE_STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(NATIVE_STREAM)], strict=True)]
        assert _run_split(pieces) == whole
    assert whole[1]["choices"][0]["delta"]["content"] == "Héllo \u2028 wörld"
    assert whole[3]["choices"][0]["finish_reason"] == "tool_calls"


# ------------------------------------------------------------------------------- pass-through bytes
@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"alias","messages":[],"slot_id":3,"cache_prompt":true}',
        b'{"messages": [], "model": "alias", "guided_json": {"model": "x"}, "n_probs": 1.50}',
        b'{\n  "model" :  "alias",\n  "temperature": 1e-3\n}',
    ],
)
def test_replace_model_in_place(raw: bytes) -> None:
    body = orjson.loads(raw)
    out = replace_model_in_body(raw, body, "up/stream:1")
    assert out == raw.replace(b'"alias"', b'"up/stream:1"')
    assert replace_model_in_body(raw, body, "alias") is raw


def test_replace_model_falls_back_to_reserialising() -> None:
    raw = b'{"model":"a","tools":[{"model":"a"}]}'  # two candidate pairs: ambiguous in place
    out = replace_model_in_body(raw, orjson.loads(raw), "b")
    assert orjson.loads(out) == {"model": "b", "tools": [{"model": "a"}]}
    raw = b'{"messages":[]}'  # no model: a default model was used
    assert orjson.loads(replace_model_in_body(raw, orjson.loads(raw), "b")) == {"messages": [], "model": "b"}


def test_line_rewriter_any_split() -> None:
    data = b'{"model":"qwen3:latest","response":"a \\"model\\":\\"qwen3:latest\\""}\n{"model":"qwen3:latest"}\n'
    expected = data.replace(b'{"model":"qwen3:latest"', b'{"model":"mine"')
    rng = random.Random(3)
    for _ in range(30):
        r = ModelLineRewriter("qwen3:latest", "mine")
        cuts = sorted(rng.sample(range(1, len(data)), 5))
        out = b"".join(r.feed(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)) + r.flush()
        assert out == expected


def test_line_rewriter_other_spellings() -> None:
    r = ModelLineRewriter("qwen3:latest", "mine")
    data = b'{"created_at": "x", "model" : "qwen3:latest", "done": true}'
    assert r.feed(data) == b"" and r.flush() == data.replace(b'"qwen3:latest"', b'"mine"')
