"""What a rate limit costs per request: none, in-process buckets, and buckets shared in Redis.

One process, one loop, one connection (as cpu_per_request.py, with the same raw-socket upstream,
canned.chat_upstream), so the numbers compare the three setups within one run. Starts Debian's
redis-server on a free loopback port.
    PYTHONPATH=src .venv/bin/python bench/shared_limits_cpu.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import aiohttp
import orjson
import uvloop
from aiohttp import web
from canned import chat_upstream as upstream

from ollamux import create_app
from ollamux.config import parse_settings

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
KEY = "sk-bench-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(config: dict[str, Any], requests: int, rounds: int) -> tuple[float, float]:
    """Best of `rounds`: (CPU us per request, wall us per request)."""
    runner = web.AppRunner(create_app(parse_settings(config, dict(os.environ))))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    best = (float("inf"), float("inf"))
    async with aiohttp.ClientSession() as client:
        for _ in range(rounds):
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(requests):
                async with client.post(url, data=BODY, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
            cpu = (time.process_time() - c0) / requests * 1e6
            wall = (time.perf_counter() - w0) / requests * 1e6
            best = (min(best[0], cpu), min(best[1], wall))
    await runner.cleanup()
    return best


async def main(redis_port: int, requests: int = 2000, rounds: int = 3) -> None:
    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = up.sockets[0].getsockname()[1]
    base: dict[str, Any] = {
        "backends": {"b": {"url": f"http://127.0.0.1:{port}/v1"}},
        "models": {"m": {"backend": "b"}},
        "request_log": {"enabled": False},
        "metrics": {"enabled": False},
    }
    limited = {"key": KEY, "requests_per_minute": 1e9, "tokens_per_minute": 1e12}
    setups = {
        "keys, no limit": {**base, "auth": {"keys": {"k": {"key": KEY}}}},
        "local limits": {**base, "auth": {"keys": {"k": limited}}},
        "shared limits (Redis)": {
            **base,
            "auth": {"keys": {"k": limited}},
            "shared_state": {"redis_url": f"redis://127.0.0.1:{redis_port}/0"},
        },
    }
    try:
        for name, config in setups.items():
            cpu, wall = await run(config, requests, rounds)
            print(f"{name:24} {cpu:7.1f} us CPU per request, {wall:7.1f} us wall per request (1 connection)")
    finally:
        up.close()


if __name__ == "__main__":
    redis_port = _free_port()
    workdir = tempfile.mkdtemp()
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    redis = subprocess.Popen(
        [server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    try:
        uvloop.install()
        asyncio.run(main(redis_port))
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)
