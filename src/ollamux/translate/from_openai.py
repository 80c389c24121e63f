"""OpenAI-API responses as Ollama-API responses (pure): non-streamed bodies and the final metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest, UpstreamError
from ..jsonutil import count_or_none, now_rfc3339
from .checks import opt_field
from .logprobs import ollama_logprobs
from .pivot_answer import read_answer
from .tools import arguments_to_object

__all__ = [
    "Timing",
    "chat_response",
    "done_reason",
    "embed_vectors",
    "final_metrics",
    "generate_response",
    "l2_normalize",
    "ollama_tool_calls",
    "parse_dimensions",
    "truncate_dimensions",
]


@dataclass(slots=True)
class Timing:
    """Monotonic nanosecond marks of one request, for the durations of Ollama's final chunk."""

    start_ns: int
    first_token_ns: int | None = None
    load_ns: int = 0


def done_reason(finish_reason: Any) -> str:
    # Ollama's native API knows only stop and length here; tool calls end with "stop" (spec §0.5)
    return "length" if finish_reason == "length" else "stop"


def final_metrics(usage: Any, timings: Any, timing: Timing, end_ns: int) -> dict[str, int]:
    """The six metrics, integer nanoseconds and counts, from `usage` and llama-server's `timings`.

    Durations are llama-server's own (`timings.prompt_ms`, `predicted_ms`) when it sent them; else the
    wall clock: time to the first token (less the load) is prompt evaluation, the rest is evaluation. A
    metric that is 0 is left out, as Ollama's `omitempty` does (api/types.go `Metrics`): a model that was
    already loaded has no `load_duration`, a whole answer timed without a first token no `eval_duration`.
    """
    usage = usage if isinstance(usage, dict) else {}
    timings = timings if isinstance(timings, dict) else {}
    prompt_n = count_or_none(usage.get("prompt_tokens"))
    eval_n = count_or_none(usage.get("completion_tokens"))
    if prompt_n is None:
        prompt_n = (count_or_none(timings.get("cache_n")) or 0) + (count_or_none(timings.get("prompt_n")) or 0)
    if eval_n is None:
        eval_n = count_or_none(timings.get("predicted_n")) or 0
    total = max(end_ns - timing.start_ns, 1)
    first = timing.first_token_ns if timing.first_token_ns is not None else end_ns
    prompt_ms = timings.get("prompt_ms")
    predicted_ms = timings.get("predicted_ms")
    if isinstance(prompt_ms, int | float) and isinstance(predicted_ms, int | float):
        prompt_dur = int(prompt_ms * 1e6)
        eval_dur = int(predicted_ms * 1e6)
    else:
        # no backend timings: wall clock, time to first token as prompt evaluation
        prompt_dur = max(first - timing.start_ns - timing.load_ns, 0)
        eval_dur = max(end_ns - first, 0)
    metrics = {
        "total_duration": total,
        "load_duration": timing.load_ns,
        "prompt_eval_count": prompt_n,
        "prompt_eval_duration": prompt_dur,
        "eval_count": eval_n,
        "eval_duration": eval_dur,
    }
    return {k: v for k, v in metrics.items() if v}


def ollama_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls (string arguments) as Ollama's (object arguments, with id and index)."""
    out: list[dict[str, Any]] = []
    if not isinstance(calls, list):
        return out
    for i, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict):
            continue
        call: dict[str, Any] = {}
        if c.get("id"):
            call["id"] = c["id"]
        call["function"] = {
            "index": i,
            "name": fn.get("name") or "",
            "arguments": arguments_to_object(fn.get("arguments")),
        }
        out.append(call)
    return out


def chat_response(
    resp: Any, model: str, timing: Timing, end_ns: int, *, think: Any = None, top_logprobs: int | None = None
) -> dict[str, Any]:
    """A whole chat answer; with `top_logprobs` (logprobs asked for), Ollama's `logprobs` after
    `done_reason`, in api/types.go ChatResponse's field order."""
    answer = read_answer(resp)
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.reasoning and think is not False:
        message["thinking"] = answer.reasoning
    calls = ollama_tool_calls(answer.tool_calls)
    if calls:
        message["tool_calls"] = calls
    out: dict[str, Any] = {
        "model": model,
        "created_at": now_rfc3339(),
        "message": message,
        "done": True,
        "done_reason": done_reason(answer.finish_reason),
    }
    if top_logprobs is not None:
        lps = ollama_logprobs(answer.choice.get("logprobs"), top_logprobs)
        if lps:
            out["logprobs"] = lps
    out.update(final_metrics(answer.usage, answer.timings, timing, end_ns))
    return out


def generate_response(
    resp: Any,
    model: str,
    timing: Timing,
    end_ns: int,
    *,
    raw: bool,
    think: Any = None,
    top_logprobs: int | None = None,
) -> dict[str, Any]:
    """A whole generate answer (a raw one from a text completion); `logprobs` last, as in api/types.go
    GenerateResponse."""
    answer = read_answer(resp, completion=raw)
    out: dict[str, Any] = {"model": model, "created_at": now_rfc3339(), "response": answer.text}
    if answer.reasoning and think is not False:
        out["thinking"] = answer.reasoning
    out["done"] = True
    out["done_reason"] = done_reason(answer.finish_reason)
    out.update(final_metrics(answer.usage, answer.timings, timing, end_ns))
    if top_logprobs is not None:
        lps = ollama_logprobs(answer.choice.get("logprobs"), top_logprobs)
        if lps:
            out["logprobs"] = lps
    return out


def l2_normalize(vec: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vec))
    if not math.isfinite(norm):
        raise UpstreamError("backend returned an embedding with NaN or Inf values", status=500)
    if norm == 0.0:
        return vec
    return [x / norm for x in vec]


def embed_vectors(resp: Any, count: int) -> tuple[list[list[float]], int]:
    """Vectors in input order and the prompt token count from an OpenAI /embeddings answer."""
    if not isinstance(resp, dict) or not isinstance(resp.get("data"), list):
        raise UpstreamError("backend answered /embeddings without a data list", status=502)
    items = sorted(
        (d for d in resp["data"] if isinstance(d, dict)),
        key=lambda d: d.get("index", 0) if isinstance(d.get("index"), int) else 0,
    )
    vectors: list[list[float]] = []
    for d in items:
        emb = d.get("embedding")
        if not isinstance(emb, list):
            raise UpstreamError("backend returned an embedding that is not a list of numbers", status=502)
        vectors.append(emb)
    if len(vectors) != count:
        raise UpstreamError(f"backend returned {len(vectors)} embeddings for {count} inputs", status=502)
    usage = opt_field(resp, "usage", dict, "an answer")
    tokens = count_or_none(usage.get("prompt_tokens")) if usage is not None else None
    if tokens is None:
        tokens = sum(count_or_none(d.get("tokens_evaluated")) or 0 for d in items)
    return vectors, tokens


def parse_dimensions(value: Any) -> int | None:
    """/api/embed `dimensions`: an integer, or absent; anything else is a 400, as Go's JSON decoding makes it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("dimensions must be an integer")
    return value


def truncate_dimensions(vec: list[float], dims: int | None) -> list[float]:
    """The first `dims` numbers of a vector (renormalised by the caller), as Ollama's EmbedHandler
    (server/routes.go) applies `dimensions`: only when 0 < dims < the vector's length; 0, a negative
    number or one past the length gives the whole vector."""
    return vec[:dims] if dims is not None and 0 < dims < len(vec) else vec
