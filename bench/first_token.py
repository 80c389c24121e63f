"""Time to the first token through ollamux against an upstream that streams slowly (#21).

The upstream (raw asyncio, keep-alive, chunked SSE) sends the headers, the role chunk at once, the first token
30 ms later, then one every 5 ms; the client asks for a stream on a new connection each time and reads it to
the end (a client leaving early would close ollamux's upstream connection), as bench/engine.py does. The
first token's wait is the upstream's 30 ms plus what the path adds: directly, through the 15-line
reference pass-through (reference_proxy.py) and through ollamux.

With `--nagle` the upstream leaves Nagle's algorithm on, as llama.cpp's server does: a small segment waits
until the one before it is acknowledged, and a kept-alive connection (ollamux's pooled upstream one; a
fresh connection acknowledges its first segments at once) acknowledges late, Linux delaying the ACK of a
request-response connection. Measured 2026-12-01: direct 32.9 ms, through ollamux 44.6 ms; re-arming
TCP_QUICKACK after every upstream read brought it to 34.4 ms. Not applied: it costs every read a
setsockopt and an ACK packet of its own, and the one Nagle-on server known here does not need it
(llama.cpp's server closes a connection at the end of each stream, and its whole answers, written in one
go, showed no delay: bench/README.md).

    PYTHONPATH=src .venv/bin/python bench/first_token.py [--requests 20] [--rounds 3] [--nagle]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import canned  # bench/canned.py, beside this file

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _sse(delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    event["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def upstream(nagle: bool) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(not nagle))
        try:
            while True:
                await canned.read_request(reader)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                await asyncio.sleep(0.001)
                writer.write(_chunk(_sse({"role": "assistant", "content": None})))
                await asyncio.sleep(0.03)
                for i in range(4):
                    writer.write(_chunk(_sse({"content": f"t{i}"})))
                    await asyncio.sleep(0.005)
                writer.write(_chunk(_sse({}, "stop") + b"data: [DONE]\n\n") + b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handle


async def first_token_ms(url: str) -> float:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        first: float | None = None
        t0 = time.perf_counter()
        async with s.post(url + "/v1/chat/completions", json=body) as resp:
            # read to the end: a client leaving early would close the proxy's upstream connection, and a new
            # connection acknowledges at once for its first segments, which hides the effect measured
            async for line in resp.content:
                if first is None and line.startswith(b"data:") and b'"content": "t' in line:
                    first = (time.perf_counter() - t0) * 1000
    if first is None:
        raise RuntimeError("no token came")
    return first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str) -> None:
    for _ in range(200):
        try:
            async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("ollamux did not start")


async def main(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(upstream(args.nagle), "127.0.0.1", 0)
    up = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = {
            "server": {"host": "127.0.0.1", "port": port},
            "backends": {"up": {"type": "openai", "url": up + "/v1"}},
            "models": {"m": {"backend": "up"}},
            "request_log": {"enabled": False},
        }
        (Path(tmp) / "c.yaml").write_text(json.dumps(cfg))
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        cmd = [
            sys.executable,
            "-m",
            "ollamux",
            "serve",
            "--config",
            str(Path(tmp) / "c.yaml"),
            "--log-level",
            "warning",
        ]
        ref_port = free_port()
        ref = [sys.executable, str(BENCH / "reference_proxy.py"), str(ref_port), up]
        procs = [
            subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL),  # noqa: ASYNC220 - once, at start
            subprocess.Popen(ref, stderr=subprocess.DEVNULL),  # noqa: ASYNC220
        ]
        try:
            await wait_ready(f"http://127.0.0.1:{port}")
            await asyncio.sleep(1)  # the reference has no /health
            urls = {"direct": up, "reference": f"http://127.0.0.1:{ref_port}", "ollamux": f"http://127.0.0.1:{port}"}
            got: dict[str, list[float]] = {name: [] for name in urls}
            for _ in range(args.rounds):
                for name, url in urls.items():
                    for _ in range(args.requests):
                        got[name].append(await first_token_ms(url))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    server.close()
    nagle = "on" if args.nagle else "off (TCP_NODELAY)"
    print(f"upstream Nagle {nagle}; first token at 30 ms; {args.rounds} x {args.requests} requests each")
    print("| path | first token p50 ms | p90 ms |\n|---|---:|---:|")
    for name, v in got.items():
        v.sort()
        print(f"| {name} | {statistics.median(v):.1f} | {v[int(len(v) * 0.9)]:.1f} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--nagle", action="store_true", help="the upstream leaves Nagle's algorithm on")
    asyncio.run(main(p.parse_args()))
