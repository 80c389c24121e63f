"""Anthropic's Messages API to and from the pivot, OpenAI's chat completions (pure).

The oracle of every shape here is the official `anthropic` Python SDK: the request side follows
`anthropic/types/message_create_params.py` and the `*_param.py` TypedDicts it names, the answer side must
validate as `anthropic.types.Message`. The stream side is `streams/pivot_to_anthropic.py`.

Tolerance is the rule on the way in: Claude Code sends fields and block types that only Anthropic's own
servers understand (`cache_control`, `defer_loading`, `context_management`, server tools, `document`
blocks...), so anything unknown is dropped, never a 400. A known field of the wrong type is the client's
mistake and gets a 400 that names it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import BadRequest
from ..jsonutil import count_or_none
from .checks import json_type
from .images import to_bare_base64, to_data_url
from .pivot_answer import read_answer
from .to_openai import Dialect, sampling_params, think_params
from .tools import arguments_to_object, arguments_to_string, synth_call_id

__all__ = [
    "IMAGE_TOKENS",
    "MessageMeta",
    "count_images",
    "count_text",
    "estimate_tokens",
    "from_pivot",
    "message_usage",
    "stop_reason",
    "think_from_anthropic",
    "to_pivot",
    "tool_use_id",
]


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """What the answer says about itself that the pivot does not carry."""

    id: str  # "msg_..."
    model: str  # the name the client asked for


# Text blocks of one turn become one string (the most portable pivot content: every backend and chat
# template takes a string, not all take arrays of text parts); blocks are paragraphs, so a blank line.
_JOIN = "\n\n"

# thinking.budget_tokens to a think level: the budget is a token count (>= 1024 per the SDK's
# `thinking_config_enabled_param.py`), levels are coarse; < 4096 is a quick look, < 16384 a real
# think, anything more (Claude Code sends 31999) the deepest level.
_BUDGET_LOW_BELOW = 4096
_BUDGET_MEDIUM_BELOW = 16384
# `output_config.effort` (low|medium|high|xhigh|max, `output_config_param.py`) to the think levels
# `think_params` knows; it has no level above high, so xhigh and max are both its "max" (= high).
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "max", "max": "max"}

# what a tool_result with is_error says in the pivot, which has no such flag: the model must still hear it
_ERROR_PREFIX = "Error: "


# --------------------------------------------------------------------------------------------- request
def to_pivot(body: Mapping[str, Any], upstream: str, *, dialect: Dialect) -> dict[str, Any]:
    """A POST /v1/messages body as a POST /chat/completions body for the `upstream` model."""
    pivot: dict[str, Any] = {"model": upstream, "messages": _messages(body)}
    tools = _tools(body.get("tools"))
    if tools:
        pivot["tools"] = tools
        pivot.update(_tool_choice(body.get("tool_choice"), tools, dialect))
    pivot.update(sampling_params(_options(body), dialect))
    pivot.update(think_params(think_from_anthropic(body), dialect))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"stream must be a boolean, not {json_type(stream)}", param="stream")
    pivot["stream"] = bool(stream)
    if stream:
        # usage arrives in a final chunk only when asked for; message_delta needs it
        pivot["stream_options"] = {"include_usage": True}
    return pivot


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling fields, checked under their Anthropic names, as the Ollama-style options that
    `sampling_params` maps per dialect (top_k only where the backend takes it)."""
    opts: dict[str, Any] = {}
    max_tokens = body.get("max_tokens")  # required by Anthropic; tolerated absent (the backend's default)
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise BadRequest(f"max_tokens must be an integer, not {json_type(max_tokens)}", param="max_tokens")
        if max_tokens < 1:
            raise BadRequest("max_tokens must be at least 1", param="max_tokens")
        opts["num_predict"] = max_tokens
    for key in ("temperature", "top_p", "top_k"):
        v = body.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BadRequest(f"{key} must be a number, not {json_type(v)}", param=key)
        if key == "top_k":
            if v != int(v):
                raise BadRequest("top_k must be an integer", param=key)
            v = int(v)
        opts[key] = v
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop_sequences must be a list of strings", param="stop_sequences")
        opts["stop"] = stop
    return opts


def think_from_anthropic(body: Mapping[str, Any]) -> bool | str | None:
    """`thinking` (and `output_config.effort`) as the think value every front maps to (see `think_params`).

    {type: enabled, budget_tokens} -> a level by budget (< 4096 low, < 16384 medium, else high);
    {type: adaptive} -> the effort level when `output_config.effort` names one, else True; {type:
    between_tools} -> True; {type: disabled} -> False; absent or an unknown type -> None (no switch sent).
    """
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        raise BadRequest(f"thinking must be an object, not {json_type(thinking)}", param="thinking")
    kind = thinking.get("type")
    if kind == "disabled":
        return False
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is None:
            return True
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise BadRequest(
                f"thinking.budget_tokens must be an integer, not {json_type(budget)}", param="thinking.budget_tokens"
            )
        if budget < _BUDGET_LOW_BELOW:
            return "low"
        return "medium" if budget < _BUDGET_MEDIUM_BELOW else "high"
    if kind == "adaptive":
        config = body.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        return _EFFORTS.get(effort, True) if isinstance(effort, str) else True
    if kind == "between_tools":
        return True
    return None


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("messages is required: a list of {role, content} turns", param="messages")
    if not isinstance(messages, list):
        raise BadRequest(f"messages must be a list, not {json_type(messages)}", param="messages")
    if not messages:
        raise BadRequest("messages must hold at least one message", param="messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"{where} must be an object with 'role' and 'content', not {json_type(m)}", param=where)
        role = m.get("role")
        if role not in ("user", "assistant", "system"):
            got = "missing" if role is None else repr(role)
            raise BadRequest(f"{where}.role must be 'user' or 'assistant' (got {got})", param=f"{where}.role")
        content = m.get("content")
        if isinstance(content, str):
            blocks: list[Any] = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = content
        else:
            got = "missing" if content is None else json_type(content)
            raise BadRequest(
                f"{where}.content must be a string or a list of content blocks ({got})", param=f"{where}.content"
            )
        if role == "system":
            # a system turn inside messages (Claude Code sends one to some models): a system message in place
            out.append({"role": "system", "content": _system_text(content, f"{where}.content")})
        elif role == "user":
            out.extend(_user_turn(blocks, where))
        else:
            out.append(_assistant_turn(blocks, where, i))
    return out


def _system_text(system: Any, where: str) -> str:
    """`system` as a string: it is one, or a list of text blocks (whose cache_control means nothing here)."""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise BadRequest(f"{where} must be a string or a list of text blocks, not {json_type(system)}", param=where)
    texts = []
    for j, block in enumerate(system):
        block_where = f"{where}[{j}]"
        if not isinstance(block, dict):
            raise BadRequest(f"{block_where} must be a text block object, not {json_type(block)}", param=block_where)
        if block.get("type", "text") == "text":
            texts.append(_text(block, block_where))
    return _JOIN.join(t for t in texts if t)


def _text(block: Mapping[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"{where}.text must be a string, not {json_type(text)}", param=f"{where}.text")
    return text


def _block(block: Any, where: str) -> dict[str, Any]:
    if not isinstance(block, dict):
        raise BadRequest(f"{where} must be a content block object, not {json_type(block)}", param=where)
    return block


def _image_part(source: Any, where: str) -> dict[str, Any] | None:
    """An image block's source as an image_url part; a `file` source (Files API id) cannot be fetched: None."""
    if not isinstance(source, dict):
        raise BadRequest(f"{where}.source must be an object, not {json_type(source)}", param=f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise BadRequest(f"{where}.source.data must be a base64 string", param=f"{where}.source.data")
        media = source.get("media_type")
        if isinstance(media, str) and media:
            url = f"data:{media};base64,{data}"
        else:  # the SDK requires media_type; without one the bytes say what the image is
            url = to_data_url(to_bare_base64(data, f"{where}.source.data"))
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "url":
        link = source.get("url")
        if not isinstance(link, str) or not link:
            raise BadRequest(f"{where}.source.url must be a string", param=f"{where}.source.url")
        return {"type": "image_url", "image_url": {"url": link}}
    return None


def _carried_text(block: Mapping[str, Any]) -> str:
    """The plain text a `document` (text or content source) or `search_result` block carries, else ""."""
    kind = block.get("type")
    if kind == "document":
        source = block.get("source")
        if not isinstance(source, dict):
            return ""
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            body: str = source["data"]
        elif source.get("type") == "content":
            body = _texts_of(source.get("content"))
        else:
            return ""  # a PDF (base64, url, file): not text the pivot can carry
        title = block.get("title")
        return f"{title}\n\n{body}" if isinstance(title, str) and title and body else body
    if kind == "search_result":
        return _texts_of(block.get("content"))
    return ""


def _texts_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return _JOIN.join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))


def _user_turn(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """One user turn: its tool results first, as `tool` messages (they must follow the assistant's calls
    in the pivot), then one user message with the rest (text, images, images from the tool results)."""
    tools: list[dict[str, Any]] = []
    tool_images: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, raw in enumerate(blocks):
        block_where = f"{where}.content[{j}]"
        block = _block(raw, block_where)
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, block_where)})
        elif kind == "image":
            image = _image_part(block.get("source"), block_where)
            if image is not None:
                parts.append(image)
        elif kind == "tool_result":
            tools.append(_tool_result(block, block_where, tool_images))
        else:
            text = _carried_text(block)
            if text:
                parts.append({"type": "text", "text": text})
            # anything else (tool_reference, container_upload, server tool results, unknown): dropped
    parts = tool_images + parts
    if not parts:
        return tools if tools else [{"role": "user", "content": ""}]
    if all(p["type"] == "text" for p in parts):
        return [*tools, {"role": "user", "content": _JOIN.join(p["text"] for p in parts if p["text"])}]
    return [*tools, {"role": "user", "content": [p for p in parts if p["type"] != "text" or p["text"]]}]


def _tool_result(block: Mapping[str, Any], where: str, images: list[dict[str, Any]]) -> dict[str, Any]:
    """A tool_result as a pivot `tool` message. Its content is text only (OpenAI's tool messages take no
    images), so its images go to `images`, for the user message that follows."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.tool_use_id must be a string", param=f"{where}.tool_use_id")
    content = block.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
    elif isinstance(content, list):
        texts = []
        for k, raw in enumerate(content):
            inner_where = f"{where}.content[{k}]"
            inner = _block(raw, inner_where)
            kind = inner.get("type")
            if kind == "text":
                texts.append(_text(inner, inner_where))
            elif kind == "image":
                image = _image_part(inner.get("source"), inner_where)
                if image is not None:
                    images.append(image)
            else:
                texts.append(_carried_text(inner))
        text = _JOIN.join(t for t in texts if t)
    else:
        raise BadRequest(
            f"{where}.content must be a string or a list of blocks, not {json_type(content)}", param=f"{where}.content"
        )
    if block.get("is_error") is True:
        text = _ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _assistant_turn(blocks: list[Any], where: str, i: int) -> dict[str, Any]:
    """An assistant turn: its text and tool_use blocks. Thinking is dropped (its signature means nothing
    to another model), and so are server tool blocks (the server ran them; the pivot has no such call)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, raw in enumerate(blocks):
        block_where = f"{where}.content[{j}]"
        block = _block(raw, block_where)
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block, block_where))
        elif kind == "tool_use":
            name = block.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{block_where}.name must be a string", param=f"{block_where}.name")
            call_id = block.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = synth_call_id(i, j, name)
            args = block.get("input")
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments_to_string(args)},
                }
            )
    text = _JOIN.join(t for t in texts if t)
    msg: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Client tools as pivot function tools. A server tool (any `type` but "custom": web_search_*, bash_*,
    text_editor_*, ...) runs on Anthropic's side and has no meaning here: dropped, as are the keys only
    Anthropic reads (cache_control, defer_loading, input_examples, strict, eager_input_streaming)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest(f"tools must be a list, not {json_type(tools)}", param="tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"{where} must be an object, not {json_type(tool)}", param=where)
        if tool.get("type") not in (None, "custom"):
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}.name must be a string", param=f"{where}.name")
        schema = tool.get("input_schema")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        elif not isinstance(schema, dict):
            raise BadRequest(f"{where}.input_schema must be an object", param=f"{where}.input_schema")
        fn: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if isinstance(description, str) and description:
            fn["description"] = description
        fn["parameters"] = schema
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, tools: list[dict[str, Any]], dialect: Dialect) -> dict[str, Any]:
    """`tool_choice` (`tool_choice_param.py`) as the pivot's; `tools` may be narrowed in place.

    auto -> "auto", any -> "required", none -> "none", tool -> that function; disable_parallel_tool_use ->
    parallel_tool_calls false. llama.cpp's server takes only the strings auto/none/required
    (`common_chat_tool_choice_parse_oaicompat` in common/chat.cpp), so there a named tool is "required" with
    the tools narrowed to that one. A name that is not a client tool (a dropped server tool) leaves the choice
    to the model.
    """
    if choice is None:
        return {}
    if not isinstance(choice, dict):
        raise BadRequest(f"tool_choice must be an object, not {json_type(choice)}", param="tool_choice")
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        return {"tool_choice": "none"}
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("tool_choice.name must be a string when its type is 'tool'", param="tool_choice.name")
        named = [t for t in tools if t["function"]["name"] == name]
        if named:
            if dialect == "llama.cpp":
                tools[:] = named
                out["tool_choice"] = "required"
            else:
                out["tool_choice"] = {"type": "function", "function": {"name": name}}
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


# ---------------------------------------------------------------------------------------------- answer
def stop_reason(finish_reason: Any, has_tool_calls: bool) -> str:
    """The pivot's finish_reason as Anthropic's stop_reason (`stop_reason.py`). Tool calls say tool_use even
    when a backend ends them with "stop" (Ollama does), since clients run tools on that value; which stop
    sequence ended the text the pivot does not say, so stop_sequence is never reported."""
    if finish_reason == "length":
        return "max_tokens"
    if finish_reason == "content_filter":
        return "refusal"
    if finish_reason in ("tool_calls", "function_call") or has_tool_calls:
        return "tool_use"
    return "end_turn"


def message_usage(usage: Any) -> dict[str, int]:
    """The pivot's usage as Anthropic's. Anthropic's input_tokens exclude cache reads (the total input is
    input + cache_creation + cache_read, per `usage.py`), so a backend's cached_tokens are moved there."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = count_or_none(usage.get("prompt_tokens")) or 0
    details = usage.get("prompt_tokens_details")
    cached = count_or_none(details.get("cached_tokens")) if isinstance(details, dict) else None
    cached = cached if cached is not None and 0 < cached <= prompt else 0
    return {
        "input_tokens": prompt - cached,
        "output_tokens": count_or_none(usage.get("completion_tokens")) or 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def tool_use_id(meta: MessageMeta, n: int) -> str:
    """An id for the n-th tool call of a message when the backend gave none: unique per message, and shaped
    like Anthropic's (toolu_...)."""
    return f"toolu_{meta.id.removeprefix('msg_')}_{n}"


def from_pivot(pivot: Any, meta: MessageMeta) -> dict[str, Any]:
    """A chat completion as a Message (`anthropic.types.Message`). Tool arguments that are not a JSON object
    are kept, not lost: broken JSON under "arguments", another JSON value under "value" (`arguments_to_object`)."""
    answer = read_answer(pivot)
    content: list[dict[str, Any]] = []
    if answer.reasoning:
        content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    for n, call in enumerate(answer.tool_calls):
        fn = call["function"]
        call_id, name = call.get("id"), fn.get("name")
        content.append(
            {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else tool_use_id(meta, n),
                "name": name if isinstance(name, str) else "",
                "input": arguments_to_object(fn.get("arguments")),
            }
        )
    return {
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": content,
        "stop_reason": stop_reason(answer.finish_reason, bool(answer.tool_calls)),
        "stop_sequence": None,
        "usage": message_usage(answer.usage),
    }


# ------------------------------------------------------------------------------------------ count_tokens
# One image's tokens when nothing can count them: Anthropic's vision guide puts an image at about
# width*height/750 tokens, ~1600 for the largest it takes without resizing (1.15 megapixels).
IMAGE_TOKENS = 1600
# Per message framing (role markers, separators): OpenAI's cookbook "How to count tokens with tiktoken"
# counts 3 tokens per message for its chat models, plus 3 priming the reply.
_PER_MESSAGE = 3
_CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and code with BPE tokenizers


def _pivot_for_count(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # what the backend will be sent is what is counted (dropped blocks and server tools are not)
    return _messages(body), _tools(body.get("tools"))


def _message_texts(msg: Mapping[str, Any]) -> list[str]:
    out = []
    content = msg.get("content")
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        out.extend(p["text"] for p in content if p.get("type") == "text")
    for call in msg.get("tool_calls") or ():
        out.append(call["function"]["name"])
        out.append(call["function"]["arguments"])
    return [t for t in out if t]


def _text_of(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    texts = [t for msg in messages for t in _message_texts(msg)]
    texts.extend(orjson.dumps(t["function"]).decode() for t in tools)
    return "\n".join(texts)


def _images_in(messages: list[dict[str, Any]]) -> int:
    return sum(
        1
        for msg in messages
        if isinstance(msg.get("content"), list)
        for part in msg["content"]
        if part.get("type") == "image_url"
    )


def count_text(body: Mapping[str, Any]) -> str:
    """The text whose tokens POST /v1/messages/count_tokens counts, for a backend with a tokenizer: the
    system prompt, every message's text, tool inputs and results, and the tool definitions as JSON, one per
    line. Images are not text: `count_images` says how many to add `IMAGE_TOKENS` for."""
    return _text_of(*_pivot_for_count(body))


def count_images(body: Mapping[str, Any]) -> int:
    """How many images the backend will be sent (in user turns and tool results)."""
    return _images_in(_messages(body))


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """The input tokens of a Messages body for a backend without a tokenizer, an estimate:
    ceil(chars / 4) of `count_text` (the 4-characters-a-token rule of thumb of BPE tokenizers), plus 3 a
    message and 3 for the reply (OpenAI's tiktoken cookbook), plus `IMAGE_TOKENS` an image."""
    messages, tools = _pivot_for_count(body)
    chars = len(_text_of(messages, tools))
    return (
        math.ceil(chars / _CHARS_PER_TOKEN) + _PER_MESSAGE * (len(messages) + 1) + IMAGE_TOKENS * _images_in(messages)
    )
