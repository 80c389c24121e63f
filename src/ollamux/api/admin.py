"""The dashboard's admin JSON API under `/admin/`: thin handlers over the request log, the catalogue, the
manager and the backends' health (README: Dashboard, Admin API).

Who may call it is the guard's rule (`guard.core`): with inbound keys on, only a key with `admin: true`,
except `/admin/whoami`, which anyone may ask whether a key is needed. Its requests are not model requests:
they go to the operator log, never to the request log or the metrics (`admin_common.admin_endpoint`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ..errors import ServiceUnavailable
from ..guard.core import KEY_NAME
from ..state import AppState
from ..store import instance_name
from ..store.dashboard import reader_or_none, window_rows
from ..store.series import Window, overview, window_for
from ..version import __version__
from . import admin_backends, admin_models, admin_requests
from .admin_common import ADMIN, AdminState, admin_endpoint, json_ok, query_int

__all__ = ["add_routes"]

PREFIX = "/admin"


async def whoami(request: web.Request, state: AppState) -> web.StreamResponse:
    """Whether keys are on and whether this caller may use the admin API; nothing more, to anyone."""
    guard = state.guard
    auth = guard is not None and bool(guard.keys)
    key = request.get(KEY_NAME)  # the guard looked the key up (an unknown one reads as none)
    admin = not auth or (guard is not None and guard.keys.is_admin(key))
    instance = instance_name(state.settings.server)  # what this server writes into each log row
    return json_ok({"auth": auth, "admin": admin, "key": key, "version": __version__, "instance": instance})


def _overview_rows(state: AppState, window: Window, model: str | None, backend: str | None) -> list[Any]:
    reader = reader_or_none(state.settings.request_log)
    if reader is None:
        return []
    with reader:
        return window_rows(reader, window, model, backend)


async def overview_handler(request: web.Request, state: AppState) -> web.StreamResponse:
    q = request.query
    seconds = query_int(q, "window", 3600, 60, 31 * 86400)
    model, backend = q.get("model") or None, q.get("backend") or None
    window = window_for(seconds, time.time())
    rl = state.request_log
    try:
        rows = await asyncio.to_thread(_overview_rows, state, window, model, backend) if rl is not None else []
    except ConnectionError as exc:
        raise ServiceUnavailable(f"cannot read the request log: {exc}") from None
    body = overview(rows, window)
    if rl is None:
        log_word, dropped = "off", 0
        body["note"] = "the request log is off (request_log.enabled: false): the charts have no data"
    else:
        # "degraded": a shared database away for now (rows wait in the queue); "failed"/"stopped": broken
        word = rl.status()["state"]
        log_word = word if word in ("ok", "degraded") else "failed"
        dropped = rl.dropped
    body["live"] = {
        "in_flight": state.observers.in_flight,
        "uptime_s": round(time.time() - state.started_at, 3),
        "log": log_word,
        "dropped_rows": dropped,
    }
    return json_ok(body)


def add_routes(app: web.Application) -> None:
    admin = AdminState()
    app[ADMIN] = admin
    r = app.router
    r.add_get(f"{PREFIX}/whoami", admin_endpoint(whoami))
    r.add_get(f"{PREFIX}/overview", admin_endpoint(overview_handler))
    r.add_get(f"{PREFIX}/requests", admin_endpoint(admin_requests.requests))
    r.add_get(f"{PREFIX}/requests/stream", admin_endpoint(admin_requests.requests_stream))
    r.add_get(f"{PREFIX}/requests/{{id}}", admin_endpoint(admin_requests.request_detail))
    r.add_get(f"{PREFIX}/models", admin_endpoint(admin_models.list_models))
    # model names hold '/' (hf.co/owner/repo) and ':' (tags): the action is the last segment
    r.add_post(f"{PREFIX}/models/{{name:.+}}/load", admin_endpoint(admin_models.load))
    r.add_post(f"{PREFIX}/models/{{name:.+}}/unload", admin_endpoint(admin_models.unload))
    r.add_get(f"{PREFIX}/models/{{name:.+}}/logs", admin_endpoint(admin_models.model_log))
    r.add_get(f"{PREFIX}/backends", admin_endpoint(admin_backends.backends))

    async def shutdown(app: web.Application) -> None:
        admin.closing.set()  # endless streams end now, not at the shutdown timeout

    app.on_shutdown.append(shutdown)
