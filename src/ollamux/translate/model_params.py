"""A model's request defaults and filters (`ModelParams`) applied to a request (pure), one function per shape.

Every translating front (Ollama on OpenAI backends, OpenAI on Ollama backends, Responses, Anthropic) meets
them once, on the pivot (`apply_to_pivot`, called by `pipeline.pivot.serve_via_pivot`); the byte-exact
pass-throughs meet them only when the model has any: an OpenAI request is the pivot already
(`apply_to_pivot` again), an Ollama request on an Ollama backend is the native shape (`apply_to_ollama`),
and so are a Messages or Responses request on a backend that serves that API itself (`apply_to_anthropic`,
`apply_to_responses`: the options those APIs name).
Defaults are written in Ollama's option names and mapped to pivot names by `to_openai.sampling_params`, so
one table serves every front.

The order is Ollama's for a Modelfile's values, extended by the filters: `strip` removes what the request
said, then a default fills what the request leaves unsaid (the request's own value wins, as in Ollama's
`modelOptions`: the model's options first, the request's on top), then `force` sets its values whatever
the request said (llama-swap's `filters.stripParams` / `setParams`). The system prompt is a leading system
message added only when the request has none, and a model's MESSAGE conversation goes before the
request's own messages (after its system message), as Ollama's ChatHandler prepends `m.Messages`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from ..config import ModelParams
from .to_openai import Dialect, sampling_params, think_params

__all__ = [
    "MANAGED_NUM_PREDICT",
    "MANAGED_SAMPLING",
    "OllamaKind",
    "apply_to_anthropic",
    "apply_to_ollama",
    "apply_to_pivot",
    "apply_to_responses",
    "pivot_keys",
    "runtime_hints",
    "with_defaults_under",
]

# Models ollamux runs itself sample as `ollama run` would (Ollama's api.DefaultOptions) unless configured,
# and stop after MANAGED_NUM_PREDICT tokens: Ollama's own default is unlimited (-1), with which a tiny
# model that never emits its end token repeats itself until the context fills, minutes on a CPU.
# `defaults: {options: {num_predict: -1}}` gives a model Ollama's unlimited answers back.
MANAGED_NUM_PREDICT = 4096
MANAGED_SAMPLING: Mapping[str, Any] = {
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "repeat_penalty": 1.1,
    "num_predict": MANAGED_NUM_PREDICT,
}

PivotKind = Literal["chat", "completion", "embedding"]
OllamaKind = Literal["chat", "generate", "embed"]

# option -> the pivot keys that carry it: sampling_params writes the first, clients may send the others
_PIVOT_KEYS: Mapping[str, tuple[str, ...]] = {
    "num_predict": ("max_tokens", "max_completion_tokens"),
    "repeat_penalty": ("repeat_penalty", "repetition_penalty"),
    "format": ("response_format",),
    "tools": ("tools", "tool_choice", "parallel_tool_calls"),
    "think": ("reasoning_effort",),  # and chat_template_kwargs' switches (_drop_think)
}
_SYSTEM_ROLES = ("system", "developer")
_NATIVE_SWITCHES = ("think", "format", "tools")  # top-level keys of an Ollama request, not options


def pivot_keys(name: str) -> tuple[str, ...]:
    """The pivot keys an Ollama option (or think, format, tools) is carried by."""
    return _PIVOT_KEYS.get(name, (name,))


def with_defaults_under(params: ModelParams, options: Mapping[str, Any]) -> ModelParams:
    """`params` with `options` under its own default options (a model ollamux runs: MANAGED_SAMPLING)."""
    merged = {**options, **params.defaults.options}
    return replace(params, defaults=replace(params.defaults, options=merged))


def runtime_hints(
    params: ModelParams, keep_alive: float | None, num_ctx: int | None
) -> tuple[float | None, int | None]:
    """keep_alive and num_ctx for a model ollamux runs: the request's, else the model's defaults; forced
    values whatever the request said."""
    if keep_alive is None:
        keep_alive = params.defaults.keep_alive
    forced = params.force.get("num_ctx")
    if forced is not None:
        return keep_alive, int(forced)
    if num_ctx is None and "num_ctx" not in params.strip:
        default = params.defaults.options.get("num_ctx")
        num_ctx = int(default) if default is not None else None
    return keep_alive, num_ctx


# ----------------------------------------------------------------------------------------- the pivot
def apply_to_pivot(pivot: dict[str, Any], kind: PivotKind, params: ModelParams, dialect: Dialect) -> dict[str, Any]:
    """The pivot request (OpenAI chat or completions shape) with the model's defaults and filters applied."""
    if kind == "embedding" or params.empty:
        return pivot
    out = dict(pivot)
    for name in params.strip:
        _drop(out, name)
    d = params.defaults
    for name, value in d.options.items():
        if not any(k in out for k in pivot_keys(name)):
            out.update(sampling_params({name: value}, dialect))
    if kind == "chat":
        if d.think is not None and not _has_think(out):
            _set_think(out, d.think, dialect)
        messages = out.get("messages")
        if isinstance(messages, list) and (d.system or d.messages):
            out["messages"] = _with_model_messages(messages, d.system, d.messages)
    for name, value in params.force.items():
        _drop(out, name)
        if name == "think":
            if kind == "chat":
                _set_think(out, value, dialect)
        else:
            out.update(sampling_params({name: value}, dialect))
    return out


def _drop(pivot: dict[str, Any], name: str) -> None:
    for key in pivot_keys(name):
        pivot.pop(key, None)
    if name == "think":
        kwargs = pivot.get("chat_template_kwargs")
        if isinstance(kwargs, dict):
            rest = {k: v for k, v in kwargs.items() if k not in ("enable_thinking", "reasoning_effort")}
            if rest:
                pivot["chat_template_kwargs"] = rest
            else:
                del pivot["chat_template_kwargs"]


def _has_think(pivot: Mapping[str, Any]) -> bool:
    kwargs = pivot.get("chat_template_kwargs")
    return "reasoning_effort" in pivot or (isinstance(kwargs, dict) and "enable_thinking" in kwargs)


def _set_think(pivot: dict[str, Any], think: Any, dialect: Dialect) -> None:
    switches = think_params(think, dialect)
    kwargs = switches.pop("chat_template_kwargs", None)
    pivot.update(switches)
    if kwargs:
        current = pivot.get("chat_template_kwargs")
        pivot["chat_template_kwargs"] = {**(current if isinstance(current, dict) else {}), **kwargs}


def _with_model_messages(
    messages: list[Any], system: str | None, model_messages: tuple[Mapping[str, str], ...]
) -> list[Any]:
    """The request's messages behind the model's system prompt (when the request has none) and its
    MESSAGE conversation (after any leading system message: templates want the system message first)."""
    has_system = any(isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES for m in messages)
    lead = 0
    while lead < len(messages) and isinstance(messages[lead], dict) and messages[lead].get("role") in _SYSTEM_ROLES:
        lead += 1
    head: list[Any] = [] if has_system or not system else [{"role": "system", "content": system}]
    return [*head, *messages[:lead], *(dict(m) for m in model_messages), *messages[lead:]]


# ------------------------------------------------------------------------------ Ollama's native shape
def apply_to_ollama(body: dict[str, Any], kind: OllamaKind, params: ModelParams) -> dict[str, Any]:
    """An Ollama /api/chat, /api/generate or /api/embed body with the model's defaults and filters applied:
    options merged under the request's own, the system prompt and conversation as Ollama itself adds them."""
    if params.empty:
        return body
    out = dict(body)
    options = dict(out["options"]) if isinstance(out.get("options"), dict) else {}
    for name in params.strip:
        if name in _NATIVE_SWITCHES:
            out.pop(name, None)
        else:
            options.pop(name, None)
    d = params.defaults
    if kind != "embed":
        options = {**d.options, **options}
        if d.think is not None and out.get("think") is None:
            out["think"] = d.think
        if kind == "chat":
            messages = out.get("messages")
            if isinstance(messages, list) and (d.system or d.messages):
                out["messages"] = _with_model_messages(messages, d.system, d.messages)
        elif d.system and not out.get("system") and out.get("raw") is not True:
            out["system"] = d.system  # raw mode takes no system, as in Ollama
    if d.keep_alive is not None and out.get("keep_alive") is None:
        out["keep_alive"] = d.keep_alive
    for name, value in params.force.items():
        if name in _NATIVE_SWITCHES:
            if kind != "embed":
                out[name] = value
        else:
            options[name] = value
    if options:
        out["options"] = options
    return out


# ------------------------------------------------------------ the native Messages and Responses shapes
# options a backend that serves these APIs itself takes, under each API's own names
_ANTHROPIC_KEYS: Mapping[str, str] = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "stop": "stop_sequences",
}
_RESPONSES_KEYS: Mapping[str, str] = {
    "num_predict": "max_output_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
}


def apply_to_anthropic(body: dict[str, Any], params: ModelParams) -> dict[str, Any]:
    """A Messages request for a backend that serves the Messages API itself (the GGUF models ollamux
    runs): the options Anthropic's API has (max_tokens, temperature, top_p, top_k, stop_sequences), the
    system prompt as its top-level `system`, the model's conversation before the request's own."""
    if params.empty:
        return body
    out = _apply_named(body, params, _ANTHROPIC_KEYS, {"tools": ("tools", "tool_choice"), "think": ("thinking",)})
    d = params.defaults
    if d.system and not out.get("system"):
        out["system"] = d.system
    turns = [dict(m) for m in d.messages if m.get("role") in ("user", "assistant")]
    if turns and isinstance(out.get("messages"), list):
        out["messages"] = [*turns, *out["messages"]]
    return out


def apply_to_responses(body: dict[str, Any], params: ModelParams) -> dict[str, Any]:
    """A Responses request for a backend that serves the Responses API itself: max_output_tokens,
    temperature, top_p, and the system prompt as `instructions` when the request gives none."""
    if params.empty:
        return body
    out = _apply_named(body, params, _RESPONSES_KEYS, {"tools": ("tools", "tool_choice"), "think": ("reasoning",)})
    if params.defaults.system and not out.get("instructions"):
        out["instructions"] = params.defaults.system
    return out


def _apply_named(
    body: dict[str, Any], params: ModelParams, keys: Mapping[str, str], switches: Mapping[str, tuple[str, ...]]
) -> dict[str, Any]:
    """strip, defaults, force for an API whose options are `keys` (Ollama name -> its name)."""
    out = dict(body)
    for name in params.strip:
        for key in switches.get(name, (keys.get(name, name),)):  # an option the API does not name: as sent
            out.pop(key, None)
    for name, value in params.defaults.options.items():
        named = keys.get(name)
        if named is not None and out.get(named) is None and (name != "num_predict" or value >= 0):
            out[named] = value
    for name, value in params.force.items():
        named = keys.get(name)
        if named is None:
            continue
        if name == "num_predict" and value < 0:
            out.pop(named, None)  # unlimited
        else:
            out[named] = value
    return out
