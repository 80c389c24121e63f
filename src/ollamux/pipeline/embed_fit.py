"""Embedding inputs cut to the model's context with the backend's own tokenizer, as Ollama's /api/embed does.

Ollama (server/routes.go EmbedHandler, api/types.go EmbedRequest `Truncate *bool`): each input is
tokenized; one longer than the context is cut to fit (its first tokens, detokenized) unless the client
sent `truncate: false`, which is a 400 "the input length exceeds the context length" instead. The
tokens the tokenizer adds itself (BOS, EOS) count against the context (`adjustTokenLimit`).

Here the tokenizer is llama.cpp's (`POST /tokenize` and `/detokenize` at the server root,
`HTTPBackend.root_path`), and the context is
- for a model the built-in engine runs: the context it runs with per slot, and at most the engine's
  physical batch (`runtime.engine.EMBED_BATCH`): llama.cpp embeds an input in one batch and refuses a
  longer one with a 500 "input is too large to process";
- for a remote llama-server: `default_generation_settings.n_ctx` of its `/props` (probed once, cached;
  its physical batch is not published, so an input between the two is still the server's to refuse);
- otherwise unknown: the inputs go as they are and the backend decides (an Ollama backend gets the
  client's `truncate` itself, through the native pass-through).

A token is at least one byte of its text, so an input no longer in UTF-8 bytes than the context, less a
few for the added tokens, fits without asking the tokenizer: the usual short input costs nothing here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from .. import discovery
from ..backends.failover import open_upstream
from ..backends.http import HTTPBackend
from ..errors import BadRequest, OllamuxError
from ..observe import RequestRecord
from ..registry import Route
from ..runtime.engine import EMBED_BATCH
from ..state import AppState

__all__ = ["TOO_LONG", "context_limit", "fit_inputs", "parse_truncate"]

TOO_LONG = "the input length exceeds the context length"  # Ollama's words (server/routes.go EmbedHandler)
_SPECIAL_MARGIN = 4  # tokens a tokenizer adds around a text (BOS, EOS, BERT's CLS and SEP): at most this many


def parse_truncate(value: Any) -> bool:
    """`truncate`: true unless the client sent false (Go's `*bool`, nil meaning true)."""
    if value is None:
        return True
    if not isinstance(value, bool):
        raise BadRequest("truncate must be true or false")
    return value


async def context_limit(state: AppState, route: Route, num_ctx: int | None) -> int | None:
    """The most tokens one input may have on this route; None when unknown (see the module docstring)."""
    runtime = state.runtime
    if runtime is not None and runtime.manages(route.backend):
        model = runtime.models.get(route.backend)
        if model is None or model.spec.gguf is None:
            return None  # a `cmd:` server: its context and batch are its own
        # the context acquire() makes sure the process has for every slot (runtime/slots.py); it may run
        # with more: this is a lower bound
        return min(EMBED_BATCH, model.ctx_for(num_ctx))
    backend = state.backend_for(route)
    if not isinstance(backend, HTTPBackend) or backend.api != "openai" or backend.settings.dialect == "openai":
        return None  # an Ollama server truncates itself; OpenAI's API has no tokenizer
    probed = await discovery.probe(state, route)
    ctx = probed.get("context_length") if probed else None
    return ctx if isinstance(ctx, int) and ctx > 0 else None


class _Tokenizer:
    """llama.cpp's /tokenize and /detokenize on one route, through the usual retries and managed lease."""

    def __init__(
        self,
        state: AppState,
        route: Route,
        rec: RequestRecord,
        headers: dict[str, str],
        keep_alive: float | None,
        num_ctx: int | None,
    ) -> None:
        self.state, self.route, self.rec, self.headers = state, route, rec, headers
        self.keep_alive, self.num_ctx = keep_alive, num_ctx
        self.load_ns = 0  # what starting the model cost, when a tokenizer call had to start it

    async def _call(self, path: str, payload: dict[str, Any]) -> Any:
        def wire(r: Route, up: HTTPBackend) -> tuple[str, bytes]:
            return up.root_path(path), orjson.dumps(payload)

        async with open_upstream(
            self.state,
            self.route,
            wire,
            rec=self.rec,
            keep_alive=self.keep_alive,
            num_ctx=self.num_ctx,
            read_body=True,
            headers=self.headers,
        ) as opened:
            self.load_ns += opened.load_ns
            return await opened.response.json()

    async def tokens(self, text: str, *, special: bool) -> list[int] | None:
        """The text's tokens (with the ones the tokenizer adds when `special`); None without a tokenizer."""
        try:
            answer = await self._call("/tokenize", {"content": text, "add_special": special})
        except OllamuxError:
            return None  # no tokenizer there (a 404): the input goes as it is
        finally:
            self.rec.error = None  # a backend without a tokenizer is no failure of this request
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            return None
        return tokens

    async def text(self, tokens: list[int]) -> str | None:
        try:
            answer = await self._call("/detokenize", {"tokens": tokens})
        except OllamuxError:
            return None
        finally:
            self.rec.error = None
        content = answer.get("content") if isinstance(answer, dict) else None
        return content if isinstance(content, str) else None


def _may_exceed(text: str, limit: int) -> bool:
    if 4 * len(text) + _SPECIAL_MARGIN <= limit:  # at most 4 bytes a character: no need to encode it
        return False
    return len(text.encode("utf-8", "surrogatepass")) + _SPECIAL_MARGIN > limit


async def _fit_one(tok: _Tokenizer, text: str, limit: int, truncate: bool) -> str:
    full = await tok.tokens(text, special=True)
    if full is None or len(full) <= limit:
        return text
    if not truncate:
        raise BadRequest(TOO_LONG)
    content = await tok.tokens(text, special=False)
    if content is None:
        return text
    keep = limit - max(len(full) - len(content), 0)
    if keep <= 0:
        raise BadRequest("input after truncation exceeds maximum context length")  # Ollama's words too
    cut = await tok.text(content[:keep])
    return text if cut is None else cut


async def fit_inputs(
    state: AppState,
    route: Route,
    rec: RequestRecord,
    inputs: Sequence[str],
    *,
    truncate: bool,
    headers: dict[str, str],
    keep_alive: float | None,
    num_ctx: int | None,
) -> tuple[list[str], int]:
    """`inputs`, each cut to the route's context (or a 400 with `truncate` false) where it is known, and
    the nanoseconds a tokenizer call waited for the model to load (the request's load, then)."""
    limit = await context_limit(state, route, num_ctx)
    if limit is None:
        return list(inputs), 0
    long = [i for i, t in enumerate(inputs) if _may_exceed(t, limit)]
    if not long:
        return list(inputs), 0
    tok = _Tokenizer(state, route, rec, headers, keep_alive, num_ctx)
    fitted = await asyncio.gather(*(_fit_one(tok, inputs[i], limit, truncate) for i in long))
    out = list(inputs)
    for i, text in zip(long, fitted, strict=True):
        out[i] = text
    return out, tok.load_ns
