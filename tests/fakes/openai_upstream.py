"""A fake OpenAI-compatible backend (llama-server-like): a real aiohttp server with scripted answers.

The answer depends on the model name the proxy sends upstream, so one server covers every scenario:
  "tools"        -> a tool call (streamed in argument fragments)
  "tools2"       -> two parallel tool calls, the second reusing index 0 with a new id
  "think"        -> reasoning_content, then content
  "length"       -> finish_reason "length"
  "bad-request"  -> 400 with an OpenAI error envelope
  "server-error" -> 500
  "midstream"    -> a chunk of content, then an error event
  "cutoff"       -> a chunk of content, then the connection is dropped
  "slow"         -> 0.2 s between chunks
  "held"         -> the first chunk (no stream: nothing), then nothing until the test sets `release_held`
                    (`held` is set once the request is in): a slot held for as long as a test needs, with no
                    timing in it
  "untimed"      -> the usual answer without llama-server's `timings` (as vLLM or OpenAI answer), its
                    streamed tokens 0.05 s apart
  anything else  -> "Hello from the fake!" in three chunks, with usage and llama-server timings
A chat or completions request with `logprobs` gets llama.cpp's log probabilities of each token
(`logprobs.content`, `top_logprobs` alternatives each; chat-shaped on both endpoints, as llama.cpp sends
them). llama.cpp's root routes: `/tokenize` counts words, `/detokenize` gives one word `t<id>` per token.
Every request is recorded (path, headers, raw body) for capture assertions.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .capture import Captured, Recorder

CONTENT = ["Hello", " from the", " fake!"]


@dataclass
class FakeOpenAI(Recorder):
    models: list[str] = field(default_factory=lambda: ["fake-model", "tools", "think", "embed-model"])
    held: threading.Event = field(default_factory=threading.Event)  # a "held" request is streaming
    release_held: threading.Event = field(default_factory=threading.Event)

    def reset_holds(self) -> None:
        self.held.clear()
        self.release_held.clear()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._record_unknown])
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/props", self.props)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/tokenize", self.tokenize)  # llama.cpp's, at the server root
        app.router.add_post("/detokenize", self.detokenize)
        return app

    @web.middleware
    async def _record_unknown(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A route this server lacks is still a request it got (a test may count what ollamux asked)."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            self.requests.append(Captured(request.path, dict(request.headers), await request.read()))
            raise

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await self._capture(request)
        return web.json_response({"content": " ".join(f"t{t}" for t in body.get("tokens") or [])})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await self._capture(request)
        return web.json_response({"tokens": list(range(len(str(body.get("content", "")).split())))})

    async def list_models(self, request: web.Request) -> web.Response:
        self.requests.append(Captured(request.path, dict(request.headers), b""))
        data = [
            {
                "id": m,
                "object": "model",
                "created": 1700000000,
                "owned_by": "llamacpp",
                "meta": {"n_params": 134515008, "n_ctx_train": 8192, "n_embd": 576, "size": 1000},
            }
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def props(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "default_generation_settings": {"n_ctx": 2048},
                "chat_template": "{% for m in messages %}{{ tools }}",
                "modalities": {"vision": False},
            }
        )

    # ---------------------------------------------------------------------------------------- chat
    def _tool_frags(self, model: str) -> list[dict[str, Any]]:
        if model == "tools2":
            return [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
                {"index": 0, "function": {"arguments": '{"city": "Paris"}'}},
                {"index": 0, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                {"index": 0, "function": {"arguments": '{"tz": "CET"}'}},
            ]
        return [
            {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
            {"index": 0, "function": {"arguments": '{"city": '}},
            {"index": 0, "function": {"arguments": '"Tokyo", "unit": "c"}'}},
        ]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._capture(request)
        model = str(body.get("model", "")).removeprefix("x-")  # wildcard routes send the asked name
        if model == "bad-request":
            return web.json_response(
                {"error": {"message": "the request is bad: temperature too hot", "type": "invalid_request_error"}},
                status=400,
            )
        if model == "server-error":
            return web.json_response({"error": {"message": "backend exploded", "type": "server_error"}}, status=500)
        finish = "length" if model == "length" else ("tool_calls" if model.startswith("tools") else "stop")
        usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        timings: dict[str, Any] | None = {
            "cache_n": 1,
            "prompt_n": 10,
            "prompt_ms": 5.5,
            "predicted_n": 3,
            "predicted_ms": 12.25,
        }
        if model == "untimed":
            timings = None
        top = _top_logprobs(body, chat=True)
        if not body.get("stream"):
            if model == "held":  # a whole answer that takes as long as the test needs
                self.held.set()
                await asyncio.to_thread(self.release_held.wait, 30)
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(CONTENT)}
            if model.startswith("tools"):
                msg = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_abc",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Tokyo", "unit": "c"}'},
                        }
                    ],
                }
            if model == "think":
                msg["reasoning_content"] = "Let me think."
            choice: dict[str, Any] = {"index": 0, "message": msg, "finish_reason": finish}
            if top is not None:
                choice["logprobs"] = {"content": [_logprob(p, top) for p in CONTENT]}
            answer: dict[str, Any] = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
            if timings is not None:
                answer["timings"] = timings
            return web.json_response(answer)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        def chunk(delta: dict[str, Any], fr: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": fr}],
            }

        await send(chunk({"role": "assistant", "content": None}))
        if model == "think":
            await send(chunk({"reasoning_content": "Let me"}))
            await send(chunk({"reasoning_content": " think."}))
        if model.startswith("tools"):
            for frag in self._tool_frags(model):
                await send(chunk({"tool_calls": [frag]}))
        else:
            for i, piece in enumerate(CONTENT):
                if model == "slow":
                    await asyncio.sleep(0.2)
                if model == "held" and i == 1:
                    self.held.set()
                    await asyncio.to_thread(self.release_held.wait, 30)
                if model == "untimed":
                    await asyncio.sleep(0.05)
                event = chunk({"content": piece})
                if top is not None:
                    event["choices"][0]["logprobs"] = {"content": [_logprob(piece, top)]}
                await send(event)
                if i == 0 and model == "midstream":
                    await send({"error": {"message": "the model crashed", "type": "server_error"}})
                    await resp.write_eof()
                    return resp
                if i == 0 and model == "cutoff":
                    assert request.transport is not None
                    request.transport.close()
                    return resp
        last = chunk({}, finish)
        if timings is not None:
            last["timings"] = timings
        await send(last)
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._capture(request)
        model = str(body.get("model", "")).removeprefix("x-")
        text = ["Once", " upon", " a time"]
        finish = "length" if model == "length" else "stop"
        usage = {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
        top = _top_logprobs(body, chat=False)
        if not body.get("stream"):
            choice: dict[str, Any] = {"index": 0, "text": "".join(text), "finish_reason": finish}
            if top is not None:
                choice["logprobs"] = {"content": [_logprob(t, top) for t in text]}
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "created": 1,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for t in text:
            piece: dict[str, Any] = {"index": 0, "text": t, "finish_reason": None}
            if top is not None:
                piece["logprobs"] = {"content": [_logprob(t, top)]}
            obj = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model, "choices": [piece]}
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        obj = {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "text": "", "finish_reason": finish}],
        }
        await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._capture(request)
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        data = []
        for i, text in enumerate(inputs or []):
            # a deterministic, unnormalised vector: the proxy must L2-normalise for /api/embed
            vec = [float(len(text)), 1.0, 2.0, float(i)]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        tokens = sum(max(1, math.ceil(len(t) / 4)) for t in inputs or [])
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _top_logprobs(body: dict[str, Any], *, chat: bool) -> int | None:
    """How many alternatives llama.cpp would give (chat: `top_logprobs` when `logprobs`; completions:
    `logprobs` as a number); None when no log probabilities were asked for."""
    if chat:
        return int(body.get("top_logprobs") or 20) if body.get("logprobs") is True else None
    n = body.get("logprobs")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _logprob(token: str, top: int) -> dict[str, Any]:
    """llama.cpp's entry for one token: the token itself first among its alternatives."""
    alts = [token, " maybe", " other", " else"][: max(top, 0)] + [f" alt{i}" for i in range(max(top - 4, 0))]
    return {
        "id": 1,
        "token": token,
        "bytes": list(token.encode()),
        "logprob": -0.5,
        "top_logprobs": [
            {"id": i, "token": t, "bytes": list(t.encode()), "logprob": -0.5 - i} for i, t in enumerate(alts)
        ],
    }
