"""OpenAI SSE -> Ollama NDJSON, fed as real llama-server streams arrive: in any split."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from ollamux.errors import UpstreamError
from ollamux.streams.codecs import SSEDecoder
from ollamux.streams.openai_to_ollama import OpenAIToOllamaStream
from ollamux.translate.from_openai import Timing


def sse(*objs: Any) -> bytes:
    out = b""
    for o in objs:
        out += b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n"
    return out


def chunk(delta: dict[str, Any], fr: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": fr}], **extra}


TOOL_STREAM = sse(
    chunk({"role": "assistant", "content": None}),
    chunk({"reasoning_content": "thinking..."}),
    chunk({"content": "Let me check."}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": " \"Paris\"}"}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                           "function": {"name": "get_time", "arguments": "{}"}}]}),
    chunk({}, "tool_calls", timings={"cache_n": 2, "prompt_n": 8, "prompt_ms": 1.5, "predicted_n": 9,
                                     "predicted_ms": 3.25}),
    {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}},
    b"[DONE]",
)


def run(data: bytes, parts: list[bytes], **kw: Any) -> list[dict[str, Any]]:
    tr = OpenAIToOllamaStream("m:latest", "chat", Timing(start_ns=0), **kw)
    dec = SSEDecoder()
    lines: list[bytes] = []
    for p in parts:
        for ev in dec.feed(p):
            lines.extend(tr.feed(ev.data))
    for ev in dec.flush():
        lines.extend(tr.feed(ev.data))
    lines.extend(tr.finish(end_ns=10_000_000))
    return [json.loads(line) for line in lines]


def check_tool_stream(objs: list[dict[str, Any]]) -> None:
    assert [o["done"] for o in objs].count(True) == 1 and objs[-1]["done"] is True
    assert "".join(o["message"].get("thinking", "") for o in objs) == "thinking..."
    assert "".join(o["message"]["content"] for o in objs) == "Let me check."
    calls = [c for o in objs for c in o["message"].get("tool_calls", [])]
    assert calls == [
        {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_2", "function": {"index": 1, "name": "get_time", "arguments": {}}},
    ]
    final = objs[-1]
    assert final["done_reason"] == "stop"  # the native API has no tool_calls reason
    assert final["prompt_eval_count"] == 10 and final["eval_count"] == 9  # usage wins over timings
    assert final["prompt_eval_duration"] == 1_500_000 and final["eval_duration"] == 3_250_000
    assert final["total_duration"] == 10_000_000
    for o in objs[:-1]:
        assert "eval_count" not in o and "done_reason" not in o


def test_whole() -> None:
    check_tool_stream(run(TOOL_STREAM, [TOOL_STREAM]))


def test_byte_by_byte() -> None:
    check_tool_stream(run(TOOL_STREAM, [TOOL_STREAM[i : i + 1] for i in range(len(TOOL_STREAM))]))


def test_random_splits() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(TOOL_STREAM)), rng.randrange(1, 25)))
        parts = [TOOL_STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(TOOL_STREAM)], strict=True)]
        check_tool_stream(run(TOOL_STREAM, parts))


def test_think_false_drops_reasoning() -> None:
    objs = run(TOOL_STREAM, [TOOL_STREAM], think=False)
    assert not any(o["message"].get("thinking") for o in objs)


def test_usage_after_finish_chunk_and_no_done_marker() -> None:
    data = sse(chunk({"content": "a"}), chunk({}, "length"), {"choices": [], "usage": {"prompt_tokens": 3,
                                                                                         "completion_tokens": 1}})
    objs = run(data, [data])
    assert objs[-1]["done_reason"] == "length" and objs[-1]["eval_count"] == 1
    assert [o["done"] for o in objs] == [False, True]


def test_timings_only_counts() -> None:
    data = sse(chunk({"content": "a"}), chunk({}, "stop", timings={"cache_n": 1, "prompt_n": 4, "predicted_n": 2,
                                                                   "prompt_ms": 1, "predicted_ms": 2}))
    final = run(data, [data])[-1]
    assert final["prompt_eval_count"] == 5 and final["eval_count"] == 2


def test_error_event_raises() -> None:
    tr = OpenAIToOllamaStream("m", "chat", Timing(start_ns=0))
    with pytest.raises(UpstreamError, match="boom"):
        tr.feed(b'{"error": {"message": "boom"}}')


def test_generate_kind_uses_response_field() -> None:
    data = sse(chunk({"content": "hi"}), chunk({}, "stop"), b"[DONE]")
    tr = OpenAIToOllamaStream("m", "generate", Timing(start_ns=0))
    dec = SSEDecoder()
    lines = [line for ev in dec.feed(data) for line in tr.feed(ev.data)] + tr.finish()
    objs = [json.loads(x) for x in lines]
    assert objs[0]["response"] == "hi" and "message" not in objs[0]
    assert objs[-1]["response"] == "" and objs[-1]["done"] is True
