"""Operations routes and services: /health, /health/ready, /metrics, the request log and metrics wiring,
and an `x-request-id` on every response.

`add_routes(app)` runs in `create_app` (signals freeze with the app); `start(state)` and `stop(state)` run
in the lifespan through `hooks`, so every service here belongs to one app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from ..guard.core import client_request_id
from ..metrics import CONTENT_TYPE, Metrics, log_collector
from ..state import SETTINGS, STATE, AppState
from .common import REQUEST_ID, json_response

__all__ = ["add_routes", "probe_backends", "start", "stop"]

log = logging.getLogger("ollamux")

PROBE_TIMEOUT = 2.0  # readiness must answer quickly even when a backend hangs


# ---------------------------------------------------------------------------------------- request id
async def _request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    # endpoint() already set it on API answers; this covers /, /api/version, 404s and the ops routes
    if REQUEST_ID not in response.headers:
        response.headers[REQUEST_ID] = client_request_id(request.headers)  # a hostile id cannot break it


# ---------------------------------------------------------------------------------------- routes
async def health(request: web.Request) -> web.StreamResponse:
    """Liveness: the event loop answers. Touches nothing else, so it stays cheap under any load."""
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def ready(request: web.Request) -> web.StreamResponse:
    """Readiness: version, uptime, backends (probed now), managed models, the request log."""
    state = request.app[STATE]
    backends = await probe_backends(state)
    models = _managed_models(state)
    rl = state.extras.get("request_log")
    log_state: dict[str, Any] = rl.status() if rl is not None else {"enabled": False, "state": "disabled"}
    problems = [f"backend {name} unreachable" for name, b in backends.items() if not b["reachable"]]
    problems += [f"model {m['model']} failed" for m in models if m.get("state") == "failed"]
    if log_state.get("state") == "failed":
        problems.append("request log failed")
    body = {
        "status": "ready" if not problems else "degraded",
        "problems": problems,
        "version": state.settings.server.version,
        "ollamux_version": _package_version(),
        "uptime_s": round(time.time() - state.started_at, 3),
        "backends": backends,
        "models": models,
        "request_log": log_state,
    }
    return json_response(body, status=200 if not problems else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    m = request.app[STATE].extras.get("metrics")
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
async def _probe_url(client: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        async with client.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as r:
            await r.read()
            # a 401/404 still proves the server is there; a 5xx (llama-server loading: 503) does not
            ok = r.status < 500
            return {"url": url, "reachable": ok, "status": r.status,
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 2)}
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        return {"url": url, "reachable": False, "error": reason}


async def probe_backends(state: AppState) -> dict[str, dict[str, Any]]:
    """Probe every configured HTTP backend's replicas concurrently; update ollamux_backend_up."""
    jobs: list[tuple[str, Any]] = []
    for name, bs in state.settings.backends.items():
        headers = dict(bs.headers)
        if bs.api_key:
            headers["Authorization"] = f"Bearer {bs.api_key}"
        path = "/models" if bs.type == "openai" else "/api/version"
        for url in bs.urls:
            jobs.append((name, _probe_url(state.client, url + path, headers)))
    results = await asyncio.gather(*(j for _, j in jobs))
    out: dict[str, dict[str, Any]] = {}
    for (name, _), res in zip(jobs, results, strict=True):
        bs = state.settings.backends[name]
        entry = out.setdefault(name, {"type": bs.type, "reachable": False, "replicas": []})
        entry["replicas"].append(res)
        entry["reachable"] = entry["reachable"] or res["reachable"]
    m: Metrics | None = state.extras.get("metrics")
    if m is not None:
        for name, entry in out.items():
            m.set_backend_up(name, entry["reachable"])
    state.extras["backend_health"] = out
    return out


async def _probe_loop(state: AppState, interval: float) -> None:
    while True:
        with contextlib.suppress(Exception):
            await probe_backends(state)
        await asyncio.sleep(interval)


def _managed_models(state: AppState) -> list[dict[str, Any]]:
    """What the managed runtime says about its models (read duck-typed: the runtime owns its shapes)."""
    rt = state.runtime
    out: list[dict[str, Any]] = []
    models = getattr(rt, "models", None) if rt is not None else None
    if isinstance(models, dict):
        for m in models.values():
            with contextlib.suppress(Exception):
                st = m.state
                proc = getattr(m, "proc", None)
                out.append({
                    "model": m.name,
                    "state": getattr(st.phase, "value", str(st.phase)),
                    "active": st.active,
                    "waiting": st.waiting,
                    "ctx": st.ctx or None,
                    "pid": getattr(proc, "pid", None),
                    "expires_at": getattr(m, "expires_at", None),
                })
    m_: Metrics | None = state.extras.get("metrics")
    known = {x["model"] for x in out}
    # states reported through Metrics.set_model_state by a runtime that has no `models` mapping
    out += [{"model": k, "state": v} for k, v in sorted((m_.model_states if m_ else {}).items()) if k not in known]
    return sorted(out, key=lambda x: str(x["model"]))


def _package_version() -> str:
    from .. import __version__

    return __version__


# ---------------------------------------------------------------------------------------- lifespan
async def start(app: web.Application, state: AppState) -> None:
    """Build this app's request log, metrics and operator lines, and hook them to every request."""
    settings = state.settings
    from ..oplog import RequestLines

    state.observers.add(RequestLines())
    if settings.request_log.enabled:
        from ..store import RequestLog

        rl = RequestLog(settings.request_log)
        await asyncio.to_thread(rl.open)  # creating or migrating the file must not stall the loop
        state.extras["request_log"] = rl
        state.observers.add(rl)
    if settings.metrics.enabled:
        m = Metrics(version=settings.server.version, started_at=state.started_at)
        m.add_collector(log_collector(lambda: state.extras.get("request_log")))

        def runtime_states() -> Any:
            # looked up at scrape time: the runtime is built after this, or not at all
            return [(x["model"], x["state"]) for x in _managed_models(state)]

        m.add_model_state_source(runtime_states)
        state.extras["metrics"] = m
        state.observers.add(m)
        interval = settings.metrics.backend_probe_interval
        if interval > 0 and settings.backends:
            state.extras["probe_task"] = asyncio.create_task(_probe_loop(state, interval))


async def stop(app: web.Application, state: AppState) -> None:
    """Stop probing and write every queued log row (requests still in flight were finished before)."""
    task: asyncio.Task[None] | None = state.extras.pop("probe_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    rl = state.extras.get("request_log")
    if rl is not None:
        await asyncio.to_thread(rl.close)
