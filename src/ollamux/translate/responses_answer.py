"""The pivot's answer as a Response object, and what a later request continues from (pure).

`from_pivot` turns a chat completion into the Response the Responses API returns; the streamed answer
(`streams.pivot_to_responses`) is built on the helpers here (`request_echo`, `response_object`, `item_id`,
`usage_object`, `function_call_item`, `incomplete_reason`), so both give the same object. `conversation`
keeps what a request naming this response as `previous_response_id` continues from.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..jsonutil import count_or_none
from .pivot_answer import read_answer
from .responses_request import instructions_of, parse_text_format
from .responses_tools import client_names, collect_tools, parse_tool_choice
from .tools import arguments_to_string

__all__ = [
    "ResponseMeta",
    "conversation",
    "from_pivot",
    "function_call_item",
    "incomplete_reason",
    "item_id",
    "request_echo",
    "response_object",
    "usage_object",
]


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    id: str  # "resp_..."
    created_at: int
    model: str  # the name the client asked for


# the efforts the SDK's `shared/reasoning.py` validates when echoed; REASONING_LEVELS also takes "ultra"
_ECHO_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
_SUMMARIES = frozenset({"auto", "concise", "detailed"})


# --------------------------------------------------------------------------------------------- answer
def item_id(meta: ResponseMeta, prefix: str, index: int) -> str:
    """A deterministic id for output item `index` ("msg", "rs", "fc") or call ("call") of a response."""
    return f"{prefix}_{meta.id.removeprefix('resp_')}_{index}"


def request_echo(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request's settings as a Response repeats them, with OpenAI's defaults where the client sent
    none (the example objects of OpenAI's API reference: temperature 1.0, top_p 1.0, store true...)."""
    tools = collect_tools(request.get("tools"))
    _, tool_choice, _ = parse_tool_choice(request.get("tool_choice"), tools)
    _, text = parse_text_format(request.get("text"))
    reasoning = request.get("reasoning")
    effort, summary = (
        (reasoning.get("effort"), reasoning.get("summary")) if isinstance(reasoning, dict) else (None, None)
    )
    metadata = request.get("metadata")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        metadata = {}

    def pick(key: str, kind: Any, default: Any) -> Any:
        value = request.get(key)
        if isinstance(value, bool) and kind is not bool:
            return default  # JSON true is no number
        return value if isinstance(value, kind) else default

    return {
        "background": False,
        "instructions": instructions_of(request),
        "max_output_tokens": pick("max_output_tokens", int, None),
        "max_tool_calls": pick("max_tool_calls", int, None),
        "parallel_tool_calls": pick("parallel_tool_calls", bool, True),
        "previous_response_id": pick("previous_response_id", str, None),
        "prompt_cache_key": pick("prompt_cache_key", str, None),
        "reasoning": {
            "effort": effort if effort in _ECHO_EFFORTS else None,
            "summary": summary if summary in _SUMMARIES else None,
        },
        "safety_identifier": pick("safety_identifier", str, None),
        "service_tier": "default",
        "store": pick("store", bool, True),
        "temperature": pick("temperature", int | float, 1.0),
        "text": text,
        "tool_choice": tool_choice,
        "tools": tools.echo,
        "top_logprobs": pick("top_logprobs", int, 0),
        "top_p": pick("top_p", int | float, 1.0),
        "truncation": request["truncation"] if request.get("truncation") in ("auto", "disabled") else "disabled",
        "user": pick("user", str, None),
        "metadata": metadata,
    }


def incomplete_reason(finish_reason: Any) -> str | None:
    """Why an answer that stopped for `finish_reason` is incomplete (the SDK's `IncompleteDetails`)."""
    if finish_reason == "length":
        return "max_output_tokens"
    if finish_reason == "content_filter":
        return "content_filter"
    return None


def usage_object(usage: Any) -> dict[str, Any] | None:
    """The pivot's `usage` as a Response's; None when the backend counted nothing."""
    if not isinstance(usage, dict):
        return None

    def count(obj: Any, key: str) -> int:
        return (count_or_none(obj.get(key)) or 0) if isinstance(obj, dict) else 0

    prompt, completion = count(usage, "prompt_tokens"), count(usage, "completion_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": count(usage.get("prompt_tokens_details"), "cached_tokens"),
            "cache_write_tokens": 0,  # required by the SDK's `response_usage.py`; no backend here reports it
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": count(usage.get("completion_tokens_details"), "reasoning_tokens")
        },
        "total_tokens": count(usage, "total_tokens") or prompt + completion,
    }


def response_object(
    meta: ResponseMeta,
    echo: Mapping[str, Any],
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Response object in OpenAI's key order: the fields of the moment, then the request's echo."""
    obj: dict[str, Any] = {
        "id": meta.id,
        "object": "response",
        "created_at": meta.created_at,
        "status": status,
    }
    if status == "completed":
        obj["completed_at"] = int(time.time())
    obj["error"] = error
    obj["incomplete_details"] = {"reason": incomplete} if incomplete else None
    obj["model"] = meta.model
    obj["output"] = output
    obj.update(echo)
    obj["usage"] = usage
    return obj


def _message_item(meta: ResponseMeta, index: int, text: str, refusal: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {
        "id": item_id(meta, "msg", index),
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": content,
    }


def function_call_item(
    meta: ResponseMeta,
    index: int,
    call_id: str,
    pivot_name: str,
    arguments: str,
    names: Mapping[str, tuple[str, str | None]],
    status: str,
) -> dict[str, Any]:
    """A function_call output item; a call of a tool that came in a namespace carries its `namespace`."""
    name, namespace = names.get(pivot_name, (pivot_name, None))
    item: dict[str, Any] = {
        "id": item_id(meta, "fc", index),
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }
    if namespace:
        item["namespace"] = namespace
    return item


def from_pivot(pivot: Any, request: Mapping[str, Any], meta: ResponseMeta) -> dict[str, Any]:
    """A chat completion (the backend's JSON answer) as the Response object the Responses API returns."""
    answer = read_answer(pivot)
    reasoning, text, refusal, calls = answer.reasoning, answer.text, answer.refusal, answer.tool_calls
    names = client_names(request)

    output: list[dict[str, Any]] = []
    if reasoning:
        rs_id = item_id(meta, "rs", len(output))
        output.append({"id": rs_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": reasoning}]})
    if text or refusal:
        output.append(_message_item(meta, len(output), text, refusal))
    for j, call in enumerate(calls):
        fn = call["function"]
        cid, name = call.get("id"), fn.get("name")
        call_id = cid if isinstance(cid, str) and cid else item_id(meta, "call", j)
        name = name if isinstance(name, str) else ""
        args = arguments_to_string(fn.get("arguments"))
        output.append(function_call_item(meta, len(output), call_id, name, args, names, "completed"))

    incomplete = incomplete_reason(answer.finish_reason)
    if incomplete and output:
        output[-1]["status"] = "incomplete"  # the item the cut interrupted
    return response_object(
        meta,
        request_echo(request),
        status="incomplete" if incomplete else "completed",
        output=output,
        usage=usage_object(answer.usage),
        incomplete=incomplete,
    )


def conversation(pivot_request: Mapping[str, Any], response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pivot messages a later request naming `response` as previous_response_id continues from.

    The request's messages without the system message made from `instructions` (OpenAI does not carry
    instructions over to the next response; the Response's echoed `instructions` says whether there was
    one, by the same rule as `to_pivot`), then the answer as one assistant message.
    """
    messages = [dict(m) for m in pivot_request.get("messages") or []]
    if instructions_of(response) is not None and messages and messages[0].get("role") == "system":
        messages.pop(0)
    pivot_names = {
        t["function"]["name"]
        for t in pivot_request.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    }
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            texts.extend(
                p.get("text") or ""
                for p in item.get("content") or []
                if isinstance(p, dict) and p.get("type") == "output_text"
            )
        elif item.get("type") == "function_call":
            name, namespace = item.get("name") or "", item.get("namespace")
            qualified = f"{namespace}__{name}"
            if namespace and qualified in pivot_names:
                name = qualified  # the collision rule of `collect_tools`
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": name, "arguments": item.get("arguments") or ""},
                }
            )
    assistant: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        assistant["tool_calls"] = calls
        if not assistant["content"]:
            assistant["content"] = None
    messages.append(assistant)
    return messages
