"""A hostile upstream: one real aiohttp server that plays both an OpenAI-compatible server and an Ollama
server, and misbehaves in the way the model name in the request body asks for.

Routes: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`, `/props` (llama-server),
`/api/chat`, `/api/generate`, `/api/embed`, `/api/tags`, `/api/version`, `/api/show`.

Behaviours, by model name (`:latest` is ignored). "Two good tokens" are `TOKENS` ("Hel", "lo"); what
follows them is the malformed piece, then (when the stream is still going) a normal finish. A streamed
answer goes out in two writes, `PAUSE` apart: the first token, then everything else (the huge piece of
`huge-event-<n>` aside). So the stream has surely started when the malformed piece comes, and the second
good token reaches the proxy in the same read as the malformed piece: the tokens translated from that read
must still reach the client before the error.

  anything else     a normal answer: `TOKENS`, a finish (with usage), `[DONE]` / the done line
  choices-int       OpenAI: `"choices": 5` (streamed: after two good tokens)
  choice-str        OpenAI: `"choices": ["oops"]`
  delta-str         OpenAI streamed: `"delta": "oops"`
  message-str       OpenAI: `"choices": [{"message": "oops"}]`; Ollama: `"message": "oops"`
  content-int       OpenAI: `delta`/`message` `{"content": 5}`; Ollama: `"message": {"content": 5}`
  text-int          OpenAI /v1/completions: `"choices": [{"text": 5}]`
  response-int      Ollama /api/generate: `"response": 5`
  usage-str         OpenAI: `"usage": "x"`; Ollama: `"prompt_eval_count": "x", "eval_count": "x"`
  odd-counts        token counts no log column holds: OpenAI `ODD_USAGE` (a count as a string, one past 2**64);
                    Ollama `ODD_COUNTS` (2**64 - 1 and 2**63); embeddings the same past-64-bit prompt count
  data-int          embeddings: OpenAI `"data": 5`; Ollama `"embeddings": 5`
  error-midstream   streamed: two good tokens, then an upstream error event / error line ("the model crashed")
  html              HTTP 200, `Content-Type: text/html`, an HTML page (streamed or not)
  secret-openai     HTTP 401, OpenAI envelope, the message echoes `SECRET_KEY` and `SECRET_HEADER`
  secret-text       HTTP 401, the same message as text/plain
  secret-ollama     HTTP 401, Ollama's `{"error": "..."}` with the same message
  secret-midstream  streamed: two good tokens, then the same message as an error event / error line
  huge-event-<n>    streamed: two good tokens, then ONE event (SSE `data:` line / NDJSON line) whose
                    content is n bytes of "x", then a normal finish; written in 1 MiB pieces
  huge-body-<n>     not streamed: a normal answer whose content is n bytes of "x", sent chunked in 1 MiB
                    writes from a generator (never held in memory, here or anywhere)
  flaky             HTTP 500 until `flaky_healthy` is set, then a normal answer
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .capture import Recorder

TOKENS = ["Hel", "lo"]
SECRET_KEY = "sk-backend-SECRET-123"
SECRET_HEADER = "org-token-SECRET-456"
SECRET_MESSAGE = f"invalid key Bearer {SECRET_KEY} for org {SECRET_HEADER}"
CRASH = "the model crashed"
HTML = "<html><head><title>Sign in</title></head><body><h1>Corporate proxy: please sign in</h1></body></html>"
MIB = 1024 * 1024
PAUSE = 0.05  # seconds between a stream's first token and the rest
_BLOCK = b"x" * MIB  # the one piece every huge answer is made of
CREATED = "2025-07-07T20:22:19.184789123Z"
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
ODD_USAGE = {"prompt_tokens": "5", "completion_tokens": 2**64 - 1, "total_tokens": 7}
ODD_COUNTS = {"prompt_eval_count": 2**64 - 1, "eval_count": 2**63}
COUNTS = {
    "prompt_eval_count": 5,
    "eval_count": 2,
    "total_duration": 1000,
    "load_duration": 1,
    "prompt_eval_duration": 1,
    "eval_duration": 1,
}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def sse(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def ndjson(obj: Any) -> bytes:
    return _dumps(obj) + b"\n"


def _size(model: str, prefix: str) -> int | None:
    if not model.startswith(prefix):
        return None
    return int(model[len(prefix) :])


async def _flush(resp: web.StreamResponse, buf: bytearray) -> None:
    await resp.write(bytes(buf))
    buf.clear()
    await asyncio.sleep(PAUSE)


async def _write_x(resp: web.StreamResponse, n: int) -> None:
    """n bytes of "x", in 1 MiB writes (each awaits the socket: back-pressure, nothing piles up here)."""
    for _ in range(n // MIB):
        await resp.write(_BLOCK)
    if n % MIB:
        await resp.write(_BLOCK[: n % MIB])


@dataclass
class Hostile(Recorder):
    flaky_healthy: bool = False
    flaky_requests: int = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/props", self.props)
        app.router.add_post("/v1/chat/completions", self.oa_chat)
        app.router.add_post("/v1/completions", self.oa_completions)
        app.router.add_post("/v1/embeddings", self.oa_embeddings)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_post("/api/show", self.show)
        app.router.add_post("/api/chat", self.ol_chat)
        app.router.add_post("/api/generate", self.ol_generate)
        app.router.add_post("/api/embed", self.ol_embed)
        return app

    # ---------------------------------------------------------------------------------- shared
    async def _begin(self, request: web.Request) -> tuple[dict[str, Any], str, bool]:
        body = await self._capture(request)
        model = str(body.get("model", "")).removesuffix(":latest")
        return body, model, bool(body.get("stream"))

    async def _refusal(self, request: web.Request, model: str) -> web.StreamResponse | None:
        """The answers that are the same whatever API is asked: HTML, echoed secrets, a failing server."""
        if model == "html":
            return web.Response(text=HTML, content_type="text/html")
        if model == "secret-openai":
            return web.json_response(
                {"error": {"message": SECRET_MESSAGE, "type": "invalid_request_error", "code": "invalid_api_key"}},
                status=401,
            )
        if model == "secret-text":
            return web.Response(text=SECRET_MESSAGE, status=401)
        if model == "secret-ollama":
            return web.json_response({"error": SECRET_MESSAGE}, status=401)
        if model == "flaky":
            self.flaky_requests += 1
            if not self.flaky_healthy:
                return web.json_response({"error": {"message": "flaky is down", "type": "server_error"}}, status=500)
        return None

    async def _stream(self, request: web.Request, content_type: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        return resp

    async def _huge_body(self, request: web.Request, pieces: AsyncIterator[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            async for piece in pieces:
                await resp.write(piece)
            await resp.write_eof()
        except ConnectionError:
            pass  # the proxy stopped reading and hung up: what a size limit should do
        return resp

    # ------------------------------------------------------------------------------ catalogue
    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "ok", "object": "model", "owned_by": "x"}]})

    async def props(self, request: web.Request) -> web.Response:
        return web.json_response({"default_generation_settings": {"n_ctx": 4096}, "chat_template": "{{ x }}"})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "models": [
                    {
                        "name": "ok:latest",
                        "model": "ok:latest",
                        "size": 1,
                        "digest": "ab" * 32,
                        "modified_at": CREATED,
                        "details": {},
                    }
                ]
            }
        )

    async def show(self, request: web.Request) -> web.Response:
        body = await self._capture(request)
        return web.json_response(
            {
                "modelfile": "",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": {"family": "llama"},
                "model_info": {},
                "capabilities": ["completion"],
                "modified_at": CREATED,
                "model": body.get("model"),
            }
        )

    # ------------------------------------------------------------------------- OpenAI: chat
    async def oa_chat(self, request: web.Request) -> web.StreamResponse:
        _, model, stream = await self._begin(request)
        refusal = await self._refusal(request, model)
        if refusal is not None:
            return refusal

        def chunk(delta: Any, finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-h",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        if not stream:
            size = _size(model, "huge-body-")
            if size is not None:
                return await self._huge_body(request, _openai_huge_body(model, size))
            message: Any = {"role": "assistant", "content": "".join(TOKENS)}
            answer: dict[str, Any] = {
                "id": "chatcmpl-h",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": USAGE,
            }
            if model == "choices-int":
                answer["choices"] = 5
            elif model == "choice-str":
                answer["choices"] = ["oops"]
            elif model == "message-str":
                answer["choices"][0]["message"] = "oops"
            elif model == "content-int":
                message["content"] = 5
            elif model == "usage-str":
                answer["usage"] = "x"
            elif model == "odd-counts":
                answer["usage"] = ODD_USAGE
            return web.json_response(answer)

        resp = await self._stream(request, "text/event-stream")
        buf = bytearray()  # what goes out in one write (see the module docstring)
        buf += sse(chunk({"role": "assistant", "content": ""}))
        for i, t in enumerate(TOKENS):
            buf += sse(chunk({"content": t}))
            if i == 0:
                await _flush(resp, buf)  # the stream has started: one token is out
        bad: Any = {
            "choices-int": {**chunk({}), "choices": 5},
            "choice-str": {**chunk({}), "choices": ["oops"]},
            "delta-str": chunk("oops"),
            "message-str": {**chunk({}), "choices": [{"index": 0, "message": "oops", "finish_reason": None}]},
            "content-int": chunk({"content": 5}),
            "secret-midstream": {"error": {"message": SECRET_MESSAGE, "type": "server_error"}},
            "error-midstream": {"error": {"message": CRASH, "type": "server_error"}},
        }.get(model)
        if bad is not None:
            buf += sse(bad)
        size = _size(model, "huge-event-")
        if size is not None:
            head = _dumps(chunk({"content": ""}))
            cut = head.index(b'"content":""') + len(b'"content":"')
            buf += b"data: " + head[:cut]
            await resp.write(bytes(buf))
            buf.clear()
            await _write_x(resp, size)
            buf += head[cut:] + b"\n\n"
        last = chunk({}, "stop")
        last["usage"] = "x" if model == "usage-str" else ODD_USAGE if model == "odd-counts" else USAGE
        buf += sse(last)
        buf += b"data: [DONE]\n\n"
        await resp.write(bytes(buf))
        await resp.write_eof()
        return resp

    # -------------------------------------------------------------------- OpenAI: completions
    async def oa_completions(self, request: web.Request) -> web.StreamResponse:
        _, model, stream = await self._begin(request)
        refusal = await self._refusal(request, model)
        if refusal is not None:
            return refusal

        def choice(text: Any, finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "cmpl-h",
                "object": "text_completion",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish}],
            }

        if not stream:
            answer = {**choice("".join(TOKENS), "stop"), "usage": USAGE}
            if model == "choices-int":
                answer["choices"] = 5
            elif model == "text-int":
                answer["choices"][0]["text"] = 5
            elif model == "usage-str":
                answer["usage"] = "x"
            elif model == "odd-counts":
                answer["usage"] = ODD_USAGE
            return web.json_response(answer)
        resp = await self._stream(request, "text/event-stream")
        buf = bytearray()  # what goes out in one write (see the module docstring)
        for i, t in enumerate(TOKENS):
            buf += sse(choice(t))
            if i == 0:
                await _flush(resp, buf)  # the stream has started: one token is out
        bad: Any = {
            "choices-int": {**choice(""), "choices": 5},
            "text-int": choice(5),
            "secret-midstream": {"error": {"message": SECRET_MESSAGE, "type": "server_error"}},
            "error-midstream": {"error": {"message": CRASH, "type": "server_error"}},
        }.get(model)
        if bad is not None:
            buf += sse(bad)
        buf += sse({**choice("", "stop"), "usage": ODD_USAGE if model == "odd-counts" else USAGE})
        buf += b"data: [DONE]\n\n"
        await resp.write(bytes(buf))
        await resp.write_eof()
        return resp

    async def oa_embeddings(self, request: web.Request) -> web.StreamResponse:
        _, model, _ = await self._begin(request)
        refusal = await self._refusal(request, model)
        if refusal is not None:
            return refusal
        data: Any = [{"object": "embedding", "index": 0, "embedding": [3.0, 4.0]}]
        if model == "data-int":
            data = 5
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": "x"
                if model == "usage-str"
                else {"prompt_tokens": 2**64 - 1 if model == "odd-counts" else 1, "total_tokens": 1},
            }
        )

    # --------------------------------------------------------------------------- Ollama: chat
    async def ol_chat(self, request: web.Request) -> web.StreamResponse:
        body, model, _ = await self._begin(request)
        stream = body.get("stream", True) is not False  # Ollama streams unless told otherwise
        refusal = await self._refusal(request, model)
        if refusal is not None:
            return refusal
        head = {"model": body.get("model"), "created_at": CREATED}
        final: dict[str, Any] = {
            **head,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            **COUNTS,
        }
        if model == "usage-str":
            final.update(prompt_eval_count="x", eval_count="x")
        elif model == "odd-counts":
            final.update(ODD_COUNTS)
        if not stream:
            size = _size(model, "huge-body-")
            if size is not None:
                return await self._huge_body(request, _ollama_huge_body(head, size))
            message: Any = {"role": "assistant", "content": "".join(TOKENS)}
            if model == "message-str":
                message = "oops"
            elif model == "content-int":
                message["content"] = 5
            return web.json_response({**final, "message": message})
        resp = await self._stream(request, "application/x-ndjson")
        buf = bytearray()  # what goes out in one write (see the module docstring)
        for i, t in enumerate(TOKENS):
            buf += ndjson({**head, "message": {"role": "assistant", "content": t}, "done": False})
            if i == 0:
                await _flush(resp, buf)  # the stream has started: one token is out
        bad: Any = {
            "message-str": {**head, "message": "oops", "done": False},
            "content-int": {**head, "message": {"role": "assistant", "content": 5}, "done": False},
            "secret-midstream": {"error": SECRET_MESSAGE},
            "error-midstream": {"error": CRASH},
        }.get(model)
        if bad is not None:
            buf += ndjson(bad)
        size = _size(model, "huge-event-")
        if size is not None:
            line = _dumps({**head, "message": {"role": "assistant", "content": ""}, "done": False})
            cut = line.index(b'"content":""') + len(b'"content":"')
            buf += line[:cut]
            await resp.write(bytes(buf))
            buf.clear()
            await _write_x(resp, size)
            buf += line[cut:] + b"\n"
        buf += ndjson(final)
        await resp.write(bytes(buf))
        await resp.write_eof()
        return resp

    # ----------------------------------------------------------------------- Ollama: generate
    async def ol_generate(self, request: web.Request) -> web.StreamResponse:
        body, model, _ = await self._begin(request)
        stream = body.get("stream", True) is not False
        refusal = await self._refusal(request, model)
        if refusal is not None:
            return refusal
        head = {"model": body.get("model"), "created_at": CREATED}
        final: dict[str, Any] = {**head, "response": "", "done": True, "done_reason": "stop", **COUNTS}
        if model == "usage-str":
            final.update(prompt_eval_count="x", eval_count="x")
        elif model == "odd-counts":
            final.update(ODD_COUNTS)
        if not stream:
            response: Any = 5 if model == "response-int" else "".join(TOKENS)
            return web.json_response({**final, "response": response})
        resp = await self._stream(request, "application/x-ndjson")
        buf = bytearray()  # what goes out in one write (see the module docstring)
        for i, t in enumerate(TOKENS):
            buf += ndjson({**head, "response": t, "done": False})
            if i == 0:
                await _flush(resp, buf)  # the stream has started: one token is out
        bad: Any = {
            "response-int": {**head, "response": 5, "done": False},
            "secret-midstream": {"error": SECRET_MESSAGE},
            "error-midstream": {"error": CRASH},
        }.get(model)
        if bad is not None:
            buf += ndjson(bad)
        buf += ndjson(final)
        await resp.write(bytes(buf))
        await resp.write_eof()
        return resp

    async def ol_embed(self, request: web.Request) -> web.StreamResponse:
        body, model, _ = await self._begin(request)
        refusal = await self._refusal(request, model)
        if refusal is not None:
            return refusal
        embeddings: Any = 5 if model == "data-int" else [[0.6, 0.8]]
        return web.json_response(
            {
                "model": body.get("model"),
                "embeddings": embeddings,
                "prompt_eval_count": "x" if model == "usage-str" else 2**64 - 1 if model == "odd-counts" else 1,
            }
        )


async def _openai_huge_body(model: str, size: int) -> AsyncIterator[bytes]:
    yield _dumps({"id": "chatcmpl-h", "object": "chat.completion", "created": 1, "model": model})[:-1]
    yield b',"choices":[{"index":0,"message":{"role":"assistant","content":"'
    for _ in range(size // MIB):
        yield _BLOCK
    yield _BLOCK[: size % MIB]
    yield b'"},"finish_reason":"stop"}],"usage":' + _dumps(USAGE) + b"}"


async def _ollama_huge_body(head: dict[str, Any], size: int) -> AsyncIterator[bytes]:
    yield _dumps(head)[:-1] + b',"message":{"role":"assistant","content":"'
    for _ in range(size // MIB):
        yield _BLOCK
    yield _BLOCK[: size % MIB]
    yield b'"},"done":true,"done_reason":"stop",' + _dumps(COUNTS)[1:]
