"""A tiny OpenAI-compatible model server for the ModelManager's tests (a `runtime: {cmd: [...]}` model).

    python tests/fakes/tiny_model_server.py --port N [--ctx N] [--delay S] [--crash] [--record FILE]

`GET /health` answers 200 once it listens, `POST /v1/chat/completions` a fixed answer. `--delay` sleeps
before listening (a slow model load), `--crash` prints a few lines and exits 3 (a bad model file),
`--record` appends "pid ctx" to FILE at start, so a test can count the processes started and their
contexts. `--stream-delay S` sends a streamed answer one event at a time (chunked), S seconds apart, so a
test can act while streams are in flight. Plain asyncio rather than aiohttp: it is up in ~50 ms instead of ~300.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

_DONE = b"data: [DONE]\n\n"


def _events(chat: dict[str, object]) -> list[dict[str, object]]:
    """The fixed answer as chat.completion.chunk events: the role, the text, the finish, the usage."""
    head = {"id": chat["id"], "object": "chat.completion.chunk", "created": chat["created"], "model": "tiny"}
    return [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": chat["usage"]},
    ]


async def _trickle(writer: asyncio.StreamWriter, chat: dict[str, object], delay: float) -> None:
    """The streamed answer as HTTP chunks, one event each, `delay` seconds apart."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    frames = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in _events(chat)] + [_DONE]
    for frame in frames:
        writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        await writer.drain()
        await asyncio.sleep(delay)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def serve(args: argparse.Namespace) -> None:
    chat = {
        "id": "chatcmpl-tiny",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "tiny",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: the manager's client reuses its connections
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path, _ = head[0].split(" ", 2)
                length = sum(int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:"))
                raw = await reader.readexactly(length)
                status = "200 OK"
                body: dict[str, Any] | None = {"status": "ok", "ctx": args.ctx, "pid": os.getpid()}
                ctype = "application/json"
                if method == "POST" and path == "/v1/chat/completions":
                    body = chat
                    if raw and json.loads(raw).get("stream"):  # the same answer as an SSE stream
                        ctype, body = "text/event-stream", None
                elif path != "/health":
                    status, body = "404 Not Found", {"error": {"message": f"no route {path}"}}
                if body is None and args.stream_delay > 0:
                    await _trickle(writer, chat, args.stream_delay)
                    continue
                if body is None:
                    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in _events(chat)) + _DONE
                    writer.write(
                        f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                        + data
                    )
                    await writer.drain()
                    continue
                data = json.dumps(body).encode()
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ctx", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--crash", action="store_true")
    p.add_argument("--record")
    p.add_argument("--stream-delay", type=float, default=0.0)
    args = p.parse_args()
    if args.record:
        with open(args.record, "a") as f:
            f.write(f"{os.getpid()} {args.ctx}\n")
    if args.crash:
        print("tiny_model_server: loading model", flush=True)
        print("tiny_model_server: error: boom, the model file is corrupt", file=sys.stderr, flush=True)
        sys.exit(3)
    time.sleep(args.delay)
    asyncio.run(serve(args))  # SIGTERM's default action ends it at once, as the manager expects


if __name__ == "__main__":
    main()
