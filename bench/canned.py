"""The fixed answers of the in-process harnesses' raw-socket upstreams, and how those upstreams read a request.

One OpenAI chat answer, the 50-event token stream llama-server would send for it, one embedding; and
`read_request`, the keep-alive HTTP/1.1 request reader each upstream loops on (cpu_per_request.py,
observe_cost.py, first_token.py, shared_limits_cpu.py).
"""

from __future__ import annotations

import asyncio

import orjson

CHAT = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
)
_EVENTS = [
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
    }
    for i in range(49)
] + [
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 49, "total_tokens": 54},
    }
]
STREAM = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in _EVENTS) + b"data: [DONE]\n\n"
EMBEDDING = orjson.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.001 * i for i in range(384)]}],
        "model": "m",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
)


def answer(content_type: str, body: bytes) -> bytes:
    """A whole HTTP/1.1 200 answer with a Content-Length."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (content_type.encode(), len(body))
    return head + body


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next request on a keep-alive connection: (its head, its body by Content-Length). Raises
    asyncio.IncompleteReadError when the client closes."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


_CHAT_ANSWER = answer("application/json", CHAT)
_CHAT_STREAM = answer("text/event-stream", STREAM)


async def chat_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive HTTP/1.1 that answers every request with the same chat completion, or with the 50-event
    stream when the body asks for one (cpu_per_request.py, client_cost.py)."""
    try:
        while True:
            _, body = await read_request(reader)
            writer.write(_CHAT_STREAM if b'"stream":true' in body else _CHAT_ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
