"""The HTTP boundary to backends: long-lived clients, replicas, timeouts, and errors mapped once.

Everything that can go wrong on the way to a backend becomes an OllamuxError here, with a message that
says which backend and which URL failed and how; the API layer only renders it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import orjson

from ..config import BackendSettings, Timeouts
from ..errors import BackendError, BackendTimeout, BackendUnavailable, OllamuxError, UpstreamError
from .plan import Api, PivotKind, PivotPlan
from .redact import Redactor, mask_url
from .wire import ConnectError, ConnectTimeout, Disconnected, Pool, ProtocolError, WireError, WireResponse

if TYPE_CHECKING:
    from ..registry import ModelEntry, Route

__all__ = [
    "CircuitOpen",
    "Clients",
    "HTTPBackend",
    "Replica",
    "UpstreamResponse",
    "error_message_from_body",
    "new_clients",
    "retry_after_seconds",
]


class CircuitOpen(BackendError):
    """Every replica of a backend is tripped: answer at once instead of waiting on a dead server.

    Still `retryable`, so a model's fallbacks are tried; the retry loop never waits on it.
    """

    status = 503


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True, slots=True)
class Clients:
    """An app's upstream clients, each one long-lived: `wire` carries every request a backend's API is asked
    (the hot path: `HTTPBackend.request`), `session` (aiohttp's) the side requests that want a full client:
    hub downloads (redirects, ranges), a model process's health checks, a backend's metadata probe."""

    session: aiohttp.ClientSession
    wire: Pool

    async def close(self) -> None:
        await self.wire.close()
        await self.session.close()

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def new_clients() -> Clients:
    """An app's upstream clients: pooled keep-alive connections, no global timeouts."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,  # bytes are relayed as they came; compression is the client's business
        json_serialize=lambda o: orjson.dumps(o).decode(),
        skip_auto_headers=("User-Agent",),
    )
    return Clients(session, Pool())


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


@dataclass(eq=False, slots=True)
class Replica:
    """One upstream URL of a backend: what least-in-flight picking, passive health and the breaker need.

    States, all read from three fields so the healthy path checks one float:
      healthy   `down_until == 0`
      ejected   `down_until > now`, not `tripped`: a connection failure or failed health check took it out;
                used only when no healthy replica is left
      open      `tripped` and `down_until > now`: never used until the cooldown is over
      half-open `tripped`, cooldown over: one request (`probing`) is let through; success closes it
    """

    url: str
    in_flight: int = 0
    failures: int = 0  # consecutive
    down_until: float = 0.0
    tripped: bool = False
    probing: bool = False
    last_error: str | None = None

    def available(self, now: float) -> bool:
        return self.down_until <= now and not self.probing

    @property
    def healthy(self) -> bool:
        return self.down_until == 0.0

    def succeeded(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.tripped = False
        self.probing = False
        self.last_error = None

    def failed(self, error: str, *, eject_for: float, breaker_failures: int, cooldown: float) -> None:
        """Count a failure; eject_for > 0 takes the replica out of rotation (passive health) that long."""
        now = time.monotonic()
        self.failures += 1
        self.last_error = error
        if self.probing or (breaker_failures and self.failures >= breaker_failures):
            self.tripped = True
            self.down_until = now + cooldown
        elif eject_for > 0:
            self.down_until = max(self.down_until, now + eject_for)
        self.probing = False


@dataclass(frozen=True, slots=True)
class Lease:
    """One request's hold on a backend that is ready to answer: the HTTP backend to call, and how long
    it took to make it ready (a managed model's start; 0 when it was running)."""

    http: HTTPBackend
    load_ns: int = 0


class _TransportErrors:
    """The one table from the wire's failures (while reading an answer) to OllamuxErrors: `with` it around
    any read of an upstream body, as httpx wraps its transport calls in `map_httpcore_exceptions()`."""

    __slots__ = ("idle", "up")

    def __init__(self, up: UpstreamResponse) -> None:
        self.up = up
        self.idle: asyncio.Timeout | None = None  # the idle timer of the read in progress, if any

    def __enter__(self) -> _TransportErrors:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None or not isinstance(exc, TimeoutError | WireError):
            return False
        up = self.up
        if isinstance(exc, TimeoutError):
            # the wire's total deadline surfaces as a TimeoutError too; the expired timer tells them apart
            which = "idle" if self.idle is not None and self.idle.expired() else "total"
            err = up.backend.timeout_error(which, up.url)
        else:
            err = up.backend.broken_error(exc, up.url)
        # a stream that dies is a health signal about the replica, even though it is never retried
        up.backend.count_failure(up.replica, err.message, eject=False)
        raise err from None


@dataclass(slots=True)
class UpstreamResponse:
    """An open upstream answer: status and headers now, the body as it streams."""

    backend: HTTPBackend
    replica: Replica
    resp: WireResponse
    url: str
    idle_timeout: float | None
    _released: bool = field(default=False)
    _body: bytes | None = field(default=None)

    @property
    def status(self) -> int:
        return self.resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self.resp.headers

    @property
    def content_type(self) -> str:
        """The media type, lower-cased, without parameters ("" when the backend sent none)."""
        return self.resp.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body, at most the backend's `max_response_bytes` (cached: the retry loop may read it
        before the handler does). A larger answer is a 502 that names the limit, and is never held whole."""
        if self._body is not None:
            return self._body
        limit = self.backend.settings.max_response_bytes
        resp = self.resp
        errors = _TransportErrors(self)
        try:
            with errors:
                length = resp.content_length
                if length is not None:
                    if length > limit:
                        raise self._too_large(limit)
                    # the usual answer: its length is known and allowed, so a plain read is bounded
                    if self.idle_timeout is None or resp.at_eof():
                        self._body = await resp.read()
                        return self._body
            # a length not known (chunked) or a timer to keep: read as a stream, counting
            parts: list[bytes] = []
            size = 0
            async with contextlib.aclosing(self.iter_chunks()) as chunks:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise self._too_large(limit)
                    parts.append(chunk)
            self._body = parts[0] if len(parts) == 1 else b"".join(parts)
            return self._body
        finally:
            self.release()

    def _too_large(self, limit: int) -> UpstreamError:
        return UpstreamError(
            f"backend '{self.backend.name}' answered with more than {limit} bytes (max_response_bytes; {self.url})",
            status=502,
        )

    async def json(self) -> Any:
        body = await self.read()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"backend '{self.backend.name}' answered with invalid JSON from {self.url}", status=502
            ) from None

    async def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive (no re-chunking), with the idle-gap timeout between them."""
        content = self.resp
        idle = self.idle_timeout
        errors = _TransportErrors(self)
        try:
            with errors:
                while True:
                    # a timer per read only when the read may wait: a fast backend's answer is usually all
                    # buffered already (arming and cancelling the timer was ~4 us a read)
                    if idle is not None and not content.buffered:
                        async with asyncio.timeout(idle) as errors.idle:
                            chunk = await content.readany()
                    else:
                        chunk = await content.readany()
                    if not chunk:
                        return
                    yield chunk
        finally:
            self.release()

    def at_eof(self) -> bool:
        """Whether the body's last byte has been read: no more chunk will come."""
        return self.resp.at_eof()

    def release(self) -> None:
        """Give the connection back (or drop it mid-body, which cancels the request upstream)."""
        if not self._released:
            self._released = True
            self.replica.in_flight -= 1
            self.resp.release()


class HTTPBackend:
    """A backend reached over HTTP, 1..n replicas: the transport both kinds share.

    What differs between an OpenAI-compatible server and an Ollama server (the API it speaks, how it
    lists and describes its models, what it has loaded) is in the subclasses, `openai.OpenAIBackend` and
    `ollama.OllamaBackend`; this class speaks the OpenAI pivot, so a bare one (tests, managed models'
    internals) behaves as an OpenAI-compatible server.
    """

    api: Api = "openai"
    default_health_path = "/models"  # what any answer below 500 to proves the server is there

    def __init__(self, settings: BackendSettings, client: Clients) -> None:
        self.settings = settings
        self.name = settings.name
        self.type = settings.type
        self.client = client
        self.replicas = [Replica(u) for u in settings.urls]
        self._single = self.replicas[0] if len(self.replicas) == 1 else None
        self.resilience = settings.resilience
        self._timeouts: Timeouts = settings.timeouts
        self._headers: dict[str, str] = dict(settings.headers)
        if settings.api_key:
            self._headers["Authorization"] = f"Bearer {settings.api_key}"
        self._base_headers: dict[str, str] = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            **self._headers,
        }
        # what an upstream may echo back that must never reach a client or a log
        self.redact = Redactor([settings.api_key or "", *(v for _, v in settings.headers)])
        self._lease = _Ready(Lease(self))
        # set once a server of the llama.cpp dialect answered 404/405 to /tokenize or /apply-template (a
        # vLLM or other server left at the default dialect): generate's `context` stops asking it
        self.no_tokenizer = False

    @property
    def health_path(self) -> str:
        return self.resilience.health_path or self.default_health_path

    @property
    def has_key(self) -> bool:
        return bool(self.settings.api_key)

    @property
    def auth_headers(self) -> Mapping[str, str]:
        return self._headers

    # ---------------------------------------------------------------------------------- selection
    def pick(self, avoid: Collection[Replica] = ()) -> Replica:
        """The replica for the next attempt; raises CircuitOpen (503) when every one is tripped.

        Order: healthy and not yet tried by this request, least in flight; healthy; ejected (better a
        likely failure than none); a tripped one whose cooldown is over, as the half-open probe.
        """
        single = self._single
        if single is not None and single.down_until == 0.0:
            return single  # the hot path: one replica, nothing ever failed
        now = time.monotonic()
        best: Replica | None = None
        best_rank = 99
        for r in self.replicas:
            if r.down_until <= now:
                rank = 1 if r in avoid else 0
                if r.tripped:
                    if r.probing:
                        continue
                    rank += 4
            elif not r.tripped:
                rank = 2
            else:
                continue
            if rank < best_rank or (rank == best_rank and best is not None and r.in_flight < best.in_flight):
                best, best_rank = r, rank
        if best is None:
            raise self._circuit_open(now)
        if best.tripped:
            best.probing = True  # half-open: this request is the probe; others keep getting 503
        return best

    def _circuit_open(self, now: float) -> CircuitOpen:
        wait = min(r.down_until for r in self.replicas) - now
        last = next((r.last_error for r in self.replicas if r.last_error), None)
        what = (
            f"its upstream {self.replicas[0].url}"
            if len(self.replicas) == 1
            else f"all {len(self.replicas)} of its replicas"
        )
        err = CircuitOpen(
            f"backend '{self.name}' is unavailable: circuit breaker open after repeated failures of {what}"
            f" (next probe in {max(wait, 0):.1f}s)" + (f"; last error: {last}" if last else "")
        )
        err.headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        return err

    def base_url(self) -> str:
        """A URL for a side request (metadata, discovery): the first replica not out of rotation.

        Never `pick()`: that marks a half-open replica as the probe, which only a real request clears.
        """
        now = time.monotonic()
        return next((r.url for r in self.replicas if r.down_until <= now), self.replicas[0].url)

    def root_path(self, path: str) -> str:
        """`path` (from '/', or "" for the root itself) below the backend server's root, spelled as
        `request` wants it: appended to a replica's URL.

        An OpenAI-compatible server's base URL ends in /v1, and llama.cpp's own routes (/infill, /tokenize,
        /health) sit above it: a '..' segment steps out of the /v1, and the HTTP client resolves it (yarl
        normalises dot segments) before anything is sent. A base without /v1 (Ollama's) is the root already.
        """
        path = path or "/"
        versioned = {r.url.endswith("/v1") for r in self.replicas}
        if len(versioned) > 1:
            raise OllamuxError(
                f"backend '{self.name}' has URLs with and without a trailing /v1: its server root is ambiguous",
                status=500,
            )
        return "/.." + path if versioned == {True} else path

    def count_failure(self, replica: Replica, error: str, *, eject: bool) -> None:
        res = self.resilience
        replica.failed(
            error,
            # with no other replica to send to, ejecting would only turn failures into waits
            eject_for=res.breaker_cooldown if eject and len(self.replicas) > 1 else 0.0,
            breaker_failures=res.breaker_failures,
            cooldown=res.breaker_cooldown,
        )

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
        replica: Replica | None = None,
    ) -> UpstreamResponse:
        """Send one request (to `replica`, or the least busy one); errors come back as OllamuxErrors.

        One attempt, no retry: `backends.failover.open_upstream` owns retries and fallbacks.
        """
        if replica is None:
            replica = self.pick()
        url = replica.url + path
        hdrs = self._base_headers.copy()  # defaults, then the caller's, then the backend's own (key wins)
        if headers:
            hdrs.update(headers)
            hdrs.update(self._headers)
        if client_auth and "Authorization" not in self._headers:
            hdrs["Authorization"] = client_auth
        replica.in_flight += 1
        t = self._timeouts
        first_byte = t.first_byte
        try:
            call = self.client.wire.request(method, url, hdrs, body, connect_timeout=t.connect, total=t.total)
            if first_byte is not None:
                async with asyncio.timeout(first_byte) as fb:
                    resp = await call
            else:
                resp = await call
        except ConnectTimeout:
            err: OllamuxError = self.timeout_error("connect", url)
            self._attempt_failed(replica, err, eject=True)
            raise err from None
        except TimeoutError:
            which = "first_byte" if first_byte is not None and fb.expired() else "total"
            err = self.timeout_error(which, url)
            self._attempt_failed(replica, err, eject=True)
            raise err from None
        except ConnectError as exc:
            err = BackendUnavailable(f"backend '{self.name}' cannot be reached at {replica.url}: {_reason(exc)}")
            self._attempt_failed(replica, err, eject=True)
            raise err from None
        except WireError as exc:
            err = self.broken_error(exc, url)
            self._attempt_failed(replica, err, eject=True)
            raise err from None
        except BaseException:
            replica.in_flight -= 1
            replica.probing = False  # a cancelled probe proves nothing; the next request probes again
            raise
        up = UpstreamResponse(self, replica, resp, url, self._timeouts.idle)
        status = resp.status
        if status < 500:
            if replica.down_until != 0.0 or replica.failures:
                replica.succeeded()
            # 429 is a live server asking for patience: never a reason to trip the breaker
        else:
            self.count_failure(replica, f"HTTP {status}", eject=False)
        if raise_for_status and status >= 400:
            raise await self.status_error(up)
        return up

    async def status_error(self, up: UpstreamResponse) -> UpstreamError:
        """The error for an upstream error answer (reads and releases it), Retry-After kept for 429/503."""
        body_bytes = self.redact.data(await up.read())
        err = UpstreamError(error_message_from_body(body_bytes, up.status), status=up.status, body=body_bytes)
        retry_after = up.headers.get("Retry-After")
        if retry_after:
            err.headers = {"Retry-After": retry_after}
        return err

    def _attempt_failed(self, replica: Replica, err: OllamuxError, *, eject: bool) -> None:
        replica.in_flight -= 1
        self.count_failure(replica, err.message, eject=eject)

    async def post_json(self, path: str, payload: Any, **kw: Any) -> UpstreamResponse:
        return await self.request("POST", path, orjson.dumps(payload), **kw)

    async def get_json(self, path: str) -> Any:
        up = await self.request("GET", path)
        return await up.json()

    async def listing(self, path: str, seconds: float) -> Any:
        """`get_json` for a model listing (discovery), its failure naming the URL asked: a base URL without
        its `/v1` answers 404 "page not found", which says nothing until the user sees where it was."""
        try:
            async with asyncio.timeout(seconds):
                return await self.get_json(path)
        except OllamuxError as exc:
            url = mask_url(self.redact.text(self.base_url().rstrip("/") + path))
            if url not in exc.message:
                exc.message = f"{exc.message} (GET {url})"
                exc.args = (exc.message,)
            raise

    def timeout_error(self, which: str, url: str) -> OllamuxError:
        """A 504 that names the backend, what it failed to do, and the config key of the limit that fired."""
        t = self._timeouts
        what, key, seconds = {
            "connect": ("accept a connection", "connect_timeout", t.connect),
            "first_byte": ("send the first byte of its answer", "first_byte_timeout", t.first_byte),
            "idle": ("send the next chunk of its answer", "idle_timeout", t.idle),
            "total": ("finish its answer", "timeout", t.total),
        }[which]
        limit = f" within {seconds:g}s" if seconds is not None else ""
        return BackendTimeout(f"backend '{self.name}' did not {what}{limit} ({key}; {url})")

    def broken_error(self, exc: BaseException, url: str) -> OllamuxError:
        return BackendUnavailable(f"backend '{self.name}' connection failed ({url}): {_reason(exc)}")

    # ------------------------------------------------------------------------- the Backend protocol
    def speaks(self, api: Api) -> bool:
        return api == self.api or api in self.settings.native_apis

    def pivot_plan(self, kind: PivotKind) -> PivotPlan:
        """How it serves a request in the pivot (OpenAI) shape; as an OpenAI-compatible server, as is."""
        return _OPENAI_PLANS[kind]

    def lease(
        self, route: Route | None = None, *, keep_alive: float | None = None, num_ctx: int | None = None
    ) -> _Ready:
        """A static backend is always ready: one shared lease, nothing to start or stop."""
        return self._lease

    async def discover(self) -> list[ModelEntry]:
        return []

    async def probe(self, upstream: str) -> Mapping[str, Any]:
        return {}

    async def running(self) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        return None


_PIVOT_PATHS: dict[PivotKind, str] = {
    "chat": "/chat/completions",
    "completion": "/completions",
    "embedding": "/embeddings",
}


def _with_model(body: dict[str, Any], upstream: str) -> dict[str, Any]:
    return body if body.get("model") == upstream else {**body, "model": upstream}


_OPENAI_PLANS = {
    kind: PivotPlan(path=path, build=_with_model, stream_type="text/event-stream")
    for kind, path in _PIVOT_PATHS.items()
}


class _Ready:
    """The lease context of a static backend (a plain object, not a generator: cheaper per request)."""

    __slots__ = ("lease",)

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    async def __aenter__(self) -> Lease:
        return self.lease

    async def __aexit__(self, *exc: object) -> None:
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectError):
        err = exc.os_error
        if err.errno:
            # asyncio words it "Connect call failed (addr)"; the errno says what happened ("Connection refused")
            return os.strerror(err.errno)
        return err.strerror or str(err)
    if isinstance(exc, Disconnected):
        return "the answer was cut off" if exc.cut_off else "the server closed the connection"
    if isinstance(exc, ProtocolError):
        return f"the answer is not valid HTTP ({exc})"
    return str(exc) or type(exc).__name__
