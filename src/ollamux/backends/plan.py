"""How a backend serves a request in the pivot shape: the wire APIs, and one plan per kind of request (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..streams.translator import StreamTranslator

__all__ = ["Answer", "Api", "PivotKind", "PivotPlan"]

# The wire APIs a backend may speak natively. "openai" (chat completions, completions, embeddings) is the
# pivot: every front can reach a backend that speaks it through one translator pair. "responses" (OpenAI's
# Responses API) and "anthropic" (Anthropic's Messages API) are spoken by some servers beside "openai"
# (llama.cpp's, vLLM); a front whose API the backend speaks is relayed untouched.
Api = Literal["openai", "ollama", "responses", "anthropic"]


PivotKind = Literal["chat", "completion", "embedding"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the client is told about the answer it gets: its model name, id and creation time."""

    model: str
    id: str
    created: int
    include_usage: bool = False
    encoding_format: str = "float"  # embeddings: "float" lists or "base64" little-endian float32


@dataclass(frozen=True, slots=True)
class PivotPlan:
    """How a backend serves one request in the pivot (OpenAI chat/completions/embeddings) shape.

    `build` turns the pivot body into the backend's wire body for one upstream model name (a fallback has
    its own); `stream` and `json` turn the backend's answers back into the pivot shape, None when they
    already are. A front then needs only its own translator pair to the pivot: N+M, not NxM.
    """

    path: str
    build: Callable[[dict[str, Any], str], dict[str, Any]]
    stream_type: str  # the media type of a streamed answer ("text/event-stream", "application/x-ndjson")
    stream: Callable[[Answer], StreamTranslator] | None = None
    json: Callable[[Any, Answer], Any] | None = None
