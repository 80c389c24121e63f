"""One pivot stream event (a chat.completion.chunk) read once, checked, for every consumer of the pivot's
SSE: the Responses and Messages streams, and the collector that gathers a stream into a whole answer.

The upstream is untrusted: a payload that is not JSON, an error object, or a field of the wrong type is the
backend's fault (UpstreamError, a 502 in the client's format); a field that is absent is just absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import UpstreamError
from ..translate.checks import json_type, opt_field, upstream_error_message

__all__ = ["PivotChunk", "read_chunk"]


@dataclass(slots=True)
class PivotChunk:
    obj: dict[str, Any]  # the whole event (id, model, created, timings, ...)
    usage: dict[str, Any] | None
    choice: dict[str, Any] | None  # the first choice (the pivot asks for one)
    reasoning: str | None  # `reasoning_content` (llama.cpp, ollamux's Ollama translator) or `reasoning` (vLLM)
    content: str | None
    tool_calls: Any  # the fragments as sent; each consumer assembles them its own way
    finish_reason: str | None


def read_chunk(data: bytes) -> PivotChunk | None:
    """The event in one SSE data payload; None for `[DONE]` and for JSON that is not an object."""
    if data == b"[DONE]":
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("backend sent a stream event that is not JSON", status=502) from None
    if not isinstance(obj, dict):
        return None
    if obj.get("error") is not None:
        raise UpstreamError(upstream_error_message(obj["error"]), status=502)
    usage = opt_field(obj, "usage", dict, "a stream event") or None
    choices = opt_field(obj, "choices", list, "a stream event")
    if not choices:
        return PivotChunk(obj, usage, None, None, None, None, None)
    ch = choices[0]
    if not isinstance(ch, dict):
        raise UpstreamError(f"backend sent a stream event whose choice is {json_type(ch)}, not an object", status=502)
    delta = opt_field(ch, "delta", dict, "a stream choice")
    reasoning = content = calls = None
    if delta:
        reasoning = opt_field(delta, "reasoning_content", str, "a delta") or opt_field(
            delta, "reasoning", str, "a delta"
        )
        content = opt_field(delta, "content", str, "a delta")
        calls = delta.get("tool_calls")
    reason = ch.get("finish_reason")
    return PivotChunk(
        obj, usage, ch, reasoning or None, content or None, calls or None, str(reason) if reason else None
    )
