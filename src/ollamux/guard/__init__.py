"""Access control and limits: HTTP versions, keys, rate limits, body and nesting limits, CORS, the Host guard.

`install(app, settings)` wires it into an app; `authorize_model(state, rec, route)` is the one call a
handler makes once it knows which model a request resolved to (403 if the key may not use it).
"""

from __future__ import annotations

from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.web_urldispatcher import MatchInfoError, UrlMappingMatchInfo, _default_expect_handler

from ..config import Settings
from ..errors import ModelNotFound, OllamuxError
from ..observe import RequestRecord
from ..registry import ModelEntry, Route
from ..state import STATE, AppState
from . import core as guard_core
from .core import CORS_ORIGIN, GUARD, KEY_NAME, Guard, on_prepare_cors

__all__ = [
    "CORS_ORIGIN",
    "GUARD",
    "KEY_NAME",
    "Guard",
    "authorize_model",
    "handler_args",
    "install",
    "visible_entries",
    "visible_not_found",
]


def install(app: web.Application, settings: Settings) -> Guard:
    guard = Guard(settings)
    app[GUARD] = guard
    app.middlewares.insert(0, guard.middleware)  # outermost: refusals cost the least
    app.on_response_prepare.append(on_prepare_cors(guard))

    async def startup(app: web.Application) -> None:
        # runs after the lifespan's start (cleanup_ctx comes first in on_startup), so the state exists
        state = app[STATE]
        state.guard = guard  # with keys on, state.inbound_auth: the client's key is never forwarded upstream
        guard.bind(state.registry, state.observers)
        if state.shared_state is not None:  # even with no limit yet: a config reload may add some
            from .shared_limits import SharedLimiter  # imports redis: only when shared_state is configured

            guard.shared_rates = SharedLimiter(guard.rates, state.shared_state)
        if guard.rates.counts_tokens:
            state.observers.add(guard)

    app.on_startup.append(startup)
    app.on_startup.append(_safe_expect_handlers)
    return guard


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """aiohttp's own Expect handler puts the header in its 417 text and fails with a 500 when the header
    holds undecodable bytes; it runs before any middleware, so it is replaced on every route."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await _default_expect_handler(request)  # writes "100 Continue"
        return None
    refusal = OllamuxError("only 'Expect: 100-continue' is supported", status=417)
    guard = request.app[GUARD]
    if guard.proxies is not None:  # this runs before the middleware, which would name the client
        guard.proxies.resolve(request)
    return guard_core.reject_outside(request, refusal, guard.observers)


async def _safe_expect_handlers(app: web.Application) -> None:
    for route in app.router.routes():
        # a private attribute, but the only way to reach routes added without an expect_handler
        if getattr(route, "_expect_handler", None) is _default_expect_handler:
            route._expect_handler = _expect
    # A path no route matches gets a fresh SystemRoute per request, with aiohttp's handler again (the fuzz
    # suite found the 500 there): every resolve's answer gets ours, so no path is left with the crash.
    resolve = app.router.resolve

    async def resolve_safely(request: web.Request) -> UrlMappingMatchInfo:
        info = await resolve(request)
        if isinstance(info, MatchInfoError):
            info.route._expect_handler = _expect
        return info

    app.router.resolve = resolve_safely  # type: ignore[method-assign]


def handler_args(settings: Settings) -> dict[str, Any]:
    """aiohttp connection knobs: the keep-alive timer also bounds how long a client may take to send headers."""
    t = settings.limits.header_timeout
    return {} if t is None else {"keepalive_timeout": t}


def authorize_model(state: AppState, rec: RequestRecord, route: Route) -> None:
    """403 (Forbidden) when the request's key may not use `route`'s model; free when no keys are set."""
    if state.guard is not None:
        state.guard.authorize(rec, route)


def visible_entries(state: AppState, rec: RequestRecord) -> list[ModelEntry]:
    """The models a listing shows this caller (aliases too): all of them when the server is open, else
    those its key may use."""
    entries = state.registry.entries(aliases=True)
    guard = state.guard
    if guard is None or not guard.keys:
        return entries
    return [e for e in entries if guard.may_use(rec, Route(e.name, e, e.upstream))]


def visible_not_found(state: AppState, rec: RequestRecord, exc: ModelNotFound) -> ModelNotFound:
    """A 404's suggested names, keeping only those the caller's key may use: as in a listing, the names
    of the other models alone tell what else the server runs and for whom."""
    guard = state.guard
    if guard is None or not guard.keys or not exc.suggestions:
        return exc
    keep = []
    for name in exc.suggestions:
        entry = state.registry.find(name)
        if entry is not None and guard.may_use(rec, Route(name, entry, entry.upstream)):
            keep.append(name)
    return ModelNotFound(exc.model, keep)
