"""ManagedBackend: a model ollamux runs itself, as the `Backend` protocol (`backends.base`) sees it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..backends.base import Api, Lease
from .manager import ModelManager

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..registry import ModelEntry, Route

__all__ = ["ManagedBackend", "ManagedLease"]


class ManagedLease:
    """`async with`: start the model if needed and hold it (acquire), then let it go (release).

    A plain class rather than an `asynccontextmanager`: no generator object per request.
    """

    __slots__ = ("_asked", "_held", "_keep_alive", "_manager", "_name", "_num_ctx")

    def __init__(self, manager: ModelManager, name: str, keep_alive: float | None, num_ctx: int | None) -> None:
        self._manager = manager
        self._name = name
        self._keep_alive = keep_alive
        self._num_ctx = num_ctx
        self._held = False
        self._asked = 0

    async def __aenter__(self) -> Lease:
        self._asked = self._manager.ask()  # before the wait: its keep_alive counts from its arrival
        lease = await self._manager.acquire(self._name, self._num_ctx)
        self._held = True
        return lease

    async def __aexit__(self, *exc: object) -> None:
        # released once, and only if acquired: a failed start never counted a request on the model
        if self._held:
            self._held = False
            self._manager.release(self._name, self._keep_alive, asked=self._asked)


class ManagedBackend:
    """Backend `runtime:<model>`: each lease starts the process when needed and holds it for the request."""

    def __init__(self, name: str, manager: ModelManager) -> None:
        self.name = name
        self.manager = manager

    @property
    def api(self) -> Api:
        return "openai"  # every managed model is served by an OpenAI-compatible server

    def speaks(self, api: Api) -> bool:
        if api == "openai":
            return True
        m = self.manager.models.get(self.name)
        return m is not None and api in m.spec.apis

    def lease(
        self, route: Route | None = None, *, keep_alive: float | None = None, num_ctx: int | None = None
    ) -> ManagedLease:
        """Hold the model ready for one request; the model is never stopped while the lease is open.

        On exit keep_alive applies: seconds idle before the model stops, 0 at once, negative never, None
        the model's ttl. `num_ctx` larger than the running context restarts an idle process with it.
        """
        return ManagedLease(self.manager, self.name, keep_alive, num_ctx)

    async def discover(self) -> list[ModelEntry]:
        return []  # the manager registers its models itself (config and models folder)

    async def probe(self, upstream: str) -> Mapping[str, Any]:
        return {}  # the manager puts what the GGUF header says into `state.probed` itself

    async def running(self) -> list[dict[str, Any]]:
        return []  # /api/ps reads the manager's own `running()`, which knows pids, contexts and expiries

    async def close(self) -> None:
        return None  # the manager owns the processes and stops them in on_shutdown


if TYPE_CHECKING:

    def _is_a_backend(b: ManagedBackend) -> Backend:  # mypy proves ManagedBackend satisfies the protocol
        return b
