"""Real servers on loopback for the tests: an event loop in a thread that hosts aiohttp apps."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from aiohttp import web

T = TypeVar("T")


def log_row(db: Path, rid: str, timeout: float = 5.0) -> dict[str, Any]:
    """The request log's row for `rid`, waiting for the writer to flush it."""
    deadline = time.monotonic() + timeout
    while True:
        if db.exists():
            con = sqlite3.connect(db)
            con.row_factory = sqlite3.Row
            try:
                found = con.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
            except sqlite3.OperationalError:
                found = None
            finally:
                con.close()
            if found is not None:
                return dict(found)
        if time.monotonic() > deadline:
            raise AssertionError(f"no request-log row for {rid}")
        time.sleep(0.05)


def start_serve(config: dict[str, Any], tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A real `ollamux serve --config` on a free port (text log on tmp/stderr.log), once /health answers:
    (process, base URL, stderr path). The caller stops it."""
    port = free_port()
    cfg = tmp / "ollamux.yaml"
    cfg.write_text(yaml.safe_dump({**config, "server": {**config.get("server", {}), "port": port}}))
    err_path = tmp / "stderr.log"
    with err_path.open("wb") as err:
        cmd = [sys.executable, "-m", "ollamux", "serve", "--config", str(cfg), "--log-format", "text"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, err_path
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            raise AssertionError(f"ollamux did not start: {err_path.read_text()}")
        time.sleep(0.05)


async def stop_accepting(sockets: Iterable[Any]) -> None:
    """Make a server on this loop take no new connection, and let those it has accepted be set up, before it
    is closed (`asyncio.Server.close`, aiohttp's `site.stop`).

    asyncio accepts a connection, then makes its transport in a task a loop turn or two later. A server closed
    in between fails that transport half made (`Server._attach` asserts the server still listens), and nothing
    ever closes it: its socket's ResourceWarning, an error under pytest, comes at whatever later moment the
    garbage collector finds it (the soak test's flake, where a replica is killed under load). Stopped this
    way, every accepted connection is the server's own, closed or aborted with the rest.
    """
    loop = asyncio.get_running_loop()
    for sock in sockets:
        loop.remove_reader(sock.fileno())
    for _ in range(5):  # the accept task, the transport's connection_made, the waiter: one turn each
        await asyncio.sleep(0)


def listening_socket(port: int) -> socket.socket:
    """A listening loopback socket on `port` (SO_REUSEADDR: a server killed and started again gets it back)."""
    return socket.create_server(("127.0.0.1", port))


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, and one this process has not handed out before.

    The kernel may give the port it just gave again once the probing socket is closed: a test that takes one
    port for a dead backend ("nothing listens here") and then starts a fake on another free port could get
    the same number twice, and its dead backend answered (test_resilience's one flake)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class LoopThread:
    """One event loop in a daemon thread; tests submit coroutines and block on their results."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self.thread.start()
        self._listeners: dict[web.AppRunner, socket.socket] = {}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_app(self, app: web.Application, port: int | None = None) -> tuple[web.AppRunner, str]:
        async def start() -> tuple[web.AppRunner, str]:
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2)
            await runner.setup()
            p = port or free_port()
            sock = listening_socket(p)
            await web.SockSite(runner, sock).start()
            self._listeners[runner] = sock
            return runner, f"http://127.0.0.1:{p}"

        return self.run(start())

    def stop_app(self, runner: web.AppRunner) -> None:
        async def stop() -> None:
            sock = self._listeners.pop(runner, None)
            await stop_accepting([sock] if sock is not None else [])
            await runner.cleanup()

        self.run(stop())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
