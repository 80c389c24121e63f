"""/api/generate's `context` as the model's own token ids, where the backend has a tokenizer.

Ollama (ollama/ollama, 2026-08 snapshot):
- server/routes.go GenerateHandler, on the last chunk of a generate that is not raw:
  `tokens, err := r.Tokenize(ctx, prompt+sb.String()); res.Context = tokens`: the prompt as the model saw
  it (its template over the system message and the prompt, an earlier context's text before it) and the
  answer's text, tokenized as one (api/types.go GenerateResponse `Context []int`, after `done_reason`).
- llm/llama_server.go `Tokenize`: llama-server's `POST /tokenize` with `add_special` false (no BOS) and
  special tokens parsed (llama.cpp's default), so the template's markers are their own ids.
- GenerateHandler with `req.Context` set: `r.Detokenize(ctx, req.Context)` (llama-server's
  `/detokenize`) is written before the newly rendered prompt, and that text is the model's whole prompt.

Here, on a backend with llama.cpp's tokenizer (an OpenAI-type backend of the `llama.cpp` dialect, the
default, which every model of the built-in engine is):
- a generate without a token context goes to the backend as a chat, as before; once its answer is in
  (after the last chunk of a stream, before the final object; once for a whole answer) the chat body that
  was sent is rendered by llama.cpp's `POST /apply-template` (the model's own template, as the chat route
  applies it) and `prompt + answer` is tokenized: two calls to the model that answered, through the
  backend boundary (`open_upstream`: its one client, its error table, its key), none before the first token;
- a generate with token ids as `context` has them detokenized, its own chat rendered by `/apply-template`,
  and `text + rendered` goes as a raw completion (Ollama's prompt); its final context tokenizes that prompt
  and the answer. Without a tokenizer for them (no such routes, a backend of the `openai` or `vllm`
  dialect), token ids are a 400: the earlier exchange cannot be read back, and forgetting it silently would
  be worse.
Where there is no tokenizer, or its calls fail, the final `context` is `translate.gen_context`'s lossless
encoding of the exchange, and such a context sent back keeps working on every backend. Not done: images
with a token context (a raw completion carries none: a 400), and thinking on the token path (a raw
completion's answer is not split into thinking and content).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..backends.failover import Opened, open_upstream
from ..backends.http import HTTPBackend
from ..errors import BadRequest, OllamuxError
from ..observe import RequestRecord
from ..registry import Route
from ..state import AppState
from ..translate import gen_context, to_openai
from ..translate.model_params import apply_to_pivot
from .params import params_for

__all__ = ["GenContext", "has_tokenizer", "prefixed_prompt"]


def has_tokenizer(backend: HTTPBackend) -> bool:
    """llama.cpp's /tokenize, /detokenize and /apply-template are there to ask (its server answers 404 if not)."""
    return backend.api == "openai" and backend.settings.dialect == "llama.cpp" and not backend.no_tokenizer


class _NoTokenizer(Exception):
    """The backend that would answer has no tokenizer to ask (or is a fallback with another model)."""


def _ints(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    return None


def _text(value: Any, key: str) -> str | None:
    out = value.get(key) if isinstance(value, dict) else None
    return out if isinstance(out, str) else None


class GenContext:
    """The `context` of one generate's final object: token ids once `settle` got them, else the lossless
    encoding of the exchange (`translate.gen_context`). Called by the translators with the answer's text."""

    __slots__ = ("client_auth", "headers", "history", "prompt", "state", "tokens")

    def __init__(
        self,
        state: AppState,
        history: Sequence[dict[str, str]],
        headers: dict[str, str],
        client_auth: str | None,
        prompt: str | None = None,
    ) -> None:
        self.state = state
        self.history = list(history)  # the exchange so far, as messages (the fallback's content)
        self.headers, self.client_auth = headers, client_auth
        self.prompt = prompt  # the whole prompt the model saw, when ollamux sent it as text (token path)
        self.tokens: list[int] | None = None

    def __call__(self, answer: str) -> list[int]:
        if self.tokens is not None:
            return self.tokens
        return gen_context.encode([*self.history, {"role": "assistant", "content": answer}])

    async def settle(self, opened: Opened, sent: Mapping[str, Any], answer: str) -> None:
        """Token ids of the prompt and `answer` from the model that answered (see the module docstring).

        On the chat path a failure leaves the fallback; on the token path (the prompt is known as text
        only) it is the request's error, as in Ollama (GenerateHandler sends `{"error"}` then)."""
        if not has_tokenizer(opened.backend):
            return
        route = opened.route

        async def call(path: str, payload: Mapping[str, Any]) -> Any:
            def wire(r: Route, up: HTTPBackend) -> tuple[str, bytes]:
                if r.entry is not route.entry:
                    raise _NoTokenizer  # another model's tokenizer would make other ids
                return up.root_path(path), orjson.dumps(payload)

            # the lease the answer holds keeps a managed model up; a retry covers a pooled connection the
            # server closed meanwhile (one before the answer's first byte never reaches the client)
            async with open_upstream(
                self.state, route, wire, read_body=True, headers=self.headers, client_auth=self.client_auth
            ) as up:
                return await up.response.json()

        try:
            prompt = self.prompt
            if prompt is None:
                prompt = _text(await call("/apply-template", sent), "prompt")
                if prompt is None:
                    return
            tokens = _ints((await call("/tokenize", {"content": prompt + answer})).get("tokens"))
        except (OllamuxError, _NoTokenizer, AttributeError) as exc:
            if isinstance(exc, OllamuxError) and exc.status in (404, 405):
                opened.backend.no_tokenizer = True  # not llama.cpp after all: asked once, not per request
            if self.prompt is None:
                return
            raise
        if tokens is None and self.prompt is not None:
            raise OllamuxError(f"backend '{opened.backend.name}' did not tokenize the exchange", status=502)
        self.tokens = tokens


async def prefixed_prompt(
    state: AppState,
    rec: RequestRecord,
    route: Route,
    body: Mapping[str, Any],
    tokens: list[int],
    *,
    headers: dict[str, str],
    client_auth: str | None,
    num_ctx: int | None,
) -> str:
    """Ollama's prompt for a generate whose `context` holds token ids: their text, then the request's own
    chat rendered by the model's template (`/detokenize` and `/apply-template`, at once); a 400 when the
    backend cannot say (see the module docstring)."""
    if body.get("images"):
        raise BadRequest("ollamux does not support context (token ids) with images")
    params = params_for(state, route)

    def detokenize(r: Route, up: HTTPBackend) -> tuple[str, dict[str, Any]]:
        if not has_tokenizer(up) or r.entry is not route.entry:
            raise _NoTokenizer
        return up.root_path("/detokenize"), {"tokens": tokens}

    def render(r: Route, up: HTTPBackend) -> tuple[str, dict[str, Any]]:
        if not has_tokenizer(up) or r.entry is not route.entry:
            raise _NoTokenizer
        chat = to_openai.generate_as_chat_request(body, r.upstream, stream=False, dialect=up.settings.dialect)
        pivot = apply_to_pivot(chat, "chat", params, up.settings.dialect)
        return up.root_path("/apply-template"), up.pivot_plan("chat").build(pivot, r.upstream)

    async def ask(factory: Any, key: str) -> str | None:
        try:
            async with open_upstream(
                state,
                route,
                factory,
                rec=rec,
                num_ctx=num_ctx,  # a model started here starts with the context the request needs
                read_body=True,
                headers=headers,
                client_auth=client_auth,
            ) as opened:
                return _text(await opened.response.json(), key)
        except (_NoTokenizer, OllamuxError):
            return None
        finally:
            rec.error = None  # a backend without a tokenizer is no failure of the request: the 400 says it

    text, rendered = await asyncio.gather(ask(detokenize, "content"), ask(render, "prompt"))
    if text is None or rendered is None:
        name = state.backend_for(route).name
        raise BadRequest(
            f"context holds token ids, and backend '{name}' has no tokenizer to turn them back into the earlier "
            "exchange (llama.cpp's /detokenize and /apply-template); send a context ollamux returned for this model"
        )
    return text + rendered
