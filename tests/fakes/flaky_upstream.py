"""A scripted, killable OpenAI-compatible upstream for fault tests: a real aiohttp server on loopback.

Each request takes the next behaviour from `plan` (then `default`):
  "ok"          a normal answer (SSE stream of `chunks` pieces, `chunk_delay` apart, or one JSON)
  "500"         HTTP 500 with an OpenAI error envelope
  "429:<s>"     HTTP 429 with `Retry-After: <s>`
  "hang"        nothing at all for a minute (the first-byte timeout must fire)
  "stall"       headers and one chunk, then nothing (the idle timeout must fire)
  "cutoff"      headers and one chunk, then the connection is dropped
  "garbage"     HTTP 200 whose body is HTML, not JSON
It counts what happened (requests, completed streams, streams whose client went away) with thread-safe
events so tests in another thread can wait for them. `kill()` drops every connection at once and stops
listening; `start()` brings it back on the same port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..servers import LoopThread, free_port, listening_socket, stop_accepting


@dataclass
class Flaky:
    lt: LoopThread
    name: str = "flaky"
    port: int = field(default_factory=free_port)
    plan: list[str] = field(default_factory=list)
    default: str = "ok"
    chunks: int = 3
    chunk_delay: float = 0.0
    healthy: bool = True
    requests: int = 0
    health_checks: int = 0
    completed: int = 0
    cancelled: int = 0
    models_seen: list[str] = field(default_factory=list)
    cancel_seen: threading.Event = field(default_factory=threading.Event)
    _runner: web.AppRunner | None = None
    _sock: socket.socket | None = None
    _transports: set[Any] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> Flaky:
        async def go() -> None:
            app = web.Application()
            app.router.add_get("/v1/models", self._models)
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/v1/embeddings", self._embeddings)
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            sock = listening_socket(self.port)
            await web.SockSite(runner, sock).start()
            self._runner, self._sock = runner, sock

        self.lt.run(go())
        return self

    def kill(self) -> None:
        """Like a crash: stop listening, drop every open connection mid-whatever."""

        async def go() -> None:
            runner, self._runner = self._runner, None
            sock, self._sock = self._sock, None
            if runner is None:
                return
            # no connection half accepted when the listener closes (see stop_accepting)
            await stop_accepting([sock] if sock is not None else [])
            for site in list(runner.sites):
                await site.stop()
            for t in list(self._transports):
                t.abort()
            self._transports.clear()
            # and every other connection it holds (kept alive between requests, or in another handler): a
            # crash drops them all at once, where the server's shutdown would let them finish
            server = runner.server
            for conn in server.connections if server is not None else ():
                if conn.transport is not None:
                    conn.transport.abort()
            await runner.cleanup()

        self.lt.run(go())

    # -------------------------------------------------------------------------------------- handlers
    async def _models(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        if not self.healthy:
            return web.json_response({"error": "unhealthy"}, status=503)
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        behaviour = self.plan.pop(0) if self.plan else self.default
        if behaviour != "ok":
            return await self._fail(request, behaviour)
        return web.json_response(
            {
                "object": "list",
                "data": [{"index": 0, "embedding": [3.0, 4.0]}],
                "model": body.get("model"),
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    async def _fail(self, request: web.Request, behaviour: str) -> web.StreamResponse:
        if behaviour == "500":
            return web.json_response(
                {"error": {"message": f"{self.name} exploded", "type": "server_error"}}, status=500
            )
        if behaviour.startswith("429"):
            return web.json_response(
                {"error": {"message": "slow down", "type": "rate_limit_error"}},
                status=429,
                headers={"Retry-After": behaviour.split(":", 1)[1]},
            )
        if behaviour == "hang":
            await asyncio.sleep(60)
        if behaviour == "garbage":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        raise AssertionError(f"unknown behaviour {behaviour}")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        self.models_seen.append(str(body.get("model")))
        behaviour = self.plan.pop(0) if self.plan else self.default
        if behaviour not in ("ok", "stall", "cutoff"):
            return await self._fail(request, behaviour)
        model = body.get("model")
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"hi from {self.name}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
                }
            )
        self._transports.add(request.transport)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await resp.prepare(request)
            for i in range(self.chunks):
                if i and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                delta = {"content": f"{self.name}-{i} "}
                frame = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                await resp.write(b"data: " + json.dumps(frame).encode() + b"\n\n")
                if behaviour == "stall":
                    await asyncio.sleep(60)
                if behaviour == "cutoff":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
            last = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            await resp.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
            await resp.write_eof()
            self.completed += 1
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            # the proxy dropped the connection: its client went away (or it is shutting down)
            self.cancelled += 1
            self.cancel_seen.set()
            raise
        finally:
            self._transports.discard(request.transport)


def start_garbage_server(lt: LoopThread) -> tuple[str, Any]:
    """A TCP server that answers every connection with bytes that are not HTTP, then hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"SSH-2.0-OpenSSH_9.6 this is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    async def go() -> tuple[str, Any]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", server

    return lt.run(go())


def stop_server(lt: LoopThread, server: Any) -> None:
    async def go() -> None:
        await stop_accepting(server.sockets)
        server.close()
        await server.wait_closed()

    lt.run(go())
