"""The Ollama API: thin handlers that parse, resolve, make the backend ready, call it, translate, stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import discovery, guard
from ..backends.base import Answer, PivotKind
from ..backends.failover import Opened, open_upstream
from ..backends.http import HTTPBackend
from ..catalog import meta_for, ps_item, show_body, tag_item
from ..errors import BadRequest, ModelNotFound, NotImplementedByProxy
from ..jsonutil import loads_object, now_rfc3339, rfc3339
from ..observe import RequestRecord
from ..pipeline import capabilities, embed_fit, gen_tokens, relay_json
from ..pipeline.params import params_for
from ..pipeline.pivot import serve_via_pivot
from ..pipeline.upstream import client_auth, identity_headers
from ..registry import ModelEntry, Route
from ..runtime.gguf_meta import read_show
from ..state import SETTINGS, AppState
from ..streams.openai_to_ollama import Kind, OpenAIToOllamaStream
from ..streams.translator import StreamTranslator
from ..translate import from_openai, gen_context, go_template, to_openai
from ..translate.from_openai import Timing
from ..translate.logprobs import requested_logprobs
from . import ollama_models, ollama_native, pull
from .common import endpoint, json_response, resolve_model, upstream_headers

__all__ = ["add_routes"]

COPILOT = "GitHubCopilotChat/"  # the User-Agent prefix Ollama's ShowHandler answers with the asked name


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


def _hints(body: dict[str, Any]) -> tuple[float | None, int | None]:
    """What a managed backend needs to know to be ready: keep_alive and a larger context if asked."""
    opts = body.get("options")
    num_ctx = opts.get("num_ctx") if isinstance(opts, dict) else None
    if num_ctx is not None and (isinstance(num_ctx, bool) or not isinstance(num_ctx, int)):
        raise BadRequest("option 'num_ctx' must be an integer")
    return to_openai.parse_keep_alive(body.get("keep_alive")), num_ctx


async def _load_or_unload(state: AppState, route: Route, body: dict[str, Any], *, chat: bool) -> dict[str, Any]:
    """Empty messages/prompt: load (or, with keep_alive 0, unload) without calling the backend."""
    keep_alive, num_ctx = _hints(body)
    unload = keep_alive == 0
    runtime = state.runtime
    if runtime is not None and runtime.manages(route.backend):
        if unload:
            await runtime.unload(route.backend)
        else:
            await runtime.load(route.backend, keep_alive=keep_alive, num_ctx=num_ctx)
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
    """Ollama's ChatHandler (server/routes.go) in its order: an empty body is 400 "missing request body",
    then `top_logprobs` is checked, then the model, then what the model can do (`pipeline.capabilities`)."""
    raw = await request.read()
    body = loads_object(raw)
    requested_logprobs(body)
    route = _begin(state, rec, body)
    stream = _stream_flag(body)
    messages = body.get("messages")
    native = state.backend_for(route).speaks("ollama")
    if not native:  # an Ollama server checks for itself
        capabilities.require(state, route, body, chat=True)
        capabilities.default_think(state, route, body)
    if not messages:
        if messages is not None and not isinstance(messages, list):
            raise BadRequest("messages must be a list")
        return json_response(await _load_or_unload(state, route, body, chat=True))
    if native:
        return await ollama_native.relay(request, state, rec, route, body, raw, "/api/chat", stream)

    def pivot(r: Route, up: HTTPBackend, stream: bool) -> dict[str, Any]:  # per fallback: its model, dialect
        return to_openai.chat_request(body, r.upstream, stream=stream, dialect=up.settings.dialect)

    return await _via_pivot(request, state, rec, body, route, "chat", pivot, "chat", stream)


# --------------------------------------------------------------------------------------- generate
async def generate(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    """Ollama's GenerateHandler (server/routes.go) in its order: an empty body is 400 "missing request
    body", then `top_logprobs`, then the model (none named: 404 "model '' not found"), raw mode, then what
    the model can do (`pipeline.capabilities`)."""
    raw = await request.read()
    body = loads_object(raw)
    requested_logprobs(body)
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
    native = state.backend_for(route).speaks("ollama")
    if not native:
        capabilities.require(state, route, body, chat=False)
        capabilities.default_think(state, route, body)
    if not prompt and not body.get("images"):
        return json_response(await _load_or_unload(state, route, body, chat=False))
    if native:
        return await ollama_native.relay(request, state, rec, route, body, raw, "/api/generate", stream)
    template = body.get("template")
    if isinstance(template, str) and template:
        body = _with_template(state, route, body, template)
        is_raw = True
    suffix = body.get("suffix")
    use_completions = is_raw or (isinstance(suffix, str) and bool(suffix))
    build = to_openai.completion_request if use_completions else to_openai.generate_as_chat_request
    pivot_kind: PivotKind = "completion" if use_completions else "chat"
    kind: Kind = "raw" if use_completions else "generate"
    if use_completions and body.get("context"):
        raise BadRequest("ollamux does not support context with template or suffix")
    headers, auth = identity_headers(request, rec), client_auth(request, state)
    tokens = None if use_completions else gen_context.token_ids(body.get("context"))
    context: gen_tokens.GenContext | None = None
    if tokens is not None:  # the model's own token ids: their text before the rendered prompt, as Ollama
        prompt = await gen_tokens.prefixed_prompt(
            state, rec, route, body, tokens, headers=headers, client_auth=auth, num_ctx=_hints(body)[1]
        )
        context = gen_tokens.GenContext(state, [], headers, auth, prompt=prompt)  # tokenizing it is then a must
        body = {k: v for k, v in body.items() if k not in ("context", "system")} | {"prompt": prompt, "raw": True}
        build, pivot_kind, kind = to_openai.completion_request, "completion", "raw"
        use_completions = True
    prior = [] if use_completions else gen_context.decode(body.get("context"))

    def pivot(r: Route, up: HTTPBackend, stream: bool) -> dict[str, Any]:
        out = build(body, r.upstream, stream=stream, dialect=up.settings.dialect)
        if prior:
            out["messages"] = gen_context.merge(prior, out["messages"])
        return out

    if context is None and not use_completions:
        context = gen_tokens.GenContext(state, _history(body, prior), headers, auth)
    return await _via_pivot(request, state, rec, body, route, pivot_kind, pivot, kind, stream, context)


def _history(body: dict[str, Any], prior: list[dict[str, str]]) -> list[dict[str, str]]:
    """The exchange up to this request's prompt, as messages (`translate.gen_context`'s fallback context)."""
    system = body.get("system")
    asked = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    return gen_context.merge(prior, [*asked, {"role": "user", "content": str(body.get("prompt") or "")}])


def _with_template(state: AppState, route: Route, body: dict[str, Any], template: str) -> dict[str, Any]:
    """Ollama's GenerateHandler (server/routes.go) with `template`: the request's template replaces the
    model's, rendered with the prompt and system (the request's, else the model's), and the result is the
    model's whole prompt, sent as a raw completion (`translate.go_template`; what it cannot render is a 400
    that names the construct)."""
    system = body.get("system")
    if not isinstance(system, str) or not system:
        system = params_for(state, route).defaults.system or ""
    try:
        prompt = go_template.render_generate(template, prompt=str(body.get("prompt") or ""), system=system)
    except go_template.TemplateError as exc:
        raise BadRequest(str(exc)) from None
    out = {k: v for k, v in body.items() if k not in ("template", "system")}
    out["prompt"], out["raw"] = prompt, True
    return out


# the pivot for a route on a backend, asked for as a stream or not (a fallback has its own model, dialect)
PivotFactory = Callable[[Route, HTTPBackend, bool], dict[str, Any]]


@dataclass(slots=True)
class _OllamaFront:
    """An Ollama chat or generate request on a backend that does not speak Ollama, through the pivot.

    Durations (Ollama measures its own: server/routes.go, api/types.go `Metrics`): llama.cpp's server
    reports `timings` in every answer, so on a backend of its dialect (the default, and every model the
    built-in engine runs) a whole answer is asked for as a whole, the cheaper way. A backend of the
    `openai` or `vllm` dialect reports none: it is asked for a stream even when the client wants a whole
    answer, and the pipeline gathers it, timing the first token (`streams.pivot_collect`), so
    `eval_duration` is measured instead of missing."""

    kind: PivotKind
    make_pivot: PivotFactory
    mode: Kind  # how the answer reads: chat, generate, or raw completion
    stream: bool
    requested: str
    think: Any
    timing: Timing
    rid: str
    top_logprobs: int | None  # the client asked for logprobs, with this many alternatives per token
    context: gen_tokens.GenContext | None = None  # a generate's final `context`, from its answer
    _stream: OpenAIToOllamaStream | None = None  # the client's stream, once made (its text: the answer)

    def pivot(self, route: Route, backend: HTTPBackend) -> dict[str, Any]:
        return self.make_pivot(route, backend, self.stream or backend.settings.dialect != "llama.cpp")

    def answer(self, opened: Opened) -> Answer:
        self.timing.load_ns = opened.load_ns
        return Answer(model=opened.route.requested, id=self.rid, created=int(time.time()))

    def to_client(self, pivot: dict[str, Any], opened: Opened) -> Any:
        end = time.perf_counter_ns()
        top = self.top_logprobs
        if self.mode == "chat":
            return from_openai.chat_response(
                pivot, self.requested, self.timing, end, think=self.think, top_logprobs=top
            )
        out = from_openai.generate_response(
            pivot, self.requested, self.timing, end, raw=self.mode == "raw", think=self.think, top_logprobs=top
        )
        if self.context is not None:
            out = gen_context.with_context(out, self.context(out["response"]))
        return out

    def client_stream(self, opened: Opened) -> StreamTranslator:
        self._stream = OpenAIToOllamaStream(
            self.requested,
            self.mode,
            self.timing,
            think=self.think,
            max_event_bytes=opened.backend.settings.max_event_bytes,
            top_logprobs=self.top_logprobs,
            context=self.context,
        )
        return self._stream

    async def settle(self, opened: Opened, sent: dict[str, Any], out: Any) -> None:
        """A generate's `context` as token ids, asked of the backend once the answer is whole
        (`pipeline.gen_tokens`): for a stream before its final object, else into the whole answer."""
        if self.context is None:
            return
        if out is None:
            answer = "".join(self._stream.text_parts) if self._stream is not None else ""
        else:
            answer = str(out.get("response") or "")
        await self.context.settle(opened, sent, answer)
        if isinstance(out, dict) and "context" in out:
            out["context"] = self.context(answer)


async def _via_pivot(
    request: web.Request,
    state: AppState,
    rec: RequestRecord,
    body: dict[str, Any],
    route: Route,
    pivot_kind: PivotKind,
    make_pivot: PivotFactory,
    kind: Kind,
    stream: bool,
    context: gen_tokens.GenContext | None = None,
) -> web.StreamResponse:
    keep_alive, num_ctx = _hints(body)
    timing = Timing(start_ns=rec.start_ns)
    top = requested_logprobs(body)
    front = _OllamaFront(
        pivot_kind, make_pivot, kind, stream, route.requested, body.get("think"), timing, rec.id, top, context
    )
    return await serve_via_pivot(
        request,
        state,
        rec,
        route,
        front,
        keep_alive=keep_alive,
        num_ctx=num_ctx,
        settle=front.settle if context is not None else None,
    )


# ------------------------------------------------------------------------------------- embeddings
async def embed(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    """Ollama's EmbedHandler (server/routes.go): a body naming no model is 404 "model '' not found"; an
    input longer than the model's context is cut to fit, or with `truncate: false` a 400 (where the
    context and a tokenizer are known: `pipeline.embed_fit`; an Ollama backend gets `truncate` itself);
    `dimensions` cuts each vector only when 0 < dimensions < its length; vectors are L2-normalised; a
    duration or count of 0 is left out (api/types.go EmbedResponse, `omitempty`)."""
    body = loads_object(await request.read())
    if not (body.get("model") or body.get("name")) and not state.settings.default_model:
        raise ModelNotFound(str(body.get("model") or ""))
    route = _begin(state, rec, body)
    inputs = to_openai.embed_inputs(body.get("input"))
    dims = from_openai.parse_dimensions(body.get("dimensions"))
    truncate = embed_fit.parse_truncate(body.get("truncate"))
    if not inputs:
        await _load_or_unload(state, route, body, chat=False)
        return json_response({"model": route.requested, "embeddings": []})
    if state.backend_for(route).speaks("ollama"):
        return await ollama_native.relay(request, state, rec, route, body, None, "/api/embed", False)
    keep_alive, num_ctx = _hints(body)
    headers = upstream_headers(request, rec)
    inputs, fit_load_ns = await embed_fit.fit_inputs(
        state, route, rec, inputs, truncate=truncate, headers=headers, keep_alive=keep_alive, num_ctx=num_ctx
    )
    vectors, tokens, load_ns = await _embed_via_pivot(request, state, rec, body, route, inputs)
    vectors = [from_openai.l2_normalize(from_openai.truncate_dimensions(v, dims)) for v in vectors]
    end = time.perf_counter_ns()
    out: dict[str, Any] = {"model": route.requested, "embeddings": vectors, "total_duration": end - rec.start_ns}
    if load_ns + fit_load_ns:
        out["load_duration"] = load_ns + fit_load_ns
    if tokens:
        out["prompt_eval_count"] = tokens
    return json_response(out)


async def _embed_via_pivot(
    request: web.Request, state: AppState, rec: RequestRecord, body: dict[str, Any], route: Route, inputs: list[str]
) -> tuple[list[list[float]], int, int]:
    """Vectors, token count and load time from a backend that does not speak Ollama, through the pivot."""
    keep_alive, num_ctx = _hints(body)

    def wire(r: Route, up: HTTPBackend) -> tuple[str, dict[str, Any]]:
        plan = up.pivot_plan("embedding")
        return plan.path, plan.build({"model": r.upstream, "input": inputs}, r.upstream)

    async with open_upstream(
        state,
        route,
        wire,
        rec=rec,
        keep_alive=keep_alive,
        num_ctx=num_ctx,
        read_body=True,
        headers=upstream_headers(request, rec),
    ) as opened:
        to_pivot = opened.backend.pivot_plan("embedding").json
        answer = Answer(model=route.requested, id=rec.id, created=0)

        def translate(data: Any) -> tuple[list[list[float]], int]:
            return from_openai.embed_vectors(to_pivot(data, answer) if to_pivot else data, len(inputs))

        vectors, tokens = await relay_json(opened.response, translate)
    rec.count_tokens(tokens, None)
    return vectors, tokens, opened.load_ns


async def embeddings_legacy(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    body = loads_object(await request.read())
    route = _begin(state, rec, body)
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if not prompt:
        await _load_or_unload(state, route, body, chat=False)
        return json_response({"embedding": []})
    if state.backend_for(route).speaks("ollama"):
        return await ollama_native.relay(request, state, rec, route, body, None, "/api/embeddings", False)
    vectors, _, _ = await _embed_via_pivot(request, state, rec, body, route, [prompt])
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
    verbose = body.get("verbose") is True
    route = _begin(state, rec, body)
    if state.backend_for(route).speaks("ollama"):
        return await ollama_native.relay(request, state, rec, route, body, None, "/api/show", False)
    probed = await discovery.probe(state, route)
    meta = meta_for(route.entry, probed, state.started_at)
    ua = request.headers.get("User-Agent", "")
    gguf = state.runtime.gguf_of(route.backend) if state.runtime is not None else None
    managed = state.runtime.models.get(route.backend) if state.runtime is not None else None
    if state.runtime is not None and managed is not None:
        # `parameters` say the context the model runs with (or will start with), as `ollamux ps` does; a
        # GGUF's trained context (8192 for SmolLM2) is its header's, in `model_info`. A Modelfile saved from
        # this and created from must not run at the trained context's size (and memory).
        now = [r.ctx for r in state.runtime.running() if r.entry.name == managed.entry.name]
        meta = replace(meta, context_length=now[0] if now else managed.ctx_for(None), context_known=True)
    body = show_body(
        route.entry,
        meta,
        requested=route.requested,
        user_agent=ua,
        params=params_for(state, route),  # what a request gets: its defaults and filters
        licenses=route.entry.meta.get("licenses") or (),
        model_file=str(gguf) if gguf is not None else None,
    )
    if gguf is not None:
        await _gguf_show(body, gguf, verbose=verbose, copilot_name=route.requested if ua.startswith(COPILOT) else None)
    return json_response(body)


async def _gguf_show(out: dict[str, Any], gguf: Path, *, verbose: bool, copilot_name: str | None) -> None:
    """A model ollamux runs: `model_info` is its GGUF header's every key and `tensors` its tensors, as
    Ollama's GetModelInfo (server/routes.go) has them (`runtime.gguf_meta.read_show`); the header's own
    `<arch>.context_length` stays (the context in force is in `parameters` and /api/ps). Copilot gets the
    name it asked for as `general.basename`, as Ollama's ShowHandler gives it."""
    try:
        info, tensors = await asyncio.to_thread(read_show, gguf, verbose=verbose)
    except (OSError, ValueError):
        return  # unreadable now: the catalogue's summary stays
    if copilot_name is not None:
        info["general.basename"] = copilot_name
    out["model_info"], out["tensors"] = info, tensors


async def ps(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    # like /api/tags, a keyed caller sees only the models its key may use: the names of the others alone
    # tell what else the server runs and for whom. An open server shows everything, as Ollama does.
    keyed = state.guard if state.guard is not None and state.guard.keys else None

    def visible(name: str, entry: ModelEntry | None) -> bool:
        if keyed is None:
            return True
        # a name no entry answers to is hidden: there is no policy to check it against
        return entry is not None and keyed.may_use(rec, Route(name, entry, entry.upstream))

    items: list[dict[str, Any]] = []
    if state.runtime is not None:
        for running in state.runtime.running():
            entry = running.entry
            if not visible(entry.name, entry):
                continue
            meta = meta_for(entry, state.probed.get((entry.backend, entry.upstream)), state.started_at)
            items.append(
                ps_item(
                    entry,
                    meta,
                    expires_at=running.expires_at,
                    context_length=running.ctx,
                    size=running.size,
                    size_vram=running.size_vram,
                )
            )
    for item in await discovery.remote_ps(state):
        # remote_ps names each item as we serve it, so resolving that name finds the entry (a wildcard
        # route included) whose key policy applies
        if visible(item["name"], state.registry.find(item["name"]) if keyed is not None else None):
            items.append(item)
    items.sort(key=lambda m: m["expires_at"], reverse=True)
    # models still loading are not Ollama's running models (clients read every item as loaded): a list of their own
    loading = [
        {"name": m.entry.name, "model": m.entry.name, "stage": m.stage, "since": rfc3339(m.since), "size": m.size}
        for m in (state.runtime.loading() if state.runtime is not None else [])
        if visible(m.entry.name, m.entry)
    ]
    return json_response({"models": items, "loading": loading} if loading else {"models": items})


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
    r.add_get("/api/ps", endpoint("ollama", ps), allow_head=False)  # Ollama: GET only (HEAD is 405)
    r.add_post("/api/pull", endpoint("ollama", pull.pull))  # api/pull.py: downloads hub models
    r.add_post("/api/push", endpoint("ollama", _unmanaged("push")))
    ollama_models.add_routes(app)  # /api/create, /api/copy, /api/delete, /api/blobs/{digest}
