"""The guard middleware: HTTP version, host check, CORS, key, rate limit, body limits, concurrency, in that order.

One plain aiohttp middleware that never touches the response body, so streams pass straight through
(DESIGN.md: middleware must not break streaming). Each step is skipped by a precomputed flag when it is
not configured; with nothing configured a request pays for a Host lookup (cached) and, on a POST, two
byte counts over a body the handler reads anyway.

Every request body on a body method is read here, whatever its Content-Type (or none): the handlers parse
any body as JSON, so a body the guard let through unread would reach them with no deadline, no depth
limit and no concurrency gate.

Refusals made here never reach a handler, so they are rendered here, in the client's envelope (`/v1/*`
speaks OpenAI, everything else Ollama), and recorded through the observers like any other request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import ContentEncodingError

from ..config import Settings
from ..errors import BadRequest, Forbidden, OllamuxError, PayloadTooLarge
from ..names import normalize_name
from ..observe import ApiName, Observers, RequestRecord, new_request_id
from ..registry import Registry, Route
from ..translate.model_ref import UPSTREAM_PREFIX, form_boundary, form_field, split_model_path
from .auth import KeyRing
from .client_addr import TrustedProxies, client_of
from .cors import Cors
from .hostguard import HostGuard, is_loopback_bind
from .limits import json_depth_exceeds
from .ratelimit import Gate, RateLimiter

if TYPE_CHECKING:
    from .shared_limits import SharedLimiter

__all__ = [
    "ADMIN_PREFIX",
    "CORS_ORIGIN",
    "GUARD",
    "KEY_NAME",
    "WHOAMI",
    "Guard",
    "client_request_id",
    "is_admin_path",
    "reject_outside",
]

log = logging.getLogger("ollamux")
_admin_log = logging.getLogger("ollamux.admin")

KEY_NAME = web.RequestKey("ollamux_key_name", str)  # the name of the key the client used
CORS_ORIGIN = web.RequestKey("ollamux_cors_origin", str)  # an allowed Origin to echo on the answer
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# aiohttp's parser also takes HTTP/0.9 and HTTP/2.0 request lines, and would answer them as HTTP/1.x
_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
_BYTES_PER_TOKEN = 4  # a prompt's size in tokens, when no backend counted it (English text and JSON: ~4)
# the routes that run a model: only these wait at a concurrency gate
INFERENCE_PATHS = frozenset(
    {
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/rerank",
        "/v1/reranking",
        "/rerank",
        "/infill",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/images/generations",
        "/v1/images/edits",
    }
)
# llama.cpp's routes outside /v1/ that answer in OpenAI's error shape
_OPENAI_SHAPED = frozenset({"/rerank", "/infill", "/tokenize", "/detokenize"})


# what a model's backend runs a model for, reached raw through /upstream/{model}/...
_UPSTREAM_INFERENCE = (
    *(p for p in INFERENCE_PATHS if p.startswith("/v1/")),
    "/chat/completions",
    "/completions",
    "/completion",
    "/embeddings",
    "/embedding",
    "/infill",
    "/rerank",
    "/reranking",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
)
# the routes whose upload bodies (a form, audio, an image) are data passed on, never parsed as JSON
_UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits"})
_DATA_TYPES = ("multipart/", "audio/", "image/", "video/", "application/octet-stream")
# the routes whose bodies their handler streams (a GGUF file, gigabytes): never read whole
STREAMED_UPLOADS = "/api/blobs/"


def is_page(path: str) -> bool:
    """The dashboard's files (`ui.add_routes`): `/ui` and everything under `/ui/`."""
    return path == "/ui" or path.startswith("/ui/")


# the dashboard's JSON API: an admin key when keys are on (whoami answers anyone, to say whether one is needed)
ADMIN_PREFIX = "/admin/"
WHOAMI = "/admin/whoami"


def is_admin_path(path: str) -> bool:
    return path.startswith(ADMIN_PREFIX) or path == "/admin"


def _runs_a_model(path: str) -> bool:
    """Only requests that run a model wait at a concurrency gate; `/upstream/m/health` does not."""
    return path in INFERENCE_PATHS or (path.startswith(UPSTREAM_PREFIX) and path.endswith(_UPSTREAM_INFERENCE))


def _is_json_body(request: web.Request) -> bool:
    """Whether a handler may parse the body as JSON: every body may (Ollama's handlers read any content
    type as JSON, `curl -d` sends it as a form), but an upload on a route that passes uploads on, and
    anything sent raw to `/upstream/`, is data."""
    path = request.path
    if path.startswith(UPSTREAM_PREFIX):
        return False
    if path not in _UPLOAD_PATHS:  # the usual request: no Content-Type to read
        return True
    ct = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return not ct.startswith(_DATA_TYPES)


def printable(text: str, limit: int = 200) -> str:
    """A header value fit for a message: aiohttp keeps undecodable bytes as surrogates, which orjson
    refuses to encode (a 500 instead of the 4xx being sent); show them as U+FFFD instead."""
    return text[:limit].encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def api_of(path: str) -> ApiName:
    """The API a path belongs to, for refusals made before a handler runs (their envelope, their label)."""
    if is_admin_path(path):
        return "admin"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/responses"):
        return "responses"
    if path.startswith(("/v1/", "/upstream/")) or path in _OPENAI_SHAPED:
        return "openai"
    return "ollama"


class Guard:
    """Everything the middleware needs, built once from the settings (no I/O)."""

    def __init__(self, settings: Settings) -> None:
        lim = settings.limits
        self.keys = KeyRing(settings.auth.keys)
        self.public_paths = frozenset(settings.auth.public_paths)
        guard_hosts = lim.host_guard if lim.host_guard is not None else is_loopback_bind(settings.server.host)
        self.hosts = HostGuard(lim.allowed_hosts) if guard_hosts else None
        self.cors = Cors(settings.server.cors_origins)
        self.proxies = TrustedProxies.of(settings)  # None: no forwarding header is read
        per_key = {
            f"key:{k.name}": (
                k.requests_per_minute if k.requests_per_minute is not None else lim.requests_per_minute,
                k.tokens_per_minute if k.tokens_per_minute is not None else lim.tokens_per_minute,
                k.burst if k.burst is not None else lim.burst,
                k.token_burst if k.token_burst is not None else lim.token_burst,
            )
            for k in settings.auth.keys
        }
        self.rates = RateLimiter((lim.requests_per_minute, lim.tokens_per_minute, lim.burst, lim.token_burst), per_key)
        # the app's, handed over once its lifespan built them (`bind`): refusals are recorded like requests
        self.registry: Registry | None = None
        self.observers: Observers | None = None
        self.rate_limited = self.rates.enabled
        # shared_state: the same limits counted in Redis, set by `install` once the app's lifespan opened it
        self.shared_rates: SharedLimiter | None = None
        self.max_depth = lim.max_json_depth
        self.body_timeout = lim.body_timeout
        self.max_body = settings.server.max_body_bytes
        self.backend_gates = {n: Gate(f"backend '{n}'", c) for n, c in lim.backend_concurrency.items()}
        self.model_gates = {n: Gate(f"model '{n}'", c) for n, c in lim.model_concurrency.items()}
        self.gated = bool(self.backend_gates or self.model_gates)

    # ------------------------------------------------------------------------------------ middleware
    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.proxies is not None:
            self.proxies.resolve(request)  # first: even a refusal's log row names the client behind the proxy
        if request.version not in _VERSIONS:
            return self.reject_version(request)
        headers = request.headers
        if self.hosts is not None and not self.hosts.allowed(headers.get("Host", "")):
            host = printable(headers.get("Host", ""), 100)
            return self.reject(
                request,
                Forbidden(
                    f"host '{host}' is not allowed: this server is bound to loopback and accepts only local host "
                    "names (limits.allowed_hosts adds more)",
                    code="host_not_allowed",
                ),
            )
        origin = headers.get("Origin")
        if origin is not None and not self.cors.same_origin(origin, headers.get("Host")):
            if not self.cors.origin_allowed(origin):
                return self.reject(
                    request,
                    Forbidden(
                        f"origin '{printable(origin)}' is not allowed (server.cors_origins adds more)",
                        code="origin_not_allowed",
                    ),
                )
            if request.method == "OPTIONS":
                return web.Response(status=204, headers=self.cors.preflight_headers(origin, headers))
            request[CORS_ORIGIN] = origin
        elif request.method == "OPTIONS" and self.hosts is not None:
            return web.Response(status=204)  # Ollama's host guard answers any OPTIONS this way
        path = request.path
        try:
            # a public path needs no key and is never rate limited; its body still gets every limit, since
            # an operator may make an inference route public. The dashboard's static files hold no data
            # (the page asks for an admin key and sends it on every fetch), so they need no key either.
            # Its admin API needs an admin key, and is not rate limited as inference, whose budget it would spend
            if is_admin_path(path):
                if self.keys:
                    keys = self.keys
                    found = keys.identify_optional(headers) if path == WHOAMI else keys.identify_admin(headers)
                    if found is not None:
                        request[KEY_NAME] = found
            elif path not in self.public_paths and not is_page(path):
                if self.keys:
                    name = self.keys.identify(headers)
                    request[KEY_NAME] = name
                    caller, label = f"key:{name}", f"key '{name}'"
                else:
                    client = client_of(request)
                    caller, label = f"ip:{client}", f"client {client}"
                if self.rate_limited:
                    if self.shared_rates is None:
                        self.rates.admit(caller, label)  # in-process: no await on the usual path
                    else:
                        await self.shared_rates.admit(caller, label)
            # read even when there is no body (b""): a handler may still resolve the default model; an
            # upload of a model file streams to disk in its handler instead, past any JSON body limit
            reads = request.method in _BODY_METHODS and not path.startswith(STREAMED_UPLOADS)
            raw = await self._read_body(request) if reads else None
        except OllamuxError as exc:
            return self.reject(request, exc)
        if not self.gated or raw is None or not _runs_a_model(path):
            return await handler(request)  # type: ignore[no-any-return]
        return await self._gated(request, handler, raw)

    async def _read_body(self, request: web.Request) -> bytes:
        try:
            # a body already in the buffer (the usual small JSON request) needs no timer
            if self.body_timeout is not None and not request.content.is_eof():
                async with asyncio.timeout(self.body_timeout):
                    raw = await request.read()  # aiohttp keeps it: the handler's read() returns it again
            else:
                raw = await request.read()
        except TimeoutError:
            raise OllamuxError(
                f"request body not received within {self.body_timeout:g} s (limits.body_timeout)",
                status=408,
                headers={"Connection": "close"},
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"request body is larger than {self.max_body} bytes (server.max_body_bytes)"
            ) from None
        except web.RequestPayloadError as exc:
            raise _payload_error(request, exc) from None
        # only a JSON body is parsed (and could nest too deep for the parser); an upload's bytes are data,
        # and a few MB of audio hold enough '[' and '{' to look like a deep document
        if _is_json_body(request) and json_depth_exceeds(raw, self.max_depth):
            raise BadRequest(f"request body nests JSON more than {self.max_depth} levels deep (limits.max_json_depth)")
        return raw

    async def _gated(self, request: web.Request, handler: Any, raw: bytes) -> web.StreamResponse:
        route = self._route_of(request, raw)
        gates: list[Gate] = []
        if route is not None:
            g = self.backend_gates.get(route.backend)
            if g is not None:
                gates.append(g)
            settings = route.entry.settings
            g = self.model_gates.get(normalize_name(settings.name) if settings else route.entry.key)
            if g is not None:
                gates.append(g)
        held: list[Gate] = []
        try:
            for g in gates:
                await g.acquire()
                held.append(g)
        except OllamuxError as exc:
            for g in reversed(held):
                g.release()
            return self.reject(request, exc)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            for g in reversed(held):  # a stream holds its slot until its last byte is written
                g.release()

    def _route_of(self, request: web.Request, raw: bytes) -> Route | None:
        """The model a body asks for, found as the handlers find it (Ollama's deprecated "name" key, the
        default model for none): a request the gate reads differently would run ungated. None when it
        cannot tell (the handler will say what is wrong).

        Beyond JSON: an upload (audio transcription, image edit) names its model in a form field, and
        `/upstream/{model}/...` in its path; both are read by the functions their handlers use."""
        if self.registry is None:
            return None
        try:
            path = request.path
            if path.startswith(UPSTREAM_PREFIX):
                return split_model_path(self.registry, request.rel_url.raw_path[len(UPSTREAM_PREFIX) :])[0]
            # only the upload routes read a form; every other handler parses any body as JSON
            boundary = form_boundary(request.headers.get("Content-Type", "")) if path in _UPLOAD_PATHS else None
            if boundary is not None:
                field = form_field(raw, boundary, "model")
                return self.registry.resolve(field.value if field is not None else None)
            body = orjson.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                return None
            model = body.get("model")
            if model is None and api_of(path) == "ollama" and isinstance(body.get("name"), str):
                model = body["name"]
            if model is not None and not isinstance(model, str):
                return None
            return self.registry.resolve(model)
        except (orjson.JSONDecodeError, OllamuxError):
            return None

    # ------------------------------------------------------------------------------------- refusals
    def bind(self, registry: Registry, observers: Observers) -> None:
        self.registry = registry
        self.observers = observers

    def reconfigure(self, settings: Settings) -> None:
        """A config reload (`reload.py`): keys, limits, gates and CORS from `settings` for the requests that
        come next, in one step. The middleware is this object's bound method, so it changes in place.
        Rate buckets and concurrency gates whose limits did not change keep their counts; a request holding
        a gate that went away releases it where it took it."""
        fresh = Guard(settings)
        if (fresh.rates.defaults, fresh.rates.per_caller) == (self.rates.defaults, self.rates.per_caller):
            fresh.rates = self.rates
        for old, new in ((self.backend_gates, fresh.backend_gates), (self.model_gates, fresh.model_gates)):
            for name, gate in list(new.items()):
                kept = old.get(name)
                if kept is not None and (kept.max, kept.queue, kept.timeout) == (gate.max, gate.queue, gate.timeout):
                    new[name] = kept
        fresh.registry, fresh.observers, fresh.shared_rates = self.registry, self.observers, self.shared_rates
        vars(self).update(vars(fresh))
        if self.shared_rates is not None:
            self.shared_rates.local = self.rates  # the shared buckets read their limits from here

    def reject(self, request: web.Request, exc: OllamuxError) -> web.Response:
        return reject_outside(request, exc, self.observers)

    def reject_version(self, request: web.Request) -> web.Response:
        v = request.version
        refusal = OllamuxError(
            f"HTTP/{v.major}.{v.minor} is not supported: this server speaks HTTP/1.1 and HTTP/1.0",
            status=505,
            code="http_version_not_supported",
            headers={"Connection": "close"},
        )
        # aiohttp writes the status line in the request's version, and "HTTP/2.0 505" would claim the very
        # version refused (RFC 9110 2.5: answer in the highest version the server speaks). There is no public
        # way to set it; `version` is a cached property, so its cached value is replaced (the connection is
        # closed after this answer, nothing else reads it).
        request._cache["version"] = HttpVersion11
        return self.reject(request, refusal)

    # ----------------------------------------------------------------------------- after a request
    def request_started(self, rec: RequestRecord) -> None:
        rec.frames = 0  # the relay counts a stream's frames only for this (an observer only with token limits)

    def request_finished(self, rec: RequestRecord) -> None:
        """Charge the tokens a request used to its caller (tokens are known only at the end). A request the
        backend counted nothing for (a stream without a usage frame: not asked for, or the client left before
        it; a whole answer the client did not wait for) is charged an estimate, or token limits would not
        limit it: a frame a token, and a token per 4 bytes of body."""
        prompt, completion = rec.prompt_tokens, rec.completion_tokens
        if rec.streamed and rec.frames and completion is None:
            completion = rec.frames
        if prompt is None and ((rec.streamed and rec.frames) or rec.abandoned):
            # the backend read the prompt (a cancelled request still made it work through it)
            prompt = rec.body_bytes // _BYTES_PER_TOKEN
        tokens = (prompt or 0) + (completion or 0)
        if tokens:
            caller = f"key:{rec.key_name}" if rec.key_name is not None else f"ip:{rec.client}"
            (self.shared_rates or self.rates).charge_tokens(caller, tokens)

    def authorize(self, rec: RequestRecord, route: Route) -> None:
        if self.keys:
            self.keys.authorize(rec.key_name, route)

    def may_use(self, rec: RequestRecord, route: Route) -> bool:
        try:
            self.authorize(rec, route)
        except Forbidden:
            return False
        return True


def client_request_id(headers: Mapping[str, str]) -> str:
    """The client's x-request-id when it is a sane one, else a new id. The id goes into response and
    upstream headers and the request log: undecodable bytes (kept by aiohttp as surrogates) would fail
    all three, and a huge id would bloat them."""
    rid = headers.get("x-request-id", "")
    if 0 < len(rid) <= 200 and rid.isascii() and rid.isprintable():
        return rid
    return new_request_id()


def reject_outside(request: web.Request, exc: OllamuxError, observers: Observers | None) -> web.Response:
    """A refusal made before any handler ran: rendered in the client's envelope and recorded."""
    api = api_of(request.path)
    rid = client_request_id(request.headers)
    body = exc.body_for(api)
    resp = web.Response(
        body=body,
        status=exc.status,
        content_type="application/json",
        charset="utf-8",  # as every JSON answer (Gin's c.JSON)
        headers={"x-request-id": rid, **exc.headers},
    )
    if exc.headers.get("Connection") == "close":
        # a 408's body may still be on its way, an undecodable one cannot be read past the error, a 505's
        # client speaks something else: nothing more on this connection may be read as a request
        resp.force_close()
        _stop_reading(request)
    if is_admin_path(request.path) or is_page(request.path):
        # not a model request: the operator log, not the request log or the inference metrics
        _admin_log.info(
            "%s %s -> %s: %s",
            request.method,
            printable(request.path),
            exc.status,
            exc.message,
            extra={"request_id": rid, "client": client_of(request)},
        )
    elif observers is not None:
        rec = RequestRecord(
            id=rid,
            api=api,
            route=request.path,
            method=request.method,
            client=client_of(request),
            key_name=request.get(KEY_NAME),
            status=exc.status,
            error=exc.message,
        )
        observers.started(rec)
        observers.finished(rec)
    return resp


def _stop_reading(request: web.Request) -> None:
    """Hang up right after the answer. Left alone, aiohttp goes on reading what is left of the body for up
    to 10 s first (its lingering close): a slow client keeps its connection past limits.body_timeout, and
    a body that failed to decode fails again there, with a traceback in the operator log."""
    request.protocol.close()  # no more bytes are fed to the body: marking its end below is final
    request.content.feed_eof()


def _payload_error(request: web.Request, exc: web.RequestPayloadError) -> BadRequest:
    """A body aiohttp's parser could not read, as the client's mistake it is (aiohttp's own answer is a 500
    with two tracebacks in the operator log)."""
    if isinstance(exc.__cause__, ContentEncodingError):
        encoding = printable(request.headers.get("Content-Encoding", ""), 50)
        return BadRequest(
            f"request body could not be decoded with its Content-Encoding ({encoding})",
            headers={"Connection": "close"},
        )
    detail = " ".join(printable(str(exc.__cause__ or exc)).split())  # aiohttp's messages span lines
    return BadRequest(f"request body could not be read: {detail}", headers={"Connection": "close"})


def on_prepare_cors(guard: Guard) -> Any:
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.get(CORS_ORIGIN)
        if origin is not None:
            response.headers.update(guard.cors.response_headers(origin))

    return add_headers


GUARD: web.AppKey[Guard] = web.AppKey("ollamux_guard", Guard)
