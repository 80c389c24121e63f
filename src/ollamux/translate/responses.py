"""OpenAI's Responses API to and from the pivot, the chat-completions shape (pure).

A Responses request becomes one chat request (`to_pivot`); the chat answer becomes one Response object
(`from_pivot`); `conversation` keeps what a later request naming this one as `previous_response_id`
continues from. The streamed answer is `streams.pivot_to_responses`, built on the helpers here
(`request_echo`, `response_object`, `item_id`, `usage_object`, `client_names`), so both give the same
object.

The oracle of every shape is the official `openai` Python SDK: `types/responses/response_create_params.py`
and `response_input_item_param.py` for what a client sends, `types/responses/response.py` and the item
types it names for what it validates back. Error wording is OpenAI's own ("Missing required parameter:
'input'.", "Invalid type for ...") because clients and people search for it.

What the pivot cannot carry is dropped, never refused: Codex and new SDKs send item and tool types this
module does not know (web_search, local_shell, mcp, custom tools; reasoning and item_reference items),
and a 400 for them would make the client unusable. What would silently change the meaning of a request
(a file) is a 400 that says so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest, UpstreamError
from .checks import json_type, opt_field
from .to_ollama import REASONING_LEVELS
from .to_openai import Dialect, think_params
from .tools import arguments_to_string

__all__ = [
    "ResponseMeta",
    "client_names",
    "conversation",
    "from_pivot",
    "function_call_item",
    "incomplete_reason",
    "item_id",
    "request_echo",
    "response_object",
    "to_pivot",
    "usage_object",
]


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    id: str  # "resp_..."
    created_at: int
    model: str  # the name the client asked for


_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TOOL_CHOICES = ("auto", "none", "required")
_TEXT_PARTS = ("input_text", "output_text", "text")
_DETAILS = ("low", "high", "auto")  # the chat API's image detail levels (Responses adds "original")
# the efforts the SDK's `shared/reasoning.py` validates when echoed; REASONING_LEVELS also takes "ultra"
_ECHO_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
_SUMMARIES = frozenset({"auto", "concise", "detailed"})
_VERBOSITY = frozenset({"low", "medium", "high"})
# a tool without parameters still gets a schema: some chat templates iterate `parameters.properties`
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


# ------------------------------------------------------------------------------------ request checks
def _bad_type(param: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.", param=param
    )


def _missing(param: str) -> BadRequest:
    return BadRequest(f"Missing required parameter: '{param}'.", param=param)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _opt_str(obj: Mapping[str, Any], key: str, param: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _bad_type(param, "a string", value)


def _req_str(obj: Mapping[str, Any], key: str, param: str) -> str:
    value = _opt_str(obj, key, param)
    if not value:
        raise _missing(param)
    return value


def _opt_number(body: Mapping[str, Any], key: str) -> float | int | None:
    value = body.get(key)
    if value is None or _is_number(value):
        return value
    raise _bad_type(key, "a number", value)


def _opt_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _bad_type(key, "an integer", value)


def _opt_bool(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _bad_type(key, "a boolean", value)


def _opt_object(body: Mapping[str, Any], key: str, param: str | None = None) -> Mapping[str, Any] | None:
    value = body.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise _bad_type(param or key, "an object", value)


# -------------------------------------------------------------------------------------------- tools
@dataclass(slots=True)
class _Tools:
    pivot: list[dict[str, Any]] = field(default_factory=list)  # chat function tools, in order
    names: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # pivot name -> (name, namespace)
    echo: list[dict[str, Any]] = field(default_factory=list)  # the function tools as the client sent them

    def pivot_name(self, name: str, namespace: str | None) -> str:
        """The pivot name of a client's (name, namespace): the name itself unless a collision qualified it."""
        if namespace:
            for pivot, ident in self.names.items():
                if ident == (name, namespace):
                    return pivot
        return name

    def pivot_names(self, name: str) -> list[str]:
        """Every pivot tool whose own name is `name` (a tool_choice names tools without their namespace)."""
        return [pivot for pivot, (own, _) in self.names.items() if own == name]


def _function_tool(t: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A Responses function tool (flat: name, description, parameters, strict) as the chat API's."""
    name = _req_str(t, "name", f"{where}.name")
    fn: dict[str, Any] = {"name": name}
    description = _opt_str(t, "description", f"{where}.description")
    if description is not None:
        fn["description"] = description
    parameters = _opt_object(t, "parameters", f"{where}.parameters")
    fn["parameters"] = parameters if parameters is not None else _NO_PARAMETERS
    strict = t.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise _bad_type(f"{where}.strict", "a boolean", strict)
        fn["strict"] = strict
    return fn


def _collect_tools(value: Any) -> _Tools:
    """`tools`: function tools, and the function tools inside namespaces, as pivot function tools.

    Codex sends `{"type": "namespace", "name": "mcp__server", "tools": [{"type": "function", ...}]}` (the
    SDK's `types/responses/namespace_tool.py`); the chat API has no namespaces, so nested functions are
    flattened under their own names, and `names` remembers the namespace, because the client expects a
    call of one back with its `namespace` set (the SDK's `lib/_parsing/_responses.py` looks a call up by
    name and namespace). A nested name that is already taken is qualified as `<namespace>__<name>`.
    Every other tool type (web_search, file_search, computer_use, custom, local_shell, mcp...) is
    served by OpenAI itself or by a grammar the pivot cannot carry: dropped.
    """
    tools = _Tools()
    if value is None:
        return tools
    if not isinstance(value, list):
        raise _bad_type("tools", "an array", value)
    found: list[tuple[dict[str, Any], str | None]] = []
    for i, t in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(t, dict):
            raise _bad_type(where, "an object", t)
        kind = t.get("type")
        if kind == "function":
            found.append((_function_tool(t, where), None))
            tools.echo.append(t)
        elif kind == "namespace":
            namespace = _req_str(t, "name", f"{where}.name")
            nested = t.get("tools")
            if not isinstance(nested, list):
                raise _bad_type(f"{where}.tools", "an array", nested)
            for j, sub in enumerate(nested):
                if isinstance(sub, dict) and sub.get("type") == "function":
                    found.append((_function_tool(sub, f"{where}.tools[{j}]"), namespace))
    # top-level functions keep their names whatever comes before them; a nested one yields on a collision
    top = {fn["name"] for fn, ns in found if ns is None}
    for fn, ns in found:
        own = fn["name"]
        pivot = own
        if ns and (own in top or own in tools.names):
            pivot = f"{ns}__{own}"
        if pivot in tools.names:
            continue  # the same function twice: the first one stands
        tools.names[pivot] = (own, ns)
        tools.pivot.append({"type": "function", "function": {**fn, "name": pivot}})
    return tools


def client_names(request: Mapping[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Pivot tool name -> (name, namespace) as the client knows the tool, for the calls of an answer."""
    return _collect_tools(request.get("tools")).names


def _tool_choice(value: Any, tools: _Tools) -> tuple[Any, Any, set[str] | None]:
    """`tool_choice` as (the pivot's, the one to echo, the pivot tools it allows or None for all).

    A choice of a tool type that was dropped (web_search, mcp, custom...) becomes "auto": the model may
    still answer, just without that tool. `allowed_tools` narrows the pivot's tool list (local backends
    know no such choice) and keeps its mode.
    """
    if value is None:
        return None, "auto", None
    if isinstance(value, str):
        if value not in _TOOL_CHOICES:
            raise BadRequest(
                f"Invalid value: '{value}'. Supported values are: 'none', 'auto', and 'required'.", param="tool_choice"
            )
        return value, value, None
    if not isinstance(value, dict):
        raise _bad_type("tool_choice", "a string or an object", value)
    kind = value.get("type")
    if kind == "function":
        name = _req_str(value, "name", "tool_choice.name")
        pivots = tools.pivot_names(name)
        if not pivots:
            raise BadRequest(
                f"Invalid value for 'tool_choice': no function named '{name}' in 'tools'.", param="tool_choice"
            )
        return {"type": "function", "function": {"name": pivots[0]}}, {"type": "function", "name": name}, None
    if kind == "allowed_tools":
        mode = value.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise BadRequest(
                f"Invalid value: '{mode}'. Supported values are: 'auto' and 'required'.", param="tool_choice.mode"
            )
        listed = value.get("tools")
        if not isinstance(listed, list):
            raise _bad_type("tool_choice.tools", "an array", listed)
        allowed: set[str] = set()
        for t in listed:
            if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str):
                allowed.update(tools.pivot_names(t["name"]))
        return mode, {"type": "allowed_tools", "mode": mode, "tools": listed}, allowed
    return "auto", "auto", None


# ------------------------------------------------------------------------------------ text, reasoning
def _text_format(text: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """`text` as (the pivot's response_format or None, the `text` to echo)."""
    echo: dict[str, Any] = {"format": {"type": "text"}, "verbosity": "medium"}
    if text is None:
        return None, echo
    if not isinstance(text, dict):
        raise _bad_type("text", "an object", text)
    verbosity = text.get("verbosity")
    if verbosity in _VERBOSITY:
        echo["verbosity"] = verbosity
    fmt = _opt_object(text, "format", "text.format")
    if fmt is None:
        return None, echo
    kind = fmt.get("type")
    if kind == "text":
        return None, echo
    if kind == "json_object":
        echo["format"] = {"type": "json_object"}
        return {"type": "json_object"}, echo
    if kind == "json_schema":
        name = _req_str(fmt, "name", "text.format.name")
        schema = _opt_object(fmt, "schema", "text.format.schema")
        if schema is None:
            raise _missing("text.format.schema")
        spec: dict[str, Any] = {"name": name, "schema": schema}
        description = _opt_str(fmt, "description", "text.format.description")
        if description is not None:
            spec["description"] = description
        strict = fmt.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise _bad_type("text.format.strict", "a boolean", strict)
            spec["strict"] = strict
        echo["format"] = {"type": "json_schema", **spec}
        return {"type": "json_schema", "json_schema": spec}, echo
    raise BadRequest(
        f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and 'json_schema'.",
        param="text.format.type",
    )


def _effort(reasoning: Any) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise _bad_type("reasoning", "an object", reasoning)
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in REASONING_LEVELS:
        allowed = ", ".join(f"'{k}'" for k in REASONING_LEVELS)
        raise BadRequest(f"Invalid value: {effort!r}. Supported values are: {allowed}.", param="reasoning.effort")
    return effort


# ---------------------------------------------------------------------------------------------- input
def _content(content: Any, where: str) -> Any:
    """A message's content (a string or parts) as the pivot's: a string, or parts when there are images.

    Several text parts are joined by a newline, as vLLM joins text parts for a chat template
    (`vllm/entrypoints/chat_utils.py`), so a backend that takes only strings gets the same text.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad_type(f"{where}.content", "a string or an array of content parts", content)
    parts: list[dict[str, Any]] = []
    has_image = False
    for j, part in enumerate(content):
        pw = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _bad_type(pw, "an object", part)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": _opt_str(part, "text", f"{pw}.text") or ""})
        elif kind == "refusal":
            parts.append({"type": "text", "text": _opt_str(part, "refusal", f"{pw}.refusal") or ""})
        elif kind == "input_image":
            parts.append(_image(part, pw))
            has_image = True
        elif kind == "input_file":
            raise BadRequest("File inputs are not supported by this server; send the text of the file.", param=pw)
        # any other part type (audio, a future one) cannot be carried: dropped
    if has_image:
        return parts
    return "\n".join(p["text"] for p in parts)


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    if part.get("file_id") is not None:
        raise BadRequest(
            "Files are not supported by this server: send the image as 'image_url' (a URL or a data: URL) "
            "instead of a 'file_id'.",
            param=f"{where}.file_id",
        )
    url = _req_str(part, "image_url", f"{where}.image_url")
    image: dict[str, Any] = {"url": url}
    detail = part.get("detail")
    if detail in _DETAILS:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _tool_output(output: Any, where: str) -> str:
    """A function_call_output's output: a string, or parts whose text is kept (images and files of a
    tool's output cannot go into a chat `tool` message)."""
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise _bad_type(f"{where}.output", "a string or an array of content parts", output)
    texts = []
    for j, part in enumerate(output):
        if not isinstance(part, dict):
            raise _bad_type(f"{where}.output[{j}]", "an object", part)
        if part.get("type") in _TEXT_PARTS:
            texts.append(_opt_str(part, "text", f"{where}.output[{j}].text") or "")
    return "\n".join(texts)


def _input(value: Any, tools: _Tools, out: list[dict[str, Any]]) -> None:
    """`input` items appended to `out` as pivot messages.

    Consecutive function_call items are one assistant message with several tool_calls, joined to the
    assistant text right before them (the chat API's shape of "text, then calls"). A reasoning item in
    between does not separate them: it is dropped (its encrypted content means nothing to another model).
    """
    if isinstance(value, str):
        out.append({"role": "user", "content": value})
        return
    if not isinstance(value, list):
        raise _bad_type("input", "a string or an array of input items", value)
    joinable: dict[str, Any] | None = None  # the assistant message the next function_call joins
    unanswered: list[tuple[str, str]] = []  # (call_id, name) of calls without an output yet
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad_type(where, "an object", item)
        kind = item.get("type")
        if kind == "message" or (kind is None and "role" in item):
            role = item.get("role")
            if role is None:
                raise _missing(f"{where}.role")
            if role not in _ROLES:
                raise BadRequest(
                    f"Invalid value: {role!r}. Supported values are: 'user', 'assistant', 'system', and 'developer'.",
                    param=f"{where}.role",
                )
            msg: dict[str, Any] = {"role": _ROLES[role], "content": _content(item.get("content"), where)}
            out.append(msg)
            joinable = msg if msg["role"] == "assistant" and isinstance(msg["content"], str) else None
        elif kind == "function_call":
            call_id = _req_str(item, "call_id", f"{where}.call_id")
            name = _req_str(item, "name", f"{where}.name")
            args = item.get("arguments")
            if args is not None and not isinstance(args, str | dict):
                raise _bad_type(f"{where}.arguments", "a string", args)
            namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": tools.pivot_name(name, namespace), "arguments": arguments_to_string(args)},
            }
            unanswered.append((call_id, name))
            if joinable is None:
                joinable = {"role": "assistant", "content": None}
                out.append(joinable)
            joinable.setdefault("tool_calls", []).append(call)
            if not joinable["content"]:
                joinable["content"] = None
        elif kind == "function_call_output":
            call_id = _opt_str(item, "call_id", f"{where}.call_id") or _pair(unanswered, item.get("name"), where)
            unanswered[:] = [c for c in unanswered if c[0] != call_id]
            content = _tool_output(item.get("output"), where)
            out.append({"role": "tool", "tool_call_id": call_id, "content": content})
            joinable = None
        # reasoning, item_reference and every item type of a hosted tool: dropped


def _pair(unanswered: list[tuple[str, str]], name: Any, where: str) -> str:
    """The call an output without `call_id` answers (the SDK's `FunctionCallOutput.call_id` is optional):
    the oldest unanswered call of its `name`, else the oldest unanswered one."""
    for cid, cname in unanswered:
        if cname == name:
            return cid
    if unanswered:
        return unanswered[0][0]
    raise _missing(f"{where}.call_id")


def _instructions(request: Mapping[str, Any]) -> str | None:
    """The instructions that become the leading system message: a non-empty string, else none.

    The one rule both `to_pivot` (which writes that message) and `conversation` (which drops it again,
    knowing it from the Response's echoed `instructions`) follow, so no marker travels in the pivot.
    """
    value = request.get("instructions")
    return value if isinstance(value, str) and value else None


def to_pivot(
    body: Mapping[str, Any],
    upstream: str,
    *,
    dialect: Dialect,
    history: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A Responses request as a chat-completions request body for `upstream`.

    `history` holds the pivot messages of the exchange `previous_response_id` names (`conversation`):
    they come after this request's instructions, which, as in OpenAI's API, replace the earlier ones.
    """
    if "input" not in body or body["input"] is None:
        raise _missing("input")
    instructions = _opt_str(body, "instructions", "instructions")
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(dict(m) for m in history)
    tools = _collect_tools(body.get("tools"))
    _input(body["input"], tools, messages)

    out: dict[str, Any] = {"model": upstream, "messages": messages}
    choice, _, allowed = _tool_choice(body.get("tool_choice"), tools)
    pivot_tools = tools.pivot if allowed is None else [t for t in tools.pivot if t["function"]["name"] in allowed]
    parallel = _opt_bool(body, "parallel_tool_calls")
    if pivot_tools:
        # the chat API refuses tool_choice and parallel_tool_calls without tools, so they go only with some
        out["tools"] = pivot_tools
        if choice is not None:
            out["tool_choice"] = choice
        if parallel is not None:
            out["parallel_tool_calls"] = parallel
    max_output = _opt_int(body, "max_output_tokens")
    if max_output is not None:
        # OpenAI's chat API refuses max_tokens for its reasoning models; the others know only max_tokens
        out["max_completion_tokens" if dialect == "openai" else "max_tokens"] = max_output
    for key in ("temperature", "top_p"):
        value = _opt_number(body, key)
        if value is not None:
            out[key] = value
    response_format, _ = _text_format(body.get("text"))
    if response_format is not None:
        out["response_format"] = response_format
    effort = _effort(body.get("reasoning"))
    if effort is not None:
        out.update(think_params(REASONING_LEVELS[effort], dialect))
    stream = _opt_bool(body, "stream")
    out["stream"] = bool(stream)
    if stream:
        out["stream_options"] = {"include_usage": True}  # without it a stream's token counts are lost
    return out


# --------------------------------------------------------------------------------------------- answer
def item_id(meta: ResponseMeta, prefix: str, index: int) -> str:
    """A deterministic id for output item `index` ("msg", "rs", "fc") or call ("call") of a response."""
    return f"{prefix}_{meta.id.removeprefix('resp_')}_{index}"


def request_echo(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request's settings as a Response repeats them, with OpenAI's defaults where the client sent
    none (the example objects of OpenAI's API reference: temperature 1.0, top_p 1.0, store true...)."""
    tools = _collect_tools(request.get("tools"))
    _, tool_choice, _ = _tool_choice(request.get("tool_choice"), tools)
    _, text = _text_format(request.get("text"))
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
        "instructions": _instructions(request),
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
        value = obj.get(key) if isinstance(obj, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

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


def from_pivot(pivot: Mapping[str, Any], request: Mapping[str, Any], meta: ResponseMeta) -> dict[str, Any]:
    """A chat completion (the backend's JSON answer) as the Response object the Responses API returns."""
    pivot = dict(pivot)
    if pivot.get("error") is not None:
        err = pivot["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise UpstreamError(str(msg or "backend returned an error"), status=502)
    choices = opt_field(pivot, "choices", list, "a chat completion")
    if not choices or not isinstance(choices[0], dict):
        raise UpstreamError("backend sent a chat completion without a choice", status=502)
    choice = choices[0]
    message = opt_field(choice, "message", dict, "a chat completion choice") or {}
    reasoning = opt_field(message, "reasoning_content", str, "a message") or opt_field(
        message, "reasoning", str, "a message"
    )
    text = opt_field(message, "content", str, "a message") or ""
    refusal = opt_field(message, "refusal", str, "a message")
    calls = opt_field(message, "tool_calls", list, "a message") or []
    names = client_names(request)

    output: list[dict[str, Any]] = []
    if reasoning:
        rs_id = item_id(meta, "rs", len(output))
        output.append({"id": rs_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": reasoning}]})
    if text or refusal:
        output.append(_message_item(meta, len(output), text, refusal))
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise UpstreamError(f"backend sent a tool call without a function (tool_calls[{j}])", status=502)
        cid, name = call.get("id"), fn.get("name")
        call_id = cid if isinstance(cid, str) and cid else item_id(meta, "call", j)
        name = name if isinstance(name, str) else ""
        args = arguments_to_string(fn.get("arguments"))
        output.append(function_call_item(meta, len(output), call_id, name, args, names, "completed"))

    incomplete = incomplete_reason(choice.get("finish_reason"))
    if incomplete and output:
        output[-1]["status"] = "incomplete"  # the item the cut interrupted
    return response_object(
        meta,
        request_echo(request),
        status="incomplete" if incomplete else "completed",
        output=output,
        usage=usage_object(pivot.get("usage")),
        incomplete=incomplete,
    )


def conversation(pivot_request: Mapping[str, Any], response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pivot messages a later request naming `response` as previous_response_id continues from.

    The request's messages without the system message made from `instructions` (OpenAI does not carry
    instructions over to the next response; the Response's echoed `instructions` says whether there was
    one, by the same rule as `to_pivot`), then the answer as one assistant message.
    """
    messages = [dict(m) for m in pivot_request.get("messages") or []]
    if _instructions(response) is not None and messages and messages[0].get("role") == "system":
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
                name = qualified  # the collision rule of `_collect_tools`
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
