"""What the server layer alone costs: the same minimal pass-through on three Python HTTP servers (#21).

ollamux is an aiohttp web application; the 15-line reference it is measured against (reference_proxy.py) is
one too, so "at least 100% of the reference" is bounded by the framework both share. This measures the
ceiling each candidate server layer gives, with the same aiohttp client and uvloop behind each:
  aiohttp-web       web.Application + router (reference_proxy.py, what ollamux runs on)
  aiohttp-lowlevel  aiohttp's low-level web.Server: one handler, no router, no middleware machinery
  granian-rsgi      granian (a Rust HTTP server) calling an RSGI app, one worker, uvloop
Each relays POSTs to nginx's fixed answers (bench.py's upstream), loaded by wrk at 32 connections, JSON
and SSE (50 events), one after another in the same run, best of `--rounds`.

    .venv/bin/python bench/server_layers.py [--duration 5] [--rounds 2]   (granian: pip install granian)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

import bench as b  # bench/bench.py: nginx, wrk, process helpers

UPSTREAM_ENV = "LAYERS_UPSTREAM"


# ------------------------------------------------------------------------------------ the candidates
def serve_lowlevel(port: int, upstream: str) -> None:
    import uvloop
    from aiohttp import web

    async def main() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

        async def relay(request: web.BaseRequest) -> web.StreamResponse:
            body = await request.read()
            headers = {"Content-Type": "application/json"}
            async with session.post(upstream + request.path, data=body, headers=headers) as up:
                resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.headers["Content-Type"]})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp

        server = web.Server(relay, access_log=None)
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        await asyncio.Event().wait()

    import asyncio

    uvloop.run(main())


class RSGIRelay:
    """The pass-through as an RSGI app (granian's native interface), with the same aiohttp client."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.session: aiohttp.ClientSession | None = None

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if self.session is None:  # made on granian's loop, at the first request
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        body = await proto()
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.upstream + scope.path, data=body, headers=headers) as up:
            out = proto.response_stream(up.status, [("content-type", up.headers["Content-Type"])])
            async for chunk in up.content.iter_any():
                await out.send_bytes(chunk)


def rsgi_app() -> RSGIRelay:
    import os

    return RSGIRelay(os.environ[UPSTREAM_ENV])


# ------------------------------------------------------------------------------------------ the run
def commands(port: int, upstream: str) -> dict[str, list[str]]:
    here = str(b.BENCH)
    cmds = {
        "aiohttp-web": [b.PY, str(b.BENCH / "reference_proxy.py"), str(port), upstream],
        "aiohttp-lowlevel": [b.PY, __file__, "serve-lowlevel", str(port), upstream],
    }
    if importlib.util.find_spec("granian") is not None:
        cmds["granian-rsgi"] = [
            b.PY, "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning", "--working-dir", here,
            "--factory", "server_layers:rsgi_app",
        ]  # fmt: skip
    return cmds


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "serve-lowlevel":
        serve_lowlevel(int(argv[1]), argv[2])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--conns", type=int, default=32)
    args = p.parse_args(argv)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ollamux-layers-") as tmp:
        work = Path(tmp)
        b.write_canned(work)
        up_port = b.free_port()
        (work / "nginx.conf").write_text(b.nginx_conf(work, up_port))
        nginx = b.Proc("nginx", ["nginx", "-c", str(work / "nginx.conf"), "-g", "daemon off;"], up_port, work)
        nginx.wait_ready(10)
        try:
            for name, _ in commands(0, "").items():
                port = b.free_port()
                cmd = commands(port, f"http://127.0.0.1:{up_port}")[name]
                proc = b.Proc(name, cmd, port, work, env={UPSTREAM_ENV: f"http://127.0.0.1:{up_port}"})
                try:
                    proc.wait_ready(20)
                    for scenario, path, req in (
                        ("json", "/v1/chat/completions", "req_openai"),
                        ("sse", "/sse/v1/chat/completions", "req_openai_stream"),
                    ):
                        best: dict[str, Any] | None = None
                        for _ in range(args.rounds):
                            cpu0 = proc.cpu()
                            w = b.run_wrk(proc.url + path, work / f"{req}.json", args.conns, args.duration)
                            cpu = proc.cpu() - cpu0
                            w["rps"] = w["requests"] / (w["duration_us"] / 1e6)
                            w["p50_ms"] = w["p50_us"] / 1000
                            errors = sum(w[k] for k in ("connect_errors", "read_errors", "status_errors", "timeouts"))
                            if errors:
                                print(f"{name} {scenario}: {errors} errors", file=sys.stderr)
                            w["cpu_us_per_req"] = cpu / max(1, w.get("requests", 0)) * 1e6
                            if best is None or w["rps"] > best["rps"]:
                                best = w
                        assert best is not None
                        results.append({"layer": name, "scenario": scenario, **best})
                        print(
                            f"{name:17} {scenario:4} {best['rps']:>9,.0f} req/s  p50 {best['p50_ms']:.2f} ms"
                            f"  {best['cpu_us_per_req']:.0f} us CPU/req",
                            file=sys.stderr,
                        )
                finally:
                    proc.stop()
        finally:
            nginx.stop()
    base = {r["scenario"]: r["rps"] for r in results if r["layer"] == "aiohttp-web"}
    print("| server layer | scenario | req/s | % of aiohttp-web | p50 ms | CPU us/req |\n|---|---|---:|---:|---:|---:|")
    for r in results:
        share = 100 * r["rps"] / base[r["scenario"]] if base.get(r["scenario"]) else 0
        print(
            f"| {r['layer']} | {r['scenario']} c={args.conns} | {r['rps']:,.0f} | {share:.0f}% "
            f"| {r['p50_ms']:.2f} | {r['cpu_us_per_req']:.0f} |"
        )
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
