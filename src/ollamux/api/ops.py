"""Operations routes and services: /health, /health/ready, /metrics, the request log and metrics wiring,
and an `x-request-id` on every response.

`add_routes(app)` runs in `create_app` (signals freeze with the app); `start(state)` and `stop(state)` run
in the lifespan through `hooks`, so every service here belongs to one app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from aiohttp import web

from ..backends.health import HealthMonitor
from ..backends.http import HTTPBackend
from ..errors import Unauthorized
from ..guard.core import KEY_NAME, client_request_id
from ..metrics import CONTENT_TYPE, Metrics, log_collector
from ..oplog import RequestLines
from ..state import SETTINGS, STATE, AppState
from ..store import RequestLog, instance_name
from ..version import __version__
from .common import REQUEST_ID, json_response

__all__ = ["add_routes", "health_monitor", "probe_backends", "start", "stop"]

log = logging.getLogger("ollamux")


# ---------------------------------------------------------------------------------------- request id
async def _request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    # endpoint() already set it on API answers; this covers /, /api/version, 404s and the ops routes
    if REQUEST_ID not in response.headers:
        response.headers[REQUEST_ID] = client_request_id(request.headers)  # a hostile id cannot break it


# ---------------------------------------------------------------------------------------- routes
async def health(request: web.Request) -> web.StreamResponse:
    """Liveness: the event loop answers. Touches nothing else, so it stays cheap under any load."""
    return web.Response(body=b'{"status":"ok"}', content_type="application/json", charset="utf-8")


async def ready(request: web.Request) -> web.StreamResponse:
    """Readiness: version, uptime, backends (probed within the last few seconds), managed models, the
    request log. With inbound keys on, a caller without a valid key learns only the status."""
    state = request.app[STATE]
    backends = await probe_backends(state)
    models = _managed_models(state)
    rl = state.request_log
    log_state: dict[str, Any] = rl.status() if rl is not None else {"enabled": False, "state": "disabled"}
    problems = [f"backend {name} unreachable" for name, b in backends.items() if not b["reachable"]]
    # a crashed model counts while its restart is pending (requests for it would wait) and once restarts
    # keep failing; it stops counting as soon as it is running again, no request needed
    problems += [f"model {m['model']} {m['state']}" for m in models if m.get("state") in ("failed", "restarting")]
    # "degraded" (a shared database away, rows queue) is no problem: every instance would leave the load
    # balancer at once; "failed" (this instance's own store broke) is
    if log_state.get("state") == "failed":
        problems.append("request log failed")
    shared = state.shared_state.status() if state.shared_state is not None else None
    if shared is not None and shared["state"] != "shared" and shared["fail_closed"]:
        # fail-open keeps serving on local limits (ready, and says so below); fail-closed refuses
        problems.append("shared limit store unreachable")
    word, status = ("ready", 200) if not problems else ("degraded", 503)
    if not _may_see_details(request, state):
        # load balancers only need the code; the details (backend URLs, the log's path and counts, model
        # PIDs) map the deployment for an attacker, so a keyed server keeps them for its key holders
        return json_response({"status": word}, status=status)
    body = {
        "status": word,
        "problems": problems,
        "version": state.settings.server.version,
        "ollamux_version": _package_version(),
        "uptime_s": round(time.time() - state.started_at, 3),
        "backends": backends,
        "models": models,
        "request_log": log_state,
        **({"shared_state": shared} if shared is not None else {}),
    }
    return json_response(body, status=status)


def _may_see_details(request: web.Request, state: AppState) -> bool:
    """Whether this caller sees readiness in full: anyone on an open server (as with Ollama), else a
    caller with a valid key. Any configured key will do for now; admin-only keys are a later change."""
    guard = state.guard
    if guard is None or not guard.keys:
        return True
    if request.get(KEY_NAME) is not None:
        return True  # the operator took /health/ready off auth.public_paths: the guard checked the key
    # a public path: the guard let the request through without looking at any key, so check it here
    try:
        guard.keys.identify(request.headers)
    except Unauthorized:
        return False
    return True


async def metrics(request: web.Request) -> web.StreamResponse:
    m = request.app[STATE].metrics
    if m is None:
        return json_response({"error": "metrics are disabled (metrics.enabled: false)"}, status=404)
    # rendering walks every series: off the loop, so a big scrape never stalls streams in flight
    body = await asyncio.get_running_loop().run_in_executor(None, m.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.on_response_prepare.append(_request_id_header)
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", ready)
    if app[SETTINGS].metrics.enabled:
        app.router.add_get("/metrics", metrics)


# ---------------------------------------------------------------------------------------- probes
async def probe_backends(state: AppState) -> dict[str, dict[str, Any]]:
    """Every HTTP backend's replicas, probed within the last few seconds (one shared prober)."""
    return await state.health.snapshot() if state.health is not None else {}


def _managed_models(state: AppState) -> list[dict[str, Any]]:
    rt = state.runtime
    return [dataclasses.asdict(st) for st in rt.statuses()] if rt is not None else []


def _package_version() -> str:
    return __version__


# ---------------------------------------------------------------------------------------- lifespan
async def start(app: web.Application, state: AppState) -> None:
    """Build this app's request log, metrics, operator lines and backend prober; hook them to every request."""
    settings = state.settings
    state.observers.add(RequestLines())
    if settings.request_log.enabled:
        rl = RequestLog(settings.request_log, instance=instance_name(settings.server))
        await asyncio.to_thread(rl.open)  # creating or migrating the file must not stall the loop
        state.request_log = rl
        state.observers.add(rl)
    metrics: Metrics | None = None
    if settings.metrics.enabled:
        metrics = Metrics(version=settings.server.version, started_at=state.started_at)
        metrics.add_collector(log_collector(lambda: state.request_log))

        def runtime_states() -> Any:
            # looked up at scrape time: the runtime is built after this, or not at all
            return [(x["model"], x["state"]) for x in _managed_models(state)]

        metrics.add_model_state_source(runtime_states)
        metrics.add_in_flight_source(lambda: state.observers.in_flight)
        state.metrics = metrics
        state.observers.add(metrics)
    state.health = health_monitor(state)
    state.health.start()


def health_monitor(state: AppState) -> HealthMonitor:
    """The prober of the app's HTTP backends as they are now (start-up, and each config reload)."""
    metrics = state.metrics
    http = {name: b for name, b in state.backends.items() if isinstance(b, HTTPBackend)}
    return HealthMonitor(
        http,
        report_interval=state.settings.metrics.backend_probe_interval if metrics is not None else 0.0,
        on_result=metrics.set_backend_up if metrics is not None else None,
    )


async def stop(app: web.Application, state: AppState) -> None:
    """Stop probing and write every queued log row (requests still in flight were finished before)."""
    if state.health is not None:
        await state.health.stop()
    if state.request_log is not None:
        await asyncio.to_thread(state.request_log.close)
