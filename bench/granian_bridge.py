"""ollamux's aiohttp application, unchanged, served by granian (RSGI) through a request bridge (#21).

A candidate server layer measured, not shipped: granian parses HTTP and does the socket I/O in Rust, and each
request is handed to the same `web.Application` (its router, middlewares, handlers) as an aiohttp
`web.Request` built from granian's scope; a response's status, headers and body go back through a stream
writer that calls granian's `response_bytes` / `response_stream`. It answers what the bench sends and
nothing more (no Expect handling, no header timeout, no TLS, no disconnect cancellation): a measurement of
what the layer would give if the app stayed an aiohttp one.

    bench/run --stacks reference,ollamux,ollamux-granian-bridge --no-memory --no-litellm --no-engine
    python bench/granian_bridge.py CONFIG.yaml   (serves the config's server.port; needs `pip install granian`)
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

_FRAMING = frozenset({"Transfer-Encoding", "Content-Length"})  # granian frames the body itself


class _Protocol:
    """What a web.Request reads of aiohttp's RequestHandler (its peer address) and what a StreamReader calls."""

    ssl_context = None
    transport = None

    def __init__(self, peer: tuple[str, ...]) -> None:
        self.peername = peer
        self.sockname = None

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        return None

    def pause_reading(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Writer(AbstractStreamWriter):
    """aiohttp's payload writer, writing to granian: headers kept until the body's first bytes or its end."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.stream: Any = None
        self.status = 200
        self.headers: list[tuple[str, str]] = []
        self.length = None

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        self.status = int(status_line.split(" ", 2)[1])
        self.headers = [(k, v) for k, v in headers.items() if k not in _FRAMING]

    def enable_chunking(self) -> None:
        return None

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if not chunk:
            return
        if self.stream is None:
            self.stream = self.proto.response_stream(self.status, self.headers)
        await self.stream.send_bytes(bytes(chunk))

    async def write_eof(self, chunk: bytes = b"") -> None:
        if self.stream is None:
            self.proto.response_bytes(self.status, self.headers, bytes(chunk))
        elif chunk:
            await self.stream.send_bytes(bytes(chunk))


class Bridge:
    """The RSGI app: one aiohttp request per granian request, handled by `app` as aiohttp's server would."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __rsgi__(self, scope: Any, proto: Any, body: bytes | None = None) -> None:
        """Serve one request; `body`: the request's body when the caller has read it already."""
        app = self.app
        headers = CIMultiDictProxy(CIMultiDict(scope.headers.items()))
        target = scope.path + ("?" + scope.query_string if scope.query_string else "")
        version = HttpVersion11 if scope.http_version == "1.1" else HttpVersion10
        url = URL(target, encoded=True)
        message = RawRequestMessage(scope.method, target, version, headers, (), False, None, False, False, url)
        if body is None:
            body = await proto()
        protocol = _Protocol(tuple(scope.client.rsplit(":", 1)))
        payload = EMPTY_PAYLOAD
        if body:
            payload = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
            payload.feed_data(body)
            payload.feed_eof()
        task = asyncio.current_task()
        assert task is not None
        request = app._make_request(message, payload, protocol, _Writer(proto), task)  # type: ignore[arg-type]
        try:
            resp = await app._handle(request)
        except web.HTTPException as exc:
            resp = web.Response(status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers)
        await resp.prepare(request)
        await resp.write_eof()


async def serve(config: str, rsgi_app: Callable[[web.Application], Any] = Bridge) -> None:
    """Serve `config`'s ollamux on granian: the app's lifespan run by aiohttp, requests by `rsgi_app(app)`."""
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    from ollamux.app import create_app
    from ollamux.cli.serve import settings_from_args
    from ollamux.server import tune_gc

    settings = settings_from_args(config, None, None, None, os.environ)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()  # the app's lifespan: state, request log, metrics
    tune_gc()
    server = Server(
        rsgi_app(app),
        address=settings.server.host,
        port=settings.server.port,
        interface=Interfaces.RSGI,
        http=HTTPModes.http1,  # what the bench speaks: no sniffing for HTTP/2 on each connection
        websockets=False,
        log_level=LogLevels.warning,
        backlog=4096,
    )
    try:
        await server.serve()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(sys.argv[1]))
