"""POST /api/pull: a model already served is a quick success with its real digest; a hub name
(`hf.co/{user}/{repo}[:{quant}]`) not served yet is downloaded into the models folder and served at once.

Keys: with inbound keys on, a caller may pull what its key's `models` patterns allow it to use (there is no
separate right to manage models yet).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from .. import guard
from ..catalog import meta_for
from ..errors import BadRequest, NotImplementedByProxy, OllamuxError
from ..hub import progress
from ..hub.pull import HubPull, PullPlan, plan_pull
from ..hub.ref import BadHubName, parse_hub_ref
from ..jsonutil import dumps_line, loads_object
from ..observe import RequestRecord
from ..registry import ModelEntry, Route
from ..runtime.catalogue import SOURCE
from ..state import AppState
from .common import NDJSON_CT, json_response, start_stream

__all__ = ["pull"]


async def pull(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    body = loads_object(await request.read())
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("invalid model name")  # Ollama's PullHandler (server/routes.go) says so
    stream = body.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    rec.model_requested = name
    try:
        ref = parse_hub_ref(name)
    except BadHubName as exc:
        raise BadRequest(str(exc)) from None
    entry = state.registry.find(name)
    # a wildcard route would take any name; a hub name it catches is still worth downloading
    if entry is not None and (ref is None or entry.source != "wildcard" or state.runtime is None):
        guard.authorize_model(state, rec, Route(name, entry, entry.upstream))
        rec.backend = entry.backend
        return await _answer(request, rec, await _served(state, name, entry), stream)
    if ref is None:
        raise OllamuxError(
            f"pull model manifest: file does not exist: model '{name}' is not served by ollamux, which downloads "
            "only hub models (hf.co/{user}/{repo}[:{quant}]); add it to the config file or put its GGUF file in "
            "the models folder",
            status=404,
        )
    runtime = state.runtime
    folder = runtime.settings.models_dir if runtime is not None else None
    if runtime is None or folder is None:
        raise NotImplementedByProxy(
            f"pull {name}: ollamux keeps pulled models in its models folder, and this server has none "
            "(set runtime.models_dir)"
        )
    pulled = ModelEntry(name=ref.name, backend=f"runtime:{ref.name}", upstream=ref.name, source=SOURCE)
    guard.authorize_model(state, rec, Route(name, pulled, pulled.upstream))
    plan = await asyncio.to_thread(plan_pull, ref, folder, runtime.settings.hf_endpoint)
    rec.model_served = plan.name
    job = HubPull(plan, state.client.session, runtime.catalogue)
    if not stream:
        async with contextlib.aclosing(job.events()) as events:
            async for _ in events:
                pass
        _check_served(state, plan)
        return json_response(progress.status(progress.SUCCESS))
    out = await start_stream(request, rec, NDJSON_CT)
    try:
        await out.write(dumps_line(progress.status(progress.MANIFEST)))
        async with contextlib.aclosing(job.events()) as events:
            async for obj in events:
                await out.write(dumps_line(obj))
        _check_served(state, plan)
        await out.write(dumps_line(progress.status(progress.SUCCESS)))
    except OllamuxError as exc:  # after the status line: Ollama's final error object
        rec.error = exc.message
        await out.write(dumps_line({"error": exc.message}))
    await out.write_eof()
    return out


async def _served(state: AppState, name: str, entry: ModelEntry) -> list[dict[str, Any]]:
    """A pull of a model already served: done, with the digest /api/tags shows (a GGUF file's real one)."""
    runtime = state.runtime
    if runtime is not None and runtime.manages(entry.backend):
        await runtime.catalogue.ensure_digest(entry.backend)
        entry = state.registry.find(name) or entry
    meta = meta_for(entry, state.probed.get((entry.backend, entry.upstream)), state.started_at)
    return [
        progress.status(progress.MANIFEST),
        progress.file_progress(meta.digest, entry.name, meta.size, meta.size),
        progress.status(progress.VERIFYING),
        progress.status(progress.WRITING),
        progress.status(progress.SUCCESS),
    ]


async def _answer(
    request: web.Request, rec: RequestRecord, steps: list[dict[str, Any]], stream: bool
) -> web.StreamResponse:
    if not stream:
        return json_response(steps[-1])
    out = await start_stream(request, rec, NDJSON_CT)
    await out.write(b"".join(dumps_line(s) for s in steps))
    await out.write_eof()
    return out


def _check_served(state: AppState, plan: PullPlan) -> None:
    if state.registry.find(plan.name) is None:  # pragma: no cover - the folder's naming rule serves it
        raise OllamuxError(f"pull: the files of {plan.name} are in {plan.folder}, but no model is served by that name")
