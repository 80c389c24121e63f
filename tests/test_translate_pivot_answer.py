"""Every front reads a whole pivot answer the same way (`translate.pivot_answer`): a malformed answer is the
same 502 whether the client spoke the Ollama API, the Responses API or the Messages API, and a good one
says the same text, thinking, tool calls and counts to each. Before, each front read its answer its own
way: a `"usage": "x"` was a 502 on the Ollama API and a 200 without token counts on the other two."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from ollamux.errors import UpstreamError
from ollamux.translate import anthropic as ta
from ollamux.translate import from_openai
from ollamux.translate import responses_answer as tr
from ollamux.translate.from_openai import Timing
from ollamux.translate.pivot_answer import read_answer


def _ollama_chat(pivot: Any) -> dict[str, Any]:
    return from_openai.chat_response(pivot, "m", Timing(start_ns=time.perf_counter_ns()), time.perf_counter_ns())


def _ollama_generate(pivot: Any) -> dict[str, Any]:
    return from_openai.generate_response(
        pivot, "m", Timing(start_ns=time.perf_counter_ns()), time.perf_counter_ns(), raw=False
    )


def _responses(pivot: Any) -> dict[str, Any]:
    return tr.from_pivot(pivot, {"model": "m", "input": "hi"}, tr.ResponseMeta(id="resp_1", created_at=1, model="m"))


def _messages(pivot: Any) -> dict[str, Any]:
    return ta.from_pivot(pivot, ta.MessageMeta(id="msg_1", model="m"))


FRONTS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "ollama-chat": _ollama_chat,
    "ollama-generate": _ollama_generate,
    "responses": _responses,
    "messages": _messages,
}


def answer(message: Any = None, **top: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": "hi"} if message is None else message}
    return {"id": "c", "object": "chat.completion", "choices": [{**choice, "finish_reason": "stop"}], **top}


MALFORMED = {
    "usage-str": (answer(usage="x"), "'usage' is a string"),
    "timings-list": (answer(timings=[1]), "'timings' is an array"),
    "no-choices": ({"id": "c", "choices": []}, "without choices"),
    "choices-int": ({"id": "c", "choices": 5}, "'choices' is an integer"),
    "choice-str": ({"id": "c", "choices": ["oops"]}, "choice is a string"),
    "message-str": (answer("oops"), "'message' is a string"),
    "content-int": (answer({"content": 5}), "'content' is an integer"),
    "reasoning-int": (answer({"content": "a", "reasoning_content": 5}), "'reasoning_content' is an integer"),
    "tool-calls-obj": (answer({"content": "", "tool_calls": {"a": 1}}), "'tool_calls' is an object"),
    "tool-call-no-function": (answer({"content": "", "tool_calls": [{"id": "x"}]}), "tool_calls[0]"),
    "error-object": ({"error": {"message": "the model crashed"}}, "the model crashed"),
    "not-an-object": ([1, 2], "an array where a JSON object"),
}


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_answer_is_the_same_502_on_every_front(front: str, case: str) -> None:
    pivot, says = MALFORMED[case]
    with pytest.raises(UpstreamError) as e:
        FRONTS[front](pivot)
    assert e.value.status == 502 and says in e.value.message, e.value.message


def test_a_good_answer_reads_the_same_everywhere() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    pivot = answer(
        {"content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}], "reasoning": "hmm"},
        usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    )
    pivot["choices"][0]["message"]["tool_calls"] = [call]
    read = read_answer(pivot)
    assert (read.text, read.reasoning, read.tool_calls, read.finish_reason) == ("Hello", "hmm", [call], "stop")
    chat = _ollama_chat(pivot)
    assert chat["message"]["content"] == "Hello" and chat["message"]["thinking"] == "hmm"
    assert chat["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert (chat["prompt_eval_count"], chat["eval_count"]) == (5, 2)
    msg = _messages(pivot)
    assert [b["type"] for b in msg["content"]] == ["thinking", "text", "tool_use"]
    assert msg["content"][1]["text"] == "Hello" and msg["content"][2]["input"] == {"a": 1}
    assert (msg["usage"]["input_tokens"], msg["usage"]["output_tokens"]) == (5, 2)
    resp = _responses(pivot)
    assert [it["type"] for it in resp["output"]] == ["reasoning", "message", "function_call"]
    assert resp["output"][1]["content"][0]["text"] == "Hello"
    assert (resp["usage"]["input_tokens"], resp["usage"]["output_tokens"]) == (5, 2)


def test_a_raw_generate_reads_a_text_completion() -> None:
    pivot = {"id": "c", "choices": [{"index": 0, "text": "Hello", "finish_reason": "length"}]}
    out = from_openai.generate_response(
        pivot, "m", Timing(start_ns=time.perf_counter_ns()), time.perf_counter_ns(), raw=True
    )
    assert out["response"] == "Hello" and out["done_reason"] == "length"
    with pytest.raises(UpstreamError, match="'text' is an integer"):
        read_answer({"choices": [{"text": 5}]}, completion=True)
