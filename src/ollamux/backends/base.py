"""What the rest of ollamux may know about a backend: one protocol, and the lease a request holds.

Two implementations speak HTTP (`openai.OpenAIBackend`, `ollama.OllamaBackend`); a model ollamux runs
itself (`runtime.ManagedBackend`) hands out leases on an OpenAI-compatible one. Nothing outside
`backends/` asks which kind a backend is: callers ask what it *speaks* (`speaks(api)`) and let it build
its own wire requests, read its own answers and describe its own models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .http import Lease
from .plan import Answer, Api, PivotKind, PivotPlan

if TYPE_CHECKING:
    from ..registry import ModelEntry, Route

__all__ = ["Answer", "Api", "Backend", "Lease", "LeaseContext", "PivotKind", "PivotPlan"]


class LeaseContext(Protocol):
    """`async with backend.lease(...) as lease:` the backend stays ready (a managed model is never
    stopped) until the block ends."""

    async def __aenter__(self) -> Lease: ...

    async def __aexit__(self, *exc: object) -> bool | None: ...


class Backend(Protocol):
    """A backend as the API layer and the pipeline see it."""

    @property
    def name(self) -> str: ...

    @property
    def api(self) -> Api:
        """The API its endpoints speak (an Ollama client on a backend that speaks "ollama" is passed
        through byte for byte; everything else goes through the OpenAI pivot)."""
        ...

    def speaks(self, api: Api) -> bool: ...

    def lease(
        self, route: Route | None = None, *, keep_alive: float | None = None, num_ctx: int | None = None
    ) -> LeaseContext: ...

    async def discover(self) -> list[ModelEntry]:
        """The models it lists now (for `discover: true`); raises OllamuxError when it cannot say."""
        ...

    async def probe(self, upstream: str) -> Mapping[str, Any]:
        """Extra metadata about one model (context, template, capabilities); {} when it has none."""
        ...

    async def running(self) -> list[dict[str, Any]]:
        """What it has loaded now, as Ollama's /api/ps items with upstream names; [] when it cannot say."""
        ...

    async def close(self) -> None: ...
