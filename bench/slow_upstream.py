"""A slow-streaming OpenAI-shaped upstream in raw asyncio, for the 1,000-concurrent-streams memory run.

`python bench/slow_upstream.py PORT INTERVAL COUNT`: every POST (any path) is answered with an SSE stream of
COUNT chat-completion chunks, one every INTERVAL seconds, then `data: [DONE]`. Keep-alive, chunked encoding.
nginx cannot stream slowly, hence this; it costs next to nothing per open stream.
"""

from __future__ import annotations

import asyncio
import sys

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
EVENT = (
    b'data: {"id":"chatcmpl-slow","object":"chat.completion.chunk","created":1700000000,"model":"bench-slow",'
    b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
)
LAST = (
    b'data: {"id":"chatcmpl-slow","object":"chat.completion.chunk","created":1700000000,"model":"bench-slow",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\n\ndata: [DONE]\n\n'
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, interval: float, count: int) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            writer.write(HEAD)
            for _ in range(count):
                writer.write(chunk(EVENT))
                await writer.drain()
                await asyncio.sleep(interval)
            writer.write(chunk(LAST) + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main(port: int, interval: float, count: int) -> None:
    server = await asyncio.start_server(lambda r, w: serve(r, w, interval, count), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))
