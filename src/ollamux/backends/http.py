"""The HTTP boundary to backends: one long-lived client, replicas, timeouts, and errors mapped once.

Everything that can go wrong on the way to a backend becomes an OllamuxError here, with a message that
says which backend and which URL failed and how; the API layer only renders it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ..config import BackendSettings, Timeouts
from ..errors import BackendTimeout, BackendUnavailable, OllamuxError, UpstreamError

__all__ = ["HTTPBackend", "Replica", "UpstreamResponse", "error_message_from_body", "new_client_session"]


def new_client_session() -> aiohttp.ClientSession:
    """The one upstream client of an app: pooled keep-alive connections, no global timeouts."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,  # bytes are relayed as they came; compression is the client's business
        json_serialize=lambda o: orjson.dumps(o).decode(),
        skip_auto_headers=("User-Agent",),
    )


def error_message_from_body(body: bytes, status: int) -> str:
    """The human message inside an upstream error body, whatever envelope it used."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
        for key in ("message", "detail"):
            if isinstance(obj.get(key), str) and obj[key]:
                return str(obj[key])
    if not text:
        return f"backend answered HTTP {status} with an empty body"
    return text[:500]


@dataclass(eq=False)
class Replica:
    """One upstream URL of a backend, with what passive health and least-in-flight need."""

    url: str
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0

    def available(self, now: float) -> bool:
        return self.down_until <= now


@dataclass
class UpstreamResponse:
    """An open upstream answer: status and headers now, the body as it streams."""

    backend: HTTPBackend
    replica: Replica
    resp: aiohttp.ClientResponse
    url: str
    idle_timeout: float | None
    _released: bool = field(default=False)

    @property
    def status(self) -> int:
        return self.resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self.resp.headers

    async def read(self) -> bytes:
        try:
            if self.idle_timeout is not None:
                async with asyncio.timeout(self.idle_timeout):
                    return await self.resp.read()
            return await self.resp.read()
        except TimeoutError:
            raise self.backend.timeout_error("the whole answer", self.idle_timeout, self.url) from None
        except aiohttp.ClientError as exc:
            raise self.backend.broken_error(exc, self.url) from None
        finally:
            self.release()

    async def json(self) -> Any:
        body = await self.read()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"backend '{self.backend.name}' answered with invalid JSON from {self.url}", status=502
            ) from None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (no re-chunking), with the idle-gap timeout between them."""
        content = self.resp.content
        idle = self.idle_timeout
        try:
            while True:
                if idle is not None:
                    async with asyncio.timeout(idle):
                        chunk = await content.readany()
                else:
                    chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except TimeoutError:
            raise self.backend.timeout_error("the next stream chunk", idle, self.url) from None
        except aiohttp.ClientError as exc:
            raise self.backend.broken_error(exc, self.url) from None
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back (or drop it mid-body, which cancels the request upstream)."""
        if not self._released:
            self._released = True
            self.replica.in_flight -= 1
            self.resp.release() if self.resp.content.at_eof() else self.resp.close()


class HTTPBackend:
    """A backend reached over HTTP: an OpenAI-compatible server or an Ollama server, 1..n replicas."""

    def __init__(self, settings: BackendSettings, client: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.name = settings.name
        self.type = settings.type
        self.client = client
        self.replicas = [Replica(u) for u in settings.urls]
        t = settings.timeouts
        self._timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect)
        self._timeouts: Timeouts = t
        self._headers: dict[str, str] = dict(settings.headers)
        if settings.api_key:
            self._headers["Authorization"] = f"Bearer {settings.api_key}"

    @property
    def has_key(self) -> bool:
        return bool(self.settings.api_key)

    # ---------------------------------------------------------------------------------- selection
    def pick(self) -> Replica:
        now = time.monotonic()
        live = [r for r in self.replicas if r.available(now)] or self.replicas
        return min(live, key=lambda r: r.in_flight)

    def base_url(self) -> str:
        return self.pick().url

    # ----------------------------------------------------------------------------------- requests
    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        client_auth: str | None = None,
        raise_for_status: bool = True,
    ) -> UpstreamResponse:
        """Send one request to the least busy replica; errors come back as OllamuxErrors."""
        replica = self.pick()
        url = replica.url + path
        hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if headers:
            hdrs.update(headers)
        hdrs.update(self._headers)
        if client_auth and "Authorization" not in self._headers:
            hdrs["Authorization"] = client_auth
        replica.in_flight += 1
        try:
            cm = self.client.request(method, url, data=body, headers=hdrs, timeout=self._timeout)
            first_byte = self._timeouts.first_byte
            if first_byte is not None:
                async with asyncio.timeout(first_byte):
                    resp = await cm
            else:
                resp = await cm
        except TimeoutError:
            replica.in_flight -= 1
            self._failed(replica)
            which = "the first byte" if self._timeouts.first_byte is not None else "an answer"
            raise self.timeout_error(which, self._timeouts.first_byte or self._timeouts.total, url) from None
        except aiohttp.ClientConnectorError as exc:
            replica.in_flight -= 1
            self._failed(replica)
            raise BackendUnavailable(
                f"backend '{self.name}' cannot be reached at {replica.url}: {_reason(exc)}"
            ) from None
        except aiohttp.ClientError as exc:
            replica.in_flight -= 1
            self._failed(replica)
            raise self.broken_error(exc, url) from None
        except BaseException:
            replica.in_flight -= 1
            raise
        replica.failures = 0
        up = UpstreamResponse(self, replica, resp, url, self._timeouts.idle)
        if raise_for_status and resp.status >= 400:
            body_bytes = await up.read()
            raise UpstreamError(error_message_from_body(body_bytes, resp.status), status=resp.status, body=body_bytes)
        return up

    async def post_json(self, path: str, payload: Any, **kw: Any) -> UpstreamResponse:
        return await self.request("POST", path, orjson.dumps(payload), **kw)

    async def get_json(self, path: str) -> Any:
        up = await self.request("GET", path)
        return await up.json()

    def _failed(self, replica: Replica) -> None:
        replica.failures += 1

    def timeout_error(self, what: str, seconds: float | None, url: str) -> OllamuxError:
        limit = f" within {seconds:g}s" if seconds is not None else ""
        return BackendTimeout(f"backend '{self.name}' did not send {what}{limit} ({url})")

    def broken_error(self, exc: BaseException, url: str) -> OllamuxError:
        return BackendUnavailable(f"backend '{self.name}' connection failed ({url}): {_reason(exc)}")

    @contextlib.asynccontextmanager
    async def session(self, route: Any = None, **_: Any) -> AsyncIterator[HTTPBackend]:
        """A static backend is always ready; managed ones start their process here."""
        yield self

    async def close(self) -> None:
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error) if exc.os_error else str(exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    return str(exc) or type(exc).__name__
