"""Ollama's model-management routes: /api/copy, /api/create, /api/delete and /api/blobs/{digest}.

Each answers as Ollama's handler does (server/routes.go, server/create.go): copy and delete are 200 with an
empty body, 404 `model 'x' not found` for an unknown model; create streams its status objects
(`{"status": "using existing layer sha256:..."}` ... `{"status": "success"}`, only the last with
`stream: false`); HEAD of a blob is 200 or 404; an upload is 201 (200 if the blob was there already), 400
when its sha256 is not the digest it was sent to. The work itself is `model_admin.ModelAdmin`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from .. import guard
from ..blobs import parse_digest
from ..create_request import check_name, read_create
from ..errors import BadRequest, ModelNotFound, OllamuxError
from ..jsonutil import dumps_line, loads_object
from ..model_admin import ModelAdmin
from ..observe import RequestRecord
from ..registry import ModelEntry, Route
from ..state import AppState
from .common import NDJSON_CT, endpoint, json_response, start_stream

__all__ = ["add_routes"]

UPLOAD_CHUNK = 1 << 20


def _admin(state: AppState) -> ModelAdmin:
    if state.admin is None:
        raise OllamuxError("the model store is not open", status=503)
    return state.admin


def _served(state: AppState, rec: RequestRecord, name: str) -> ModelEntry:
    """The model `name` names, which the caller's key may use; 404 with a few names that exist otherwise."""
    entry = state.registry.find(name)
    if entry is None:
        raise guard.visible_not_found(state, rec, ModelNotFound(name, state.registry.suggest(name)))
    guard.authorize_model(state, rec, Route(name, entry, entry.upstream))
    return entry


async def _body(request: web.Request) -> dict[str, object]:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("missing request body")  # Ollama's wording for every one of these routes
    return loads_object(raw)


async def copy(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    body = await _body(request)
    source, destination = body.get("source"), body.get("destination")
    source = check_name(source, f'source "{source or ""}" is invalid')
    destination = check_name(destination, f'destination "{destination or ""}" is invalid')
    rec.model_requested = source
    entry = _served(state, rec, source)
    rec.backend = entry.backend
    await _admin(state).copy(entry, destination)
    return web.Response(status=200)


async def delete(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    body = await _body(request)
    raw_name = body.get("model") or body.get("name")
    name = check_name(raw_name, f'name "{raw_name or ""}" is invalid')
    rec.model_requested = name
    entry = _served(state, rec, name)
    rec.backend = entry.backend
    await _admin(state).delete(entry, name)
    return web.Response(status=200)


async def create(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    inp = read_create(await _body(request))
    rec.model_requested = inp.name
    base = _served(state, rec, inp.from_) if inp.from_ is not None else None
    statuses = await _admin(state).create(inp, base)
    if not inp.stream:
        return json_response({"status": statuses[-1]})
    out = await start_stream(request, rec, NDJSON_CT)
    await out.write(b"".join(dumps_line({"status": s}) for s in statuses))
    await out.write_eof()
    return out


async def head_blob(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    digest = request.match_info["digest"]
    if not _admin(state).blobs.exists(parse_digest(digest)):
        raise OllamuxError(f'blob "{digest}" not found', status=404)
    return web.Response(status=200)


async def upload_blob(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    """The body streams to disk (the guard does not read it whole: a GGUF file is larger than any JSON
    body limit); each chunk must arrive within limits.body_timeout of the last."""
    hexdigest = parse_digest(request.match_info["digest"])
    idle = state.settings.limits.body_timeout

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await request.content.read(UPLOAD_CHUNK)
            except TimeoutError:
                raise OllamuxError(
                    f"upload stalled for {idle:g} s (limits.body_timeout)", status=408, headers={"Connection": "close"}
                ) from None
            if not chunk:
                return
            yield chunk

    created = await _admin(state).blobs.receive(hexdigest, chunks())
    return web.Response(status=201 if created else 200)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/create", endpoint("ollama", create))
    r.add_post("/api/copy", endpoint("ollama", copy))
    r.add_delete("/api/delete", endpoint("ollama", delete))
    r.add_route("POST", "/api/blobs/{digest}", endpoint("ollama", upload_blob))
    r.add_route("HEAD", "/api/blobs/{digest}", endpoint("ollama", head_blob))
