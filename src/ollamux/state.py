"""Everything an app owns, built in its lifespan and closed by it (two apps never share any of it)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from .config import Settings
from .observe import Observers
from .registry import Registry, Route

__all__ = ["SETTINGS", "STATE", "AppState", "Backend"]


class Backend(Protocol):
    """What the API layer needs of a backend (static HTTP, or a managed model process)."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    def session(self, route: Route | None = None, **hints: Any) -> Any:
        """An async context manager yielding an HTTPBackend that is ready to take the request."""
        ...

    async def close(self) -> None: ...


@dataclass
class AppState:
    settings: Settings
    registry: Registry
    client: aiohttp.ClientSession
    backends: dict[str, Backend]
    observers: Observers = field(default_factory=Observers)
    started_at: float = field(default_factory=time.time)
    # what a backend told us about a model (llama-server /props, Ollama /api/show), by (backend, upstream)
    probed: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    runtime: Any = None  # the managed-model manager, when any model is run by ollamux
    extras: dict[str, Any] = field(default_factory=dict)

    def backend_for(self, route: Route) -> Backend:
        return self.backends[route.backend]


STATE: web.AppKey[AppState] = web.AppKey("ollamux_state", AppState)
SETTINGS: web.AppKey[Settings] = web.AppKey("ollamux_settings", Settings)
