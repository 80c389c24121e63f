"""A Responses request as a chat-completions request, the pivot (pure).

`to_pivot` reads `instructions`, `input` items, `tools` and `tool_choice` (`responses_tools`), `text.format`,
`reasoning` and the sampling settings. What the pivot cannot carry is dropped, never refused; what would
silently change the meaning of a request (a file) is a 400 that says so (see `translate.responses`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BadRequest
from .responses_checks import bad_type, missing, opt_bool, opt_int, opt_number, opt_object, opt_str, req_str
from .responses_tools import Tools, collect_tools, parse_tool_choice
from .to_ollama import REASONING_LEVELS
from .to_openai import Dialect, think_params
from .tools import arguments_to_string

__all__ = ["instructions_of", "parse_text_format", "to_pivot"]

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text")
_DETAILS = ("low", "high", "auto")  # the chat API's image detail levels (Responses adds "original")
_VERBOSITY = frozenset({"low", "medium", "high"})


# ------------------------------------------------------------------------------------ text, reasoning
def parse_text_format(text: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """`text` as (the pivot's response_format or None, the `text` to echo)."""
    echo: dict[str, Any] = {"format": {"type": "text"}, "verbosity": "medium"}
    if text is None:
        return None, echo
    if not isinstance(text, dict):
        raise bad_type("text", "an object", text)
    verbosity = text.get("verbosity")
    if verbosity in _VERBOSITY:
        echo["verbosity"] = verbosity
    fmt = opt_object(text, "format", "text.format")
    if fmt is None:
        return None, echo
    kind = fmt.get("type")
    if kind == "text":
        return None, echo
    if kind == "json_object":
        echo["format"] = {"type": "json_object"}
        return {"type": "json_object"}, echo
    if kind == "json_schema":
        name = req_str(fmt, "name", "text.format.name")
        schema = opt_object(fmt, "schema", "text.format.schema")
        if schema is None:
            raise missing("text.format.schema")
        spec: dict[str, Any] = {"name": name, "schema": schema}
        description = opt_str(fmt, "description", "text.format.description")
        if description is not None:
            spec["description"] = description
        strict = fmt.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise bad_type("text.format.strict", "a boolean", strict)
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
        raise bad_type("reasoning", "an object", reasoning)
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
        raise bad_type(f"{where}.content", "a string or an array of content parts", content)
    parts: list[dict[str, Any]] = []
    has_image = False
    for j, part in enumerate(content):
        pw = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise bad_type(pw, "an object", part)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": opt_str(part, "text", f"{pw}.text") or ""})
        elif kind == "refusal":
            parts.append({"type": "text", "text": opt_str(part, "refusal", f"{pw}.refusal") or ""})
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
    url = req_str(part, "image_url", f"{where}.image_url")
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
        raise bad_type(f"{where}.output", "a string or an array of content parts", output)
    texts = []
    for j, part in enumerate(output):
        if not isinstance(part, dict):
            raise bad_type(f"{where}.output[{j}]", "an object", part)
        if part.get("type") in _TEXT_PARTS:
            texts.append(opt_str(part, "text", f"{where}.output[{j}].text") or "")
    return "\n".join(texts)


def _input(value: Any, tools: Tools, out: list[dict[str, Any]]) -> None:
    """`input` items appended to `out` as pivot messages.

    Consecutive function_call items are one assistant message with several tool_calls, joined to the
    assistant text right before them (the chat API's shape of "text, then calls"). A reasoning item in
    between does not separate them: it is dropped (its encrypted content means nothing to another model).
    """
    if isinstance(value, str):
        out.append({"role": "user", "content": value})
        return
    if not isinstance(value, list):
        raise bad_type("input", "a string or an array of input items", value)
    joinable: dict[str, Any] | None = None  # the assistant message the next function_call joins
    unanswered: list[tuple[str, str]] = []  # (call_id, name) of calls without an output yet
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_type(where, "an object", item)
        kind = item.get("type")
        if kind == "message" or (kind is None and "role" in item):
            role = item.get("role")
            if role is None:
                raise missing(f"{where}.role")
            if role not in _ROLES:
                raise BadRequest(
                    f"Invalid value: {role!r}. Supported values are: 'user', 'assistant', 'system', and 'developer'.",
                    param=f"{where}.role",
                )
            msg: dict[str, Any] = {"role": _ROLES[role], "content": _content(item.get("content"), where)}
            out.append(msg)
            joinable = msg if msg["role"] == "assistant" and isinstance(msg["content"], str) else None
        elif kind == "function_call":
            call_id = req_str(item, "call_id", f"{where}.call_id")
            name = req_str(item, "name", f"{where}.name")
            args = item.get("arguments")
            if args is not None and not isinstance(args, str | dict):
                raise bad_type(f"{where}.arguments", "a string", args)
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
            call_id = opt_str(item, "call_id", f"{where}.call_id") or _pair(unanswered, item.get("name"), where)
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
    raise missing(f"{where}.call_id")


def instructions_of(request: Mapping[str, Any]) -> str | None:
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
        raise missing("input")
    instructions = opt_str(body, "instructions", "instructions")
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(dict(m) for m in history)
    tools = collect_tools(body.get("tools"))
    _input(body["input"], tools, messages)

    out: dict[str, Any] = {"model": upstream, "messages": messages}
    choice, _, allowed = parse_tool_choice(body.get("tool_choice"), tools)
    pivot_tools = tools.pivot if allowed is None else [t for t in tools.pivot if t["function"]["name"] in allowed]
    parallel = opt_bool(body, "parallel_tool_calls")
    if pivot_tools:
        # the chat API refuses tool_choice and parallel_tool_calls without tools, so they go only with some
        out["tools"] = pivot_tools
        if choice is not None:
            out["tool_choice"] = choice
        if parallel is not None:
            out["parallel_tool_calls"] = parallel
    max_output = opt_int(body, "max_output_tokens")
    if max_output is not None:
        # OpenAI's chat API refuses max_tokens for its reasoning models; the others know only max_tokens
        out["max_completion_tokens" if dialect == "openai" else "max_tokens"] = max_output
    for key in ("temperature", "top_p"):
        value = opt_number(body, key)
        if value is not None:
            out[key] = value
    response_format, _ = parse_text_format(body.get("text"))
    if response_format is not None:
        out["response_format"] = response_format
    effort = _effort(body.get("reasoning"))
    if effort is not None:
        out.update(think_params(REASONING_LEVELS[effort], dialect))
    stream = opt_bool(body, "stream")
    out["stream"] = bool(stream)
    if stream:
        out["stream_options"] = {"include_usage": True}  # without it a stream's token counts are lost
    return out
