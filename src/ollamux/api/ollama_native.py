"""Ollama clients on a backend that speaks Ollama: the native API relayed as is, model names mapped.

The request goes on with only `model` swapped for the upstream name, and every answer line comes back
with the client's name in it; the relay does the rest (one loop for every stream).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from ..backends.failover import open_upstream
from ..backends.http import HTTPBackend
from ..config import NO_PARAMS
from ..observe import RequestRecord
from ..pipeline import relay_stream
from ..pipeline.params import params_for
from ..pipeline.relay import JSON_TYPES, wrong_type
from ..registry import Route
from ..state import AppState
from ..streams.rewrite import ModelLineRewriter
from ..streams.translator import NDJSONPassthrough, ollama_counts
from ..translate.model_params import OllamaKind, apply_to_ollama
from ..translate.passthrough import replace_model_in_body
from .common import JSON_CT, NDJSON_CT, REQUEST_ID, client_auth, identity_headers

__all__ = ["relay"]

# the native routes a model's defaults and filters apply to (/api/show and the rest are relayed as they are)
_KINDS: dict[str, OllamaKind] = {
    "/api/chat": "chat",
    "/api/generate": "generate",
    "/api/embed": "embed",
    "/api/embeddings": "embed",
}


async def relay(
    request: web.Request,
    state: AppState,
    rec: RequestRecord,
    route: Route,
    body: dict[str, Any],
    raw: bytes | None,
    path: str,
    stream: bool,
) -> web.StreamResponse:
    """POST `path` on the Ollama backend with the client's request; its answer back, unbuffered."""

    kind = _KINDS.get(path)

    def data(r: Route, _: HTTPBackend) -> tuple[str, bytes]:  # rebuilt for a fallback: its own model name
        params = params_for(state, r) if kind is not None else NO_PARAMS
        if not params.empty and kind is not None:
            # the model's defaults and filters, in Ollama's own shape; then serialised again
            payload = apply_to_ollama({k: v for k, v in body.items() if k != "name"}, kind, params)
            payload["model"] = r.upstream
            return path, orjson.dumps(payload)
        if raw is None or "model" not in body:
            # /api/show may name the model with the deprecated `name` key; the backend gets `model`
            payload = {k: v for k, v in body.items() if k != "name" or "model" in body}
            payload["model"] = r.upstream
            return path, orjson.dumps(payload)
        return path, replace_model_in_body(raw, body, r.upstream)

    # retries, replicas and fallbacks happen in there, before the first byte
    async with open_upstream(
        state,
        route,
        data,
        rec=rec,
        read_body=not stream,
        headers=identity_headers(request, rec),
        client_auth=client_auth(request, state),
    ) as opened:
        resp, served, up = opened.response, opened.route, opened.backend
        content_type = resp.content_type
        streamed = stream and content_type not in JSON_TYPES
        # a streamed line is bounded like any event; a whole answer (one line) like any whole answer
        max_line = up.settings.max_event_bytes if streamed else up.settings.max_response_bytes
        rewriter = (
            ModelLineRewriter(served.upstream, route.requested, max_line_bytes=max_line)
            if served.upstream != route.requested
            else None
        )
        if streamed:
            translator = NDJSONPassthrough(NDJSON_CT, rewriter, up.redact.data if up.redact else None)
            return await relay_stream(request, rec, resp, translator, expect=NDJSON_CT)
        # one JSON answer (also what Ollama sends a streamed request that has nothing to stream)
        if content_type not in JSON_TYPES:
            resp.release()
            raise wrong_type(resp, "application/json")
        answer = await resp.read()
        rec.first_token_ns = time.perf_counter_ns()
        if rewriter is not None:
            answer = rewriter.feed(answer) + rewriter.flush()
        rec.count_tokens(*ollama_counts(answer[-2048:]))
        return web.Response(body=answer, status=resp.status, headers={"Content-Type": JSON_CT, REQUEST_ID: rec.id})
