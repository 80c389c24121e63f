"""backends/wire.py, the upstream HTTP/1.1 client, against real sockets: a server scripted per test.

Each server is a plain asyncio stream server that reads requests and writes the bytes a test gives it, so
framing, keep-alive, closes at awkward moments and invalid answers are exactly what a hostile upstream does.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ollamux.backends.wire import ConnectError, ConnectTimeout, Disconnected, Pool, ProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A loopback server running `handler` per connection; counts connections and keeps each request's head."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.closed = asyncio.Event()  # set when a client closed a connection
        self.port = 0
        self._srv: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._srv = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._srv.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._srv is not None
        self._srv.close()
        await self._srv.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's body (its head kept in `heads`); None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed.set()
            return None
        self.heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.bodies.append(body)
        return body


def ok(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), head.encode()) + body


async def answer_all(answer: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while await srv.read_request(reader) is not None:
            writer.write(answer)
            await writer.drain()

    return handler


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool()
    yield p
    await p.close()


async def test_a_connection_is_kept_alive_and_reused(pool: Pool) -> None:
    async with Server(await answer_all(ok(b'{"a":1}', "Content-Type: application/json"))) as srv:
        for _ in range(3):
            resp = await pool.request("POST", srv.url + "/v1/chat", {"Accept": "application/json"}, b"{}")
            assert resp.status == 200 and resp.headers["content-type"] == "application/json"
            assert resp.content_length == 7 and await resp.read() == b'{"a":1}' and resp.at_eof()
            resp.release()
        assert srv.connections == 1
        head = srv.heads[0].decode()
        assert head.startswith("POST /v1/chat HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{srv.port}\r\n" in head and "Content-Length: 2\r\n" in head
        assert "Accept: application/json\r\n" in head


async def test_a_chunked_stream_arrives_as_it_is_sent(pool: Pool) -> None:
    go_on = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        writer.write(b"6\r\ndata: \r\n")
        await writer.drain()
        await go_on.wait()
        writer.write(b"5\r\nhello\r\n0\r\n\r\n")  # the end is the chunked terminator, not a close
        await writer.drain()
        while await srv.read_request(reader) is not None:
            writer.write(ok(b"next"))
            await writer.drain()

    async with Server(handler) as srv:
        resp = await pool.request("POST", srv.url + "/s", {}, b"{}")
        assert resp.content_length is None
        assert await asyncio.wait_for(resp.readany(), 5) == b"data: "  # before the rest was even sent
        go_on.set()
        assert await resp.read() == b"hello" and resp.at_eof()
        resp.release()
        resp2 = await pool.request("GET", srv.url + "/s", {})  # the connection went back to the pool ...
        assert await resp2.read() == b"next"
        resp2.release()
        assert srv.connections == 1  # ... and was reused


async def test_an_answer_without_length_ends_with_its_connection(pool: Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")

    async with Server(handler) as srv:
        for _ in range(2):
            resp = await pool.request("GET", srv.url + "/", {})
            assert await resp.read() == b"part one, part two"
            resp.release()
        assert srv.connections == 2  # never reused


async def test_an_answer_cut_off_is_an_error_not_an_end(pool: Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    async with Server(handler) as srv:
        resp = await pool.request("GET", srv.url + "/", {})
        with pytest.raises(Disconnected) as caught:
            await resp.read()
        assert caught.value.cut_off
        resp.release()


async def test_a_server_that_closes_before_answering_is_disconnected(pool: Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)  # and close without a word

    async with Server(handler) as srv:
        with pytest.raises(Disconnected) as caught:
            await pool.request("POST", srv.url + "/", {}, b"{}")
        assert not caught.value.cut_off
        assert srv.connections == 1  # a new connection that failed is not tried again


async def test_a_reused_connection_the_server_dropped_is_retried_once(pool: Pool) -> None:
    """The keep-alive race: the server closes an idle connection as the next request goes out on it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(ok(b"first"))
        await writer.drain()
        await srv.read_request(reader)  # the second request on this connection: dropped unanswered
        if srv.connections == 1:
            return
        writer.write(ok(b"again"))
        await writer.drain()

    async with Server(handler) as srv:
        resp = await pool.request("POST", srv.url + "/", {}, b"1")
        assert await resp.read() == b"first"
        resp.release()
        resp = await pool.request("POST", srv.url + "/", {}, b"2")  # reused, dropped, sent again on a new one
        assert await resp.read() == b"first"  # the new connection's first answer
        resp.release()
        assert srv.connections == 2 and srv.bodies == [b"1", b"2", b"2"]


async def test_the_retry_after_a_dropped_connection_is_on_a_new_one(pool: Pool) -> None:
    """A restarted server dropped every idle connection: the retry must not take a second stale one."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        await asyncio.sleep(0.05)  # both first requests are in flight at once: two connections
        writer.write(ok(b"fresh"))
        await writer.drain()
        await srv.read_request(reader)  # any later request on an old connection: dropped unanswered

    async with Server(handler) as srv:
        first = await asyncio.gather(*(pool.request("POST", srv.url + "/", {}, b"1") for _ in range(2)))
        for resp in first:
            assert await resp.read() == b"fresh"
            resp.release()
        resp = await pool.request("POST", srv.url + "/", {}, b"2")  # stale, then a new connection, not stale #2
        assert await resp.read() == b"fresh"
        resp.release()
        assert srv.connections == 3


async def test_bytes_after_the_answer_spend_the_connection(pool: Pool) -> None:
    """A server that sends more than its answer (a second answer nobody asked for) is not trusted again."""
    async with Server(await answer_all(ok(b"one") + ok(b"stray"))) as srv:
        for _ in range(2):
            resp = await pool.request("GET", srv.url + "/", {})
            assert await resp.read() == b"one"
            resp.release()
        assert srv.connections == 2


async def test_invalid_http_is_a_protocol_error(pool: Pool) -> None:
    async with Server(await answer_all(b"SPDY/3 what is this\r\n\r\n")) as srv:
        with pytest.raises(ProtocolError):
            await pool.request("GET", srv.url + "/", {})


async def test_interim_answers_are_skipped(pool: Pool) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done")
    async with Server(await answer_all(answer)) as srv:
        resp = await pool.request("POST", srv.url + "/", {}, b"x")
        assert resp.status == 200 and await resp.read() == b"done"
        resp.release()


async def test_no_content_and_dot_segments(pool: Pool) -> None:
    async with Server(await answer_all(b"HTTP/1.1 204 No Content\r\n\r\n")) as srv:
        resp = await pool.request("GET", srv.url + "/v1/../health?x=1", {})
        assert resp.status == 204 and await resp.read() == b""
        assert resp.url == srv.url + "/health?x=1"
        resp.release()
        assert srv.heads[0].startswith(b"GET /health?x=1 HTTP/1.1\r\n")
        assert b"Content-Length" not in srv.heads[0]  # a GET without a body says nothing of one


async def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(pool: Pool) -> None:
    async with Server(await answer_all(ok(b""))) as srv:
        url = f"http://ops:p%40ss@127.0.0.1:{srv.port}/v1/models"
        resp = await pool.request("GET", url, {})
        await resp.read()
        resp.release()
        assert b"Authorization: Basic b3BzOnBAc3M=\r\n" in srv.heads[0]  # ops:p@ss
        assert resp.url == f"http://127.0.0.1:{srv.port}/v1/models"  # what the request log shows
        resp = await pool.request("GET", url, {"Authorization": "Bearer k"})  # a configured key wins
        resp.release()
        assert b"Authorization: Bearer k\r\n" in srv.heads[1] and b"Basic" not in srv.heads[1]


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(pool: Pool) -> None:
    async with Server(await answer_all(ok(b""))) as srv:
        with pytest.raises(ValueError, match="line break"):
            await pool.request("GET", srv.url + "/", {"X-A": "1\r\nX-Injected: yes"})
        assert srv.connections == 0


async def test_big_bodies_both_ways_arrive_whole(pool: Pool) -> None:
    big = bytes(range(256)) * 20_000  # 5 MB: well over the read pause mark, and the socket buffers

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while (body := await srv.read_request(reader)) is not None:
            writer.write(ok(body[::-1]))
            await writer.drain()

    async with Server(handler) as srv:
        resp = await pool.request("POST", srv.url + "/", {}, big)
        got = bytearray()
        while chunk := await resp.readany():
            got += chunk
            await asyncio.sleep(0)  # a slow reader: the socket is paused and resumed under it
        assert bytes(got) == big[::-1]
        resp.release()


async def test_releasing_an_unread_answer_closes_its_connection(pool: Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await srv.read_request(reader)  # waits for the client to go away

    async with Server(handler) as srv:
        resp = await pool.request("POST", srv.url + "/", {}, b"{}")
        assert await resp.readany() == b"first"
        resp.release()  # the client went away mid-stream: the server must see the connection end
        await asyncio.wait_for(srv.closed.wait(), 5)


async def test_the_total_deadline_fails_a_silent_server(pool: Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        await srv.read_request(reader)

    async with Server(handler) as srv:
        with pytest.raises(TimeoutError):
            await pool.request("POST", srv.url + "/", {}, b"{}", total=0.2)
        await asyncio.wait_for(srv.closed.wait(), 5)  # and the connection is closed, not left to a late answer


async def test_the_total_deadline_fails_a_request_whose_body_the_server_never_reads(pool: Pool) -> None:
    """The body is stuck in the socket's buffers (the server reads nothing): the deadline must still end the
    request, and drop the connection with its unsent bytes rather than wait for them to flush."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await release.wait()

    async with Server(handler) as srv:
        try:
            async with asyncio.timeout(10) as guard:
                with pytest.raises(TimeoutError):
                    await pool.request("POST", srv.url + "/", {}, b"x" * (64 << 20), total=0.3)
            assert not guard.expired(), "the deadline did not end the request"
            assert not pool._open, "the connection was kept"
        finally:
            release.set()


async def test_connection_failures_say_why(pool: Pool) -> None:
    async with Server(await answer_all(b"")) as srv:
        port = srv.port
    with pytest.raises(ConnectError) as caught:  # the port is free again: nothing listens
        await pool.request("GET", f"http://127.0.0.1:{port}/", {})
    assert caught.value.os_error.errno == errno.ECONNREFUSED
    # a listener whose accept queue is full drops further SYNs: the connection is never accepted
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    queued = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(full.getsockname())
            queued.append(s)
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectTimeout):
            await pool.request("GET", f"http://127.0.0.1:{full.getsockname()[1]}/", {}, connect_timeout=0.3)
    finally:
        for s in queued:
            s.close()
        full.close()
