"""ManagedBackend: what the API layer calls for a model ollamux runs itself (`state.backends[...]`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ..backends.http import HTTPBackend
from .manager import ModelManager

__all__ = ["ManagedBackend"]


class ManagedBackend:
    """Backend `runtime:<model>`: `session()` starts the process when needed and holds it for the request."""

    type = "openai"

    def __init__(self, name: str, manager: ModelManager) -> None:
        self.name = name
        self.manager = manager

    @contextlib.asynccontextmanager
    async def session(
        self, route: Any = None, *, keep_alive: float | None = None, num_ctx: int | None = None, **_: Any
    ) -> AsyncIterator[HTTPBackend]:
        """Yield a ready HTTPBackend (with `load_ns`); the model is never stopped while this is open.

        On exit keep_alive applies: seconds idle before the model stops, 0 at once, negative never,
        None the model's ttl.
        """
        ready = await self.manager.acquire(self.name, num_ctx)
        try:
            yield ready
        finally:
            self.manager.release(self.name, keep_alive)

    async def close(self) -> None:
        return None  # the manager owns the processes and stops them in on_shutdown
