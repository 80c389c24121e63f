"""Backends over the admin API: each HTTP backend's replicas with their health, breaker and load.

Read from what already exists: the shared prober's last results (`HealthMonitor.snapshot`, probing only
what is older than a few seconds, as readiness does), each replica's failover state (`Replica`), and the
guard's concurrency gates. Every URL and error is masked (`backends.redact`) before it leaves.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from aiohttp import web

from ..backends.http import HTTPBackend, Replica
from ..backends.redact import mask_url
from ..guard.ratelimit import Gate
from ..state import AppState
from .admin_common import json_ok

__all__ = ["backends", "breaker_state"]


def breaker_state(replica: Replica, now: float) -> str:
    """closed (in rotation, or only ejected for a while), open (tripped, cooling down), half-open (one
    probe request may go through)."""
    if not replica.tripped:
        return "closed"
    return "open" if replica.down_until > now else "half-open"


def _gate(gate: Gate | None) -> dict[str, int] | None:
    if gate is None:
        return None
    return {"max": gate.max, "active": gate.active, "waiting": gate.waiting}


async def backends(request: web.Request, state: AppState) -> web.StreamResponse:
    probed = await state.health.snapshot() if state.health is not None else {}
    per_backend = Counter(e.backend for e in state.registry.entries())
    gates = state.guard.backend_gates if state.guard is not None else {}
    now = time.monotonic()
    out: list[dict[str, Any]] = []
    for name, b in state.backends.items():
        if not isinstance(b, HTTPBackend):
            continue  # a managed model's process: the models page shows it
        results = probed.get(name, {}).get("replicas", [])
        replicas = []
        for i, r in enumerate(b.replicas):
            res = results[i] if i < len(results) else None
            replicas.append(
                {
                    "url": mask_url(b.redact.text(r.url)),
                    "up": bool(res["reachable"]) if res is not None else None,
                    "breaker": breaker_state(r, now),
                    "last_error": mask_url(b.redact.text(r.last_error)) if r.last_error else None,
                    "in_flight": r.in_flight,
                    "failures": r.failures,
                    "ejected": r.down_until > now and not r.tripped,
                    "latency_ms": res.get("latency_ms") if res is not None else None,
                }
            )
        out.append(
            {
                "name": name,
                "type": b.type,
                "models": per_backend.get(name, 0),
                "concurrency": _gate(gates.get(name)),
                "replicas": replicas,
            }
        )
    return json_ok({"backends": out})
