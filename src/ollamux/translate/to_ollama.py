"""OpenAI requests to Ollama's native API (pure): field for field what Ollama's own `/v1` layer does.

`/v1/chat/completions` -> `/api/chat`, `/v1/completions` -> `/api/generate` (raw: an OpenAI prompt is
the model's input as is), `/v1/embeddings` -> `/api/embed`. Error messages are Ollama's own wording,
because clients and people search for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest
from .tools import arguments_to_object

__all__ = [
    "REASONING_LEVELS",
    "chat_request",
    "completion_request",
    "embed_request",
    "encoding_format",
    "go_type",
    "stream_flag",
    "think_value",
]

# reasoning_effort -> Ollama's `think` (bool or level); "none" switches thinking off
REASONING_LEVELS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}

# data: URL prefixes Ollama accepts for images (it decodes the rest as base64 bytes)
_IMAGE_PREFIXES = (
    "data:image/jpeg;base64,",
    "data:image/jpg;base64,",
    "data:image/png;base64,",
    "data:image/webp;base64,",
    "data:;base64,",
)

# sampling keys some OpenAI clients send for llama.cpp/vLLM that are also Ollama options: kept, not lost
_EXTRA_OPTIONS = ("top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n", "num_ctx")


def go_type(value: Any) -> str:
    """The Go type name Ollama's messages print for a JSON value (`invalid ... type: float64`)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def _number(body: Mapping[str, Any], key: str) -> float | int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"invalid type for '{key}' field: {go_type(value)}")
    return value


def _stop(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise BadRequest(f"invalid type for 'stop' field: {go_type(item)}")
        return list(value)
    raise BadRequest(f"invalid type for 'stop' field: {go_type(value)}")


def _options(body: Mapping[str, Any], *, completion: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    stop = _stop(body.get("stop"))
    if stop is not None:
        opts["stop"] = stop
    max_tokens = _number(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens")
    if max_tokens is not None:
        opts["num_predict"] = int(max_tokens)
    seed = _number(body, "seed")
    if seed is not None:
        opts["seed"] = int(seed)
    for key in ("frequency_penalty", "presence_penalty"):
        value = _number(body, key)
        if value is not None:
            opts[key] = value
        elif completion:
            opts[key] = 0.0  # Ollama's /v1/completions always sends both
    # OpenAI's defaults, not Ollama's (0.8 / 0.9): the client asked for OpenAI semantics
    temperature = _number(body, "temperature")
    opts["temperature"] = 1.0 if temperature is None else temperature
    top_p = _number(body, "top_p")
    opts["top_p"] = 1.0 if top_p is None else top_p
    for key in _EXTRA_OPTIONS:
        value = _number(body, key)
        if value is not None:
            opts[key] = value
    extra = body.get("options")
    if isinstance(extra, dict):  # an Ollama-aware client sending native options through /v1
        opts.update(extra)
    return opts


def _format(response_format: Any) -> Any:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, dict) and spec.get("schema") is not None:
            return spec["schema"]
    return None


def think_value(body: Mapping[str, Any]) -> bool | str | None:
    """`reasoning_effort` (or `reasoning.effort`) as Ollama's `think`, else llama.cpp's switch
    `chat_template_kwargs.enable_thinking` (what the pivot carries for a plain true/false: `to_openai.
    think_params`); None when the client said nothing."""
    effort = body.get("reasoning_effort")
    if effort is None:
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict):
            effort = reasoning.get("effort")
    if effort is None:
        kwargs = body.get("chat_template_kwargs")
        enabled = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
        return enabled if isinstance(enabled, bool) else None
    if not isinstance(effort, str) or effort not in REASONING_LEVELS:
        raise BadRequest(
            f'invalid reasoning value: "{effort}" (must be one of "none", "minimal", "low", "medium", "high", '
            '"xhigh", "max", "ultra")'
        )
    return REASONING_LEVELS[effort]


def _image(part: Mapping[str, Any]) -> str:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str):
        raise BadRequest("invalid image input")
    for prefix in _IMAGE_PREFIXES:
        if url.startswith(prefix):
            return url[len(prefix) :]  # Ollama images are bare base64
    if url.startswith(("http://", "https://")):
        raise BadRequest("image URLs are not currently supported, please use base64 encoded data instead")
    raise BadRequest("invalid image input")


def _tool_calls(calls: Any, names: dict[str, str]) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise BadRequest("invalid tool calls")
    out: list[dict[str, Any]] = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise BadRequest("invalid tool calls")
        name = fn.get("name") or ""
        native: dict[str, Any] = {}
        cid = call.get("id")
        if isinstance(cid, str) and cid:
            native["id"] = cid
            names[cid] = name  # later tool results find their function by this id
        function: dict[str, Any] = {"name": name, "arguments": arguments_to_object(fn.get("arguments"), strict=True)}
        if isinstance(call.get("index"), int):
            function["index"] = call["index"]
        native["function"] = function
        out.append(native)
    return out


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("[] is too short - 'messages'")
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant messages
    for m in messages:
        if not isinstance(m, dict):
            raise BadRequest("invalid message format")
        role = str(m.get("role") or "").lower()
        if role == "developer":  # OpenAI's newer name for the system role; Ollama templates know only 'system'
            role = "system"
        meta: dict[str, Any] = {}
        thinking = m.get("reasoning") or m.get("reasoning_content")
        if isinstance(thinking, str) and thinking:
            meta["thinking"] = thinking
        if role == "tool":
            call_id = m.get("tool_call_id")
            name = m.get("name")
            if not name and isinstance(call_id, str):
                name = names.get(call_id)
            if name:
                meta["tool_name"] = name
            if isinstance(call_id, str) and call_id:
                meta["tool_call_id"] = call_id
        calls = _tool_calls(m["tool_calls"], names) if m.get("tool_calls") else None
        content = m.get("content")
        if isinstance(content, str) or (content is None and (calls or role == "assistant")):
            msg: dict[str, Any] = {"role": role, "content": content or "", **meta}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        elif isinstance(content, list):
            # one native message per part, as Ollama does (its templates place images per message)
            for part in content:
                if not isinstance(part, dict):
                    raise BadRequest("invalid message format")
                kind = part.get("type")
                if kind == "text":
                    out.append({"role": role, "content": str(part.get("text") or ""), **meta})
                elif kind == "image_url":
                    out.append({"role": role, "content": "", "images": [_image(part)], **meta})
                elif kind == "input_audio":
                    audio = part.get("input_audio")
                    data = audio.get("data") if isinstance(audio, dict) else None
                    if not isinstance(data, str):
                        raise BadRequest("invalid message format")
                    out.append({"role": role, "content": "", "images": [data], **meta})
                else:
                    raise BadRequest("invalid message format")
            if calls and out:
                out[-1]["tool_calls"] = calls
        else:
            raise BadRequest(f"invalid message content type: {go_type(content)}")
    return out


def stream_flag(body: Mapping[str, Any]) -> bool:
    """An OpenAI request's `stream`: false when absent, a 400 when not a boolean."""
    stream = body.get("stream")
    if stream is None:
        return False  # OpenAI's default (pitfall 1: Ollama's is the opposite)
    if not isinstance(stream, bool):
        raise BadRequest(f"invalid type for 'stream' field: {go_type(stream)}")
    return stream


def _logprobs(body: Mapping[str, Any], req: dict[str, Any]) -> None:
    if body.get("logprobs") is True:
        req["logprobs"] = True
        top = body.get("top_logprobs")
        if isinstance(top, int) and not isinstance(top, bool):
            req["top_logprobs"] = top


def chat_request(body: Mapping[str, Any], upstream: str) -> dict[str, Any]:
    """An OpenAI chat completion request as Ollama's `/api/chat` request."""
    req: dict[str, Any] = {"model": upstream, "messages": _messages(body.get("messages")), "stream": stream_flag(body)}
    fmt = _format(body.get("response_format"))
    if fmt is not None:
        req["format"] = fmt
    req["options"] = _options(body, completion=False)
    think = think_value(body)
    if think is not None:
        req["think"] = think
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        req["tools"] = tools  # the two APIs share the tool schema
    _logprobs(body, req)
    if "keep_alive" in body:
        req["keep_alive"] = body["keep_alive"]
    return req


def completion_request(body: Mapping[str, Any], upstream: str) -> dict[str, Any]:
    """An OpenAI (legacy) completion request as Ollama's `/api/generate`, raw unless there is a suffix."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise BadRequest(f"invalid type for 'prompt' field: {go_type(prompt)} (one string prompt is supported)")
    req: dict[str, Any] = {"model": upstream, "prompt": prompt, "stream": stream_flag(body)}
    suffix = body.get("suffix")
    if isinstance(suffix, str) and suffix:
        req["suffix"] = suffix  # fill-in-the-middle needs the model's template, so no raw mode
    else:
        req["raw"] = True
    fmt = _format(body.get("response_format"))
    if fmt is not None:
        req["format"] = fmt
    req["options"] = _options(body, completion=True)
    logprobs = body.get("logprobs")
    if isinstance(logprobs, int) and not isinstance(logprobs, bool) and logprobs > 0:
        req["logprobs"] = True  # /v1/completions counts top logprobs in `logprobs`
        req["top_logprobs"] = logprobs
    if "keep_alive" in body:
        req["keep_alive"] = body["keep_alive"]
    return req


def encoding_format(body: Mapping[str, Any]) -> str:
    fmt = body.get("encoding_format")
    if fmt is None or fmt == "":
        return "float"
    if fmt not in ("float", "base64"):
        raise BadRequest(f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].")
    return str(fmt)


def embed_request(body: Mapping[str, Any], upstream: str) -> dict[str, Any]:
    """An OpenAI embeddings request as Ollama's `/api/embed` (validates `encoding_format` too)."""
    value = body.get("input")
    if isinstance(value, str):
        inputs = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        inputs = list(value)
    else:
        raise BadRequest("invalid input")
    encoding_format(body)
    req: dict[str, Any] = {"model": upstream, "input": inputs}
    dims = body.get("dimensions")
    if isinstance(dims, int) and not isinstance(dims, bool) and dims > 0:
        req["dimensions"] = dims
    if "keep_alive" in body:
        req["keep_alive"] = body["keep_alive"]
    return req
