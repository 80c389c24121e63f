"""Ollama servers as backends: they speak Ollama's native API, and reach the pivot through one translator
pair (`translate.to_ollama` for requests, `streams.ollama_to_openai` / `translate.from_ollama` for answers).

What is specific to them: `GET /api/tags` for discovery (with details, size, digest, date), `GET /api/ps`
for what they have loaded; an Ollama client in front of one is relayed natively (`speaks("ollama")`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime
from typing import Any, Literal

from ..config import BackendSettings
from ..errors import OllamuxError
from ..names import display_name
from ..registry import ModelEntry
from ..streams.ollama_to_openai import OllamaToOpenAIStream
from ..streams.translator import StreamTranslator
from ..translate import from_ollama, to_ollama
from .http import Clients, HTTPBackend
from .plan import Answer, Api, PivotKind, PivotPlan

__all__ = ["OllamaBackend", "tags_entries"]

log = logging.getLogger("ollamux.backends")

DISCOVER_TIMEOUT = 10.0
PS_TIMEOUT = 3.0
NDJSON = "application/x-ndjson"


class OllamaBackend(HTTPBackend):
    api: Api = "ollama"
    default_health_path = "/api/version"

    def __init__(self, settings: BackendSettings, client: Clients) -> None:
        super().__init__(settings, client)
        self._plans: dict[PivotKind, PivotPlan] = {}

    def pivot_plan(self, kind: PivotKind) -> PivotPlan:
        plan = self._plans.get(kind)
        if plan is None:
            plan = self._plans[kind] = self._plan(kind)
        return plan

    def _plan(self, kind: PivotKind) -> PivotPlan:
        max_line = self.settings.max_event_bytes
        if kind == "embedding":
            return PivotPlan(
                path="/api/embed",
                build=to_ollama.embed_request,
                stream_type=NDJSON,
                json=lambda data, a: from_ollama.embeddings(data, a.model, encoding_format=a.encoding_format),
            )
        stream_kind: Literal["chat", "completion"] = kind

        def stream(a: Answer) -> StreamTranslator:
            return OllamaToOpenAIStream(
                a.model, stream_kind, id=a.id, created=a.created, include_usage=a.include_usage, max_line_bytes=max_line
            )

        if kind == "chat":
            return PivotPlan(
                path="/api/chat",
                build=to_ollama.chat_request,
                stream_type=NDJSON,
                stream=stream,
                json=lambda data, a: from_ollama.chat_completion(data, a.model, id=a.id, created=a.created),
            )
        return PivotPlan(
            path="/api/generate",
            build=to_ollama.completion_request,
            stream_type=NDJSON,
            stream=stream,
            json=lambda data, a: from_ollama.text_completion(data, a.model, id=a.id, created=a.created),
        )

    async def discover(self) -> list[ModelEntry]:
        payload = await self.listing("/api/tags", DISCOVER_TIMEOUT)
        return tags_entries(self.name, payload)

    async def running(self) -> list[dict[str, Any]]:
        try:
            payload = await asyncio.wait_for(self.get_json("/api/ps"), timeout=PS_TIMEOUT)
        except (OllamuxError, TimeoutError) as exc:
            log.debug("ps of backend '%s' failed: %s", self.name, getattr(exc, "message", exc))
            return []
        models = payload.get("models") if isinstance(payload, dict) else None
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def _epoch(value: Any) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        # Go writes nanoseconds; Python before 3.12 reads at most microseconds reliably
        text = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def tags_entries(backend: str, payload: Any) -> list[ModelEntry]:
    """Entries from an Ollama `GET /api/tags` answer, with its metadata (details, size, digest, date)."""
    models = payload.get("models") if isinstance(payload, dict) else None
    out: list[ModelEntry] = []
    for item in models if isinstance(models, list) else []:
        if not isinstance(item, dict):
            continue
        name = item.get("model") or item.get("name")
        if not isinstance(name, str) or not name:
            continue
        meta: dict[str, Any] = {}
        details = item.get("details")
        if isinstance(details, dict):
            meta["details"] = details
            for key in ("family", "parameter_size", "quantization_level", "format"):
                if isinstance(details.get(key), str) and details[key]:
                    meta[key] = details[key]
        if isinstance(item.get("size"), int):
            meta["size"] = item["size"]
        if isinstance(item.get("digest"), str):
            meta["digest"] = item["digest"].removeprefix("sha256:")
        modified = _epoch(item.get("modified_at"))
        if modified:
            meta["modified_at"] = modified
        caps = item.get("capabilities")
        if isinstance(caps, list) and all(isinstance(c, str) for c in caps):
            meta["capabilities"] = tuple(caps)
        out.append(ModelEntry(name=display_name(name), backend=backend, upstream=name, source="discovered", meta=meta))
    return out
