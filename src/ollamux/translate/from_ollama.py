"""Ollama's native answers as OpenAI objects (pure): chat, text completion, embeddings, models."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from ..jsonutil import count_or_none
from .checks import opt_field
from .tools import arguments_to_string, synth_call_id

__all__ = [
    "FINGERPRINT",
    "chat_completion",
    "embeddings",
    "finish_reason",
    "model_object",
    "models_list",
    "openai_tool_calls",
    "text_completion",
    "usage",
]

FINGERPRINT = "fp_ollamux"


def finish_reason(done_reason: Any, tool_calls_sent: bool, *, empty: str | None = "stop") -> str | None:
    """Ollama keeps `stop` when tools were called; OpenAI clients look for `tool_calls`."""
    if not done_reason:
        return empty
    if done_reason == "stop" and tool_calls_sent:
        return "tool_calls"
    return str(done_reason)


def usage(resp: Mapping[str, Any]) -> dict[str, int]:
    # int() keeps a count sent as text ("x") the backend's fault (a ValueError is a 502); one past 64 bits is 0
    prompt = count_or_none(int(resp.get("prompt_eval_count") or 0)) or 0
    completion = count_or_none(int(resp.get("eval_count") or 0)) or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def openai_tool_calls(calls: Iterable[Any], *, start: int | None = None) -> list[dict[str, Any]]:
    """Native calls (object arguments) as OpenAI's (a compact JSON string, key order kept).

    `start` numbers the calls from there (a stream's running count, so that calls arriving in different
    chunks never share an index); without it the native `function.index` is kept.
    """
    out: list[dict[str, Any]] = []
    for i, call in enumerate(calls, start or 0):
        if not isinstance(call, dict):
            continue
        fn = call.get("function") or {}
        name = str(fn.get("name") or "")
        args = arguments_to_string(fn.get("arguments"))
        cid = call.get("id") or f"call_{synth_call_id(name, args, i)}"
        index = fn["index"] if start is None and isinstance(fn.get("index"), int) else i
        out.append({"id": cid, "index": index, "type": "function", "function": {"name": name, "arguments": args}})
    return out


def chat_completion(resp: dict[str, Any], model: str, *, id: str, created: int) -> dict[str, Any]:
    msg = opt_field(resp, "message", dict, "an answer") or {}
    message: dict[str, Any] = {"role": "assistant", "content": opt_field(msg, "content", str, "a message") or ""}
    thinking = opt_field(msg, "thinking", str, "a message")
    if thinking:
        message["reasoning_content"] = thinking
    calls = openai_tool_calls(opt_field(msg, "tool_calls", list, "a message") or [])
    if calls:
        message["tool_calls"] = calls
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": finish_reason(resp.get("done_reason"), bool(calls), empty=None),
    }
    if resp.get("logprobs"):
        choice["logprobs"] = {"content": resp["logprobs"]}
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": usage(resp),
    }


def text_completion(resp: dict[str, Any], model: str, *, id: str, created: int) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "text": opt_field(resp, "response", str, "an answer") or "",
                "index": 0,
                "logprobs": None,
                "finish_reason": finish_reason(resp.get("done_reason"), False, empty=None),
            }
        ],
        "usage": usage(resp),
    }


def _b64(vec: Iterable[float]) -> str:
    values = list(vec)
    # what OpenAI sends for encoding_format=base64: little-endian float32, base64
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def embeddings(resp: dict[str, Any], model: str, *, encoding_format: str = "float") -> dict[str, Any]:
    vectors = opt_field(resp, "embeddings", list, "an answer") or []
    data = [
        {"object": "embedding", "embedding": _b64(v) if encoding_format == "base64" else v, "index": i}
        for i, v in enumerate(vectors)
    ]
    tokens = count_or_none(int(resp.get("prompt_eval_count") or 0)) or 0
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def model_object(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def models_list(objects: list[dict[str, Any]]) -> dict[str, Any]:
    # Ollama sends `data: null` for no models; an empty list is what OpenAI's SDK can iterate
    return {"object": "list", "data": objects}
