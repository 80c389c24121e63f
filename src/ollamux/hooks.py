"""Start-up and shutdown of the optional services (managed runtime, request log, metrics).

Each service adds itself here, so `app.py` stays a short picture of the lifespan.
"""

from __future__ import annotations

from aiohttp import web

from .state import AppState

__all__ = ["on_shutdown", "on_startup"]


async def on_startup(app: web.Application, state: AppState) -> None:
    from .api import ops

    await ops.start(app, state)  # request log, metrics, operator lines (before any request is served)
    from .backends.failover import start_health_checks

    start_health_checks(state)  # active health checks of backend replicas, one task per backend
    from .runtime import start_runtime

    state.runtime = start_runtime(state)  # managed models: registered now, started on first request


async def on_shutdown(app: web.Application, state: AppState) -> None:
    from .backends.failover import stop_health_checks

    await stop_health_checks(state)
    if state.runtime is not None:
        await state.runtime.close()  # stop every model process before the client and loop go away
    from .api import ops

    await ops.stop(app, state)  # writes every queued request-log row
