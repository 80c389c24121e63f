"""OpenAI's Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`) on every backend.

A backend that serves the Responses API itself (`apis: [responses]`, and the GGUF models ollamux runs,
whose llama.cpp server does) gets the request untouched; every other backend is reached through the
chat-completions pivot (`translate.responses`, `streams.pivot_to_responses`). Beyond Ollama's stateless
layer, responses are stored unless `store: false`, and `previous_response_id` continues one: the stored
exchange goes before the new input (through the pivot, since the pivot is where the exchange is kept).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..backends.failover import Opened, open_upstream
from ..backends.http import HTTPBackend
from ..backends.plan import Answer, PivotKind
from ..errors import BadRequest, OllamuxError
from ..jsonutil import dumps, loads_object
from ..observe import RequestRecord
from ..pipeline import relay_passthrough
from ..pipeline.params import params_for
from ..pipeline.pivot import serve_via_pivot
from ..pipeline.warmup import warm_up
from ..registry import Route
from ..state import AppState
from ..store.responses import ResponseStore, StoredResponse
from ..streams.translator import StreamTranslator
from ..translate.model_params import apply_to_responses
from ..translate.passthrough import replace_model_in_body
from ..translate.to_ollama import go_type, stream_flag
from ..translate.to_openai import one_system_message
from .common import client_auth, endpoint, identity_headers, json_response, resolve_model

# The Responses translators (translate.responses, streams.pivot_to_responses) are imported by the functions
# that use them, not here: a server whose clients never call this API does not carry them (see api/anthropic)
if TYPE_CHECKING:
    from ..streams.pivot_to_responses import PivotToResponsesStream
    from ..translate import responses as tr

__all__ = ["add_routes"]


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(f"invalid type for '{key}': expected a boolean, got {go_type(v)}", param=key)
    return v


@dataclass(slots=True)
class _ResponsesFront:
    """A Responses request through the pivot; what it answered is kept for the store."""

    body: dict[str, Any]
    stream: bool
    meta: tr.ResponseMeta
    history: list[dict[str, Any]]
    kind: PivotKind = "chat"
    pivot_request: dict[str, Any] = field(default_factory=dict)
    translator: PivotToResponsesStream | None = None
    response: dict[str, Any] | None = None

    def pivot(self, route: Route, backend: HTTPBackend) -> dict[str, Any]:
        from ..translate import responses as tr

        dialect = backend.settings.dialect
        self.pivot_request = tr.to_pivot(self.body, route.upstream, dialect=dialect, history=self.history)
        return one_system_message(self.pivot_request)  # the stored conversation keeps the request's own order

    def answer(self, opened: Opened) -> Answer:
        return Answer(model=self.meta.model, id=self.meta.id, created=self.meta.created_at, include_usage=True)

    def to_client(self, pivot: dict[str, Any], opened: Opened) -> Any:
        from ..translate import responses as tr

        self.response = tr.from_pivot(pivot, self.body, self.meta)
        return self.response

    def client_stream(self, opened: Opened) -> StreamTranslator:
        from ..streams.pivot_to_responses import PivotToResponsesStream

        max_event = opened.backend.settings.max_event_bytes
        self.translator = PivotToResponsesStream(self.body, self.meta, max_event_bytes=max_event)
        return self.translator

    def final(self) -> dict[str, Any] | None:
        return self.translator.response if self.translator is not None else self.response


async def create(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    from ..streams.pivot_to_responses import PivotToResponsesStream
    from ..translate import responses as tr

    raw = await request.read()
    body = loads_object(raw)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"invalid type for 'model': expected a string, got {go_type(model)}", param="model")
    route = resolve_model(state, rec, model)
    stream = stream_flag(body)
    store = _flag(body, "store", True)  # OpenAI keeps a response unless told not to
    history: list[dict[str, Any]] = []
    prev = body.get("previous_response_id")
    if prev is not None:
        if not isinstance(prev, str) or not prev:
            raise BadRequest("previous_response_id must be a response id string", param="previous_response_id")
        stored = await _responses(state).get(prev, rec.key_name)
        if stored is None:
            raise BadRequest(f"Previous response with id '{prev}' not found.", param="previous_response_id")
        history = stored.conversation
    meta = tr.ResponseMeta(id=f"resp_{secrets.token_hex(24)}", created_at=int(time.time()), model=route.requested)
    if stream:  # a model starting: the stream opens at once and is kept alive
        await warm_up(request, state, rec, route, error_frame=PivotToResponsesStream(body, meta).error_frame)
    if prev is None and state.backend_for(route).speaks("responses"):
        return await _native(request, state, rec, route, raw, body)
    front = _ResponsesFront(body, stream, meta, history)
    resp = await serve_via_pivot(
        request,
        state,
        rec,
        route,
        front,
    )
    final = front.final()
    if store and final is not None:
        conversation = tr.conversation(front.pivot_request, final)
        responses = _responses(state)
        responses.put(final["id"], StoredResponse(final, conversation, rec.key_name))
        if responses.shared and not resp.prepared:
            # the client's next request may reach another instance, which reads only what is written: the
            # whole answer goes out once it is (a stream's last event went out already; it is a moment later)
            await responses.written(final["id"])
    return resp


async def _native(
    request: web.Request, state: AppState, rec: RequestRecord, route: Route, raw: bytes, body: dict[str, Any]
) -> web.StreamResponse:
    """The backend serves the Responses API itself: the request goes as it came (the model swapped)."""

    def payload(r: Route, up: HTTPBackend) -> tuple[str, bytes]:
        params = params_for(state, r)
        if params.empty:  # the zero-cost path: the client's bytes, the model swapped
            return "/responses", replace_model_in_body(raw, body, r.upstream)
        return "/responses", dumps(apply_to_responses({**body, "model": r.upstream}, params))  # its defaults

    headers = identity_headers(request, rec)
    async with open_upstream(
        state, route, payload, rec=rec, raise_for_status=False, headers=headers, client_auth=client_auth(request, state)
    ) as opened:
        return await relay_passthrough(request, rec, opened.response, api="responses")


def _responses(state: AppState) -> ResponseStore:
    if state.responses is None:
        raise OllamuxError("the response store is not open", status=503)
    return state.responses


async def retrieve(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    rid = request.match_info["response_id"]
    stored = await _responses(state).get(rid, rec.key_name)
    if stored is None:
        raise _not_found(rid)
    return json_response(stored.response)


async def delete(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    rid = request.match_info["response_id"]
    if not await _responses(state).delete(rid, rec.key_name):
        raise _not_found(rid)
    return json_response({"id": rid, "object": "response.deleted", "deleted": True})


def _not_found(rid: str) -> OllamuxError:
    # OpenAI's wording; a response another key made is as absent as one never made
    return OllamuxError(f"Response with id '{rid}' not found.", status=404, param="response_id")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/responses", endpoint("responses", create))
    r.add_get("/v1/responses/{response_id}", endpoint("responses", retrieve))
    r.add_delete("/v1/responses/{response_id}", endpoint("responses", delete))
