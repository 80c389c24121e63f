"""ollamux's OpenAI pass-through written natively for granian (RSGI), everything else through the bridge (#21).

The question this answers: what would porting the request path to granian's own interface buy, before the
port (every handler rewritten, aiohttp's server duties moved into ollamux) is started? `granian_bridge.py`
measured the layer with aiohttp's request objects kept, and found it does not pay; this measures it without
them, on the hot path only.

`POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings` to an OpenAI-compatible backend take a
path written against granian's scope and protocol that does the work ollamux's aiohttp path does for them:
the Host guard and the body limits, a request record with its id seen by the observers (request log,
metrics), the model resolved and authorised, the capability check, the body passed through with the model
swapped, the upstream opened with retries and fallbacks (`backends.failover.open_upstream`), the answer
relayed (a small one whole, a stream as it comes with the backend's secrets masked) and its usage counted.
Anything the fast path does not do (an Origin header, inbound keys, rate limits, concurrency gates, trusted
proxies, tracing, captured bodies, a model ollamux must start, a backend that needs translation, a
model's defaults) goes through the bridge, with the body already read, decided before anything is sent
upstream or recorded; an upstream error answer comes back in OpenAI's error envelope. A measurement, not
a server: no header timeout, no disconnect cancellation, no TLS.

    bench/run --stacks reference,ollamux,ollamux-granian-native --no-memory --no-litellm --no-engine
    python bench/granian_native.py CONFIG.yaml   (serves the config's server.port; needs `pip install granian`)
"""

from __future__ import annotations

import sys
import time
from typing import Any

import granian_bridge  # bench/granian_bridge.py, beside this file
from aiohttp import web

from ollamux.api.common import resolve_model
from ollamux.backends.failover import open_upstream
from ollamux.backends.http import HTTPBackend, error_message_from_body
from ollamux.errors import BadRequest, ModelNotFound, OllamuxError
from ollamux.guard.core import GUARD, Guard, client_request_id
from ollamux.guard.limits import json_depth_exceeds
from ollamux.jsonutil import loads_object
from ollamux.observe import CURRENT_REQUEST_ID, RequestRecord
from ollamux.pipeline import capabilities
from ollamux.pipeline.params import params_for
from ollamux.pipeline.relay import _NOT_RELAYED, SMALL_BODY
from ollamux.registry import Route
from ollamux.state import STATE, AppState
from ollamux.streams.translator import SSEPassthrough, sse_error, usage_from_bytes
from ollamux.translate.model_params import runtime_hints
from ollamux.translate.passthrough import replace_model_in_body

_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}
_UPSTREAM_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}


class _Bridged(Exception):
    """Not the fast path's case: the bridge serves it, with the body read so far."""


class Native:
    def __init__(self, app: web.Application) -> None:
        self.bridge = granian_bridge.Bridge(app)
        self.state: AppState = app[STATE]
        self.guard: Guard = app[GUARD]
        g, s = self.guard, self.state
        # what the fast path does not implement: any of it sends every request through the bridge
        self.fast = not (g.keys or g.rate_limited or g.gated or g.proxies is not None or s.tracer.enabled) and not (
            s.settings.request_log.capture_bodies
        )

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        kind = _PATHS.get(scope.path)
        headers = scope.headers
        if (
            kind is None
            or not self.fast
            or scope.method != "POST"
            or scope.query_string
            or "origin" in headers
            or "expect" in headers
        ):
            await self.bridge.__rsgi__(scope, proto)
            return
        g = self.guard
        if g.hosts is not None and not g.hosts.allowed(headers.get("host", "")):
            await self.bridge.__rsgi__(scope, proto)
            return
        body = await proto()
        try:
            await self.serve(scope, proto, kind, body)
        except _Bridged:
            await self.bridge.__rsgi__(scope, proto, body)

    async def serve(self, scope: Any, proto: Any, kind: str, raw: bytes) -> None:
        state, g = self.state, self.guard
        headers = scope.headers
        if len(raw) > g.max_body or json_depth_exceeds(raw, g.max_depth):
            raise _Bridged  # the bridge renders the 413 / 400
        try:
            body = loads_object(raw)
        except BadRequest:
            raise _Bridged from None
        model = body.get("model")
        try:
            route = state.registry.resolve(model) if isinstance(model, str) else None
        except (ModelNotFound, BadRequest):
            route = None  # the bridge renders the 404 (with its suggestions) or 400
        if route is None or not state.backend_for(route).speaks("openai"):
            raise _Bridged
        runtime = state.runtime
        if runtime is not None and runtime.manages(route.backend) and not runtime.is_ready(route.backend):
            raise _Bridged  # a model to start: the bridge keeps its stream alive
        if not params_for(state, route).empty and kind != "embedding":
            raise _Bridged  # the model's defaults applied: the bridge's (aiohttp) path does it
        rid = client_request_id(headers)
        rec = RequestRecord(id=rid, api="openai", route=scope.path, method="POST", client=scope.client)
        rec.route_name = scope.path
        rec.body_bytes = len(raw)
        token = CURRENT_REQUEST_ID.set(rid)
        state.observers.started(rec)
        try:
            try:
                await self.relay(scope, proto, kind, raw, body, rec)
            except OllamuxError as exc:
                rec.status = exc.status
                rec.error = exc.message
                proto.response_bytes(
                    exc.status,
                    [("content-type", "application/json; charset=utf-8"), ("x-request-id", rid)],
                    exc.body_for("openai"),
                )
        finally:
            state.observers.finished(rec)
            CURRENT_REQUEST_ID.reset(token)

    async def relay(
        self, scope: Any, proto: Any, kind: str, raw: bytes, body: dict[str, Any], rec: RequestRecord
    ) -> None:
        state = self.state
        route = resolve_model(state, rec, body["model"])
        capabilities.require_pivot(state, route, body, kind)
        path = _UPSTREAM_PATHS[kind]

        def payload(r: Route, up: HTTPBackend) -> tuple[str, bytes]:
            return path, replace_model_in_body(raw, body, r.upstream)

        headers = {"x-request-id": rec.id, "Accept-Encoding": scope.headers.get("accept-encoding", "identity")}
        keep_alive, num_ctx = runtime_hints(params_for(state, route), None, None)
        auth = None if state.inbound_auth else scope.headers.get("authorization")
        async with open_upstream(
            state,
            route,
            payload,
            rec=rec,
            keep_alive=keep_alive,
            num_ctx=num_ctx,
            raise_for_status=False,
            headers=headers,
            client_auth=auth,
        ) as opened:
            up = opened.response
            rec.upstream_url = up.url
            status = up.status
            if status >= 400:  # once sent upstream, never again: the error in OpenAI's envelope, from here
                data = up.backend.redact.data(await up.read())
                raise OllamuxError(error_message_from_body(data, status), status=status)
            out = [(k, v) for k, v in up.headers.items() if k.lower() not in _NOT_RELAYED]
            out.append(("x-request-id", rec.id))
            rec.status = status
            length = up.resp.content_length
            redact = up.backend.redact
            if up.content_type != "text/event-stream" and length is not None and length <= SMALL_BODY:
                data = await up.read()
                rec.first_token_ns = time.perf_counter_ns()
                counts = usage_from_bytes(data)
                if counts is not None:
                    rec.prompt_tokens, rec.completion_tokens = counts
                proto.response_bytes(status, out, data)
                return
            rec.streamed = True
            translator = SSEPassthrough(
                up.headers.get("Content-Type", "text/event-stream"), redact.data if redact else None, sse_error
            )
            stream = proto.response_stream(status, out)
            try:
                try:
                    async for chunk in up.iter_chunks():
                        data = translator.feed(chunk)
                        if data:
                            await stream.send_bytes(data)
                except OllamuxError as exc:  # after the first byte: one final error frame
                    rec.error, rec.status = exc.message, exc.status
                    await stream.send_bytes(translator.error_frame(exc))
            finally:
                up.release()
                translator.report(rec)


if __name__ == "__main__":
    import uvloop

    uvloop.run(granian_bridge.serve(sys.argv[1], Native))
