"""Ollama servers as backends: the native API relayed as is (model names mapped), discovery and ps.

Ollama clients in front of an Ollama backend get the backend's own bytes: the request goes on with only
`model` swapped for the upstream name, and every answer line comes back with the client's name in it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from ..backends.failover import open_upstream
from ..backends.http import HTTPBackend
from ..errors import OllamuxError
from ..jsonutil import dumps_line
from ..names import display_name, normalize_name
from ..observe import RequestRecord
from ..registry import ModelEntry, Route
from ..state import AppState
from ..translate.passthrough import ModelLineRewriter, replace_model_in_body
from .common import JSON_CT, NDJSON_CT, REQUEST_ID, client_auth, identity_headers

__all__ = ["discover", "relay", "remote_ps", "tags_entries"]

log = logging.getLogger("ollamux.ollama_native")

DISCOVER_TIMEOUT = 10.0
PS_TIMEOUT = 3.0

_PROMPT_COUNT = re.compile(rb'"prompt_eval_count"\s*:\s*(\d+)')
_EVAL_COUNT = re.compile(rb'"eval_count"\s*:\s*(\d+)')


def _record_counts(rec: RequestRecord, data: bytes) -> None:
    prompt = _PROMPT_COUNT.findall(data)
    if prompt:
        rec.prompt_tokens = int(prompt[-1])
    evals = _EVAL_COUNT.findall(data)
    if evals:
        rec.completion_tokens = int(evals[-1])


async def relay(
    request: web.Request,
    state: AppState,
    rec: RequestRecord,
    route: Route,
    body: dict[str, Any],
    raw: bytes | None,
    path: str,
    stream: bool,
) -> web.StreamResponse:
    """POST `path` on the Ollama backend with the client's request; its answer back, unbuffered."""

    def data(r: Route, _: HTTPBackend) -> bytes:  # rebuilt for a fallback: its own upstream model name
        if raw is None or "model" not in body:
            # /api/show may name the model with the deprecated `name` key; the backend gets `model`
            payload = {k: v for k, v in body.items() if k != "name" or "model" in body}
            payload["model"] = r.upstream
            return orjson.dumps(payload)
        return replace_model_in_body(raw, body, r.upstream)

    # retries, replicas and fallbacks happen in there, before the first byte
    async with open_upstream(
        state, route, path, data, rec=rec, read_body=not stream, headers=identity_headers(request, rec),
        client_auth=client_auth(request, state),
    ) as opened:
        resp, served = opened.response, opened.route
        rewriter = ModelLineRewriter(served.upstream, route.requested) if served.upstream != route.requested else None
        content_type = resp.headers.get("Content-Type", "")
        if not stream or "ndjson" not in content_type:
            answer = await resp.read()
            rec.first_token_ns = time.perf_counter_ns()
            if rewriter is not None:
                answer = rewriter.feed(answer) + rewriter.flush()
            _record_counts(rec, answer[-2048:])
            headers = {"Content-Type": content_type or JSON_CT, REQUEST_ID: rec.id}
            return web.Response(body=answer, status=resp.status, headers=headers)
        out = web.StreamResponse(
            status=200,
            headers={"Content-Type": content_type or NDJSON_CT, "Cache-Control": "no-cache",
                     "X-Accel-Buffering": "no", REQUEST_ID: rec.id},
        )
        rec.streamed = True
        rec.status = 200
        await out.prepare(request)
        last = b""
        try:
            async for chunk in resp.iter_chunks():
                if rec.first_token_ns is None:
                    rec.first_token_ns = time.perf_counter_ns()
                if rewriter is not None:
                    chunk = rewriter.feed(chunk)
                    if not chunk:
                        continue
                await out.write(chunk)
                last = chunk
            if rewriter is not None:
                rest = rewriter.flush()
                if rest:
                    await out.write(rest)
                    last = rest
        except OllamuxError as exc:
            # after the first byte an error is one more NDJSON line; the status stays 200
            rec.error = exc.message
            rec.status = exc.status
            await out.write(dumps_line({"error": exc.message}))
        finally:
            resp.release()  # a client gone cancels the upstream request now
        _record_counts(rec, last[-2048:])  # the final (done) line carries the counts
        await out.write_eof()
        return out


# ------------------------------------------------------------------------------------- discovery
def _epoch(value: Any) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        # Go writes nanoseconds; Python before 3.12 reads at most microseconds reliably
        text = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def tags_entries(backend: str, payload: Any) -> list[ModelEntry]:
    """Entries from an Ollama `GET /api/tags` answer, with its metadata (details, size, digest, date)."""
    models = payload.get("models") if isinstance(payload, dict) else None
    out: list[ModelEntry] = []
    for item in models or []:
        if not isinstance(item, dict):
            continue
        name = item.get("model") or item.get("name")
        if not isinstance(name, str) or not name:
            continue
        meta: dict[str, Any] = {}
        details = item.get("details")
        if isinstance(details, dict):
            meta["details"] = details
            for key in ("family", "parameter_size", "quantization_level", "format"):
                if isinstance(details.get(key), str) and details[key]:
                    meta[key] = details[key]
        if isinstance(item.get("size"), int):
            meta["size"] = item["size"]
        if isinstance(item.get("digest"), str):
            meta["digest"] = item["digest"].removeprefix("sha256:")
        modified = _epoch(item.get("modified_at"))
        if modified:
            meta["modified_at"] = modified
        caps = item.get("capabilities")
        if isinstance(caps, list) and all(isinstance(c, str) for c in caps):
            meta["capabilities"] = tuple(caps)
        out.append(ModelEntry(name=display_name(name), backend=backend, upstream=name, source="discovered", meta=meta))
    return out


async def discover(state: AppState, backend: HTTPBackend) -> list[ModelEntry]:
    payload = await asyncio.wait_for(backend.get_json("/api/tags"), timeout=DISCOVER_TIMEOUT)
    return tags_entries(backend.name, payload)


# ------------------------------------------------------------------------------------------- ps
async def _ps_one(state: AppState, backend: HTTPBackend) -> list[dict[str, Any]]:
    try:
        payload = await asyncio.wait_for(backend.get_json("/api/ps"), timeout=PS_TIMEOUT)
    except (OllamuxError, TimeoutError) as exc:
        log.debug("ps of backend '%s' failed: %s", backend.name, getattr(exc, "message", exc))
        return []
    ours = {normalize_name(e.upstream): e.name for e in state.registry.entries() if e.backend == backend.name}
    out: list[dict[str, Any]] = []
    for item in (payload.get("models") if isinstance(payload, dict) else None) or []:
        if not isinstance(item, dict):
            continue
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


async def remote_ps(state: AppState) -> list[dict[str, Any]]:
    """Models loaded on the Ollama backends, as they report them, under the names we serve them as."""
    backends = [b for b in state.backends.values() if isinstance(b, HTTPBackend) and b.type == "ollama"]
    if not backends:
        return []
    results = await asyncio.gather(*(_ps_one(state, b) for b in backends))
    return [item for items in results for item in items]
