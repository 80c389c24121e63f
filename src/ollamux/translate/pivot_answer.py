"""One whole pivot answer (a chat or text completion) read once, checked, for every front that translates
from it: the Ollama API's chat and generate, the Responses API and the Messages API. Its twin for streams
is `streams.pivot_chunk` (pure).

The upstream is untrusted: a body that is not an object, an error object, no choice, or a field of the
wrong type is the backend's fault (UpstreamError, a 502 in the client's envelope), the same for every
front; a field that is absent is just absent. Each front read its answer its own way before, and they
disagreed: a `"usage": "x"` was a 502 on the Ollama API and a 200 with no token counts on the other two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UpstreamError
from .checks import json_type, opt_field, upstream_error_message

__all__ = ["PivotAnswer", "read_answer"]


@dataclass(frozen=True, slots=True)
class PivotAnswer:
    obj: dict[str, Any]  # the whole answer (id, model, created, timings, ...)
    choice: dict[str, Any]  # the first choice (the pivot asks for one)
    text: str  # the message's content (a string, or the text of its content parts); a completion's text
    reasoning: str | None  # `reasoning_content` (llama.cpp, ollamux's Ollama translator) or `reasoning` (vLLM)
    refusal: str | None
    tool_calls: list[dict[str, Any]]  # each an object with a `function` object (arguments as sent)
    usage: dict[str, Any] | None
    timings: dict[str, Any] | None  # llama-server's
    finish_reason: Any


def read_answer(obj: Any, *, completion: bool = False) -> PivotAnswer:
    """`obj`, a chat completion (or with `completion`, a text completion: `choices[0].text`), checked."""
    if not isinstance(obj, dict):
        raise UpstreamError(f"backend answered with {json_type(obj)} where a JSON object was due", status=502)
    if obj.get("error") is not None:
        raise UpstreamError(upstream_error_message(obj["error"]), status=502)
    usage = opt_field(obj, "usage", dict, "an answer")
    timings = opt_field(obj, "timings", dict, "an answer")
    choices = opt_field(obj, "choices", list, "an answer")
    if not choices:
        raise UpstreamError("backend answered without choices", status=502)
    choice = choices[0]
    if not isinstance(choice, dict):
        raise UpstreamError(f"backend sent an answer whose choice is {json_type(choice)}, not an object", status=502)
    if completion:
        text = opt_field(choice, "text", str, "a choice") or ""
        return PivotAnswer(obj, choice, text, None, None, [], usage, timings, choice.get("finish_reason"))
    message = opt_field(choice, "message", dict, "a choice") or {}
    reasoning = opt_field(message, "reasoning_content", str, "a message") or opt_field(
        message, "reasoning", str, "a message"
    )
    calls = opt_field(message, "tool_calls", list, "a message") or []
    for j, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise UpstreamError(f"backend sent a tool call without a function object (tool_calls[{j}])", status=502)
    return PivotAnswer(
        obj,
        choice,
        _text(message.get("content")),
        reasoning or None,
        opt_field(message, "refusal", str, "a message"),
        calls,
        usage,
        timings,
        choice.get("finish_reason"),
    )


def _text(content: Any) -> str:
    """A message's content: a string, or content parts (some servers answer in them) whose texts are joined."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise UpstreamError(f"backend sent a message whose 'content' is {json_type(content)}", status=502)
