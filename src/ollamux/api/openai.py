"""The OpenAI API on the same port: a byte-for-byte pass-through to OpenAI-compatible backends (the hot
path), full translation to Ollama's native API for Ollama backends, and the model list of every backend.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .. import discovery, guard
from ..backends.base import Answer, PivotKind
from ..backends.failover import open_upstream
from ..backends.http import HTTPBackend
from ..catalog import meta_for
from ..errors import BadRequest, UpstreamError
from ..jsonutil import loads_object
from ..names import strip_latest
from ..observe import RequestRecord
from ..pipeline import relay_json, relay_passthrough, relay_stream
from ..registry import ModelEntry, Route
from ..state import AppState
from ..streams.translator import SSEPassthrough, StreamTranslator
from ..translate import from_ollama
from ..translate.checks import json_type
from ..translate.passthrough import replace_model_in_body
from ..translate.to_ollama import encoding_format, go_type, stream_flag
from .common import SSE_CT, client_auth, endpoint, identity_headers, json_response, resolve_model, upstream_headers

__all__ = ["add_routes"]

_PATHS: dict[PivotKind, str] = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}

_PREFIXES: dict[PivotKind, str] = {"chat": "chatcmpl-", "completion": "cmpl-", "embedding": ""}


def _begin(state: AppState, rec: RequestRecord, body: dict[str, Any]) -> Route:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"invalid type for 'model' field: {go_type(model)}", param="model")
    return resolve_model(state, rec, model)


# ---------------------------------------------------------------------------------- generation
def _handler(kind: PivotKind) -> Any:
    async def handle(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
        raw = await request.read()
        body = loads_object(raw)
        route = _begin(state, rec, body)
        if not state.backend_for(route).speaks("openai"):
            return await _via_pivot(request, state, rec, route, body, kind)
        path = _PATHS[kind]

        def payload(r: Route, up: HTTPBackend) -> tuple[str, bytes]:  # a fallback gets its own model name
            return path, replace_model_in_body(raw, body, r.upstream)

        headers = upstream_headers(request, rec)
        # the body goes back as the backend encoded it, so the backend may only use what the client reads
        headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
        # retries, replicas and fallbacks happen in there, before the first byte
        async with open_upstream(
            state,
            route,
            payload,
            rec=rec,
            raise_for_status=False,
            headers=headers,
            client_auth=client_auth(request, state),
        ) as opened:
            return await relay_passthrough(request, rec, opened.response)

    return handle


async def _via_pivot(
    request: web.Request, state: AppState, rec: RequestRecord, route: Route, body: dict[str, Any], kind: PivotKind
) -> web.StreamResponse:
    """A backend that does not speak OpenAI: the request is already the pivot, the backend's plan
    turns it into its wire format and its answers back."""
    stream = stream_flag(body)
    opts = body.get("stream_options")
    answer = Answer(
        model=route.requested,
        id=_PREFIXES[kind] + rec.id[:24],
        created=int(time.time()),
        include_usage=isinstance(opts, dict) and opts.get("include_usage") is True,
        encoding_format=encoding_format(body) if kind == "embedding" else "float",
    )

    def wire(r: Route, up: HTTPBackend) -> tuple[str, dict[str, Any]]:
        plan = up.pivot_plan(kind)
        return plan.path, plan.build(body, r.upstream)  # validates the request (400) before it is sent

    async with open_upstream(
        state,
        route,
        wire,
        rec=rec,
        read_body=not stream,
        headers=identity_headers(request, rec),
        client_auth=client_auth(request, state),
    ) as opened:
        plan = opened.backend.pivot_plan(kind)
        if not stream or kind == "embedding":
            to_pivot = plan.json
            out: dict[str, Any] = await relay_json(
                opened.response, (lambda data: to_pivot(data, answer)) if to_pivot is not None else _object
            )
            rec.first_token_ns = time.perf_counter_ns()
            usage = out.get("usage")
            usage = usage if isinstance(usage, dict) else {}
            rec.prompt_tokens = usage.get("prompt_tokens")
            rec.completion_tokens = usage.get("completion_tokens")
            if kind != "embedding":
                choice = out["choices"][0]
                rec.response_text = choice["message"]["content"] if kind == "chat" else choice["text"]
            return json_response(out)
        translator: StreamTranslator = (
            plan.stream(answer) if plan.stream is not None else SSEPassthrough(SSE_CT, opened.backend.redact.data)
        )
        return await relay_stream(request, rec, opened.response, translator, expect=plan.stream_type)


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UpstreamError(f"backend answered with {json_type(data)}, not a JSON object", status=502)
    return data


# -------------------------------------------------------------------------------------- models
def _model_id(state: AppState, entry: ModelEntry) -> str:
    """The id OpenAI clients see: the configured spelling; Ollama models keep their tag, as Ollama does."""
    if entry.settings is not None and not entry.settings.is_wildcard:
        return entry.settings.name
    backend = state.backends.get(entry.backend)
    if backend is not None and backend.speaks("ollama"):
        return entry.name
    return strip_latest(entry.name) if not entry.upstream.lower().endswith(":latest") else entry.name


def _model_object(state: AppState, entry: ModelEntry, model_id: str) -> dict[str, Any]:
    meta = meta_for(entry, state.probed.get((entry.backend, entry.upstream)), state.started_at)
    return from_ollama.model_object(model_id, int(meta.modified_at), entry.backend)


async def list_models(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    await discovery.refresh_if_stale(state)
    objects = [_model_object(state, e, _model_id(state, e)) for e in guard.visible_entries(state, rec)]
    return json_response(from_ollama.models_list(objects))


async def retrieve_model(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    name = request.match_info["model"]
    rec.model_requested = name
    await discovery.refresh_if_stale(state)
    route = state.registry.resolve(name)
    guard.authorize_model(state, rec, route)
    rec.backend = route.backend
    return json_response(_model_object(state, route.entry, name))  # the id as the client asked for it


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/chat/completions", endpoint("openai", _handler("chat")))
    r.add_post("/v1/completions", endpoint("openai", _handler("completion")))
    r.add_post("/v1/embeddings", endpoint("openai", _handler("embedding")))
    r.add_get("/v1/models", endpoint("openai", list_models))
    # model ids hold '/' (org/model, host/namespace/model) and ':' (tags): match the rest of the path
    r.add_get("/v1/models/{model:.+}", endpoint("openai", retrieve_model))
