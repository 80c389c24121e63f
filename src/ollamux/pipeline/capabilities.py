"""Capability checks: a request a model cannot serve is refused with Ollama's 400 before any backend is called.

Ollama refuses, in server/routes.go ChatHandler and GenerateHandler (and `Model.CheckCapabilities` in
server/images.go, reached through `scheduleRunner` and `handleScheduleError`):

  think (true or a level) on a model without "thinking"  400 `"<model>" does not support thinking`
  chat / generate on a model without "completion"        400 `"<model>" does not support chat` / `generate`
  tools on a model without "tools"                       400 `<name> does not support tools`
  a suffix on a model without "insert"                   400 `<name> does not support insert`

`<model>` is the name as the client sent it, Go-quoted (`%q`); `<name>` is the model's full name
(`registry.ollama.ai/library/x:latest` in Ollama, here the name ollamux serves it as: `x:latest`). Ollama
has no check for images; a model without "vision" is refused the same way here (`<name> does not support
vision`), one clear 400 instead of the backend's error (llama.cpp answers 500, which is retried).

Only models whose capabilities are known are checked: the config's `capabilities`, else the GGUF header of
a model the built-in engine runs (`runtime.gguf_meta.GGUFInfo.capabilities`). Everything else (a remote
backend's model, whose capabilities /api/show can only guess) goes to the backend, which decides.

The Ollama front checks the Ollama request (`require`, in Ollama's order, before a model is loaded or
unloaded). Every other front is checked on the pivot, once, by the pipeline (`require_pivot`: OpenAI chat
and completions, passed through or translated, Responses and Anthropic Messages through the pivot), with
the same words, in the front's own error envelope (`param` names the pivot's field):

  tools                                   a non-empty `tools`
  insert                                  a completion's non-empty `suffix`
  vision                                  an `image_url` part in a message
  thinking                                `chat_template_kwargs.enable_thinking: true`, or a
                                          `reasoning_effort` other than "none"

`reasoning_effort` on a model without thinking is refused rather than ignored: Ollama's own OpenAI layer
(openai/openai.go FromChatRequest, `thinkFromReasoningEffort`) turns every effort but "none" into `think`,
which ChatHandler then refuses, and OpenAI's API refuses it for its non-reasoning models too (400,
"Unsupported parameter: 'reasoning_effort' ..."); only llama.cpp ignores it, which hides from the client that
it will get no reasoning. "none" asks for no thinking and passes everywhere. Not checked: a front's native
pass-through in its own dialect (Anthropic on a backend that serves /v1/messages, Responses on one that
serves /v1/responses), whose backend decides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import orjson

from ..errors import BadRequest
from ..registry import Route
from ..state import AppState

__all__ = ["default_think", "known_capabilities", "pivot_refusal", "refusal", "require", "require_pivot"]

_THINK_LEVELS = frozenset({"low", "medium", "high", "max"})


def known_capabilities(state: AppState, route: Route) -> frozenset[str] | None:
    """The model's capabilities when they are known (see the module docstring); None when not."""
    settings = route.entry.settings
    if settings is not None and settings.capabilities is not None:
        return frozenset(settings.capabilities)
    runtime = state.runtime
    if runtime is None or not runtime.manages(route.backend):
        return None
    model = runtime.models.get(route.backend)
    if model is None or model.spec.gguf is None:
        return None  # a `cmd:` model: its server's flags (a projector, a template) may add what the file lacks
    for meta in (route.entry.meta, state.probed.get((route.backend, route.upstream))):
        caps = meta.get("capabilities") if meta else None
        if isinstance(caps, list | tuple) and all(isinstance(c, str) for c in caps):
            return frozenset(caps)
    return None  # its header could not be read: nothing is known


def _go_quote(name: str) -> str:
    """Go's %q for the names clients send (a JSON string is the same for them)."""
    return orjson.dumps(name).decode()


def _wants_thinking(think: Any) -> bool:
    # api.ThinkValue.Bool(): true, or one of the levels
    return think is True or (isinstance(think, str) and think in _THINK_LEVELS)


def _has_images(body: Mapping[str, Any], chat: bool) -> bool:
    if not chat:
        return bool(body.get("images"))
    messages = body.get("messages")
    return isinstance(messages, list) and any(isinstance(m, dict) and m.get("images") for m in messages)


def refusal(body: Mapping[str, Any], caps: Collection[str], *, chat: bool, name: str, requested: str) -> str | None:
    """Ollama's message for what `body` (an /api/chat or /api/generate request) needs that `caps` lacks."""
    if _wants_thinking(body.get("think")) and "thinking" not in caps:
        return f"{_go_quote(requested)} does not support thinking"
    if "completion" not in caps:
        return f"{_go_quote(requested)} does not support {'chat' if chat else 'generate'}"
    if chat:
        tools = body.get("tools")
        if isinstance(tools, list) and tools and "tools" not in caps:
            return f"{name} does not support tools"
    else:
        suffix = body.get("suffix")
        if isinstance(suffix, str) and suffix and "insert" not in caps:
            return f"{name} does not support insert"
    if _has_images(body, chat) and "vision" not in caps:
        return f"{name} does not support vision"
    return None


def default_think(state: AppState, route: Route, body: dict[str, Any]) -> None:
    """Ollama 0.12+ (server/routes.go ChatHandler and GenerateHandler): a model whose capabilities include
    "thinking" thinks unless the request says otherwise (`if req.Think == nil { req.Think = true }`). Only
    where the capabilities are known (a guess would turn thinking on for a model that has none)."""
    if body.get("think") is not None:
        return
    caps = known_capabilities(state, route)
    if caps is not None and "thinking" in caps:
        body["think"] = True


def require(state: AppState, route: Route, body: Mapping[str, Any], *, chat: bool) -> None:
    """400 when the model's known capabilities lack what the request needs; nothing when they are unknown."""
    caps = known_capabilities(state, route)
    if caps is None:
        return
    message = refusal(body, caps, chat=chat, name=route.entry.name, requested=route.requested)
    if message is not None:
        raise BadRequest(message)


def _pivot_thinks(pivot: Mapping[str, Any]) -> str | None:
    """The pivot field that asks for thinking, if one does (see the module docstring)."""
    kwargs = pivot.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("enable_thinking") is True:
        return "chat_template_kwargs.enable_thinking"
    effort = pivot.get("reasoning_effort")
    if isinstance(effort, str) and effort != "none":
        return "reasoning_effort"
    return None


def _pivot_has_images(pivot: Mapping[str, Any]) -> bool:
    messages = pivot.get("messages")
    if not isinstance(messages, list):
        return False
    return any(
        isinstance(m, dict)
        and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"])
        for m in messages
    )


def pivot_refusal(
    pivot: Mapping[str, Any], kind: str, caps: Collection[str], *, name: str, requested: str
) -> tuple[str, str] | None:
    """Ollama's message, and the pivot field it is about, for what `pivot` (an OpenAI chat or completions
    body) needs that `caps` lacks; None when nothing is missing. Ollama's order: thinking, tools or insert,
    then vision."""
    if kind == "embedding":
        return None
    thinks = _pivot_thinks(pivot)
    if thinks is not None and "thinking" not in caps:
        return f"{_go_quote(requested)} does not support thinking", thinks
    if kind == "chat":
        tools = pivot.get("tools")
        if isinstance(tools, list) and tools and "tools" not in caps:
            return f"{name} does not support tools", "tools"
    else:
        suffix = pivot.get("suffix")
        if isinstance(suffix, str) and suffix and "insert" not in caps:
            return f"{name} does not support insert", "suffix"
    if _pivot_has_images(pivot) and "vision" not in caps:
        return f"{name} does not support vision", "messages"
    return None


def require_pivot(state: AppState, route: Route, pivot: Mapping[str, Any], kind: str) -> None:
    """400 in the front's envelope when the model's known capabilities lack what the pivot request needs;
    nothing when they are unknown (a remote model: its backend decides)."""
    caps = known_capabilities(state, route)
    if caps is None:
        return
    found = pivot_refusal(pivot, kind, caps, name=route.entry.name, requested=route.requested)
    if found is not None:
        raise BadRequest(found[0], param=found[1], code="unsupported_parameter" if found[1] != "messages" else None)
