"""OpenAI SSE -> Ollama NDJSON, fed as real llama-server streams arrive: in any split."""

from __future__ import annotations

import json
import random
import re
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
    chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
    chunk(
        {
            "tool_calls": [
                {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]
        }
    ),
    chunk(
        {},
        "tool_calls",
        timings={"cache_n": 2, "prompt_n": 8, "prompt_ms": 1.5, "predicted_n": 9, "predicted_ms": 3.25},
    ),
    {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}},
    b"[DONE]",
)


def run(data: bytes, parts: list[bytes], **kw: Any) -> list[dict[str, Any]]:
    tr = OpenAIToOllamaStream("m:latest", "chat", Timing(start_ns=0), **kw)
    dec = SSEDecoder()
    lines: list[bytes] = []
    for p in parts:
        for ev in dec.feed(p):
            lines.extend(tr.feed_event(ev.data))
    for ev in dec.flush():
        lines.extend(tr.feed_event(ev.data))
    lines.extend(tr.finish_lines(end_ns=10_000_000))
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
    data = sse(
        chunk({"content": "a"}),
        chunk({}, "length"),
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    )
    objs = run(data, [data])
    assert objs[-1]["done_reason"] == "length" and objs[-1]["eval_count"] == 1
    assert [o["done"] for o in objs] == [False, True]


def test_timings_only_counts() -> None:
    data = sse(
        chunk({"content": "a"}),
        chunk({}, "stop", timings={"cache_n": 1, "prompt_n": 4, "predicted_n": 2, "prompt_ms": 1, "predicted_ms": 2}),
    )
    final = run(data, [data])[-1]
    assert final["prompt_eval_count"] == 5 and final["eval_count"] == 2


def test_error_event_raises() -> None:
    tr = OpenAIToOllamaStream("m", "chat", Timing(start_ns=0))
    with pytest.raises(UpstreamError, match="boom"):
        tr.feed_event(b'{"error": {"message": "boom"}}')


def test_generate_kind_uses_response_field() -> None:
    data = sse(chunk({"content": "hi"}), chunk({}, "stop"), b"[DONE]")
    tr = OpenAIToOllamaStream("m", "generate", Timing(start_ns=0))
    dec = SSEDecoder()
    lines = [line for ev in dec.feed(data) for line in tr.feed_event(ev.data)] + tr.finish_lines()
    objs = [json.loads(x) for x in lines]
    assert objs[0]["response"] == "hi" and "message" not in objs[0]
    assert objs[-1]["response"] == "" and objs[-1]["done"] is True


# ----------------------------------------------------------------------------------- the batch fast path
def _llama_cpp(i: int, content: Any, created: int = 1700000000, **choice: Any) -> bytes:
    """llama-server's key order and compact JSON: the events the fast path learns."""
    ch = {"finish_reason": None, "index": 0, "delta": {"content": content}, **choice}
    return json.dumps(
        {
            "choices": [ch],
            "created": created,
            "id": "chatcmpl-x",
            "model": "m",
            "system_fingerprint": "b1",
            "object": "chat.completion.chunk",
        },
        separators=(",", ":"),
        ensure_ascii=i % 2 == 0,
    ).encode()


TRICKY = sse(
    chunk({"role": "assistant", "content": ""}),
    *[
        _llama_cpp(i, t)
        for i, t in enumerate(
            ["Hel", "lo", ' "quoted"', "back\\slash", "é€", "\u2028sep", "\n", "", "tab\t", '{"content":1}']
        )
    ],
    _llama_cpp(20, "new second", created=1700000001),  # a new `created`: the learnt bytes no longer fit
    _llama_cpp(21, "again", created=1700000001),
    _llama_cpp(22, None),  # content null: no line
    _llama_cpp(23, "x", logprobs={"content": []}),
    chunk({"content": "two"}, None, choices_extra=1),
    {"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]},
    _llama_cpp(24, "after"),
    chunk({"reasoning_content": "hmm"}),
    _llama_cpp(25, "tail"),
    chunk({}, "stop", usage={"prompt_tokens": 3, "completion_tokens": 14, "total_tokens": 17}),
    b"[DONE]",
)


def _batched(data: bytes, parts: list[bytes], kind: str = "chat") -> tuple[list[dict[str, Any]], Any]:
    tr = OpenAIToOllamaStream("m:latest", kind, Timing(start_ns=0))  # type: ignore[arg-type]
    dec = SSEDecoder()
    lines: list[bytes] = []
    for p in parts:
        tr.feed_batch(dec.payloads(p), lines)
    tr.feed_batch([ev.data for ev in dec.flush()], lines)
    lines.extend(tr.finish_lines(end_ns=10_000_000))
    raw = b"".join(lines)
    assert raw.endswith(b"\n") and b"\xe2\x80\xa8" not in raw  # whole NDJSON lines, U+2028 escaped
    return [json.loads(line) for line in raw.splitlines()], tr


def _one_by_one(data: bytes, kind: str = "chat") -> tuple[list[dict[str, Any]], Any]:
    tr = OpenAIToOllamaStream("m:latest", kind, Timing(start_ns=0))  # type: ignore[arg-type]
    dec = SSEDecoder()
    lines = [line for ev in dec.feed(data) + dec.flush() for line in tr.feed_event(ev.data)]
    lines.extend(tr.finish_lines(end_ns=10_000_000))
    return [json.loads(line) for line in lines], tr


def _strip_times(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in o.items() if k != "created_at" and not k.endswith("duration")} for o in objs]


def test_batch_fast_path_equals_event_by_event() -> None:
    slow, tr_slow = _one_by_one(TRICKY)
    contents = [o["message"]["content"] for o in slow if o["message"]["content"]]
    assert contents == [
        "Hel",
        "lo",
        ' "quoted"',
        "back\\slash",
        "é€",
        "\u2028sep",
        "\n",
        "tab\t",
        '{"content":1}',
        "new second",
        "again",
        "x",
        "two",
        "a",
        "after",
        "tail",
    ]
    rng = random.Random(7)
    for parts in ([TRICKY], [TRICKY[i : i + 1] for i in range(len(TRICKY))], *[_cut(TRICKY, rng) for _ in range(200)]):
        fast, tr_fast = _batched(TRICKY, parts)
        assert _strip_times(fast) == _strip_times(slow)
        assert "".join(tr_fast.text_parts) == "".join(tr_slow.text_parts) and tr_fast.usage == tr_slow.usage
        assert tr_fast.finish_reason == "stop" and tr_fast.done_seen


def _cut(data: bytes, rng: random.Random) -> list[bytes]:
    points = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def test_batch_fast_path_takes_plain_events() -> None:
    # what makes it fast: after the first plain event, the others are not parsed one by one
    tr = OpenAIToOllamaStream("m", "chat", Timing(start_ns=0))
    calls = 0
    feed = tr.feed_event

    def counting(data: bytes) -> list[bytes]:
        nonlocal calls
        calls += 1
        return feed(data)

    tr.feed_event = counting  # type: ignore[method-assign]
    out: list[bytes] = []
    tr.feed_batch([_llama_cpp(1, f"t{i}") for i in range(50)], out)
    assert calls == 1 and len(b"".join(out).splitlines()) == 50


def test_batch_keeps_lines_made_before_an_error() -> None:
    tr = OpenAIToOllamaStream("m", "chat", Timing(start_ns=0))
    out: list[bytes] = []
    with pytest.raises(UpstreamError, match="boom"):
        tr.feed_batch([_llama_cpp(1, "a"), _llama_cpp(1, "b"), b'{"error":{"message":"boom"}}'], out)
    assert [json.loads(x)["message"]["content"] for x in b"".join(out).splitlines()] == ["a", "b"]


def test_batch_event_that_is_not_json_is_a_502() -> None:
    tr = OpenAIToOllamaStream("m", "chat", Timing(start_ns=0))
    out: list[bytes] = []
    pre = _llama_cpp(1, "a")
    with pytest.raises(UpstreamError) as e:
        # fits the learnt bytes around a "string" that is not one: parsed in full, refused
        tr.feed_batch([pre, pre.replace(b'"a"', b'"a","b"'), pre.replace(b'"a"', b'"unterminated')], out)
    assert e.value.status == 502


def test_batch_generate_and_raw_kinds() -> None:
    gen = sse(*[_llama_cpp(i, f"w{i}") for i in range(6)], b"[DONE]")
    assert _strip_times(_batched(gen, [gen], "generate")[0]) == _strip_times(_one_by_one(gen, "generate")[0])
    raw = sse(
        *[
            {"choices": [{"index": 0, "text": f"r{i}", "finish_reason": None}], "id": "c", "created": 1}
            for i in range(6)
        ],
        b"[DONE]",
    )
    fast, _ = _batched(raw, [raw], "raw")
    assert "".join(o["response"] for o in fast) == "r0r1r2r3r4r5"
    assert _strip_times(fast) == _strip_times(_one_by_one(raw, "raw")[0])


_CREATED_AT = re.compile(rb'"created_at":"[^"]*"')


def test_batch_lines_are_byte_for_byte_the_event_by_event_lines() -> None:
    # the fast path reuses the upstream's bytes of a string without escapes: they must be what orjson writes
    clean = ["plain", "é€ü", "🙂 emoji", "\u2028sep", "\u2029", "\x7f", "a/b", "<>&'", "\u0085next", "x" * 300]
    escaped = ['with "quote"', "back\\slash", "line\n", "tab\t", ""]  # escapes upstream: re-encoded instead
    rng = random.Random(3)
    for _ in range(30):
        texts = rng.sample(clean + escaped, len(clean + escaped))
        for kind in ("chat", "generate"):
            # odd events are sent as UTF-8, even ones with \u escapes (json's ensure_ascii)
            events = [_llama_cpp(i, t) for i, t in enumerate(texts)]
            slow_tr = OpenAIToOllamaStream("m:latest", kind, Timing(start_ns=0))
            slow = b"".join(line for ev in events for line in slow_tr.feed_event(ev))
            # one read per event (one string per batch), and all in one read (a batch with escapes somewhere)
            for reads in ([sse(e) for e in events], [sse(*events)]):
                tr = OpenAIToOllamaStream("m:latest", kind, Timing(start_ns=0))
                fast = b"".join(tr.feed(r) for r in reads)
                assert _CREATED_AT.sub(b"", fast) == _CREATED_AT.sub(b"", slow)
                assert "".join(tr.text_parts) == "".join(texts)
        clean_events = [_llama_cpp(2 * i + 1, t) for i, t in enumerate(clean)]  # one batch without escapes
        tr = OpenAIToOllamaStream("m:latest", "chat", Timing(start_ns=0))
        slow_tr = OpenAIToOllamaStream("m:latest", "chat", Timing(start_ns=0))
        slow = b"".join(line for ev in clean_events for line in slow_tr.feed_event(ev))
        assert _CREATED_AT.sub(b"", tr.feed(sse(*clean_events))) == _CREATED_AT.sub(b"", slow)
