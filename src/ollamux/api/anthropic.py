"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) on every backend.

A backend that serves the Messages API itself (`apis: [messages]`, and the GGUF models ollamux runs,
whose llama.cpp server does) gets the request untouched; every other backend is reached through the
chat-completions pivot (`translate.anthropic`, `streams.pivot_to_anthropic`). Errors are in Anthropic's
envelope (the endpoint renders them for the "anthropic" API). `anthropic-version` and `anthropic-beta`
are accepted and not needed: the translation follows the current API whatever version a client names.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
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
from ..pipeline.warmup import ANTHROPIC_PING, warm_up
from ..registry import Route
from ..state import AppState
from ..streams.translator import StreamTranslator, anthropic_sse_error
from ..translate.model_params import apply_to_anthropic
from ..translate.passthrough import replace_model_in_body
from ..translate.to_ollama import go_type, stream_flag
from ..translate.to_openai import one_system_message
from .common import client_auth, endpoint, identity_headers, json_response, resolve_model

# The Messages translators (translate.anthropic, streams.pivot_to_anthropic) are imported by the functions
# that use them, not here: a server whose clients never call this API does not carry them (with the
# Responses API's pair, ~1.3 MB of RSS in every server)
if TYPE_CHECKING:
    from ..translate import anthropic as ta

__all__ = ["add_routes"]


@dataclass(frozen=True, slots=True)
class _MessagesFront:
    body: dict[str, Any]
    stream: bool
    meta: ta.MessageMeta
    kind: PivotKind = "chat"

    def pivot(self, route: Route, backend: HTTPBackend) -> dict[str, Any]:
        from ..translate import anthropic as ta

        return one_system_message(ta.to_pivot(self.body, route.upstream, dialect=backend.settings.dialect))

    def answer(self, opened: Opened) -> Answer:
        return Answer(model=self.meta.model, id=self.meta.id, created=0, include_usage=True)

    def to_client(self, pivot: dict[str, Any], opened: Opened) -> Any:
        from ..translate import anthropic as ta

        return ta.from_pivot(pivot, self.meta)

    def client_stream(self, opened: Opened) -> StreamTranslator:
        from ..streams.pivot_to_anthropic import PivotToAnthropicStream

        return PivotToAnthropicStream(self.meta, max_event_bytes=opened.backend.settings.max_event_bytes)


def _begin(state: AppState, rec: RequestRecord, body: dict[str, Any]) -> Route:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"model: Input should be a valid string, not {go_type(model)}", param="model")
    return resolve_model(state, rec, model)


async def messages(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    from ..translate import anthropic as ta

    raw = await request.read()
    body = loads_object(raw)
    route = _begin(state, rec, body)
    if stream_flag(body):  # a model starting: the stream opens at once, Anthropic's pings keep it alive
        await warm_up(request, state, rec, route, error_frame=anthropic_sse_error, heartbeat=ANTHROPIC_PING)
    if state.backend_for(route).speaks("anthropic"):
        return await _native(request, state, rec, route, "/messages", raw, body)
    front = _MessagesFront(
        body, stream_flag(body), ta.MessageMeta(id=f"msg_{secrets.token_hex(12)}", model=route.requested)
    )
    return await serve_via_pivot(
        request,
        state,
        rec,
        route,
        front,
    )


async def count_tokens(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    from ..translate import anthropic as ta

    raw = await request.read()
    body = loads_object(raw)
    route = _begin(state, rec, body)
    if state.backend_for(route).speaks("anthropic"):
        return await _native(request, state, rec, route, "/messages/count_tokens", raw, body)
    ta.to_pivot(body, route.upstream, dialect="llama.cpp")  # the same checks as /v1/messages: a 400 says why
    counted = await _tokenized(request, state, rec, route, ta.count_text(body))
    if counted is not None:
        rec.prompt_tokens = counted + ta.IMAGE_TOKENS * ta.count_images(body)
    else:
        rec.prompt_tokens = ta.estimate_tokens(body)
    return json_response({"input_tokens": rec.prompt_tokens})


async def _tokenized(request: web.Request, state: AppState, rec: RequestRecord, route: Route, text: str) -> int | None:
    """Tokens of `text` by the backend's own tokenizer: llama.cpp's `POST /tokenize` at its server root.
    None when the backend has none (an Ollama server, OpenAI, a server that answers 404): then the
    documented estimate counts."""
    if not state.backend_for(route).speaks("openai"):
        return None

    def payload(r: Route, up: HTTPBackend) -> tuple[str, bytes]:
        if up.settings.dialect == "openai":
            raise _NoTokenizer
        return up.root_path("/tokenize"), orjson.dumps({"content": text, "add_special": False})

    try:
        async with open_upstream(
            state, route, payload, rec=rec, read_body=True, headers=identity_headers(request, rec), client_auth=None
        ) as opened:
            tokens = (await opened.response.json()).get("tokens")
    except (_NoTokenizer, OllamuxError, AttributeError):
        return None
    finally:
        rec.error = None  # a backend without a tokenizer is no failure of this request
    return len(tokens) if isinstance(tokens, list) else None


class _NoTokenizer(Exception):
    """OpenAI's API has no tokenizer route: not worth a request."""


async def _native(
    request: web.Request, state: AppState, rec: RequestRecord, route: Route, path: str, raw: bytes, body: dict[str, Any]
) -> web.StreamResponse:
    """The backend serves the Messages API itself: the request goes as it came (the model swapped)."""

    def payload(r: Route, up: HTTPBackend) -> tuple[str, bytes]:
        params = params_for(state, r)
        if params.empty or path != "/messages":  # the zero-cost path: the client's bytes, the model swapped
            return path, replace_model_in_body(raw, body, r.upstream)
        return path, dumps(apply_to_anthropic({**body, "model": r.upstream}, params))  # the model's defaults

    headers = identity_headers(request, rec)
    for name in ("anthropic-version", "anthropic-beta"):
        if name in request.headers:
            headers[name] = request.headers[name]
    async with open_upstream(
        state, route, payload, rec=rec, raise_for_status=False, headers=headers, client_auth=client_auth(request, state)
    ) as opened:
        return await relay_passthrough(request, rec, opened.response, api="anthropic")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/messages", endpoint("anthropic", messages))
    r.add_post("/v1/messages/count_tokens", endpoint("anthropic", count_tokens))
