"""Start-up and shutdown of the optional services (managed runtime, request log, metrics).

Each service adds itself here, so `app.py` stays a short picture of the lifespan.
"""

from __future__ import annotations

from aiohttp import web

from .state import AppState

__all__ = ["on_shutdown", "on_startup"]


async def on_startup(app: web.Application, state: AppState) -> None:
    return None


async def on_shutdown(app: web.Application, state: AppState) -> None:
    return None
