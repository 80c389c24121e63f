"""A fake llama-server whose tokenizer reads back what it wrote: `FakeOpenAI` with llama.cpp's
`/tokenize`, `/detokenize` and `/apply-template` over a byte-level vocabulary (a token is one UTF-8 byte,
so ids map back to their text exactly) and a ChatML template, as SmolLM2's.

What an exchange's `context` must hold is then computable in a test: the bytes of the template over the
messages that were sent, and of the answer. An id outside the vocabulary (>= 256) is llama.cpp's 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .openai_upstream import FakeOpenAI


def chatml(messages: list[dict[str, Any]]) -> str:
    """The fake model's template, with the generation prompt (llama.cpp's /apply-template output)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # parts: their text (an image is llama.cpp's media marker)
            content = "".join(p.get("text", "<__media__>") for p in content if isinstance(p, dict))
        out.append(f"<|im_start|>{m['role']}\n{content or ''}<|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n"


def tokens(text: str) -> list[int]:
    return list(text.encode())


@dataclass
class FakeTokenizer(FakeOpenAI):
    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/apply-template", self.apply_template)
        return app

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await self._capture(request)
        return web.json_response({"tokens": tokens(str(body.get("content", "")))})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await self._capture(request)
        ids = body.get("tokens") or []
        if any(not 0 <= t < 256 for t in ids):
            return web.json_response({"error": {"code": 500, "message": "vector::_M_range_check"}}, status=500)
        return web.json_response({"content": bytes(ids).decode("utf-8", "replace")})

    async def apply_template(self, request: web.Request) -> web.Response:
        body = await self._capture(request)
        return web.json_response({"prompt": chatml(body["messages"])})
