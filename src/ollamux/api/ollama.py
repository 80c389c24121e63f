"""The Ollama API: thin handlers that parse, resolve, make the backend ready, call it, translate, stream."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .. import discovery, guard
from ..backends.failover import PayloadFactory, open_upstream
from ..backends.http import HTTPBackend
from ..catalog import meta_for, ps_item, show_body, tag_item
from ..errors import BadRequest, ModelNotFound, NotImplementedByProxy, OllamuxError
from ..jsonutil import dumps_line, loads_object, now_rfc3339
from ..observe import RequestRecord
from ..registry import Route
from ..state import SETTINGS, AppState
from ..streams.codecs import SSEDecoder
from ..streams.openai_to_ollama import Kind, OpenAIToOllamaStream
from ..translate import from_openai, to_openai
from ..translate.from_openai import Timing
from .common import NDJSON_CT, client_auth, endpoint, json_response, resolve_model, start_stream, upstream_headers

__all__ = ["add_routes"]


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", True)  # Ollama streams unless told otherwise (pitfall 1)
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    return stream


def _begin(state: AppState, rec: RequestRecord, body: dict[str, Any]) -> Route:
    model = body.get("model")
    if model is None and isinstance(body.get("name"), str):
        model = body["name"]  # the deprecated key some clients still send
    if model is not None and not isinstance(model, str):
        raise BadRequest("model must be a string")
    return resolve_model(state, rec, model)


def _hints(body: dict[str, Any]) -> dict[str, Any]:
    """What a managed backend needs to know to be ready: keep_alive and a larger context if asked."""
    opts = body.get("options")
    num_ctx = opts.get("num_ctx") if isinstance(opts, dict) else None
    if num_ctx is not None and (isinstance(num_ctx, bool) or not isinstance(num_ctx, int)):
        raise BadRequest("option 'num_ctx' must be an integer")
    return {"keep_alive": to_openai.parse_keep_alive(body.get("keep_alive")), "num_ctx": num_ctx}


async def _load_or_unload(
    state: AppState, route: Route, body: dict[str, Any], *, chat: bool
) -> dict[str, Any]:
    """Empty messages/prompt: load (or, with keep_alive 0, unload) without calling the backend."""
    hints = _hints(body)
    unload = hints["keep_alive"] == 0
    runtime = state.runtime
    if runtime is not None and runtime.manages(route.backend):
        if unload:
            await runtime.unload(route.backend)
        else:
            await runtime.load(route.backend, **hints)
    out: dict[str, Any] = {"model": route.requested, "created_at": now_rfc3339()}
    if chat:
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out["done"] = True
    out["done_reason"] = "unload" if unload else "load"
    return out


# ------------------------------------------------------------------------------------------- chat
async def chat(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("model is required")
    body = loads_object(raw)
    route = _begin(state, rec, body)
    stream = _stream_flag(body)
    messages = body.get("messages")
    if not messages:
        if messages is not None and not isinstance(messages, list):
            raise BadRequest("messages must be a list")
        return json_response(await _load_or_unload(state, route, body, chat=True))
    backend = state.backend_for(route)
    if backend.type == "ollama":
        from . import ollama_native

        return await ollama_native.relay(request, state, rec, route, body, raw, "/api/chat", stream)
    timing = Timing(start_ns=rec.start_ns)

    def payload(r: Route, up: HTTPBackend) -> dict[str, Any]:  # rebuilt for a fallback's model and dialect
        return to_openai.chat_request(body, r.upstream, stream=stream, dialect=up.settings.dialect)

    return await _call_openai(
        request, state, rec, _hints(body), route, "/chat/completions", payload, "chat", stream, timing,
        body.get("think"),
    )


# --------------------------------------------------------------------------------------- generate
async def generate(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    raw = await request.read()
    body = loads_object(raw) if raw.strip() else {}
    if not body.get("model") and not state.settings.default_model:
        raise ModelNotFound(str(body.get("model") or ""))
    route = _begin(state, rec, body)
    stream = _stream_flag(body)
    is_raw = body.get("raw") is True
    if is_raw and (body.get("template") or body.get("system") or body.get("context")):
        raise BadRequest("raw mode does not support template, system, or context")
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if not prompt and not body.get("images"):
        return json_response(await _load_or_unload(state, route, body, chat=False))
    backend = state.backend_for(route)
    if backend.type == "ollama":
        from . import ollama_native

        return await ollama_native.relay(request, state, rec, route, body, raw, "/api/generate", stream)
    timing = Timing(start_ns=rec.start_ns)
    suffix = body.get("suffix")
    use_completions = is_raw or (isinstance(suffix, str) and bool(suffix))
    build = to_openai.completion_request if use_completions else to_openai.generate_as_chat_request
    path, kind = ("/completions", "raw") if use_completions else ("/chat/completions", "generate")

    def payload(r: Route, up: HTTPBackend) -> dict[str, Any]:
        return build(body, r.upstream, stream=stream, dialect=up.settings.dialect)

    return await _call_openai(
        request, state, rec, _hints(body), route, path, payload, kind, stream, timing, body.get("think")  # type: ignore[arg-type]
    )


async def _call_openai(
    request: web.Request,
    state: AppState,
    rec: RequestRecord,
    hints: dict[str, Any],
    route: Route,
    path: str,
    payload: PayloadFactory,
    kind: Kind,
    stream: bool,
    timing: Timing,
    think: Any,
) -> web.StreamResponse:
    # retries, replicas and fallbacks happen in there, before the first byte; `route` is what answered
    async with open_upstream(
        state, route, path, payload, rec=rec, hints=hints, read_body=not stream,
        headers=upstream_headers(request, rec), client_auth=client_auth(request, state),
    ) as opened:
        timing.load_ns = opened.load_ns
        return await _answer(request, rec, opened.response, opened.route, kind, stream, timing, think)


async def _answer(
    request: web.Request, rec: RequestRecord, resp: Any, route: Route, kind: Kind, stream: bool, timing: Timing,
    think: Any,
) -> web.StreamResponse:
    if not stream:
        data = await resp.json()
        end = time.perf_counter_ns()
        if kind == "chat":
            out = from_openai.chat_response(data, route.requested, timing, end, think=think)
            rec.response_text = out["message"].get("content")
        else:
            out = from_openai.generate_response(data, route.requested, timing, end, raw=kind == "raw", think=think)
            rec.response_text = out.get("response")
        rec.prompt_tokens = out.get("prompt_eval_count")
        rec.completion_tokens = out.get("eval_count")
        rec.first_token_ns = end
        return json_response(out)
    translator = OpenAIToOllamaStream(route.requested, kind, timing, think=think)
    return await relay_sse_as_ndjson(request, rec, resp, translator)


async def relay_sse_as_ndjson(
    request: web.Request, rec: RequestRecord, resp: Any, translator: OpenAIToOllamaStream
) -> web.StreamResponse:
    """Upstream SSE in, Ollama NDJSON out, one write per upstream read (no buffering)."""
    out = await start_stream(request, rec, NDJSON_CT)
    decoder = SSEDecoder()
    lines: list[bytes] = []
    try:
        try:
            async for chunk in resp.iter_chunks():
                translator.feed_batch(decoder.payloads(chunk), lines)
                if lines:
                    await out.write(b"".join(lines) if len(lines) > 1 else lines[0])
                    lines.clear()
            translator.feed_batch([ev.data for ev in decoder.flush()], lines)
            lines.extend(translator.finish())
        except OllamuxError as exc:
            # after the first byte an error is one more NDJSON line; the status stays 200
            rec.error = exc.message
            rec.status = exc.status
            lines.append(dumps_line({"error": exc.message}))
        await out.write(b"".join(lines))
    finally:
        resp.release()
        rec.first_token_ns = translator.timing.first_token_ns
        usage = translator.usage if isinstance(translator.usage, dict) else {}
        rec.prompt_tokens = usage.get("prompt_tokens", rec.prompt_tokens)
        rec.completion_tokens = usage.get("completion_tokens", rec.completion_tokens)
        rec.response_text = "".join(translator.text_parts)
    await out.write_eof()
    return out


# ------------------------------------------------------------------------------------- embeddings
async def embed(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    body = loads_object(await request.read())
    route = _begin(state, rec, body)
    inputs = to_openai.embed_inputs(body.get("input"))
    dims = body.get("dimensions")
    if not inputs:
        await _load_or_unload(state, route, body, chat=False)
        return json_response({"model": route.requested, "embeddings": []})
    backend = state.backend_for(route)
    timing = Timing(start_ns=rec.start_ns)
    if backend.type == "ollama":
        from . import ollama_native

        return await ollama_native.relay(request, state, rec, route, body, None, "/api/embed", False)
    async with open_upstream(
        state, route, "/embeddings", lambda r, _: {"model": r.upstream, "input": inputs}, rec=rec,
        hints=_hints(body), read_body=True, headers=upstream_headers(request, rec),
    ) as opened:
        timing.load_ns = opened.load_ns
        vectors, tokens = from_openai.embed_vectors(await opened.response.json(), len(inputs))
    vectors = [from_openai.l2_normalize(from_openai.truncate_dimensions(v, dims)) for v in vectors]
    rec.prompt_tokens = tokens
    end = time.perf_counter_ns()
    return json_response(
        {
            "model": route.requested,
            "embeddings": vectors,
            "total_duration": end - rec.start_ns,
            "load_duration": timing.load_ns,
            "prompt_eval_count": tokens,
        }
    )


async def embeddings_legacy(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    body = loads_object(await request.read())
    route = _begin(state, rec, body)
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if not prompt:
        await _load_or_unload(state, route, body, chat=False)
        return json_response({"embedding": []})
    backend = state.backend_for(route)
    if backend.type == "ollama":
        from . import ollama_native

        return await ollama_native.relay(request, state, rec, route, body, None, "/api/embeddings", False)
    async with open_upstream(
        state, route, "/embeddings", lambda r, _: {"model": r.upstream, "input": [prompt]}, rec=rec,
        hints=_hints(body), read_body=True, headers=upstream_headers(request, rec),
    ) as opened:
        vectors, tokens = from_openai.embed_vectors(await opened.response.json(), 1)
    rec.prompt_tokens = tokens
    return json_response({"embedding": vectors[0]})  # the legacy route is not normalised


# --------------------------------------------------------------------------------------- catalogue
async def tags(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    await discovery.refresh_if_stale(state)
    items = []
    for entry in guard.visible_entries(state, rec):
        meta = meta_for(entry, state.probed.get((entry.backend, entry.upstream)), state.started_at)
        items.append(tag_item(entry, meta))
    items.sort(key=lambda m: m["modified_at"], reverse=True)
    return json_response({"models": items})


async def show(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    body = loads_object(await request.read())
    name = body.get("model") or body.get("name")
    if not name:
        raise BadRequest("model is required")
    route = _begin(state, rec, body)
    backend = state.backend_for(route)
    if backend.type == "ollama":
        from . import ollama_native

        return await ollama_native.relay(request, state, rec, route, body, None, "/api/show", False)
    probed = await discovery.probe(state, route)
    meta = meta_for(route.entry, probed, state.started_at)
    ua = request.headers.get("User-Agent", "")
    return json_response(show_body(route.entry, meta, requested=route.requested, user_agent=ua))


async def ps(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    items: list[dict[str, Any]] = []
    if state.runtime is not None:
        for running in state.runtime.running():
            entry = running.entry
            meta = meta_for(entry, state.probed.get((entry.backend, entry.upstream)), state.started_at)
            items.append(
                ps_item(entry, meta, expires_at=running.expires_at, context_length=running.ctx, size=running.size)
            )
    items.extend(await discovery.remote_ps(state))
    items.sort(key=lambda m: m["expires_at"], reverse=True)
    return json_response({"models": items})


async def pull(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    body = loads_object(await request.read())
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required")
    rec.model_requested = name
    entry = state.registry.find(name)
    if entry is not None:
        guard.authorize_model(state, rec, Route(name, entry, entry.upstream))
    if entry is None:
        raise OllamuxError(
            f"pull model manifest: model '{name}' is not served by ollamux; ollamux does not download models, "
            "add it to the config file (or put its GGUF file in the models folder)",
            status=404,
        )
    meta = meta_for(entry, None, state.started_at)
    steps = [
        {"status": "pulling manifest"},
        {"status": f"pulling {meta.digest[:12]}", "digest": f"sha256:{meta.digest}", "total": meta.size,
         "completed": meta.size},
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    if body.get("stream") is False:
        return json_response(steps[-1])
    out = await start_stream(request, rec, NDJSON_CT)
    await out.write(b"".join(dumps_line(s) for s in steps))
    await out.write_eof()
    return out


def _unmanaged(what: str) -> Any:
    async def handler(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
        raise NotImplementedByProxy(
            f"ollamux does not manage model files, so {request.method} {request.path} ({what}) is not supported; "
            "models come from the config file and the models folder"
        )

    return handler


async def root(request: web.Request) -> web.StreamResponse:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.StreamResponse:
    return json_response({"version": request.app[SETTINGS].server.version})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", root)  # add_get answers HEAD too
    r.add_get("/api/version", version)
    r.add_post("/api/chat", endpoint("ollama", chat))
    r.add_post("/api/generate", endpoint("ollama", generate))
    r.add_post("/api/embed", endpoint("ollama", embed))
    r.add_post("/api/embeddings", endpoint("ollama", embeddings_legacy))
    r.add_get("/api/tags", endpoint("ollama", tags))
    r.add_post("/api/show", endpoint("ollama", show))
    r.add_get("/api/ps", endpoint("ollama", ps))
    r.add_post("/api/pull", endpoint("ollama", pull))
    r.add_post("/api/push", endpoint("ollama", _unmanaged("push")))
    r.add_post("/api/create", endpoint("ollama", _unmanaged("create")))
    r.add_post("/api/copy", endpoint("ollama", _unmanaged("copy")))
    r.add_delete("/api/delete", endpoint("ollama", _unmanaged("delete")))
    r.add_route("POST", "/api/blobs/{digest}", endpoint("ollama", _unmanaged("blobs")))
    r.add_route("HEAD", "/api/blobs/{digest}", endpoint("ollama", _unmanaged("blobs")))
