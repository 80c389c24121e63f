"""What one upstream request costs the HTTP client, in CPU instructions: aiohttp's ClientSession against
ollamux's own `backends/wire.Pool`, each against the same raw-socket upstream in one process (#21).

    PYTHONPATH=src .venv/bin/python bench/client_cost.py            # both clients, JSON and a 50-event stream
    PYTHONPATH=src .venv/bin/python bench/client_cost.py --timed    # CPU seconds instead (noisier)

Instructions come from `valgrind --tool=callgrind` on this script run at 100 and at 500 requests, the
difference / 400 (start-up cancels out). The upstream's share is in both figures alike; the difference
between the rows is the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time

import aiohttp
import canned  # bench/canned.py, beside this file
import uvloop

from ollamux.backends.wire import Pool

BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def run(client: str, requests: int, stream: bool) -> None:
    srv = await asyncio.start_server(canned.chat_upstream, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1/chat/completions"
    body = STREAM_BODY if stream else BODY
    if client == "aiohttp":  # configured as ollamux configured it before wire.py
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        ) as session:
            for _ in range(requests):
                resp = await session.request("POST", url, data=body, headers=HEADERS)
                while await resp.content.readany():
                    pass
                resp.release()
    else:
        pool = Pool()
        for _ in range(requests):
            answer = await pool.request("POST", url, HEADERS, body, connect_timeout=10.0, total=600.0)
            while await answer.readany():
                pass
            answer.release()
        await pool.close()
    srv.close()


def instructions(client: str, requests: int, stream: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", sys.executable, __file__]
            + ["--one", client, "--requests", str(requests)]
            + (["--stream"] if stream else []),
            capture_output=True,
            text=True,
            check=True,
            env=os.environ,
        )
    m = re.search(r"Collected : (\d+)", out.stderr)
    assert m, out.stderr[-2000:]
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timed", action="store_true", help="CPU seconds per request instead of instructions")
    ap.add_argument("--requests", type=int, default=3000, help="with --timed (or --one)")
    ap.add_argument("--one", choices=("aiohttp", "wire"), help=argparse.SUPPRESS)  # one run (under valgrind)
    ap.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        uvloop.run(run(args.one, args.requests, args.stream))
        return
    print("| client | answer | per request |\n|---|---|---:|")
    for stream in (False, True):
        for client in ("aiohttp", "wire"):
            what = "50-event stream" if stream else "JSON"
            if args.timed:
                t0 = time.process_time()
                uvloop.run(run(client, args.requests, stream))
                us = (time.process_time() - t0) / args.requests * 1e6
                print(f"| {client} | {what} | {us:.1f} us |", flush=True)
            else:
                n = (instructions(client, 500, stream) - instructions(client, 100, stream)) // 400
                print(f"| {client} | {what} | {n / 1e3:.0f} K instructions |", flush=True)


if __name__ == "__main__":
    main()
