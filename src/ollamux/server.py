"""Running an app on a socket: uvloop, handler cancellation on disconnect, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from aiohttp import web

from .config import Settings

__all__ = ["run"]

log = logging.getLogger("ollamux")


def run(app: web.Application, settings: Settings) -> None:
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is optional on platforms without it
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    host, port = settings.server.host, settings.server.port
    web.run_app(
        app,
        host=host,
        port=port,
        loop=loop,
        access_log=None,  # the request log and operator log cover this, off the hot path
        shutdown_timeout=settings.server.shutdown_grace,  # SIGTERM: streams in flight get this long
        handler_cancellation=True,  # a client that goes away cancels its upstream request
        print=lambda *_: print(f"ollamux listening on http://{host}:{port}", file=sys.stderr, flush=True),
    )
