"""One prober for every HTTP backend's replicas: active health checks, `ollamux_backend_up`, readiness.

Each backend is probed at one interval: its `health_interval` when set (then a failed check takes the
replica out of rotation until a later check passes, and a passing check closes a tripped breaker), else
the metrics' `backend_probe_interval` (then the result is only reported). Readiness reads the last
results and probes only what is older than a few seconds, so health requests never fan out upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from .http import HTTPBackend, Replica

__all__ = ["HealthMonitor"]

log = logging.getLogger("ollamux.failover")

FRESH = 5.0  # seconds a probe result answers readiness before the backend is probed again


class HealthMonitor:
    def __init__(
        self,
        backends: Mapping[str, HTTPBackend],
        *,
        report_interval: float = 0.0,
        on_result: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.backends = dict(backends)
        self.report_interval = report_interval
        self.on_result = on_result
        self.results: dict[str, dict[str, Any]] = {}
        self._checked: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def interval(self, backend: HTTPBackend) -> float:
        return backend.resilience.health_interval or self.report_interval

    def start(self) -> None:
        for b in self.backends.values():
            if self.interval(b) > 0:
                self._tasks.append(asyncio.create_task(self._run(b), name=f"ollamux-health-{b.name}"))

    async def stop(self) -> None:
        for t in [*self._tasks, *self._inflight.values()]:
            t.cancel()
        for t in [*self._tasks, *self._inflight.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    async def _run(self, backend: HTTPBackend) -> None:
        interval = self.interval(backend)
        while True:
            try:
                await self.check(backend)
            except Exception:  # pragma: no cover - a bug here must not stop the checks for good
                log.exception("health check of backend %s failed", backend.name)
            await asyncio.sleep(interval)

    async def snapshot(self, max_age: float = FRESH) -> dict[str, dict[str, Any]]:
        """Every backend's last result, probing (once, however many callers ask) those older than max_age."""
        now = time.monotonic()
        stale = [b for name, b in self.backends.items() if now - self._checked.get(name, -1e9) > max_age]
        if stale:
            await asyncio.gather(*(self.check(b) for b in stale))
        return {name: self.results[name] for name in self.backends if name in self.results}

    def check(self, backend: HTTPBackend) -> asyncio.Task[dict[str, Any]]:
        """Probe every replica of `backend` now; concurrent callers share one probe."""
        task = self._inflight.get(backend.name)
        if task is None:
            task = asyncio.ensure_future(self._check(backend))
            self._inflight[backend.name] = task
            task.add_done_callback(lambda _: self._inflight.pop(backend.name, None))
        return task

    async def _check(self, backend: HTTPBackend) -> dict[str, Any]:
        replicas = await asyncio.gather(*(self._check_replica(backend, r) for r in backend.replicas))
        reachable = any(r["reachable"] for r in replicas)
        result = {"type": backend.api, "reachable": reachable, "replicas": replicas}
        self.results[backend.name] = result
        self._checked[backend.name] = time.monotonic()
        if self.on_result is not None:
            self.on_result(backend.name, reachable)
        return result

    async def _check_replica(self, backend: HTTPBackend, replica: Replica) -> dict[str, Any]:
        res = backend.resilience
        url = replica.url + backend.health_path
        t0 = time.perf_counter()
        out: dict[str, Any]
        try:
            async with backend.client.session.get(
                url, headers=backend.auth_headers, timeout=aiohttp.ClientTimeout(total=res.health_timeout)
            ) as resp:
                await resp.read()
                # a 401/404 still proves the server is there; a 5xx (llama-server loading: 503) does not
                out = {
                    "url": url,
                    "reachable": resp.status < 500,
                    "status": resp.status,
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
                }
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
            out = {"url": url, "reachable": False, "error": backend.redact.text(reason)}
        if res.health_interval > 0:
            self._apply(backend, replica, out)
        return out

    def _apply(self, backend: HTTPBackend, replica: Replica, out: dict[str, Any]) -> None:
        """Active health checking: out of rotation on a failed check, back (breaker closed) on a passing one."""
        res = backend.resilience
        if out["reachable"]:
            if not replica.healthy:
                log.warning("replica %s of backend %s is healthy again", replica.url, backend.name)
                replica.succeeded()
            return
        error = f"health check {replica.url + backend.health_path} " + (
            f"answered HTTP {out['status']}" if "status" in out else f"failed: {out['error']}"
        )
        if replica.healthy:
            log.warning("replica %s of backend %s taken out: %s", replica.url, backend.name, error)
        replica.last_error = error
        # out until a check passes; if the checks stop, the replica comes back on its own
        replica.down_until = max(replica.down_until, time.monotonic() + res.health_interval * 1.5)
