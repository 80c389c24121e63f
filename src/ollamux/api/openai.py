"""The OpenAI API on the same port: a byte-for-byte pass-through to OpenAI-compatible backends (the hot
path), full translation to Ollama's native API for Ollama backends, and the model list of every backend.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict

from .. import discovery, guard
from ..backends.failover import open_upstream
from ..backends.http import HTTPBackend, UpstreamResponse, error_message_from_body
from ..catalog import meta_for
from ..errors import BadRequest, OllamuxError
from ..jsonutil import loads_object
from ..names import strip_latest
from ..observe import RequestRecord
from ..registry import ModelEntry, Route
from ..state import AppState
from ..streams.ollama_to_openai import OllamaToOpenAIStream, error_frame
from ..translate import from_ollama, to_ollama
from ..translate.passthrough import replace_model_in_body
from .common import (
    REQUEST_ID,
    SSE_CT,
    client_auth,
    endpoint,
    identity_headers,
    json_response,
    resolve_model,
    start_stream,
    upstream_headers,
)

__all__ = ["add_routes"]

Kind = Literal["chat", "completion", "embedding"]

_PATHS: dict[Kind, str] = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}

# never relayed: they describe one connection, not the answer (RFC 9110 section 7.6.1), or aiohttp
# writes its own (length, date, server), or ours replaces the backend's (request id)
_NOT_RELAYED = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
        "trailer", "transfer-encoding", "upgrade", "content-length", "date", "server", REQUEST_ID,
    }
)

# usage from a relayed answer without parsing it: the counts are plain integers wherever they sit
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_USAGE_SPAN = 1024  # a usage object, with its *_details, fits in this


def _begin(state: AppState, rec: RequestRecord, body: dict[str, Any]) -> Route:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"invalid type for 'model' field: {to_ollama.go_type(model)}", param="model")
    return resolve_model(state, rec, model)


def _record_usage(rec: RequestRecord, data: bytes) -> bool:
    """Token counts from the last `"usage"` object in an answer's bytes (scanned from there on only);
    False when there is none."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return False
    usage = data[at : at + _USAGE_SPAN]
    prompt = _PROMPT_TOKENS.search(usage)
    if prompt:
        rec.prompt_tokens = int(prompt[1])
    completion = _COMPLETION_TOKENS.search(usage)
    if completion:
        rec.completion_tokens = int(completion[1])
    return True


def _relay_headers(upstream: Mapping[str, str], rec: RequestRecord) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for k, v in upstream.items():
        if k.lower() not in _NOT_RELAYED:
            headers.add(k, v)
    headers[REQUEST_ID] = rec.id
    return headers


# ------------------------------------------------------------------------------------ pass-through
async def _relay(request: web.Request, rec: RequestRecord, resp: UpstreamResponse) -> web.StreamResponse:
    """The backend's status, headers and body as they came; SSE chunk by chunk, as each arrives."""
    rec.upstream_url = resp.url
    status = resp.status
    headers = _relay_headers(resp.headers, rec)
    if status >= 400:
        data = await resp.read()
        rec.status = status
        rec.error = error_message_from_body(data, status)
        if not _is_openai_error(data):  # keep the client's envelope: wrap plain text, {"detail"}, ...
            data = OllamuxError(rec.error, status=status).openai_body()
            headers["Content-Type"] = "application/json"
        return web.Response(body=data, status=status, headers=headers)
    if not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
        data = await resp.read()
        rec.first_token_ns = time.perf_counter_ns()
        _record_usage(rec, data)
        return web.Response(body=data, status=status, headers=headers)
    out = web.StreamResponse(status=status, headers=headers)
    rec.streamed = True
    rec.status = status
    await out.prepare(request)
    prev = last = b""
    try:
        async for chunk in resp.iter_chunks():
            if rec.first_token_ns is None:
                rec.first_token_ns = time.perf_counter_ns()
            await out.write(chunk)
            prev, last = last, chunk
    except OllamuxError as exc:
        # after the first byte a failure is one more frame in the client's format; the status stays
        rec.error = exc.message
        await out.write(error_frame(exc))
    finally:
        resp.release()  # now, not when the generator is collected: a client gone frees the backend slot
    # the usage chunk is among the last frames, perhaps cut between the last two reads
    if not _record_usage(rec, last):
        _record_usage(rec, prev[-_USAGE_SPAN:] + last)
    await out.write_eof()
    return out


def _is_openai_error(data: bytes) -> bool:
    return data.lstrip()[:1] == b"{" and b'"error"' in data and b'"message"' in data


# ---------------------------------------------------------------------------------- generation
def _handler(kind: Kind) -> Any:
    async def handle(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
        raw = await request.read()
        body = loads_object(raw)
        route = _begin(state, rec, body)
        backend = state.backend_for(route)
        if backend.type == "ollama":
            return await _via_ollama(request, state, rec, route, body, kind)

        def payload(r: Route, up: HTTPBackend) -> bytes:  # a fallback gets its own upstream model name
            return replace_model_in_body(raw, body, r.upstream)

        headers = upstream_headers(request, rec)
        # the body goes back as the backend encoded it, so the backend may only use what the client reads
        headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
        # retries, replicas and fallbacks happen in there, before the first byte
        async with open_upstream(
            state, route, _PATHS[kind], payload, rec=rec, raise_for_status=False,
            headers=headers, client_auth=client_auth(request, state),
        ) as opened:
            return await _relay(request, rec, opened.response)

    return handle


async def _via_ollama(
    request: web.Request, state: AppState, rec: RequestRecord, route: Route, body: dict[str, Any], kind: Kind
) -> web.StreamResponse:
    """An Ollama backend: translate the request, call the native API, translate the answer back."""
    if kind == "chat":
        build, path, prefix = to_ollama.chat_request, "/api/chat", "chatcmpl-"
    elif kind == "completion":
        build, path, prefix = to_ollama.completion_request, "/api/generate", "cmpl-"
    else:
        build, path, prefix = to_ollama.embed_request, "/api/embed", ""
    first = build(body, route.upstream)  # validates the request before any backend is called
    stream = bool(first.get("stream"))
    answer_id = prefix + rec.id[:24]
    created = int(time.time())
    async with open_upstream(
        state, route, path, lambda r, _: first if r is route else build(body, r.upstream), rec=rec,
        read_body=not stream, headers=identity_headers(request, rec), client_auth=client_auth(request, state),
    ) as opened:
        resp = opened.response
        if not stream:
            data = await resp.json()
            rec.first_token_ns = time.perf_counter_ns()
            if not isinstance(data, dict):
                raise OllamuxError("backend answered with something that is not a JSON object", status=502)
            if kind == "embedding":
                out = from_ollama.embeddings(data, route.requested, encoding_format=to_ollama.encoding_format(body))
                rec.prompt_tokens = out["usage"]["prompt_tokens"]
                return json_response(out)
            if kind == "chat":
                out = from_ollama.chat_completion(data, route.requested, id=answer_id, created=created)
                rec.response_text = out["choices"][0]["message"]["content"]
            else:
                out = from_ollama.text_completion(data, route.requested, id=answer_id, created=created)
                rec.response_text = out["choices"][0]["text"]
            rec.prompt_tokens = out["usage"]["prompt_tokens"]
            rec.completion_tokens = out["usage"]["completion_tokens"]
            return json_response(out)
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        translator = OllamaToOpenAIStream(
            route.requested, "chat" if kind == "chat" else "completion",
            id=answer_id, created=created, include_usage=include_usage,
        )
        return await _relay_ndjson_as_sse(request, rec, resp, translator)


async def _relay_ndjson_as_sse(
    request: web.Request, rec: RequestRecord, resp: UpstreamResponse, translator: OllamaToOpenAIStream
) -> web.StreamResponse:
    """Upstream NDJSON in, OpenAI SSE out, one write per upstream read (no buffering)."""
    out = await start_stream(request, rec, SSE_CT)
    try:
        try:
            async for chunk in resp.iter_chunks():
                if rec.first_token_ns is None:
                    rec.first_token_ns = time.perf_counter_ns()
                frames = translator.feed(chunk)
                if frames:
                    await out.write(b"".join(frames))
            await out.write(b"".join(translator.finish()))
        except OllamuxError as exc:
            rec.error = exc.message
            rec.status = exc.status
            await out.write(error_frame(exc))
    finally:
        resp.release()
        if translator.usage is not None:
            rec.prompt_tokens = translator.usage["prompt_tokens"]
            rec.completion_tokens = translator.usage["completion_tokens"]
        rec.response_text = "".join(translator.text_parts)
    await out.write_eof()
    return out


# -------------------------------------------------------------------------------------- models
def _model_id(state: AppState, entry: ModelEntry) -> str:
    """The id OpenAI clients see: the configured spelling; Ollama models keep their tag, as Ollama does."""
    if entry.settings is not None and not entry.settings.is_wildcard:
        return entry.settings.name
    backend = state.backends.get(entry.backend)
    if backend is not None and backend.type == "ollama":
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
