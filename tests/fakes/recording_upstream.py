"""A fake backend that records every request (method, path, raw query, headers, body) and answers with fixed
bodies per path: llama.cpp's rerank, infill, tokenize and detokenize, OpenAI's audio and images, and an echo
for any other path (what /upstream/{model}/... tests need).

The multipart routes answer with what the form held, parsed by the standard library's email parser (an
oracle independent of ollamux's own form reader): each field's value, and each file's name, type, size and
sha256. The answer depends on what the proxy sends:
  rerank model "not-a-reranker"             -> 404 in llama.cpp's error envelope
  rerank model "plain-404"                  -> 404 with a plain-text body
  speech model "long-speech"                -> 3 MiB of audio, chunked (no Content-Length: the streamed relay)
  speech (anything else)                    -> AUDIO, 16 KiB of every byte value, as audio/mpeg
  form field model starting with "slow"     -> the echo after 0.5 s (concurrency gates)
  /status/{code}                            -> the echo with that status
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

AUDIO = bytes(range(256)) * 64  # every byte value, so a text decode or a newline rewrite anywhere shows
LONG_AUDIO = (bytes(range(255, -1, -1)) * 4096) * 3  # 3 MiB: more than the relay reads whole
RERANK_USAGE = {"prompt_tokens": 21, "total_tokens": 21}


@dataclass
class Seen:
    method: str
    path: str  # as it arrived, still percent-encoded
    query: str  # raw
    headers: CIMultiDict[str]  # as they arrived, looked up in any case
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RecordingUpstream:
    requests: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def by_rid(self, rid: str) -> list[Seen]:
        """The requests that carried this x-request-id (each test sends its own)."""
        return [s for s in self.requests if s.headers.get("X-Request-Id") == rid]

    def one(self, rid: str) -> Seen:
        seen = self.by_rid(rid)
        assert len(seen) == 1, f"{len(seen)} upstream requests for {rid}: {[s.path for s in seen]}"
        return seen[0]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        path = request.rel_url.raw_path
        seen = Seen(request.method, path, request.rel_url.raw_query_string, CIMultiDict(request.headers), raw)
        self.requests.append(seen)
        if path == "/v1/rerank":
            return _rerank(seen.json)
        if path in ("/infill", "/tokenize", "/detokenize"):
            return web.json_response(_LLAMA_ROOT[path])
        if path == "/v1/audio/speech":
            return await _speech(request, seen.json)
        if path in ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits"):
            if request.content_type != "multipart/form-data":
                return web.json_response({"path": path, "json": seen.json})
            form = _parse_form(request.headers["Content-Type"], raw)
            if str(form["fields"].get("model", "")).startswith("slow"):
                await asyncio.sleep(0.5)
            return web.json_response({"path": path, **form})
        if path == "/v1/images/generations":
            return web.json_response({"created": 1700000000, "data": [{"b64_json": "iVBORw0KGgo="}]})
        if path == "/health":
            return web.json_response({"status": "ok"})
        status = int(path.removeprefix("/status/")) if path.startswith("/status/") else 200
        echo = {"method": request.method, "path": path, "query": seen.query, "body": raw.decode("utf-8", "replace")}
        return web.json_response(echo, status=status)


_LLAMA_ROOT: dict[str, Any] = {
    "/infill": {"content": "    return a + b\n", "tokens_predicted": 7, "stop": True},
    "/tokenize": {"tokens": [28120, 905]},
    "/detokenize": {"content": "hello world"},
}


def _rerank(body: dict[str, Any]) -> web.Response:
    model = body.get("model")
    if model == "not-a-reranker":
        err = {"code": 404, "message": f"model '{model}' is not a reranker", "type": "not_found_error"}
        return web.json_response({"error": err}, status=404)
    if model == "plain-404":
        return web.Response(text="no such route here", status=404)
    docs = body["documents"]
    results = [{"index": i, "relevance_score": round(1.0 - i / len(docs), 3)} for i in range(len(docs))]
    return web.json_response({"model": model, "object": "list", "usage": RERANK_USAGE, "results": results})


async def _speech(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    if body.get("model") != "long-speech":
        return web.Response(body=AUDIO, content_type="audio/mpeg")
    resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(0, len(LONG_AUDIO), 256 * 1024):
        await resp.write(LONG_AUDIO[i : i + 256 * 1024])
    await resp.write_eof()
    return resp


def _parse_form(content_type: str, raw: bytes) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(data, bytes)
        filename = part.get_filename()
        if filename is None:
            fields[name] = data.decode()
        else:
            files[name] = {
                "filename": filename,
                "content_type": part.get_content_type(),
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
    return {"fields": fields, "files": files}
