"""The OpenAI API on the same port: a byte-for-byte pass-through to OpenAI-compatible backends (the hot
path), full translation to Ollama's native API for Ollama backends, and the model list of every backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .. import discovery, guard
from ..backends.base import Answer, PivotKind
from ..backends.failover import Opened, open_upstream
from ..backends.http import HTTPBackend
from ..catalog import meta_for
from ..errors import BadRequest, ModelNotFound
from ..jsonutil import dumps, loads_object
from ..names import normalize_name, strip_latest
from ..observe import RequestRecord
from ..pipeline import capabilities, relay_passthrough
from ..pipeline.params import params_for
from ..pipeline.pivot import serve_via_pivot
from ..pipeline.warmup import warm_up
from ..registry import CREATED_SOURCE, ModelEntry, Route
from ..state import AppState
from ..streams.translator import StreamTranslator, sse_error
from ..translate import from_ollama
from ..translate.model_params import apply_to_pivot, runtime_hints
from ..translate.passthrough import replace_model_in_body
from ..translate.to_ollama import encoding_format, go_type, stream_flag
from .common import client_auth, endpoint, json_response, resolve_model, upstream_headers

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
        # the body is the pivot: checked here, before a start is kept alive (translated: in serve_via_pivot)
        capabilities.require_pivot(state, route, body, kind)
        if kind != "embedding" and stream_flag(body):
            await warm_up(request, state, rec, route, error_frame=sse_error)  # a model starting: stream kept alive
        if not state.backend_for(route).speaks("openai"):
            return await _via_pivot(request, state, rec, route, body, kind)
        path = _PATHS[kind]

        def payload(r: Route, up: HTTPBackend) -> tuple[str, bytes]:  # a fallback gets its own model name
            params = params_for(state, r)
            if params.empty or kind == "embedding":  # the zero-cost path: the client's bytes, the model swapped
                return path, replace_model_in_body(raw, body, r.upstream)
            # the request is the pivot already: the model's defaults and filters, then serialised again
            return path, dumps(apply_to_pivot({**body, "model": r.upstream}, kind, params, up.settings.dialect))

        headers = upstream_headers(request, rec)
        # the body goes back as the backend encoded it, so the backend may only use what the client reads
        headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
        keep_alive, num_ctx = runtime_hints(params_for(state, route), None, None)
        # retries, replicas and fallbacks happen in there, before the first byte
        async with open_upstream(
            state,
            route,
            payload,
            rec=rec,
            keep_alive=keep_alive,
            num_ctx=num_ctx,
            raise_for_status=False,
            headers=headers,
            client_auth=client_auth(request, state),
        ) as opened:
            return await relay_passthrough(request, rec, opened.response)

    return handle


@dataclass(frozen=True, slots=True)
class _OpenAIFront:
    """An OpenAI request on a backend that does not speak OpenAI: the request is already the pivot, the
    backend's plan turns it into its wire format and its answers back."""

    kind: PivotKind
    body: dict[str, Any]
    stream: bool
    answer_: Answer

    def pivot(self, route: Route, backend: HTTPBackend) -> dict[str, Any]:
        return self.body

    def answer(self, opened: Opened) -> Answer:
        return self.answer_

    def to_client(self, pivot: dict[str, Any], opened: Opened) -> Any:
        return pivot

    def client_stream(self, opened: Opened) -> StreamTranslator | None:
        return None


async def _via_pivot(
    request: web.Request, state: AppState, rec: RequestRecord, route: Route, body: dict[str, Any], kind: PivotKind
) -> web.StreamResponse:
    opts = body.get("stream_options")
    answer = Answer(
        model=route.requested,
        id=_PREFIXES[kind] + rec.id[:24],
        created=int(time.time()),
        include_usage=isinstance(opts, dict) and opts.get("include_usage") is True,
        encoding_format=encoding_format(body) if kind == "embedding" else "float",
    )
    front = _OpenAIFront(kind, body, stream_flag(body) and kind != "embedding", answer)
    return await serve_via_pivot(
        request,
        state,
        rec,
        route,
        front,
    )


# -------------------------------------------------------------------------------------- models
def _model_id(state: AppState, entry: ModelEntry) -> str:
    """The id OpenAI clients see: the configured spelling (an alias's own); Ollama models keep their tag, as
    Ollama does, and so do the models made with copy and create (Ollama lists them as `name:tag`)."""
    if entry.source == CREATED_SOURCE:
        return entry.name
    if entry.alias_of is not None:
        return next((a for a in entry.aliases if normalize_name(a) == entry.key), entry.name)
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
    try:
        route = state.registry.resolve(name)
    except ModelNotFound as exc:
        raise guard.visible_not_found(state, rec, exc) from None
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
