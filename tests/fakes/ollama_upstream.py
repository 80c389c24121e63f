"""A fake Ollama server: a real aiohttp server speaking the native API (NDJSON) with scripted answers.

The answer depends on the model name the proxy sends upstream:
  "tools"       -> a tool call (whole, object arguments, in a done:false chunk), done_reason "stop"
  "think"       -> thinking deltas, then content
  "length"      -> done_reason "length"
  "bad-request" -> 400 {"error": ...}
  "midstream"   -> one content chunk, then an {"error": ...} line
  "empty"       -> only the final done line
  anything else -> "Hello from Ollama!" in three chunks, then the final line with metrics
Every request is recorded (path, headers, raw body) for capture assertions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .capture import Captured, Recorder

CONTENT = ["Hello", " from", " Ollama!"]
TEXT = ["Once", " upon", " a time"]
CREATED = "2025-07-07T20:22:19.184789123Z"
METRICS = {
    "total_duration": 5_000_000,
    "load_duration": 1_000_000,
    "prompt_eval_count": 7,
    "prompt_eval_duration": 2_000_000,
    "eval_count": 3,
    "eval_duration": 2_000_000,
}
TOOL_CALL = {
    "id": "call_x1y2z3w4",
    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo", "unit": "c"}},
}
DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": "qwen3",
    "families": ["qwen3"],
    "parameter_size": "8.2B",
    "quantization_level": "Q4_K_M",
}


def line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


@dataclass
class FakeOllama(Recorder):
    models: list[str] = field(default_factory=lambda: ["qwen3:latest", "tools:latest", "think:latest", "nomic:v1"])

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/", self.banner)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_post("/api/show", self.show)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_post("/api/embed", self.embed)
        app.router.add_post("/api/embeddings", self.embeddings)
        return app

    # ----------------------------------------------------------------------------------- catalogue
    async def banner(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0"})

    async def tags(self, request: web.Request) -> web.Response:
        self.requests.append(Captured(request.path, dict(request.headers), b""))
        items = [
            {
                "name": m,
                "model": m,
                "modified_at": "2025-05-10T08:06:48.639712648-07:00",
                "size": 5_000_000_000,
                "digest": "ab" * 32,
                "details": DETAILS,
            }
            for m in self.models
        ]
        return web.json_response({"models": items})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "models": [
                    {
                        "name": "qwen3:latest",
                        "model": "qwen3:latest",
                        "size": 6_000_000_000,
                        "digest": "ab" * 32,
                        "details": DETAILS,
                        "expires_at": "2099-01-01T00:00:00Z",
                        "size_vram": 6_000_000_000,
                        "context_length": 40960,
                    },
                    {
                        "name": "not-ours:latest",
                        "model": "not-ours:latest",
                        "size": 1,
                        "digest": "cd" * 32,
                        "details": DETAILS,
                        "expires_at": "2099-01-01T00:00:00Z",
                        "size_vram": 0,
                        "context_length": 2048,
                    },
                ]
            }
        )

    async def show(self, request: web.Request) -> web.Response:
        body = await self._capture(request)
        model = body.get("model") or body.get("name")
        if model not in self.models and f"{model}:latest" not in self.models:
            return web.json_response({"error": f"model '{model}' not found"}, status=404)
        return web.json_response(
            {
                "modelfile": "# from the fake",
                "parameters": "num_ctx                        40960",
                "template": "{{ .Prompt }}",
                "details": DETAILS,
                "model_info": {"general.architecture": "qwen3", "qwen3.context_length": 40960},
                "capabilities": ["completion", "tools", "thinking"],
                "modified_at": CREATED,
            }
        )

    # ---------------------------------------------------------------------------------- generation
    async def _begin(self, request: web.Request) -> tuple[dict[str, Any], str, web.Response | None]:
        """The request body, the model asked (without :latest), and the scripted refusal if any."""
        body = await self._capture(request)
        model = str(body.get("model", "")).removesuffix(":latest")
        return body, model, await self._error(model)

    async def _error(self, model: str) -> web.Response | None:
        if model == "bad-request":
            return web.json_response({"error": "the request is bad: temperature too hot"}, status=400)
        if model not in {m.split(":")[0] for m in self.models} | {"length", "midstream", "empty", "plain"}:
            return web.json_response({"error": f"model '{model}' not found"}, status=404)
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, model, err = await self._begin(request)
        if err is not None:
            return err
        reason = "length" if model == "length" else "stop"
        head = {"model": body.get("model"), "created_at": CREATED}
        parts: list[dict[str, Any]] = []
        if model == "think":
            parts += [{"role": "assistant", "content": "", "thinking": t} for t in ("Let me", " think.")]
        if model == "tools":
            parts.append({"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]})
        elif model != "empty":
            parts += [{"role": "assistant", "content": c} for c in CONTENT]
        final = {
            **head,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reason,
            **METRICS,
        }
        if body.get("stream") is False:
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(p.get("content", "") for p in parts)}
            thinking = "".join(p.get("thinking", "") for p in parts)
            if thinking:
                msg["thinking"] = thinking
            calls = [c for p in parts for c in p.get("tool_calls", [])]
            if calls:
                msg["tool_calls"] = calls
            return web.json_response({**final, "message": msg})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for i, p in enumerate(parts):
            await resp.write(line({**head, "message": p, "done": False}))
            if model == "midstream" and i == 0:
                await resp.write(line({"error": "the model crashed"}))
                await resp.write_eof()
                return resp
        await resp.write(line(final))
        await resp.write_eof()
        return resp

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body, model, err = await self._begin(request)
        if err is not None:
            return err
        reason = "length" if model == "length" else "stop"
        head = {"model": body.get("model"), "created_at": CREATED}
        final = {**head, "response": "", "done": True, "done_reason": reason, **METRICS}
        if body.get("stream") is False:
            return web.json_response({**final, "response": "".join(TEXT)})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for t in TEXT:
            await resp.write(line({**head, "response": t, "done": False}))
        await resp.write(line(final))
        await resp.write_eof()
        return resp

    async def embed(self, request: web.Request) -> web.Response:
        body = await self._capture(request)
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        vectors = [[0.5, 0.5, 0.5, 0.5 if i % 2 == 0 else -0.5] for i, _ in enumerate(inputs or [])]
        return web.json_response(
            {
                "model": body.get("model"),
                "embeddings": vectors,
                "total_duration": 1000,
                "load_duration": 10,
                "prompt_eval_count": 2 * len(vectors),
            }
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        await self._capture(request)
        return web.json_response({"embedding": [1.0, 2.0, 3.0]})
