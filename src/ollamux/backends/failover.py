"""Opening an upstream answer with retries, backoff, the circuit breaker and model fallbacks.

`open_upstream()` is the one call handlers make to get an upstream answer. Everything here happens before
the first byte of the answer goes to the client, so trying again is safe; once a stream has started,
nothing is retried (a failure then becomes one final error frame, written by the handler).

Cost on the healthy path (one replica, nothing failing): one context manager, one `lease()`, one
`pick()` that reads one float, and the request itself. No tasks, no locks, no clock reads of our own.

Breaker state and cooldowns stay in this instance even with `shared_state` (Redis): each instance judges
its own network path to a replica, and a breaker shared through Redis would let one instance's local fault
take a healthy replica away from all of them (the reasons in full: `shared_state.py`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson

from ..errors import BackendError, ModelNotFound, OllamuxError, UpstreamError
from ..masks import mask_url
from ..observe import RequestRecord
from ..registry import Route
from ..state import AppState
from ..tracing import AttemptSpan, Tracer
from .base import Lease, LeaseContext
from .http import CircuitOpen, HTTPBackend, Replica, UpstreamResponse, retry_after_seconds

__all__ = ["Opened", "PayloadFactory", "backoff_delay", "open_upstream"]

log = logging.getLogger("ollamux.failover")

# The upstream path and body for one route on one backend: a fallback has its own upstream model name and
# maybe another dialect or wire format, so the handler's payload cannot simply be resent.
PayloadFactory = Callable[[Route, HTTPBackend], "tuple[str, dict[str, Any] | bytes]"]


@dataclass(slots=True)
class Opened:
    """An upstream answer ready to be relayed, and where it came from."""

    response: UpstreamResponse
    route: Route  # the route that answered: the model's own, or one of its fallbacks
    lease: Lease  # the HTTP backend that answered, and how long it took to make ready
    attempts: int

    @property
    def backend(self) -> HTTPBackend:
        return self.lease.http

    @property
    def load_ns(self) -> int:
        return self.lease.load_ns


class _RouteFailed(Exception):
    """Every attempt on one route failed with a retryable error; `response` is kept for pass-through callers."""

    def __init__(self, error: BackendError, attempts: int, response: UpstreamResponse | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts
        self.response = response


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter for retry `attempt` (1, 2, ...): in [d/2, d], d = min(cap, base*2^(n-1)).

    Half the delay is fixed so a retry never fires at once into the same failure; the random half keeps
    many clients that failed together from retrying together.
    """
    d = min(cap, base * 2.0 ** (attempt - 1))
    return d / 2 + random.random() * d / 2


class open_upstream:
    """Open the upstream answer for `route`, trying replicas, retries and then the model's fallbacks.

    Failures that happen before any byte of the answer exists are tried again: connection errors,
    timeouts before the first byte, 5xx, 429 (Retry-After honoured within the budget), an open circuit
    (at once, on to the fallbacks). `read_body` reads a non-streamed answer inside the loop, so a body
    cut off half way is tried again too (an event stream is left to its reader, which times it). With
    `raise_for_status=False` (pass-through), the last route's error answer is yielded as is when nothing
    better came. The backend's session stays open while the
    caller is inside the block; the response is released when it leaves. Fallbacks are tried only on
    backends that speak the same API as the model's own (the request was built for that API).

    A class rather than an async generator: on the healthy path this saves ~10 us per request.
    """

    __slots__ = (
        "_resp",
        "_session",
        "client_auth",
        "headers",
        "keep_alive",
        "make_payload",
        "method",
        "num_ctx",
        "raise_for_status",
        "read_body",
        "rec",
        "route",
        "state",
    )

    def __init__(
        self,
        state: AppState,
        route: Route,
        make_payload: PayloadFactory,
        *,
        rec: RequestRecord | None = None,
        keep_alive: float | None = None,
        num_ctx: int | None = None,
        read_body: bool = False,
        method: str = "POST",
        raise_for_status: bool = True,
        headers: dict[str, str] | None = None,
        client_auth: str | None = None,
    ) -> None:
        self.state = state
        self.route = route
        self.make_payload = make_payload
        self.rec = rec
        self.keep_alive = keep_alive
        self.num_ctx = num_ctx
        self.read_body = read_body
        self.method = method
        self.raise_for_status = raise_for_status
        self.headers = headers
        self.client_auth = client_auth

    async def __aenter__(self) -> Opened:
        state, route = self.state, self.route
        own = state.backends.get(route.backend)
        if own is None:  # resolved just before a config reload removed its backend
            raise BackendError(f"model '{route.requested}' is no longer served (its backend '{route.backend}' is gone)")
        api = own.api
        routes = [route]
        failures: list[tuple[Route, OllamuxError, int]] = []
        total_attempts = 0
        i = 0
        while i < len(routes):
            r = routes[i]
            i += 1
            backend = state.backends.get(r.backend)
            if backend is None or backend.api != api:
                # the request was built for the model's own API; say so instead of guessing
                log.warning(
                    "fallback %s of %s skipped: backend %s does not speak %s",
                    r.upstream,
                    route.requested,
                    r.backend,
                    api,
                )
                continue
            session: LeaseContext = backend.lease(r, keep_alive=self.keep_alive, num_ctx=self.num_ctx)
            try:
                lease = await session.__aenter__()
                up = lease.http
            except BackendError as exc:  # a managed model that could not be started
                if not exc.retryable:
                    raise
                failures.append((r, exc, 0))
                if len(failures) == 1:
                    routes.extend(_fallbacks(state, route))  # resolved only once they are needed
                continue
            try:
                path, body = self.make_payload(r, up)
                data = body if isinstance(body, bytes) else orjson.dumps(body)
                trace = _AttemptTrace(state.tracer, r.upstream, r is not route) if state.tracer.enabled else None
                resp, attempts = await _attempts(
                    up,
                    self.method,
                    path,
                    data,
                    self.read_body,
                    self.raise_for_status,
                    self.headers,
                    self.client_auth,
                    trace,
                )
            except _RouteFailed as failed:
                total_attempts += failed.attempts
                failures.append((r, failed.error, failed.attempts))
                if len(failures) == 1:
                    routes.extend(_fallbacks(state, route))
                if failed.response is None or i < len(routes):
                    if failed.response is not None:
                        failed.response.release()
                    await session.__aexit__(None, None, None)
                    continue
                # pass-through and nothing left to try: the client gets the upstream's own error answer
                resp, attempts = failed.response, 0
            except BaseException as exc:
                await session.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            total_attempts += attempts
            if failures and resp.status < 400:
                log.warning(
                    "model %s served by %s on backend %s after: %s",
                    route.requested,
                    r.upstream,
                    r.backend,
                    "; ".join(e.message for _, e, _ in failures),
                )
            rec = self.rec
            if rec is not None:
                rec.model_served = r.upstream
                rec.backend = r.backend
                rec.upstream_url = resp.url
            self._session = session
            self._resp = resp
            return Opened(resp, r, lease, total_attempts)
        raise _final_error(route, failures)

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._resp.release()  # a client gone mid-stream: this closes the upstream connection, cancelling it
        return await self._session.__aexit__(typ, exc, tb)


def _fallbacks(state: AppState, route: Route) -> list[Route]:
    """The model's fallbacks in order, as routes that still answer to the name the client asked for."""
    settings = route.entry.settings
    out: list[Route] = []
    for name in settings.fallbacks if settings is not None else ():
        try:
            fb = state.registry.resolve(name)
        except ModelNotFound:
            continue
        out.append(Route(route.requested, fb.entry, fb.upstream))
    return out


class _AttemptTrace:
    """What an attempt's span says beyond the attempt itself: the model sent upstream, and whether the
    route is one of the model's fallbacks (tracing on only)."""

    __slots__ = ("fallback", "model", "tracer")

    def __init__(self, tracer: Tracer, model: str, fallback: bool) -> None:
        self.tracer = tracer
        self.model = model
        self.fallback = fallback

    def start(
        self,
        backend: HTTPBackend,
        replica: Replica,
        method: str,
        path: str,
        attempt: int,
        headers: dict[str, str] | None,
    ) -> tuple[AttemptSpan | None, dict[str, str] | None]:
        return self.tracer.attempt_started(
            method=method,
            url=replica.url + path,
            backend=backend.name,
            model=self.model,
            attempt=attempt,
            retry=attempt > 1,
            fallback=self.fallback,
            headers=headers,
        )

    def end(
        self, span: AttemptSpan, backend: HTTPBackend, replica: Replica, status: int | None, error: str | None
    ) -> None:
        if error is not None:  # as masked as anything else that leaves the backend boundary
            error = backend.redact.text(error).replace(replica.url, mask_url(replica.url))
        self.tracer.attempt_finished(span, status=status, error=error)


async def _attempts(
    backend: HTTPBackend,
    method: str,
    path: str,
    data: bytes,
    read_body: bool,
    raise_for_status: bool,
    headers: dict[str, str] | None,
    client_auth: str | None,
    trace: _AttemptTrace | None = None,
) -> tuple[UpstreamResponse, int]:
    """Attempts on one backend's replicas until one answers, bounded by `retries` and `retry_budget`.

    Raises the error itself when it is not worth another try anywhere (a 400), `_RouteFailed` otherwise.
    """
    res = backend.resilience
    tried: list[Replica] = []
    attempt = 0
    started = 0.0
    try:
        replica = backend.pick()
    except CircuitOpen as exc:
        raise _RouteFailed(exc, 0) from None
    while True:
        attempt += 1
        failed: BackendError
        kept: UpstreamResponse | None = None
        span: AttemptSpan | None = None
        sent = headers
        if trace is not None:  # the attempt's own span, and its traceparent in the headers sent
            span, sent = trace.start(backend, replica, method, path, attempt, headers)
        got: int | None = None
        try:
            resp = await backend.request(
                method, path, data, headers=sent, client_auth=client_auth, raise_for_status=False, replica=replica
            )
            status = got = resp.status
            if status < 500 and status != 429:
                if status >= 400 and raise_for_status:
                    raise await backend.status_error(resp)
                if read_body and resp.content_type != "text/event-stream":
                    await resp.read()  # a stream asked for a whole answer is gathered by its reader, timed
                if trace is not None and span is not None:
                    trace.end(span, backend, replica, status, f"HTTP {status}" if status >= 400 else None)
                return resp, attempt
            if raise_for_status:
                failed = await backend.status_error(resp)
            else:
                kept = resp
                failed = _peek_status_error(backend, resp)
        except BackendError as exc:
            if not exc.retryable:
                if trace is not None and span is not None:
                    trace.end(span, backend, replica, got, exc.message)
                raise
            failed = exc
        except BaseException:
            if trace is not None and span is not None:
                trace.end(span, backend, replica, got, "cancelled")
            raise
        if trace is not None and span is not None:
            trace.end(span, backend, replica, got, failed.message)
        # ------------------------------------------------------------------ decide on another attempt
        now = time.monotonic()
        if not started:
            started = now
        tried.append(replica)
        delay = 0.0
        give_up = attempt > res.retries
        if not give_up:
            try:
                replica = backend.pick(tried)
            except CircuitOpen:
                give_up = True
        if not give_up and replica in tried:
            # the same server again: wait, longer each time; a replica not tried yet is tried at once
            delay = backoff_delay(attempt, res.backoff, res.backoff_max)
        retry_after = retry_after_seconds(failed.headers.get("Retry-After")) if failed.status == 429 else None
        if retry_after is not None and not give_up:
            delay = max(delay, retry_after)
        if not give_up and now + delay - started > res.retry_budget:
            give_up = True
        if give_up:
            if replica.probing and replica not in tried:
                replica.probing = False  # picked as the probe but never sent: let the next request probe
            raise _RouteFailed(failed, attempt, kept)
        if kept is not None:
            kept.release()
        log.info(
            "retrying %s on backend %s in %.2fs (attempt %d failed: %s)",
            path,
            backend.name,
            delay,
            attempt,
            failed.message,
        )
        if delay > 0:
            await asyncio.sleep(delay)


def _peek_status_error(backend: HTTPBackend, resp: UpstreamResponse) -> BackendError:
    """The error an error status stands for, without reading the body (it may yet be relayed as is)."""
    err = UpstreamError(f"backend '{backend.name}' answered HTTP {resp.status} ({resp.url})", status=resp.status)
    ra = resp.headers.get("Retry-After")
    if ra:
        err.headers = {"Retry-After": ra}
    return err


def _final_error(route: Route, failures: list[tuple[Route, OllamuxError, int]]) -> OllamuxError:
    """One error for the client: the last failure's status and a message naming every route that failed."""
    if not failures:
        return BackendError(f"model '{route.requested}' has no route this API can use")
    _, last, n = failures[-1]
    if len(failures) == 1:
        if n > 1:
            last.message = f"{last.message} (gave up after {n} attempts)"
            last.args = (last.message,)
        return last
    parts = []
    for r, e, k in failures:
        tries = f", {k} attempts" if k > 1 else ""
        parts.append(f"{r.upstream} on backend '{r.backend}'{tries}: {e.message}")
    last.message = f"every route for model '{route.requested}' failed: " + "; ".join(parts)
    last.args = (last.message,)
    return last
