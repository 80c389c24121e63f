"""What the dashboard's admin handlers share: their wrapper, JSON answers, query parsing, the app's admin state.

Admin requests are not model requests: the wrapper gives them a request id and renders their errors in
the OpenAI envelope (`errors.body_for("admin")`), like any API, but records them in the operator log only,
never through the observers (request log, metrics), so a dashboard polling every second neither fills the
request log nor moves the inference charts it draws.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ..errors import BadRequest, OllamuxError
from ..guard.client_addr import client_of
from ..guard.core import client_request_id, printable
from ..observe import CURRENT_REQUEST_ID
from ..state import STATE, AppState
from ..store.times import parse_time

__all__ = [
    "ADMIN",
    "AdminHandler",
    "AdminState",
    "admin_endpoint",
    "json_ok",
    "query_float",
    "query_int",
    "query_time",
    "start_stream",
]

log = logging.getLogger("ollamux.admin")

AdminHandler = Callable[[web.Request, AppState], Awaitable[web.StreamResponse]]


@dataclass
class AdminState:
    """The admin API's own per-app state: built in `create_app`, so two apps never share it."""

    # the last failed load of a managed model through the admin API, by backend (cleared by a good one)
    load_errors: dict[str, str] = field(default_factory=dict)
    # set when the app shuts down: endless streams (request events, model logs) end at once
    closing: asyncio.Event = field(default_factory=asyncio.Event)


ADMIN: web.AppKey[AdminState] = web.AppKey("ollamux_admin", AdminState)


def json_ok(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", charset="utf-8")


def _error(exc: OllamuxError, rid: str) -> web.Response:
    return web.Response(
        body=exc.body_for("admin"),
        status=exc.status,
        content_type="application/json",
        charset="utf-8",
        headers={"x-request-id": rid, **exc.headers},
    )


def admin_endpoint(handler: AdminHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap an admin handler: a request id, errors in the admin envelope, one operator line, no log row."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        rid = client_request_id(request.headers)
        request[_RID] = rid
        token = CURRENT_REQUEST_ID.set(rid)
        t0 = time.perf_counter()
        status = 0
        error: str | None = None
        try:
            resp = await handler(request, state)
            if not resp.prepared:
                resp.headers["x-request-id"] = rid
            status = resp.status
            return resp
        except OllamuxError as exc:
            status, error = exc.status, exc.message
            if request.get(_PREPARED):
                raise  # a stream already started: nothing can replace it
            return _error(exc, rid)
        except asyncio.CancelledError:
            status, error = 499, "client went away"
            raise
        except ConnectionError:
            status, error = 499, "client went away"
            # returned, not raised: aiohttp drops a response it cannot write quietly (as api.common does)
            return web.Response(status=499)
        except Exception as exc:
            log.exception("unhandled error in %s %s", request.method, request.path)
            status, error = 500, f"internal error: {type(exc).__name__}: {exc}"
            if request.get(_PREPARED):
                raise
            return _error(OllamuxError(error, status=500), rid)
        finally:
            level = logging.WARNING if status >= 500 else logging.INFO if status >= 400 else logging.DEBUG
            log.log(
                level,
                "admin %s %s -> %s in %.1f ms%s",
                request.method,
                printable(request.path),
                status,
                (time.perf_counter() - t0) * 1000,
                f": {error}" if error else "",
                extra={"request_id": rid, "client": client_of(request)},
            )
            CURRENT_REQUEST_ID.reset(token)

    return wrapped


_PREPARED = web.RequestKey("ollamux_admin_prepared", bool)
_RID = web.RequestKey("ollamux_admin_request_id", str)


async def start_stream(request: web.Request, content_type: str) -> web.StreamResponse:
    """The status line of an endless answer (events, a log): sent now, chunks follow unbuffered."""
    resp = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx in front must not hold the chunks back
            "x-request-id": request.get(_RID) or client_request_id(request.headers),
        },
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    request[_PREPARED] = True
    return resp


def query_int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter '{name}' must be an integer, not '{printable(raw, 50)}'") from None
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter '{name}' must be from {lo} to {hi}, not {value}")
    return value


def query_float(query: Mapping[str, str], name: str) -> float | None:
    raw = query.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"query parameter '{name}' must be a number, not '{printable(raw, 50)}'") from None


def query_time(query: Mapping[str, str], name: str) -> float | None:
    """Unix seconds, an age (`15m`: that long ago) or an ISO 8601 time (`store.times.parse_time`, what
    `ollamux logs --since` takes); None when absent."""
    raw = query.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse_time(raw)
    except ValueError:
        raise BadRequest(
            f"query parameter '{name}' must be unix seconds, an age (30s, 15m, 2h, 7d) or an ISO 8601 time, "
            f"not '{printable(raw, 50)}'"
        ) from None
