"""HTTP/1.1 to backends: pooled keep-alive connections, answers parsed by llhttp (httptools).

Why not aiohttp's client, which ollamux used before: a proxy makes one upstream request per request it
serves, and aiohttp's `ClientSession.request` (request and response objects, tracing hooks, cookie jar, URL
objects, timers, the stream reader) costs ~330 K CPU instructions a request against ~40 K for this module
over the same socket (bench/README.md, "The upstream client"): more than everything else ollamux does for a
`/v1` request. A backend request needs little of it: a method, a URL, a few headers, a body in memory, and
an answer read as it arrives. aiohttp's client stays for what needs more (hub downloads with redirects and
ranges, a model process's health checks).

What this client does, and no more:
- one connection per request in flight, kept alive and reused (newest first) per scheme, host and port;
  a reused connection that the server closed before answering is retried once on a new one (the usual
  keep-alive race: the server gave up on an idle connection just as the request went out);
- TLS with the system's trust store for `https://` backends;
- answers framed by Content-Length, chunked, or by the connection's close; bodies passed on as they arrive,
  the socket paused while the reader is more than `HIGH_WATER` bytes behind;
- a connect timeout and a total deadline (the caller adds first-byte and idle timers);
- errors as the four `WireError` classes below, which `backends.http` maps to OllamuxErrors once.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
import time
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "Disconnected",
    "Pool",
    "ProtocolError",
    "WireError",
    "WireResponse",
]

HIGH_WATER = 2**16  # unread body bytes at which the socket stops being read
KEEP_IDLE = 15.0  # seconds an idle connection is kept for reuse (aiohttp's default keepalive_timeout)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class WireError(Exception):
    """Anything that went wrong on the wire (subclasses say what)."""


class ConnectError(WireError):
    """No connection could be made; `os_error` says why (refused, unreachable, name not known)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class ConnectTimeout(WireError):
    """The connection was not accepted within the connect timeout."""


class Disconnected(WireError):
    """The server closed the connection before its answer was complete (`cut_off`: after its headers)."""

    def __init__(self, message: str, *, cut_off: bool = False) -> None:
        super().__init__(message)
        self.cut_off = cut_off


class ProtocolError(WireError):
    """The server's bytes are not a valid HTTP/1.1 answer."""


class _Target(NamedTuple):
    key: tuple[str, str, int]  # scheme, host, port: the pool a connection belongs to
    host_header: str
    path: str  # the request target: path and query, dot segments resolved
    url: str  # the URL as asked, dot segments resolved, without credentials (what the request log shows)
    auth: str | None  # "Basic ..." from credentials in the URL (`http://user:pass@host`), as aiohttp sent it


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> _Target:
    """The parts of a backend URL a request needs (cached: a backend asks the same few URLs again and again)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    path = _resolve_dots(parts.path or "/")
    query = f"?{parts.query}" if parts.query else ""
    auth = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    url = f"{scheme}://{host_header}{path}{query}"
    return _Target((scheme, host, port), host_header, path + query, url, auth)


def _resolve_dots(path: str) -> str:
    """RFC 3986's remove_dot_segments: `/v1/../health` is `/health` (a backend's root routes are asked so)."""
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    trailing = "/" if segments[-1] in (".", "..") else ""
    return "/" + "/".join(out) + trailing


def _head(method: str, target: _Target, headers: Mapping[str, str], length: int | None) -> bytes:
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if target.auth is not None and not any(k.lower() == "authorization" for k in headers):
        lines.append(f"Authorization: {target.auth}")  # a configured key or header wins over the URL's
    if length is not None:
        lines.append(f"Content-Length: {length}")
    text = "\n".join(lines)
    # one C scan for a CR or LF inside a name or value (which would smuggle a header or a request in)
    if "\r" in text or text.count("\n") != len(lines) - 1:
        raise ValueError("a header name or value holds a line break")
    return text.replace("\n", "\r\n").encode() + b"\r\n\r\n"


class WireResponse:
    """An answer: status and headers when it is returned, the body read with `readany()` as it arrives.

    `release()` hands the connection back once the body was read to its end, and drops it otherwise (which
    is how a request is cancelled upstream: llama.cpp stops generating when its client goes away).
    """

    __slots__ = (
        "_conn",
        "_deadline",
        "_eof",
        "_error",
        "_size",
        "_waiter",
        "chunks",
        "content_length",
        "headers",
        "status",
        "url",
    )

    def __init__(self, conn: _Connection, url: str) -> None:
        self._conn: _Connection | None = conn
        self.url = url
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.content_length: int | None = None
        self.chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------------------ the reader's side
    @property
    def buffered(self) -> bool:
        """Whether `readany()` returns at once."""
        return bool(self.chunks) or self._eof or self._error is not None

    def at_eof(self) -> bool:
        """Whether the body's last byte has been read."""
        return self._eof and not self.chunks

    async def readany(self) -> bytes:
        """Whatever body bytes have arrived (waiting for some); b"" at the end of the body."""
        while not self.chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._size >= HIGH_WATER and self._conn is not None and not self._conn.closed:
            self._conn.transport.resume_reading()
        self._size = 0
        return data

    async def read(self) -> bytes:
        """The whole body."""
        parts: list[bytes] = []
        while chunk := await self.readany():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if the body was read whole."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._stop_deadline()
        if self.at_eof() and self._error is None:
            conn.idle()
        else:
            conn.close()

    def close(self) -> None:
        """Done with the answer, read or not: its connection is closed."""
        conn = self._conn
        self._conn = None
        self._stop_deadline()
        if conn is not None:
            conn.close()

    # --------------------------------------------------------------------------- the connection's side
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self._size += len(data)
        if self._size >= HIGH_WATER and self._conn is not None and not self._conn.closed:
            self._conn.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._eof = True
        self._stop_deadline()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self._eof:
            self._error = exc
        self._stop_deadline()
        self._wake()

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses the answer to the request in flight and feeds its response."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.parser = httptools.HttpResponseParser(self)
        self.resp: WireResponse | None = None
        self.head: asyncio.Future[WireResponse] | None = None  # resolved when the status and headers are in
        self.got_bytes = False  # any byte of the current answer: a failure after it is never retried
        self.closed = False
        self.reusable = True  # False once the server said it closes, or sent more than its answer
        self.idle_since = 0.0
        self._pairs: list[tuple[str, str]] = []
        self._drained: asyncio.Future[None] | None = None

    # -------------------------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # bytes nobody asked for (a second answer, or garbage): the connection is spent
            self.close()
            return
        if resp._eof:  # more after the answer's end: read no further, and never reuse the connection
            self.reusable = False
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(ProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._broken(ProtocolError(str(exc) or type(exc).__name__))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        self._release_sender()
        resp = self.resp
        if resp is None:
            return
        self.resp = None
        if self.head is not None and not self.head.done():
            self.head.set_exception(Disconnected("the server closed the connection"))
        elif not resp._eof:
            framed = resp.content_length is not None or "chunked" in resp.headers.get("Transfer-Encoding", "")
            if framed:
                resp._fail(Disconnected("the answer was cut off", cut_off=True))
            else:
                resp._finish()  # an answer without a length ends with its connection

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._release_sender()

    def _release_sender(self) -> None:
        """`send()` waits while the socket's buffer is full: wake it (drained, or the connection is gone)."""
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # ---------------------------------------------------------------------------- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._pairs.append((name.decode("latin-1"), value.decode("utf-8", "replace")))

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        if resp._eof:  # a second answer in the same read as the first: ignored, and the connection spent
            self.reusable = False
            self._pairs = []
            return
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and other interim answers: the real one follows
            self._pairs = []
            return
        resp.status = status
        headers = CIMultiDictProxy(CIMultiDict(self._pairs))
        self._pairs = []
        resp.headers = headers
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and "Transfer-Encoding" not in headers:
            resp.content_length = int(length)
        head = self.head
        if head is not None and not head.done():
            head.set_result(resp)

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is not None and not resp._eof:
            resp._feed(body)

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None or resp.status < 200 or resp._eof:
            return
        if not self.parser.should_keep_alive():
            self.reusable = False
        resp._finish()

    # ------------------------------------------------------------------------------------ life cycle
    async def send(self, resp: WireResponse, head: bytes, body: bytes | None) -> asyncio.Future[WireResponse]:
        self.resp = resp
        self.got_bytes = False
        self.head = fut = asyncio.get_running_loop().create_future()
        if body and len(body) > HIGH_WATER:
            self.transport.write(head)
            self.transport.write(body)
        else:
            self.transport.write(head + body if body else head)
        if self._drained is not None:
            await asyncio.shield(self._drained)
        return fut

    def _broken(self, exc: WireError) -> None:
        resp = self.resp
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        elif resp is not None:
            resp._fail(exc)
        self.resp = None
        self.close()

    def idle(self) -> None:
        """The answer was read whole: back to the pool if it may carry another request."""
        self.resp = None
        self.head = None
        if self.closed or not self.pool.take_back(self):
            self.close()

    def close(self) -> None:
        """Closed by ollamux: whoever still waits for an answer on it has given up on it already."""
        self.resp = None
        head, self.head = self.head, None
        if head is not None and not head.done():
            head.cancel()
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            self._release_sender()
            # close() would first flush what is unsent (a body the server never read, say) and so could wait
            # forever; abort() drops it: nobody wants the answer to a request given up on
            if self.transport.get_write_buffer_size():
                self.transport.abort()
            else:
                self.transport.close()


class Pool:
    """Keep-alive connections to backends, the one upstream client of an app's backend requests."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        connect_timeout: float | None = None,
        total: float | None = None,
    ) -> WireResponse:
        """Send a request and return its answer once its status and headers are in."""
        target = _target(url)
        length = len(body) if body is not None else (0 if method in _BODY_METHODS else None)
        head = _head(method, target, headers, length)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total if total is not None else None
        conn, reused = await self._checkout(target.key, connect_timeout, deadline, reuse=True)
        try:
            return await self._exchange(conn, target.url, head, body, deadline)
        except Disconnected:
            if not reused or conn.got_bytes:
                raise
        # the server had closed the idle connection (the keep-alive race, or it restarted and dropped every
        # idle one, so the retry takes no other from the pool): once more, on a new connection
        conn, _ = await self._checkout(target.key, connect_timeout, deadline, reuse=False)
        return await self._exchange(conn, target.url, head, body, deadline)

    async def _exchange(
        self, conn: _Connection, url: str, head: bytes, body: bytes | None, deadline: float | None
    ) -> WireResponse:
        resp = WireResponse(conn, url)
        if deadline is not None:
            resp._deadline = asyncio.get_running_loop().call_at(deadline, _expire, conn, resp)
        try:
            fut = await conn.send(resp, head, body)
            return await fut
        except BaseException:
            resp.close()  # dropped, cancelled or timed out mid-request: the connection's state is unknown
            raise

    async def _checkout(
        self, key: tuple[str, str, int], connect_timeout: float | None, deadline: float | None, *, reuse: bool
    ) -> tuple[_Connection, bool]:
        idle = self._idle.get(key) if reuse else None
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < KEEP_IDLE:
                    return conn, True
                conn.close()
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        if deadline is not None:
            left = deadline - loop.time()
            connect_timeout = left if connect_timeout is None else min(connect_timeout, left)
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, key),
                    host,
                    port,
                    ssl=self._context() if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                )
        except TimeoutError:
            if deadline is not None and loop.time() >= deadline:
                raise  # the total deadline, not the connect timeout
            raise ConnectTimeout(f"no connection to {host}:{port} within {connect_timeout:g}s") from None
        except OSError as exc:
            raise ConnectError(exc) from None
        self._open.add(conn)
        return conn, False

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    # --------------------------------------------------------------------- called by the connections
    def take_back(self, conn: _Connection) -> bool:
        if not conn.reusable:
            return False
        now = conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(conn.key, [])
        while idle and now - idle[0].idle_since >= KEEP_IDLE:  # the oldest first: unused for too long
            idle.pop(0).close()
        idle.append(conn)
        return True

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection (the app's shutdown)."""
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run


def _expire(conn: _Connection, resp: WireResponse) -> None:
    """The total deadline passed: the request fails with TimeoutError wherever it is, and its connection goes."""
    resp._deadline = None
    if conn.head is not None and not conn.head.done() and conn.resp is resp:
        conn.head.set_exception(TimeoutError())
    resp._fail(TimeoutError())
    if conn.resp is resp or resp._conn is conn:
        conn.resp = None
        conn.close()
