"""A TCP relay in front of a server, for tests of a client that must live through a dropped connection.

`cut()` drops every connection it relays at once (what a restart, a proxy's timeout or a network drop does
to a long-lived stream) and parks the connections that arrive after it, accepted but unanswered, until
`release()`. So a test knows the client is cut off while it writes what the client must catch up on, and
knows the client's reconnect is waiting (`parked`) before it lets it through.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..servers import LoopThread, free_port, stop_accepting

__all__ = ["TcpRelay"]


@dataclass
class TcpRelay:
    lt: LoopThread
    target_port: int
    port: int = field(default_factory=free_port)
    parked: int = 0  # connections waiting for release() now
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)
    _gate: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpRelay:
        async def go() -> None:
            self._gate = asyncio.Event()
            self._gate.set()
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

        self.lt.run(go())
        return self

    def cut(self) -> None:
        """Drop every relayed connection now; hold the next ones until `release()`."""

        async def go() -> None:
            assert self._gate is not None
            self._gate.clear()
            for w in list(self._open):
                w.transport.abort()
            self._open.clear()

        self.lt.run(go())

    def release(self) -> None:
        async def go() -> None:
            assert self._gate is not None
            self._gate.set()

        self.lt.run(go())

    def close(self) -> None:
        async def go() -> None:
            assert self._server is not None and self._gate is not None
            await stop_accepting(self._server.sockets)
            self._server.close()
            for w in list(self._open):
                w.transport.abort()
            self._gate.set()

        self.lt.run(go())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._gate is not None
        if not self._gate.is_set():
            self.parked += 1
            await self._gate.wait()
            self.parked -= 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._open -= {writer, up_writer}


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
    except (ConnectionError, OSError):
        dst.transport.abort()
        return
    dst.close()
