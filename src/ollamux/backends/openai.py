"""OpenAI-compatible servers (llama.cpp's llama-server, vLLM, OpenAI): they speak the pivot itself.

What is specific to them: `GET /models` for discovery (llama-server adds a `meta` block per model) and
llama-server's `GET /props` for a model's context, template and capabilities.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from ..names import display_name
from ..registry import ModelEntry
from .http import HTTPBackend
from .plan import Api

__all__ = ["OpenAIBackend", "openai_entries", "props_meta"]

log = logging.getLogger("ollamux.backends")

DISCOVER_TIMEOUT = 10.0
PROBE_TIMEOUT = 3.0


class OpenAIBackend(HTTPBackend):
    """The pivot is its own wire format (`HTTPBackend.pivot_plan`: nothing to translate either way)."""

    api: Api = "openai"

    async def discover(self) -> list[ModelEntry]:
        payload = await self.listing("/models", DISCOVER_TIMEOUT)
        return openai_entries(self.name, payload)

    async def probe(self, upstream: str) -> Mapping[str, Any]:
        """llama-server's /props (context length, template, vision); {} from servers without it."""
        url = _origin(self.base_url()) + "/props"
        try:
            async with self.client.session.get(
                url, headers=self.auth_headers, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
            ) as resp:
                if resp.status == 200 and resp.content_type == "application/json":
                    return props_meta(await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # best effort: no extra metadata
            log.debug("probe of %s failed: %s", url, exc)
        return {}


def _origin(url: str) -> str:
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _name_from_id(model_id: str) -> str:
    name = model_id.rsplit("/", 1)[-1] if model_id.lower().endswith(".gguf") else model_id
    if name.lower().endswith(".gguf"):
        name = name[:-5]
    return display_name(name)


def openai_entries(backend: str, payload: Any) -> list[ModelEntry]:
    """Entries from an OpenAI-style GET /models answer (llama-server adds a `meta` block per model)."""
    data = payload.get("data") if isinstance(payload, dict) else None
    out: list[ModelEntry] = []
    for item in data if isinstance(data, list) else []:
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
