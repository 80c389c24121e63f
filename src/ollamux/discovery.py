"""What backends can tell about their models: model lists (discovery) and metadata probes.

Discovery fills the registry's sources; probes fill `state.probed`. Both are best effort with short
timeouts: a backend that cannot answer keeps its last known list and the documented defaults.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from .backends.http import HTTPBackend
from .errors import OllamuxError
from .names import display_name
from .registry import ModelEntry, Route
from .state import AppState

__all__ = ["discover_backend", "probe", "refresh_all", "refresh_if_stale", "remote_ps", "run_refresher"]

log = logging.getLogger("ollamux.discovery")

PROBE_TIMEOUT = 3.0
RETRY_FAILED = 2.0  # seconds before a failed discovery is tried again
_LAST = "discovery_last"


def _name_from_id(model_id: str) -> str:
    name = model_id.rsplit("/", 1)[-1] if model_id.lower().endswith(".gguf") else model_id
    if name.lower().endswith(".gguf"):
        name = name[:-5]
    return display_name(name)


def openai_entries(backend: str, payload: Any) -> list[ModelEntry]:
    """Entries from an OpenAI-style GET /models answer (llama-server adds a `meta` block per model)."""
    data = payload.get("data") if isinstance(payload, dict) else None
    out: list[ModelEntry] = []
    for item in data or []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        mid = item["id"]
        meta: dict[str, Any] = {}
        m = item.get("meta")
        if isinstance(m, dict):
            if isinstance(m.get("n_params"), int):
                meta["parameter_count"] = m["n_params"]
            # the context the server runs with is what a client can use; the trained one is the fallback
            ctx = m.get("n_ctx") if isinstance(m.get("n_ctx"), int) else m.get("n_ctx_train")
            if isinstance(ctx, int):
                meta["context_length"] = ctx
            if isinstance(m.get("n_embd"), int):
                meta["embedding_length"] = m["n_embd"]
            if isinstance(m.get("size"), int):
                meta["size"] = m["size"]
        if isinstance(item.get("created"), int | float) and item["created"] > 0:
            meta["modified_at"] = float(item["created"])
        out.append(ModelEntry(name=_name_from_id(mid), backend=backend, upstream=mid, source="discovered", meta=meta))
    return out


async def discover_backend(state: AppState, backend: HTTPBackend) -> list[ModelEntry]:
    if backend.type == "ollama":
        from .api import ollama_native

        return await ollama_native.discover(state, backend)
    payload = await asyncio.wait_for(backend.get_json("/models"), timeout=10)
    return openai_entries(backend.name, payload)


async def refresh_all(state: AppState, *, force: bool = True) -> None:
    last: dict[str, float] = state.extras.setdefault(_LAST, {})
    now = time.monotonic()
    jobs: list[Any] = []
    for name, b in state.backends.items():
        bs = state.settings.backends.get(name)
        if bs is None or not bs.discover or not isinstance(b, HTTPBackend):
            continue
        if not force and now - last.get(name, -1e9) < bs.discover_interval:
            continue
        last[name] = now
        jobs.append(_refresh_one(state, b))
    if jobs:
        await asyncio.gather(*jobs)


async def _refresh_one(state: AppState, backend: HTTPBackend) -> None:
    try:
        entries = await discover_backend(state, backend)
    except (OllamuxError, TimeoutError) as exc:
        log.warning("model discovery on backend '%s' failed: %s", backend.name, getattr(exc, "message", exc))
        # a backend still starting (ollamux and llama-server launched together) is asked again soon,
        # not after a whole discover_interval with an empty model list
        bs = state.settings.backends[backend.name]
        state.extras[_LAST][backend.name] = time.monotonic() - bs.discover_interval + RETRY_FAILED
        return
    state.registry.set_source(f"backend:{backend.name}", entries)


async def refresh_if_stale(state: AppState) -> None:
    await refresh_all(state, force=False)
    if state.runtime is not None:
        state.runtime.rescan()


async def run_refresher(state: AppState) -> None:
    """Background task: keep discovered lists fresh at each backend's interval."""
    while True:
        await asyncio.sleep(5)
        try:
            await refresh_all(state, force=False)
        except Exception:  # pragma: no cover - keep the refresher alive whatever a backend does
            log.exception("model discovery failed")


def _origin(url: str) -> str:
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def probe(state: AppState, route: Route) -> Mapping[str, Any] | None:
    """llama-server's /props for context length and template; cached; None when nothing answers."""
    key = (route.backend, route.upstream)
    if key in state.probed:
        return state.probed[key]
    backend = state.backends.get(route.backend)
    if not isinstance(backend, HTTPBackend) or backend.type != "openai":
        return None
    result: dict[str, Any] = {}
    try:
        url = _origin(backend.base_url()) + "/props"
        async with state.client.get(url, timeout=_timeout()) as resp:
            if resp.status == 200 and resp.content_type == "application/json":
                props = await resp.json()
                result = props_meta(props)
    except Exception as exc:  # a probe is best effort: any failure means "no extra metadata"
        log.debug("probe of %s failed: %s", route.backend, exc)
    state.probed[key] = result
    return result


def _timeout() -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=PROBE_TIMEOUT)


def props_meta(props: Any) -> dict[str, Any]:
    """The metadata llama-server's GET /props gives: context, template, vision."""
    out: dict[str, Any] = {}
    if not isinstance(props, dict):
        return out
    dgs = props.get("default_generation_settings")
    if isinstance(dgs, dict) and isinstance(dgs.get("n_ctx"), int):
        out["context_length"] = dgs["n_ctx"]
    tmpl = props.get("chat_template")
    if isinstance(tmpl, str) and tmpl:
        out["template"] = tmpl
        caps = ["completion"]
        if "tools" in tmpl:
            caps.append("tools")
        mods = props.get("modalities")
        if isinstance(mods, dict) and mods.get("vision"):
            caps.append("vision")
        out["capabilities"] = caps
    return out


async def remote_ps(state: AppState) -> list[dict[str, Any]]:
    """Models loaded on Ollama backends, as they report them (names mapped to ours)."""
    from .api import ollama_native

    return await ollama_native.remote_ps(state)
