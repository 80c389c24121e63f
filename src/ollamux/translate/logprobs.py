"""Log probabilities: Ollama's `logprobs`/`top_logprobs` request fields as the pivot's, and back (pure).

Ollama (api/types.go GenerateRequest/ChatRequest `Logprobs bool`, `TopLogprobs int`; server/routes.go
GenerateHandler and ChatHandler): `top_logprobs` outside 0..20 is a 400 "top_logprobs must be between 0 and
20", checked first thing, whether or not `logprobs` is set. With `logprobs: true` its llama-server bridge
(llm/llama_server.go) asks for `logprobs: true, top_logprobs: max(n, 1)`: llama.cpp returns no log
probabilities at all for `top_logprobs: 0`, so one alternative is asked for and dropped again here.

Answers carry `logprobs: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]` (api/types.go
`Logprob`, `TokenLogprob`), `bytes` being the token's UTF-8 bytes and left out for an empty token
(server/logprob.go `toAPILogprobs`, `stringToByteInts`), `top_logprobs` only when some were asked for.
A streamed chunk carries the log probabilities of its own tokens; a whole answer all of them.

Upstream log probabilities come in the chat shape (`logprobs.content: [{token, logprob, top_logprobs}]`,
what llama.cpp sends on both its chat and completions endpoints) or the legacy completions shape
(`tokens`, `token_logprobs`, `top_logprobs: [{token: logprob}]`). An entry that is not what those shapes
say is left out: log probabilities are an extra, not worth failing an answer for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest

__all__ = ["MAX_TOP_LOGPROBS", "ollama_logprobs", "pivot_logprob_params", "requested_logprobs"]

MAX_TOP_LOGPROBS = 20


def requested_logprobs(req: Mapping[str, Any]) -> int | None:
    """How many alternatives per token the client wants (0: only the chosen token's), None: no logprobs.

    Raises Ollama's 400 for a `top_logprobs` out of range (before anything else, as Ollama checks it)."""
    top = req.get("top_logprobs")
    if top is None:
        top = 0
    elif isinstance(top, bool) or not isinstance(top, int):
        raise BadRequest("top_logprobs must be an integer")
    if top < 0 or top > MAX_TOP_LOGPROBS:
        raise BadRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    flag = req.get("logprobs")
    if flag is not None and not isinstance(flag, bool):
        raise BadRequest("logprobs must be true or false")
    return top if flag else None


def pivot_logprob_params(top: int | None, *, chat: bool) -> dict[str, Any]:
    """The pivot's fields for `requested_logprobs`'s answer: chat `logprobs: true, top_logprobs: n`,
    legacy completions `logprobs: n`; at least one alternative (see the module docstring)."""
    if top is None:
        return {}
    n = max(top, 1)
    return {"logprobs": True, "top_logprobs": n} if chat else {"logprobs": n}


def _token_bytes(token: str) -> list[int] | None:
    return list(token.encode("utf-8", "surrogatepass")) if token else None


def _entry(token: Any, logprob: Any) -> dict[str, Any] | None:
    if not isinstance(token, str) or isinstance(logprob, bool) or not isinstance(logprob, int | float):
        return None
    out: dict[str, Any] = {"token": token, "logprob": float(logprob)}
    raw = _token_bytes(token)
    if raw is not None:
        out["bytes"] = raw
    return out


def _tops(items: Any, top: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if top <= 0 or not isinstance(items, list):
        return out
    for item in items:
        if len(out) >= top:
            break
        e = _entry(item.get("token"), item.get("logprob")) if isinstance(item, dict) else None
        if e is not None:
            out.append(e)
    return out


def ollama_logprobs(logprobs: Any, top: int) -> list[dict[str, Any]]:
    """A pivot choice's `logprobs` in Ollama's shape, `top` alternatives per token at most."""
    if not isinstance(logprobs, dict):
        return []
    out: list[dict[str, Any]] = []
    content = logprobs.get("content")
    if isinstance(content, list):
        for item in content:
            e = _entry(item.get("token"), item.get("logprob")) if isinstance(item, dict) else None
            if e is None:
                continue
            tops = _tops(item.get("top_logprobs"), top)
            if tops:
                e["top_logprobs"] = tops
            out.append(e)
        return out
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        return out
    alternatives = logprobs.get("top_logprobs")
    for i, (token, value) in enumerate(zip(tokens, values, strict=False)):
        e = _entry(token, value)
        if e is None:
            continue
        alt = alternatives[i] if isinstance(alternatives, list) and i < len(alternatives) else None
        if isinstance(alt, dict):
            ranked = sorted(((t, v) for t, v in alt.items() if isinstance(v, int | float)), key=lambda tv: -tv[1])
            tops = _tops([{"token": t, "logprob": v} for t, v in ranked], top)
            if tops:
                e["top_logprobs"] = tops
        out.append(e)
    return out
