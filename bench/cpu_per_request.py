"""CPU per request of ollamux in one process, against a raw-socket upstream: a quieter A/B than wrk.

Client, proxy and upstream share one process and one loop, so the client's cost is in every number alike;
what differs between two trees is ollamux's own. Compare an older commit with the working tree:
    git worktree add /tmp/old <commit>
    (cd /tmp/old && PYTHONPATH=src /path/to/.venv/bin/python /path/to/bench/cpu_per_request.py)
    PYTHONPATH=src .venv/bin/python bench/cpu_per_request.py
`--observed` turns the request log (SQLite, in a temp dir) and metrics on, as users run it (the CPU of a log
writer in another process is not counted); `--reference` measures bench/reference_proxy.py instead, the floor.
The last lines give each case's minimum over the rounds: compare those.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from typing import Any

import aiohttp
import canned  # bench/canned.py, beside this file
import orjson
import uvloop
from aiohttp import web

from ollamux import create_app
from ollamux.config import parse_settings

HERE = os.path.dirname(os.path.abspath(__file__))  # reference_proxy.py's folder
# the requests; canned.chat_upstream answers them (the 50-event stream llama-server would send for stream: true)
CASES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/chat", {"model": "m", "stream": False, "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/chat", {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
]


async def main(requests: int = 3000, rounds: int = 3, *, observed: bool = False, reference: bool = False) -> None:
    up = await asyncio.start_server(canned.chat_upstream, "127.0.0.1", 0)
    port = up.sockets[0].getsockname()[1]
    tmp = tempfile.TemporaryDirectory()
    config: dict[str, Any] = {
        "backends": {"b": {"url": f"http://127.0.0.1:{port}/v1"}},
        "models": {"m": {"backend": "b"}},
        "request_log": {"path": f"{tmp.name}/requests.sqlite"} if observed else {"enabled": False},
        "metrics": {"enabled": observed},
    }
    if reference:
        sys.path.insert(0, HERE)
        from reference_proxy import make_app

        app = await make_app(f"http://127.0.0.1:{port}")
    else:
        app = create_app(parse_settings(config, dict(os.environ)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxy_port = runner.addresses[0][1]
    best: dict[str, float] = {}
    async with aiohttp.ClientSession() as client:
        for path, body in CASES:
            kind = "stream" if body.get("stream") else "json"
            name = f"{path} {kind}"
            # the reference relays bytes: its Ollama rows get the same OpenAI answer as the /v1 rows
            url = f"http://127.0.0.1:{proxy_port}{'/v1/chat/completions' if reference else path}"
            data = orjson.dumps(body)
            for _ in range(rounds):
                t0 = time.process_time()
                for _ in range(requests):
                    async with client.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
                        assert r.status == 200, await r.text()
                        await r.read()
                us = (time.process_time() - t0) / requests * 1e6
                best[name] = min(best.get(name, us), us)
                print(f"{name}: {us:.1f} us of CPU per request")
    await runner.cleanup()
    if reference:
        await app["session"].close()
    up.close()
    tmp.cleanup()
    for name, us in best.items():
        print(f"min {name}: {us:.1f} us")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--observed", action="store_true", help="request log and metrics on")
    ap.add_argument("--reference", action="store_true", help="bench/reference_proxy.py instead of ollamux")
    args = ap.parse_args()
    uvloop.install()
    asyncio.run(main(args.requests, args.rounds, observed=args.observed, reference=args.reference))
