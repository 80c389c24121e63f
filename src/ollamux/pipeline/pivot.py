"""A front's request through the pivot: the one function every translating front calls.

    front request --front.pivot()--> pivot --plan.build()--> backend wire request
    backend answer --plan.json / plan.stream--> pivot --front.to_client / front.client_stream--> client

A front (Ollama, OpenAI on an Ollama backend, Responses, Anthropic Messages) says only how its request
becomes the pivot and how the pivot's answer becomes its own (`PivotFront`); the backend's plan says how
the pivot becomes its wire format. Retries, replicas, fallbacks (each with its own model name and
dialect: the pivot is rebuilt per attempt), the media-type check, the one final error frame and the
request record are the same for all of them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from ..backends.failover import Opened, open_upstream
from ..backends.http import HTTPBackend
from ..backends.plan import Answer, PivotKind
from ..errors import UpstreamError
from ..jsonutil import dumps
from ..observe import RequestRecord
from ..registry import Route
from ..state import AppState
from ..streams.pivot_collect import PivotCollector
from ..streams.translator import Chain, SSEPassthrough, StreamTranslator
from ..translate.checks import json_type
from ..translate.model_params import apply_to_pivot, runtime_hints
from .capabilities import require_pivot
from .params import params_for
from .relay import relay_collected, relay_json, relay_stream
from .upstream import client_auth, identity_headers

__all__ = ["PivotFront", "Settle", "json_answer", "record_pivot", "serve_via_pivot"]

SSE_CT = "text/event-stream"

# A front's last asynchronous step once the whole upstream answer is in: the backend that answered, the body
# it was sent, and the client's whole answer to amend (None for a stream, whose final frame comes after).
Settle = Callable[[Opened, dict[str, Any], Any], Awaitable[None]]


class PivotFront(Protocol):
    """What one client API adds to the pipeline: its request as the pivot, the pivot's answer as its own."""

    @property
    def kind(self) -> PivotKind: ...

    @property
    def stream(self) -> bool: ...

    def pivot(self, route: Route, backend: HTTPBackend) -> dict[str, Any]:
        """The pivot request for one route on one backend (a fallback has its own model and dialect);
        raises BadRequest for what the client got wrong, before anything is sent."""
        ...

    def answer(self, opened: Opened) -> Answer:
        """What a backend's plan needs to write pivot answers (the model name, id, usage wanted)."""
        ...

    def to_client(self, pivot: dict[str, Any], opened: Opened) -> Any:
        """A whole pivot answer (JSON) as the client's answer."""
        ...

    def client_stream(self, opened: Opened) -> StreamTranslator | None:
        """Pivot SSE in, the client's stream out; None when the client reads the pivot's SSE itself."""
        ...


def json_answer(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type="application/json", charset="utf-8")


def record_pivot(rec: RequestRecord, pivot: dict[str, Any], kind: PivotKind) -> None:
    """Tokens and text of a whole pivot answer into the request's record, whatever the client's API."""
    if rec.first_token_ns is None:  # a gathered stream knows when its first token came
        rec.first_token_ns = time.perf_counter_ns()
    usage = pivot.get("usage")
    if isinstance(usage, dict):
        rec.count_tokens(usage.get("prompt_tokens"), usage.get("completion_tokens"))
    if kind == "embedding":
        return
    choices = pivot.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    if kind == "chat":
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    rec.response_text = text if isinstance(text, str) else None


def _pivot_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UpstreamError(f"backend answered with {json_type(data)}, not a JSON object", status=502)
    return data


async def serve_via_pivot(
    request: web.Request,
    state: AppState,
    rec: RequestRecord,
    route: Route,
    front: PivotFront,
    *,
    keep_alive: float | None = None,
    num_ctx: int | None = None,
    settle: Settle | None = None,
) -> web.StreamResponse:
    """Serve `front`'s request on `route` through the pivot: the whole way from wire request to answer.

        The model's defaults and filters (`ModelParams`) are applied here, to what `front.pivot()` returns, so
        every translating front gets them the same way; a fallback gets its own model's. The pivot is checked
    against the model's known capabilities here (`capabilities.require_pivot`), once for every front. `settle` (see
        `Settle`) runs after the upstream's last byte, before the client's last one."""
    keep_alive, num_ctx = runtime_hints(params_for(state, route), keep_alive, num_ctx)
    sent: dict[str, Any] = {}  # the wire body of the attempt that answered (the last one built)

    def wire(r: Route, up: HTTPBackend) -> tuple[str, dict[str, Any]]:
        nonlocal sent
        plan = up.pivot_plan(front.kind)
        pivot = front.pivot(r, up)
        if r is route:  # what the client asked of its model (a fallback is the operator's choice)
            require_pivot(state, r, pivot, front.kind)
        pivot = apply_to_pivot(pivot, front.kind, params_for(state, r), up.settings.dialect)
        sent = plan.build(pivot, r.upstream)
        return plan.path, sent

    # retries, replicas and fallbacks happen in there, before the first byte; `opened` is what answered
    async with open_upstream(
        state,
        route,
        wire,
        rec=rec,
        keep_alive=keep_alive,
        num_ctx=num_ctx,
        read_body=not front.stream,
        headers=identity_headers(request, rec),  # every pivot answer is parsed: uncompressed
        client_auth=client_auth(request, state),
    ) as opened:
        plan = opened.backend.pivot_plan(front.kind)
        answer = front.answer(opened)
        if not front.stream:
            to_pivot = plan.json
            up = opened.response
            # a front may ask for a stream to time a backend that reports no timings of its own (the
            # Ollama front, on a backend not of llama.cpp's dialect): gathered into the whole answer, timed
            collector = (
                PivotCollector(
                    front.kind,
                    start_ns=rec.start_ns + opened.load_ns,
                    max_event_bytes=opened.backend.settings.max_event_bytes,
                )
                if plan.stream is None and up.content_type == SSE_CT
                else None
            )

            def translate(data: Any) -> Any:
                pivot = _pivot_object(to_pivot(data, answer) if to_pivot is not None else data)
                if collector is not None:
                    rec.first_token_ns = collector.first_ns
                record_pivot(rec, pivot, front.kind)
                return front.to_client(pivot, opened)

            if collector is not None:
                out = await relay_collected(up, collector, translate)
            else:
                out = await relay_json(up, translate)
            if settle is not None:
                await settle(opened, sent, out)
            return json_answer(out)
        translator = front.client_stream(opened)
        backend_stream = plan.stream(answer) if plan.stream is not None else None
        if backend_stream is not None:
            translator = Chain(backend_stream, translator) if translator is not None else backend_stream
        elif translator is None:
            translator = SSEPassthrough(SSE_CT, opened.backend.redact.data)
        finish = None if settle is None else functools.partial(settle, opened, sent, None)
        return await relay_stream(
            request, rec, opened.response, translator, expect=plan.stream_type, before_finish=finish
        )
