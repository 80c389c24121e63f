"""Routes passed to the backend that serves the model they name: rerank, llama.cpp's extras, audio, images,
and `/upstream/{model}/...`.

None of these is translated: the body goes to the model's backend with only the model name swapped (when
the backend knows the model by another name), and the answer comes back as it came (`relay_passthrough`:
status, headers, bytes, binary audio included). What they share with every other route comes from the
same pipeline: `endpoint()` (request id, one log row, metrics, errors in OpenAI's envelope), the key's
model policy (`resolve_model`), and retries, replicas and fallbacks before the first byte (`open_upstream`).

Where the model is named:
  rerank, infill, tokenize, detokenize, speech, image generations: the JSON body's `model`
  transcriptions, translations, image edits: the multipart form's `model` field (or JSON for edits)
  /upstream/{model}/...: the path (see `split_model_path`)
and a request that names none gets the default model, as on every other route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

from aiohttp import web

from ..backends.failover import open_upstream
from ..backends.http import HTTPBackend
from ..errors import BadRequest
from ..jsonutil import loads_object
from ..observe import RequestRecord
from ..pipeline import relay_passthrough
from ..registry import Route
from ..state import AppState
from ..translate.checks import json_type
from ..translate.model_ref import UPSTREAM_PREFIX, form_boundary, form_field, set_form_field, split_model_path
from ..translate.passthrough import replace_model_in_body
from ..translate.to_ollama import go_type
from .common import Handler, client_auth, endpoint, resolve_model, upstream_headers

__all__ = ["add_routes", "check_rerank"]

BodyKind = Literal["json", "form"]
BodyFor = Callable[[Route], bytes]  # the bytes to send for one route (a fallback has its own model name)


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a client route goes on the backend, and what body it takes."""

    path: str  # below the backend's base URL, or below the server's root when `root`
    root: bool = False  # llama.cpp's own routes sit at the server root, not under /v1
    kinds: frozenset[BodyKind] = frozenset({"json"})
    what: str = ""  # how a refusal names the API: "rerank", else the client's path
    check: Callable[[dict[str, Any]], None] | None = None  # a JSON body's own checks, before any backend call


# ------------------------------------------------------------------------------------------ paths
def _no_dot_segments(rest: str) -> None:
    """'.' and '..' would climb out of the backend's root (a base URL with a path prefix, or /v1), so they
    are refused, whether spelled plainly or percent-encoded (the HTTP client decodes %2E)."""
    for segment in rest.split("/"):
        if unquote(segment) in (".", ".."):
            raise BadRequest("'.' and '..' path segments are not allowed after /upstream/{model}", param="path")


# ------------------------------------------------------------------------------------------ shared
def _model_of(body: dict[str, Any]) -> Any:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"invalid type for 'model' field: {go_type(model)}", param="model")
    return model


def _refuse_ollama(state: AppState, route: Route, what: str) -> None:
    """Ollama serves none of these routes (its OpenAI layer has chat, completions, embeddings and models)."""
    if state.backend_for(route).speaks("ollama"):
        raise BadRequest(
            f"model '{route.requested}' is served by backend '{route.backend}', an Ollama server without a {what} API",
            param="model",
        )


def _refuse_unranked(state: AppState, route: Route) -> None:
    """A model ollamux runs ranks only when started for it: llama.cpp's own refusal would say "start it with
    --reranking", a flag an ollamux user does not pass, so the config key that does it is named instead.
    (A `cmd:` model's server is the user's own command: its answer is theirs to read.)"""
    runtime = state.runtime
    m = runtime.models.get(route.backend) if runtime is not None else None
    if m is not None and m.spec.cmd is None and not m.spec.rerank:
        raise BadRequest(
            f"model '{route.requested}' is not run as a reranker: set `runtime: {{rerank: true}}` on a model "
            "entry that names a reranker GGUF (its models.<name> in the config); one model serves either "
            "rerank or chat and embeddings",
            param="model",
        )


def _headers(request: web.Request, rec: RequestRecord, content_type: str | None) -> dict[str, str]:
    headers = upstream_headers(request, rec)
    # the answer goes back as the backend encoded it, so it may only use what the client reads
    headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
    accept = request.headers.get("Accept")
    if accept:
        headers["Accept"] = accept  # an audio client may ask for a format
    if content_type:
        headers["Content-Type"] = content_type  # a form's boundary, or whatever /upstream/ was sent
    return headers


async def _relay(
    request: web.Request,
    state: AppState,
    rec: RequestRecord,
    route: Route,
    body_for: BodyFor,
    path: str,
    *,
    root: bool,
    method: str = "POST",
    content_type: str | None = None,
) -> web.StreamResponse:
    def payload(r: Route, up: HTTPBackend) -> tuple[str, bytes]:
        return (up.root_path(path) if root else path), body_for(r)

    async with open_upstream(
        state,
        route,
        payload,
        rec=rec,
        method=method,
        raise_for_status=False,
        headers=_headers(request, rec, content_type),
        client_auth=client_auth(request, state),
    ) as opened:
        up = opened.response
        if root:
            up.url = str(up.resp.url)  # the log shows the URL asked for, not its '/v1/..' spelling
        return await relay_passthrough(request, rec, up)


# ------------------------------------------------------------------------------------------ rerank
def check_rerank(body: dict[str, Any]) -> None:
    """The Jina/Cohere rerank request (llama.cpp, vLLM and TEI take this shape), checked before it costs a
    backend call, or the start of a managed model, and with messages that say which field is wrong."""
    query = body.get("query")
    if query is None:
        raise BadRequest("'query' is required: the text the documents are ranked against", param="query")
    if not isinstance(query, str):
        raise BadRequest(f"invalid type for 'query': expected a string, got {json_type(query)}", param="query")
    docs = body.get("documents")
    if not isinstance(docs, list) or not docs:
        got = "an empty array" if isinstance(docs, list) else ("nothing" if docs is None else json_type(docs))
        raise BadRequest(
            f"'documents' must be a non-empty array of strings (or of objects with a 'text' string), got {got}",
            param="documents",
        )
    for i, doc in enumerate(docs):
        if not isinstance(doc, str) and not (isinstance(doc, dict) and isinstance(doc.get("text"), str)):
            raise BadRequest(
                f"'documents[{i}]' must be a string or an object with a 'text' string, got {json_type(doc)}",
                param=f"documents[{i}]",
            )
    top_n = body.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0):
        got = str(top_n) if isinstance(top_n, int) and not isinstance(top_n, bool) else json_type(top_n)
        raise BadRequest(f"'top_n' must be a non-negative integer, got {got}", param="top_n")
    ret = body.get("return_documents")
    if ret is not None and not isinstance(ret, bool):
        raise BadRequest(f"'return_documents' must be a boolean, got {json_type(ret)}", param="return_documents")


_FORM = frozenset[BodyKind]({"form"})
_EITHER = frozenset[BodyKind]({"json", "form"})

_TARGETS: dict[str, _Target] = {
    # llama.cpp and vLLM serve rerank under their OpenAI base (/v1/rerank), which a backend's URL ends in
    "/v1/rerank": _Target("/rerank", what="rerank", check=check_rerank),
    "/v1/reranking": _Target("/rerank", what="rerank", check=check_rerank),
    "/rerank": _Target("/rerank", what="rerank", check=check_rerank),
    "/infill": _Target("/infill", root=True),
    "/tokenize": _Target("/tokenize", root=True),
    "/detokenize": _Target("/detokenize", root=True),
    "/v1/audio/speech": _Target("/audio/speech"),
    "/v1/audio/transcriptions": _Target("/audio/transcriptions", kinds=_FORM),
    "/v1/audio/translations": _Target("/audio/translations", kinds=_FORM),
    "/v1/images/generations": _Target("/images/generations"),
    "/v1/images/edits": _Target("/images/edits", kinds=_EITHER),
}


def _forward(client_path: str) -> Handler:
    """The handler of one client route of `_TARGETS`: find the model, refuse what cannot work, relay."""
    target = _TARGETS[client_path]

    async def handle(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
        raw = await request.read()  # already in memory: the guard read it
        content_type = request.headers.get("Content-Type", "")
        boundary = form_boundary(content_type)
        body_for: BodyFor
        form_type: str | None = None  # a form keeps its Content-Type (its boundary); JSON gets the default
        if boundary is not None:
            if "form" not in target.kinds:
                raise BadRequest(f"{client_path} takes a JSON body, not multipart/form-data")
            field = form_field(raw, boundary, "model")
            route = resolve_model(state, rec, field.value if field is not None else None)
            b, form_type = boundary, content_type

            def body_for(r: Route) -> bytes:
                if field is not None and field.value == r.upstream:
                    return raw  # the usual case: the client's bytes, untouched
                return set_form_field(raw, b, "model", r.upstream, field)

        else:
            if "json" not in target.kinds:
                media = content_type.partition(";")[0].strip() or "none"
                raise BadRequest(
                    f"{client_path} takes a multipart/form-data body (the file and its fields); Content-Type "
                    f"was {media}"
                )
            body = loads_object(raw)
            if target.check is not None:
                target.check(body)
            route = resolve_model(state, rec, _model_of(body))

            def body_for(r: Route) -> bytes:
                return replace_model_in_body(raw, body, r.upstream)

        _refuse_ollama(state, route, target.what or client_path)
        if target.what == "rerank":
            _refuse_unranked(state, route)
        return await _relay(request, state, rec, route, body_for, target.path, root=target.root, content_type=form_type)

    return handle


# ----------------------------------------------------------------------------------- /upstream/...
async def upstream(request: web.Request, state: AppState, rec: RequestRecord) -> web.StreamResponse:
    """`/upstream/{model}/{path}`, any method: the raw route `path` of the model's backend, from its server
    root (`/upstream/smollm/health`, `/upstream/smollm/v1/models`), query string, body and Content-Type
    passed as they came. The backend's key replaces the client's, as on every route."""
    url = request.rel_url
    found, rest = split_model_path(state.registry, url.raw_path[len(UPSTREAM_PREFIX) :])
    route = resolve_model(state, rec, found.requested)  # the key's model policy, and the log row
    _no_dot_segments(rest)
    query = url.raw_query_string
    target = rest + ("?" + query if query else "")
    raw = await request.read()

    def body_for(r: Route) -> bytes:
        return raw  # raw means raw: a fallback gets the same bytes

    return await _relay(
        request,
        state,
        rec,
        route,
        body_for,
        target,
        root=True,
        method=request.method,
        content_type=request.headers.get("Content-Type"),
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    for path in _TARGETS:
        r.add_post(path, endpoint("openai", _forward(path)))
    # one pattern for the log and metrics label; the model (which may hold '/') is found in the raw path
    r.add_route("*", "/upstream/{model}/{path:.*}", endpoint("openai", upstream))
