"""Ollama-API requests as OpenAI-API requests (pure).

The reference for every choice here is Ollama's own Ollama -> llama-server bridge (`llm/llama_server.go`),
summarised in the spec's §2.6, and the pitfalls list (§5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from ..errors import BadRequest
from .images import to_bare_base64, to_data_url
from .logprobs import pivot_logprob_params, requested_logprobs
from .tools import arguments_to_string, synth_call_id

__all__ = [
    "Dialect",
    "chat_request",
    "completion_request",
    "embed_inputs",
    "generate_as_chat_request",
    "one_system_message",
    "parse_keep_alive",
    "sampling_params",
    "think_params",
]

# "openai" refuses unknown parameters (top_k, min_p...); llama.cpp and vLLM take the extended set.
Dialect = Literal["openai", "llama.cpp", "vllm"]

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


def _num(opts: Mapping[str, Any], key: str, kind: type = float) -> Any:
    v = opts.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise BadRequest(f"option '{key}' must be a number, not {type(v).__name__}")
    return int(v) if kind is int else v


def sampling_params(options: Any, dialect: Dialect) -> dict[str, Any]:
    """Ollama `options` as OpenAI sampling parameters; unknown keys are ignored, as Ollama does."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    out: dict[str, Any] = {}
    n = _num(options, "num_predict", int)
    if n is not None and n >= 0:  # -1 unlimited, -2 fill context: both mean "no max_tokens"
        out["max_tokens"] = n
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        v = _num(options, key)
        if v is not None:
            out[key] = v
    seed = _num(options, "seed", int)
    if seed is not None and seed >= 0:
        out["seed"] = seed
    stop = options.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("option 'stop' must be a list of strings")
        if stop:
            out["stop"] = stop
    if dialect == "openai":
        return out
    for key in ("top_k", "repeat_last_n"):
        v = _num(options, key, int)
        if v is not None:
            out[key] = v
    for key in ("min_p", "typical_p"):
        v = _num(options, key)
        if v is not None:
            out[key] = v
    rp = _num(options, "repeat_penalty")
    if rp is not None:
        out["repetition_penalty" if dialect == "vllm" else "repeat_penalty"] = rp
    return out


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt, "strict": True}}
    raise BadRequest(f'invalid format: {fmt!r}; expected "json" or a valid JSON Schema object')


def think_params(think: Any, dialect: Dialect) -> dict[str, Any]:
    """Ollama's `think` (true/false or low/medium/high/max) as the pivot's switches for this dialect:
    `reasoning_effort`, and llama.cpp's/vLLM's `chat_template_kwargs.enable_thinking`. Every front that
    can ask for thinking (Responses' `reasoning.effort`, Anthropic's `thinking`) maps to this value."""
    if think is None:
        return {}
    if isinstance(think, bool):
        level = "medium" if think else None
        enabled = think
    elif isinstance(think, str) and think in ("low", "medium", "high", "max"):
        level = "high" if think == "max" else think
        enabled = True
    else:
        raise BadRequest(f"invalid think value: {think!r} (must be true, false, low, medium, high or max)")
    if dialect == "openai":
        # OpenAI has no switch to turn reasoning off; only explicit levels are sent
        return {"reasoning_effort": level} if isinstance(think, str) else {}
    out: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": enabled}}
    if isinstance(think, str):
        out["chat_template_kwargs"]["reasoning_effort"] = level
        out["reasoning_effort"] = level
    return out


def _tools(tools: Any) -> list[Any] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    if not tools:
        return None  # ollama-python always sends tools=[]; an empty list upsets some backends
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("function"), dict):
            raise BadRequest(f"tools[{i}] must be an object with a 'function' object")
        out.append(t if t.get("type") == "function" else {**t, "type": "function"})
    return out


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    out: list[dict[str, Any]] = []
    # ids of calls made so far, so tool results without tool_call_id can be paired (by name, then order)
    open_calls: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = m.get("role")
        if role is None:
            role = ""  # Go's zero value: Ollama takes a message without a role as it is
        if not isinstance(role, str):
            raise BadRequest(f"messages[{i}].role must be a string")
        # any role is taken, as Ollama's api.Message does (the template decides what it means); the ones
        # the pivot knows are lower-cased so that "User" still reaches the backend as a user
        if role.lower() in _ROLES:
            role = role.lower()
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string")
        msg: dict[str, Any] = {"role": role}
        images = m.get("images")
        if images:
            if not isinstance(images, list):
                raise BadRequest(f"messages[{i}].images must be a list of base64 strings")
            parts: list[dict[str, Any]] = []
            if content:
                parts.append({"type": "text", "text": content})
            for j, img in enumerate(images):
                b64 = to_bare_base64(img, f"messages[{i}].images[{j}]")
                parts.append({"type": "image_url", "image_url": {"url": to_data_url(b64)}})
            msg["content"] = parts
        else:
            msg["content"] = content
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            if not isinstance(calls, list):
                raise BadRequest(f"messages[{i}].tool_calls must be a list")
            out_calls = []
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise BadRequest(f"messages[{i}].tool_calls[{j}].function.name is required")
                call_id = c.get("id") or synth_call_id(i, j, fn["name"])
                open_calls.append((call_id, fn["name"]))
                out_calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": arguments_to_string(fn.get("arguments"))},
                    }
                )
            msg["tool_calls"] = out_calls
            if not content:
                msg["content"] = None
        if role == "tool":
            call_id = m.get("tool_call_id")
            name = m.get("tool_name") or m.get("name")
            if not call_id:
                call_id = _pair_tool_result(open_calls, name, i)
            else:
                open_calls[:] = [c for c in open_calls if c[0] != call_id]
            msg["tool_call_id"] = call_id
        out.append(msg)
    return out


def _pair_tool_result(open_calls: list[tuple[str, str]], name: Any, index: int) -> str:
    for k, (cid, cname) in enumerate(open_calls):
        if isinstance(name, str) and cname == name:
            del open_calls[k]
            return cid
    if open_calls:
        return open_calls.pop(0)[0]
    # a tool result with no call in sight (Home Assistant sends no ids): give it a stable one
    return synth_call_id("tool", index, name)


def chat_request(req: Mapping[str, Any], upstream: str, *, stream: bool, dialect: Dialect) -> dict[str, Any]:
    """An /api/chat body as a /chat/completions body."""
    body: dict[str, Any] = {"model": upstream, "messages": _messages(req.get("messages"))}
    _common(body, req, stream=stream, dialect=dialect)
    tools = _tools(req.get("tools"))
    if tools:
        body["tools"] = tools
    return body


def generate_as_chat_request(
    req: Mapping[str, Any], upstream: str, *, stream: bool, dialect: Dialect
) -> dict[str, Any]:
    """A templated /api/generate: system + prompt (+ images) as a chat, so the backend applies its template."""
    prompt = req.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    messages: list[dict[str, Any]] = []
    system = req.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt, "images": req.get("images")})
    body: dict[str, Any] = {"model": upstream, "messages": _messages(messages)}
    _common(body, req, stream=stream, dialect=dialect)
    return body


def completion_request(req: Mapping[str, Any], upstream: str, *, stream: bool, dialect: Dialect) -> dict[str, Any]:
    """A raw (or fill-in-the-middle) /api/generate as a /completions body."""
    prompt = req.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    body: dict[str, Any] = {"model": upstream, "prompt": prompt}
    suffix = req.get("suffix")
    if isinstance(suffix, str) and suffix:
        body["suffix"] = suffix
    _common(body, req, stream=stream, dialect=dialect, chat=False)
    return body


def _common(body: dict[str, Any], req: Mapping[str, Any], *, stream: bool, dialect: Dialect, chat: bool = True) -> None:
    body.update(sampling_params(req.get("options"), dialect))
    rf = _response_format(req.get("format"))
    if rf is not None:
        if chat or dialect != "openai":
            body["response_format"] = rf
    if chat:
        body.update(think_params(req.get("think"), dialect))
    body.update(pivot_logprob_params(requested_logprobs(req), chat=chat))
    body["stream"] = stream
    if stream:
        # usage arrives in a final chunk only when asked for; without it the counts are lost (pitfall 3)
        body["stream_options"] = {"include_usage": True}


def embed_inputs(value: Any, *, allow_empty: bool = True) -> list[str]:
    """`input` of /api/embed: a string or a list of strings; anything else is 400 invalid input type."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise BadRequest("invalid input type")


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """keep_alive in seconds: a number, or a Go duration ("5m", "1h30m", "0"); negative means forever.

    Returns None when absent. A unit-less string other than "0" is an error, as in Go's ParseDuration.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("keep_alive must be a duration or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise BadRequest("keep_alive must be a duration or a number of seconds")
    text = value.strip()
    if text in ("0", "-0", "+0"):
        return 0.0
    m = re.fullmatch(r"([+-]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+", text)
    if not m:
        raise BadRequest(f'time: invalid duration "{text}" (use a number of seconds or units like "5m")')
    total = sum(
        float(num) * _UNITS[unit] for num, unit in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", text)
    )
    return -total if m.group(1) == "-" else total


def one_system_message(pivot: dict[str, Any]) -> dict[str, Any]:
    """The pivot with every system message joined into one at the start.

    Anthropic's and OpenAI's Responses clients put system text in several places (Claude Code sends a
    `role: "system"` message after the user's; Codex sends two `developer` items), and many chat templates
    (llama.cpp's Jinja ones for Gemma, Mistral, Qwen) refuse a system message anywhere but first, or two of
    them. Text parts are joined with a blank line, in order; a list content keeps only its text parts.
    """
    messages = pivot.get("messages")
    if not isinstance(messages, list):
        return pivot
    system = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
    if not system or (len(system) == 1 and messages[0] is system[0]):
        return pivot
    texts: list[str] = []
    for m in system:
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    rest = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]
    return {**pivot, "messages": [{"role": "system", "content": "\n\n".join(t for t in texts if t)}, *rest]}
