"""What both APIs' handlers share: the endpoint wrapper (ids, errors, records) and response helpers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .. import guard
from ..errors import ModelNotFound, OllamuxError
from ..guard.client_addr import client_of
from ..guard.core import KEY_NAME, STREAMED_UPLOADS, client_request_id
from ..observe import CURRENT_REQUEST_ID, ApiName, RequestRecord
from ..pipeline import PREPARED, stream_headers
from ..pipeline.pivot import json_answer as json_response
from ..pipeline.relay import FINISHED
from ..pipeline.upstream import client_auth, identity_headers, upstream_headers
from ..pipeline.warmup import finish_late
from ..registry import Route
from ..state import STATE, AppState

__all__ = [
    "JSON_CT",
    "NDJSON_CT",
    "SSE_CT",
    "Handler",
    "client_auth",
    "endpoint",
    "error_response",
    "identity_headers",
    "json_response",
    "resolve_model",
    "start_stream",
    "upstream_headers",
]

log = logging.getLogger("ollamux")

JSON_CT = "application/json; charset=utf-8"
NDJSON_CT = "application/x-ndjson"
SSE_CT = "text/event-stream"
REQUEST_ID = "x-request-id"

Handler = Callable[[web.Request, AppState, RequestRecord], Awaitable[web.StreamResponse]]


def error_response(exc: OllamuxError, api: ApiName, rec: RequestRecord) -> web.Response:
    body = exc.body_for(api)
    headers = {REQUEST_ID: rec.id, **exc.headers}
    # Ollama's (Gin's) JSON answers are `application/json; charset=utf-8`, its errors included
    return web.Response(body=body, status=exc.status, content_type="application/json", charset="utf-8", headers=headers)


def endpoint(api: ApiName, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a handler: request id in and out, one record per request, errors in the API's envelope."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        rid = client_request_id(request.headers)  # a hostile id must not break headers or the log
        rec = RequestRecord(id=rid, api=api, route=request.path, method=request.method, client=client_of(request))
        rec.key_name = request.get(KEY_NAME)  # set by the guard middleware: the key's name, never the key
        rec.body_bytes = request.content_length or 0
        resource = request.match_info.route.resource
        rec.route_name = resource.canonical if resource is not None else None
        rid_token = CURRENT_REQUEST_ID.set(rid)
        tracer = state.tracer
        span = tracer.request_started(request.headers, rec) if tracer.enabled else None
        state.observers.started(rec)
        try:
            if state.settings.request_log.capture_bodies and not request.path.startswith(STREAMED_UPLOADS):
                # aiohttp caches the body, so the handler's own read() costs nothing more
                rec.request_body = await request.read()
            resp = await handler(request, state, rec)
            if not resp.prepared:
                resp.headers[REQUEST_ID] = rid
            if not rec.status:
                rec.status = resp.status
            return resp
        except OllamuxError as exc:
            if await _started(request, rec, exc):
                return request[PREPARED]
            rec.status = exc.status
            rec.error = exc.message
            return error_response(exc, api, rec)
        except web.HTTPException as exc:
            # aiohttp's own refusals (body too large, ...) rendered in the client's envelope, not as text
            err = OllamuxError(exc.text or exc.reason, status=exc.status)
            rec.status = exc.status
            rec.error = err.message
            return error_response(err, api, rec)
        except asyncio.CancelledError:
            # the client went away: Ollama's 499; the upstream request was cancelled with us
            rec.status = 499
            rec.abandoned = True
            rec.error = rec.error or "request canceled"
            raise
        except ConnectionError as exc:
            rec.status = 499
            rec.abandoned = True
            rec.error = f"client connection lost: {exc}"
            # returned, not raised: aiohttp drops a response it cannot write quietly, but logs a raised
            # error with a traceback (a client hanging up is no server fault)
            return web.Response(status=499, headers={REQUEST_ID: rid})
        except Exception as exc:  # nothing crashes the server; the operator log gets the traceback
            log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
            err = OllamuxError(f"internal error: {type(exc).__name__}: {exc}", status=500)
            if await _started(request, rec, err):
                return request[PREPARED]
            rec.status = 500
            rec.error = err.message
            return error_response(err, api, rec)
        finally:
            state.observers.finished(rec)
            if span is not None:
                tracer.request_finished(span, rec)
            CURRENT_REQUEST_ID.reset(rid_token)

    return wrapped


async def _started(request: web.Request, rec: RequestRecord, err: OllamuxError) -> bool:
    """A failure after the status line went out: a second response would land inside the first one's
    body, so there is none; the record keeps what the client got (the relay wrote its final frame, or,
    when a model start kept the stream alive and failed, `finish_late` writes it now)."""
    if request.get(PREPARED) is None:
        return False
    rec.error = rec.error or err.message
    if not request.get(FINISHED):
        rec.status = err.status
        await finish_late(request, err)
    return True


async def start_stream(request: web.Request, rec: RequestRecord, content_type: str) -> web.StreamResponse:
    """Send the status line and headers of a streamed answer; chunks follow unbuffered."""
    resp = web.StreamResponse(status=200, headers=stream_headers(content_type, rec))
    rec.streamed = True
    rec.status = 200
    await resp.prepare(request)
    request[PREPARED] = resp
    return resp


def resolve_model(state: AppState, rec: RequestRecord, model: Any) -> Route:
    """Resolve a client's model name, check the caller's key may use it, and record what was asked."""
    rec.model_requested = model
    try:
        route = state.registry.resolve(model)
    except ModelNotFound as exc:
        raise guard.visible_not_found(state, rec, exc) from None
    guard.authorize_model(state, rec, route)  # 403 when the client's key may not use this model
    rec.model_served = route.upstream
    rec.backend = route.backend
    return route
