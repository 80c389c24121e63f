"""Everything an app owns, built in its lifespan and closed by it (two apps never share any of it).

Each service is a named, typed field; the optional ones are None when their settings turn them off.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import Settings
from .observe import Observers
from .registry import Registry, Route
from .tracing import NO_TRACER, Tracer

if TYPE_CHECKING:
    from .backends.base import Backend
    from .backends.health import HealthMonitor
    from .backends.http import Clients
    from .guard.core import Guard
    from .metrics import Metrics
    from .model_admin import ModelAdmin
    from .runtime.manager import ModelManager
    from .shared_state import SharedState
    from .store import RequestLog
    from .store.responses import ResponseStore

__all__ = ["SETTINGS", "STATE", "AppState"]


@dataclass
class AppState:
    settings: Settings
    registry: Registry
    client: Clients
    backends: dict[str, Backend]
    observers: Observers = field(default_factory=Observers)
    started_at: float = field(default_factory=time.time)
    # what a backend told us about a model (llama-server /props, a GGUF file), by (backend, upstream)
    probed: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    guard: Guard | None = None  # keys, limits, CORS, Host guard (None only in apps built without one)
    request_log: RequestLog | None = None  # request_log.enabled
    responses: ResponseStore | None = None  # stored Responses-API answers (beside the log, else in memory)
    admin: ModelAdmin | None = None  # the models made with /api/copy and /api/create
    metrics: Metrics | None = None  # metrics.enabled
    runtime: ModelManager | None = None  # when any model is run by ollamux itself
    health: HealthMonitor | None = None  # probes of the HTTP backends' replicas
    shared_state: SharedState | None = None  # shared_state: the Redis pool that holds limits shared by instances
    discovered_at: dict[str, float] = field(default_factory=dict)  # backend -> monotonic time of its last list
    tracer: Tracer = NO_TRACER  # `tracing`: a span per request and per upstream attempt; a no-op when off

    @property
    def inbound_auth(self) -> bool:
        """Inbound keys are on: the client's key is ours, never forwarded to a backend."""
        return self.guard is not None and bool(self.guard.keys)

    def backend_for(self, route: Route) -> Backend:
        return self.backends[route.backend]


STATE: web.AppKey[AppState] = web.AppKey("ollamux_state", AppState)
SETTINGS: web.AppKey[Settings] = web.AppKey("ollamux_settings", Settings)
