"""A streamed request for a model that is still starting: the stream opens at once and stays alive.

Loading a GGUF model can take longer than a proxy in between (nginx's 60 s `proxy_read_timeout`, a cloud
load balancer) waits for a first byte. So when a streamed request finds its model ollamux runs not ready
and the start takes longer than `FIRST_WAIT`, the answer's status line and headers go out, and a
keep-alive the client's format ignores follows every `INTERVAL` seconds until the model is ready: an SSE
comment (`: loading`) for OpenAI's APIs, Anthropic's `ping` event for the Messages API. The first real
byte then follows on the same response (the relay writes into it). Ollama's NDJSON has no such line, so
the Ollama API waits as before.

A failure after the status line (the start failed, or the backend then refused) is one final error
frame in the client's format, written by the endpoint wrapper (`finish_started`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import cast

from aiohttp import web

from ..errors import OllamuxError
from ..observe import RequestRecord
from ..registry import Route
from ..state import AppState
from .relay import FINISHED, PREPARED, stream_headers

__all__ = [
    "ANTHROPIC_PING",
    "FIRST_WAIT",
    "INTERVAL",
    "LATE_ERROR",
    "SSE_COMMENT",
    "ErrorFrame",
    "finish_late",
    "warm_up",
]

ErrorFrame = Callable[[OllamuxError], bytes]
# how to tell the client of a failure once `warm_up` sent the status line (the client's format)
LATE_ERROR = web.RequestKey("ollamux_late_error", object)

FIRST_WAIT = 1.0  # a quick start answers as usual: no early status line
INTERVAL = 5.0
SSE_COMMENT = b": loading\n\n"
ANTHROPIC_PING = b'event: ping\ndata: {"type": "ping"}\n\n'


async def warm_up(
    request: web.Request,
    state: AppState,
    rec: RequestRecord,
    route: Route,
    *,
    error_frame: ErrorFrame,
    heartbeat: bytes = SSE_COMMENT,
    keep_alive: float | None = None,
    num_ctx: int | None = None,
) -> None:
    """Make a model ollamux runs ready before a streamed request opens it, keeping the stream alive while
    it starts; returns at once for any other backend or a model already running. Raises the start's
    error as it would have been raised anyway (before the status line it is a plain error answer)."""
    runtime = state.runtime
    if runtime is None or not runtime.manages(route.backend) or runtime.is_ready(route.backend):
        return
    # `warm`, not `load`: the model stays counted for this request (this task) until its own lease takes the
    # count over, so a request waiting for the slot cannot evict it in between
    owner = asyncio.current_task()
    load = asyncio.ensure_future(runtime.warm(route.backend, owner, keep_alive=keep_alive, num_ctx=num_ctx))
    try:
        done, _ = await asyncio.wait({load}, timeout=FIRST_WAIT)
        if not done:
            resp = web.StreamResponse(status=200, headers=stream_headers("text/event-stream", rec))
            rec.streamed = True
            rec.status = 200
            await resp.prepare(request)
            request[PREPARED] = resp
            request[LATE_ERROR] = error_frame
            while not done:
                await resp.write(heartbeat)
                done, _ = await asyncio.wait({load}, timeout=INTERVAL)
        load.result()
    except BaseException:
        if not load.done():
            load.cancel()  # the client went away: a start nobody waits for goes on in the manager
            with contextlib.suppress(BaseException):
                await load
        raise


async def finish_late(request: web.Request, err: OllamuxError) -> None:
    """The one final error frame of a response `warm_up` started and nothing finished (the start failed,
    or the backend refused before its first byte); nothing when the relay already wrote the end."""
    frame = request.get(LATE_ERROR)
    resp = request.get(PREPARED)
    if frame is None or resp is None or request.get(FINISHED):
        return
    request[FINISHED] = True
    with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone too
        await resp.write(cast(ErrorFrame, frame)(err))
        await resp.write_eof()
