"""Real servers on loopback for the tests: an event loop in a thread that hosts aiohttp apps."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopThread:
    """One event loop in a daemon thread; tests submit coroutines and block on their results."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_app(self, app: web.Application, port: int | None = None) -> tuple[web.AppRunner, str]:
        async def start() -> tuple[web.AppRunner, str]:
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2)
            await runner.setup()
            p = port or free_port()
            site = web.TCPSite(runner, "127.0.0.1", p)
            await site.start()
            return runner, f"http://127.0.0.1:{p}"

        return self.run(start())

    def stop_app(self, runner: web.AppRunner) -> None:
        self.run(runner.cleanup())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
