"""The Python reference: a minimal pass-through (aiohttp server + one aiohttp client + uvloop).

`python bench/reference_proxy.py PORT UPSTREAM_BASE` relays every POST to UPSTREAM_BASE + path, streaming
the answer back as it arrives. No parsing, no routing, no logging: what any Python proxy costs at least.
"""

import sys

import aiohttp
import uvloop
from aiohttp import web


async def relay(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app["session"]
    body = await request.read()
    headers = {"Content-Type": "application/json"}
    async with session.post(request.app["upstream"] + request.path, data=body, headers=headers) as up:
        resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers["Content-Type"]})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app["upstream"] = upstream.rstrip("/")
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    app.router.add_post("/{tail:.*}", relay)
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(sys.argv[2]),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=None,
    )
