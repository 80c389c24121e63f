"""`create_app(settings)`: every service an app needs, built inside one lifespan and closed by it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from . import discovery, guard, ui
from .api import admin as admin_api
from .api import anthropic as anthropic_api
from .api import ollama as ollama_api
from .api import openai as openai_api
from .api import ops, routing
from .api import responses as responses_api
from .api import routed as routed_api
from .backends import Backend, make_backend, new_clients
from .config import Settings
from .model_admin import open_model_admin
from .observe import Observers
from .registry import Registry
from .runtime import start_runtime
from .state import SETTINGS, STATE, AppState
from .store.opening import open_responses
from .tracing import open_tracer

__all__ = ["create_app"]

log = logging.getLogger("ollamux")


def create_app(settings: Settings) -> web.Application:
    """The aiohttp application for these settings; nothing starts until it is run."""
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        handler_args={"max_field_size": 16384, **guard.handler_args(settings)},
    )
    app[SETTINGS] = settings
    guard.install(app, settings)  # keys, rate limits, body limits, CORS, Host guard (one middleware)
    ollama_api.add_routes(app)
    openai_api.add_routes(app)
    responses_api.add_routes(app)
    anthropic_api.add_routes(app)
    routed_api.add_routes(app)  # rerank, llama.cpp's extras, audio, images, /upstream/{model}/...
    ops.add_routes(app)  # /health, /health/ready, /metrics, x-request-id on every response
    ui.add_routes(app)  # the dashboard's page and files at /ui (its data comes from /admin/...)
    admin_api.add_routes(app)  # the dashboard's JSON API under /admin/ (admin keys only, when keys are on)
    routing.install(app)  # Gin's trailing-slash redirects, 404 and 405 for what matches no route
    app.cleanup_ctx.append(_lifespan)
    return app


async def _lifespan(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = new_clients()
    registry = Registry(settings.models, settings.default_model)
    backends: dict[str, Backend] = {name: make_backend(bs, client) for name, bs in settings.backends.items()}
    state = AppState(settings=settings, registry=registry, client=client, backends=backends, observers=Observers())
    app[STATE] = state
    tasks: list[asyncio.Task[None]] = []
    state.tracer = open_tracer(settings.tracing)  # NO_TRACER without a `tracing` section
    try:
        # request log, metrics, operator lines and the backend prober, before any request is served
        await ops.start(app, state)
        if settings.shared_state is not None:  # imports redis only when configured
            from .shared_state import open_shared_state

            state.shared_state = await open_shared_state(settings.shared_state, state.metrics)
        state.responses = open_responses(settings.request_log)  # beside the log: its file or its database
        state.runtime = await start_runtime(state)  # managed models: registered now, started on first request
        await discovery.refresh_all(state)
        state.admin = await open_model_admin(state)  # copied and created models, once their bases are known
        if any(bs.discover for bs in settings.backends.values()):
            tasks.append(asyncio.create_task(discovery.run_refresher(state)))
        yield
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if state.runtime is not None:
            with contextlib.suppress(Exception):
                await state.runtime.close()  # stop every model process before the client and loop go away
        if state.responses is not None:
            with contextlib.suppress(Exception):
                state.responses.close()
        if state.admin is not None:
            with contextlib.suppress(Exception):
                state.admin.close()
        with contextlib.suppress(Exception):
            await ops.stop(app, state)  # stops the prober, writes every queued request-log row
        if state.shared_state is not None:
            with contextlib.suppress(Exception):
                await state.shared_state.close()  # sends the token charges still on their way first
        for b in backends.values():
            with contextlib.suppress(Exception):
                await b.close()
        await client.close()
        with contextlib.suppress(Exception):
            await state.tracer.close()  # last: the spans of the requests that just finished are exported
