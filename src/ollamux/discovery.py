"""What backends can tell about their models: model lists (discovery), metadata probes, what is loaded.

Discovery fills the registry's sources; probes fill `state.probed`. Both are best effort with short
timeouts: a backend that cannot answer keeps its last known list and the documented defaults. How each
kind of backend answers is its own business (`Backend.discover`, `.probe`, `.running`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from .backends.base import Backend
from .errors import OllamuxError
from .names import display_name, normalize_name
from .registry import Route
from .state import AppState

__all__ = ["probe", "refresh_all", "refresh_if_stale", "remote_ps", "run_refresher"]

log = logging.getLogger("ollamux.discovery")

RETRY_FAILED = 2.0  # seconds before a failed discovery is tried again


async def refresh_all(state: AppState, *, force: bool = True) -> None:
    last = state.discovered_at
    now = time.monotonic()
    jobs: list[Any] = []
    for name, b in state.backends.items():
        bs = state.settings.backends.get(name)
        if bs is None or not bs.discover:
            continue
        if not force and now - last.get(name, -1e9) < bs.discover_interval:
            continue
        last[name] = now
        jobs.append(_refresh_one(state, b))
    if jobs:
        await asyncio.gather(*jobs)


async def _refresh_one(state: AppState, backend: Backend) -> None:
    try:
        entries = await backend.discover()
    except (OllamuxError, TimeoutError) as exc:
        log.warning("model discovery on backend '%s' failed: %s", backend.name, getattr(exc, "message", exc))
        # a backend still starting (ollamux and llama-server launched together) is asked again soon,
        # not after a whole discover_interval with an empty model list
        bs = state.settings.backends[backend.name]
        state.discovered_at[backend.name] = time.monotonic() - bs.discover_interval + RETRY_FAILED
        return
    state.registry.set_source(f"backend:{backend.name}", entries)


async def refresh_if_stale(state: AppState) -> None:
    await refresh_all(state, force=False)
    if state.runtime is not None:
        await state.runtime.rescan()


async def run_refresher(state: AppState) -> None:
    """Background task: keep discovered lists fresh at each backend's interval."""
    while True:
        await asyncio.sleep(5)
        try:
            await refresh_all(state, force=False)
        except Exception:  # pragma: no cover - keep the refresher alive whatever a backend does
            log.exception("model discovery failed")


async def probe(state: AppState, route: Route) -> Mapping[str, Any] | None:
    """What the backend can say about the model beyond its list entry; cached per (backend, upstream)."""
    key = (route.backend, route.upstream)
    if key in state.probed:
        return state.probed[key]
    backend = state.backends.get(route.backend)
    if backend is None:
        return None
    result = await backend.probe(route.upstream)
    state.probed[key] = result
    return result


async def remote_ps(state: AppState) -> list[dict[str, Any]]:
    """Models loaded on backends that report them (Ollama's /api/ps), under the names we serve them as."""
    backends = list(state.backends.values())
    results = await asyncio.gather(*(b.running() for b in backends))
    out: list[dict[str, Any]] = []
    for backend, items in zip(backends, results, strict=True):
        if not items:
            continue
        ours = {normalize_name(e.upstream): e.name for e in state.registry.entries() if e.backend == backend.name}
        for item in items:
            upstream = item.get("model") or item.get("name")
            if not isinstance(upstream, str):
                continue
            name = ours.get(normalize_name(upstream))
            if name is None:
                entry = state.registry.find(upstream)  # a wildcard route serves it under its own name
                if entry is None or entry.backend != backend.name:
                    continue  # loaded on that server, but not served through us
                name = display_name(upstream)
            out.append({**item, "name": name, "model": name})
    return out
