"""The ollamux benchmark: every stack, every scenario, one run, one table (see bench/README.md).

Run it through `bench/run`, which installs nginx, wrk and (optionally) the LiteLLM proxy first. It starts:
nginx as the fixed-answer upstream, the minimal aiohttp pass-through (bench/reference_proxy.py), ollamux as a
user runs it (request log and metrics on), ollamux with both off, and the LiteLLM proxy when installed; then
loads each with wrk, one scenario at a time, and opens 1,000 slow streams through ollamux and the reference
to measure memory. Only loopback addresses are used; every load is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import engine as engine_bench  # bench/engine.py, beside this file (the script's folder is on sys.path)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LITELLM_BIN = Path.home() / ".cache" / "ollamux" / "bench-venv" / "bin" / "litellm"
PY = sys.executable

STACKS = ("direct", "reference", "ollamux", "ollamux-bare", "litellm")
# not run unless named in --stacks: what the request log and the metrics each cost, one switched on at a time
EXTRA_STACKS = ("ollamux-log", "ollamux-metrics", "ollamux-granian-bridge", "ollamux-granian-native")
STACK_TITLES = {
    "direct": "upstream directly (nginx)",
    "reference": "reference pass-through (aiohttp, 15 lines)",
    "ollamux": "ollamux (request log + metrics on)",
    "ollamux-bare": "ollamux (request log + metrics off)",
    "ollamux-log": "ollamux (request log on, metrics off)",
    "ollamux-metrics": "ollamux (metrics on, request log off)",
    "ollamux-granian-bridge": "ollamux's app on granian through a request bridge (granian_bridge.py; log + metrics on)",
    "ollamux-granian-native": "ollamux's /v1 pass-through on granian, the rest bridged (granian_native.py)",
    "litellm": "LiteLLM proxy (1 worker)",
}
SSE_CHUNKS = 50
EMBED_DIMS = 384


# ----------------------------------------------------------------------------------------- canned data
def _chat_json() -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! This is a fixed answer from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 12, "total_tokens": 24},
    }


def _sse_chunk(i: int) -> dict[str, Any]:
    last = i == SSE_CHUNKS - 1
    chunk: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-stream",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "tok "} if i == 0 else {"content": f"tok{i} "},
                "finish_reason": "stop" if last else None,
            }
        ],
    }
    if last:
        chunk["usage"] = {"prompt_tokens": 12, "completion_tokens": SSE_CHUNKS, "total_tokens": 12 + SSE_CHUNKS}
    return chunk


def _ollama_line(i: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "bench-model",
        "created_at": "2024-01-01T00:00:00.000000Z",
        "message": {"role": "assistant", "content": "Hello! A fixed answer." if i is None else f"tok{i} "},
        "done": i is None or i == SSE_CHUNKS - 1,
    }
    if out["done"]:
        out.update(
            done_reason="stop",
            total_duration=1000,
            load_duration=0,
            prompt_eval_count=12,
            prompt_eval_duration=100,
            eval_count=12,
            eval_duration=900,
        )
    return out


def write_canned(d: Path) -> None:
    """The upstream's answers and the requests' bodies."""
    dumps = json.dumps
    (d / "chat.json").write_text(dumps(_chat_json()))
    sse = "".join(f"data: {dumps(_sse_chunk(i), separators=(',', ':'))}\n\n" for i in range(SSE_CHUNKS))
    (d / "chat.sse").write_text(sse + "data: [DONE]\n\n")
    vec = [round(((i * 7919) % 1000) / 1000 - 0.5, 6) for i in range(EMBED_DIMS)]
    (d / "embeddings.json").write_text(
        dumps(
            {
                "object": "list",
                "model": "bench-model",
                "data": [{"object": "embedding", "index": 0, "embedding": vec}],
                "usage": {"prompt_tokens": 5, "total_tokens": 5},
            }
        )
    )
    (d / "ollama_chat.json").write_text(dumps(_ollama_line(None)))
    (d / "ollama_chat.ndjson").write_text("".join(dumps(_ollama_line(i)) + "\n" for i in range(SSE_CHUNKS)))
    msgs = [{"role": "user", "content": "Say hello in one short sentence."}]
    bodies = {
        "req_openai": {"model": "bench-model", "messages": msgs, "max_tokens": 64},
        "req_openai_stream": {"model": "bench-stream", "messages": msgs, "max_tokens": 64, "stream": True},
        "req_ollama": {"model": "bench-model", "messages": msgs, "stream": False},
        "req_ollama_stream": {"model": "bench-stream", "messages": msgs, "stream": True},
        "req_embed": {"model": "bench-model", "input": "The quick brown fox jumps over the lazy dog."},
        "req_slow_openai": {"model": "bench-slow", "messages": msgs, "stream": True},
        "req_slow_ollama": {"model": "bench-slow", "messages": msgs, "stream": True},
    }
    for name, body in bodies.items():
        (d / f"{name}.json").write_text(dumps(body))


def nginx_conf(d: Path, port: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""

    # static files refuse POST with 405; `error_page 405 =200 $uri` re-serves the file as a GET with 200
    def loc(path: str, file: str, ctype: str) -> str:
        return f"    location = {path} {{ default_type '{ctype}'; alias {d / file}; error_page 405 =200 $uri; }}\n"

    return (
        f"{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n"
        "events { worker_connections 8192; }\n"
        "http {\n"
        "  access_log off;\n  types {}\n  sendfile on;\n  tcp_nodelay on;\n"
        "  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  etag off;\n"
        f"  client_body_temp_path {d}/t1;\n  proxy_temp_path {d}/t2;\n  fastcgi_temp_path {d}/t3;\n"
        f"  uwsgi_temp_path {d}/t4;\n  scgi_temp_path {d}/t5;\n"
        f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        + loc("/v1/chat/completions", "chat.json", "application/json")
        + loc("/sse/v1/chat/completions", "chat.sse", "text/event-stream")
        + loc("/v1/embeddings", "embeddings.json", "application/json")
        + loc("/sse/v1/embeddings", "embeddings.json", "application/json")
        + loc("/api/chat", "ollama_chat.json", "application/json; charset=utf-8")
        + loc("/stream/api/chat", "ollama_chat.ndjson", "application/x-ndjson")
        + "  }\n}\n"
    )


def ollamux_conf(d: Path, port: int, up: int, slow: int, *, log: bool, metrics: bool, metrics_key: bool) -> str:
    lines = [
        f"server: {{host: 127.0.0.1, port: {port}, shutdown_grace: 1}}",
        "backends:",
        f"  json: {{type: openai, url: 'http://127.0.0.1:{up}/v1', dialect: openai}}",
        f"  sse: {{type: openai, url: 'http://127.0.0.1:{up}/sse/v1', dialect: openai}}",
        f"  slow: {{type: openai, url: 'http://127.0.0.1:{slow}/v1', dialect: openai}}",
        "models:",
        "  bench-model: {backend: json}",
        "  bench-stream: {backend: sse}",
        "  bench-slow: {backend: slow}",
    ]
    if log:
        lines.append(f"request_log: {{path: '{d}/requests-{port}.sqlite'}}")
    else:
        lines.append("request_log: {enabled: false}")
    if not metrics and metrics_key:
        lines.append("metrics: {enabled: false, backend_probe_interval: 0}")
    return "\n".join(lines) + "\n"


def litellm_conf(up: int) -> str:
    def model(name: str, base: str) -> str:
        return (
            f"  - model_name: {name}\n    litellm_params:\n      model: openai/{name}\n"
            f"      api_base: http://127.0.0.1:{up}{base}\n      api_key: sk-bench\n"
        )

    return (
        "model_list:\n"
        + model("bench-model", "/v1")
        + model("bench-stream", "/sse/v1")
        + "litellm_settings:\n  drop_params: true\n  telemetry: false\n"
    )


# -------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pids: list[int], key: str = "VmRSS") -> float:
    return round(sum(status_kb(p, key) for p in pids) / 1024, 1)


class Proc:
    """A server this bench started, in its own process group, stopped by its id at the end."""

    def __init__(self, name: str, cmd: list[str], port: int, logdir: Path, env: dict[str, str] | None = None):
        self.name, self.port = name, port
        self.log = logdir / f"{name}.log"
        full_env = {**os.environ, **(env or {})}
        with self.log.open("wb") as f:
            self.popen = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=full_env, start_new_session=True, cwd=REPO
            )
        self.pids: list[int] = [self.popen.pid]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float, path: str = "/") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}): {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answered
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{self.name} not ready within {timeout:g}s: {self.tail()}")
        self.pids = tree(self.popen.pid)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def rss(self) -> float:
        return rss_mb(self.pids)

    def cpu(self) -> float:
        return cpu_s(self.pids)

    def hwm(self) -> float:
        return rss_mb(self.pids, "VmHWM")

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


class Sampler:
    """Peak RSS of a process tree, sampled every 100 ms while a load runs."""

    def __init__(self, proc: Proc | None) -> None:
        self.proc, self.peak = proc, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.proc is not None and not self._stop.wait(0.1):
            self.peak = max(self.peak, self.proc.rss())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# -------------------------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Target:
    path: str
    body: str  # the name of a request body written by write_canned


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    targets: dict[str, Target]  # by stack kind; "ollamux" serves both ollamux stacks
    kind: str  # json, sse or ndjson: how chunks are counted


def scenarios() -> list[Scenario]:
    oj, osse = Target("/v1/chat/completions", "req_openai"), Target("/v1/chat/completions", "req_openai_stream")
    sse_direct = Target("/sse/v1/chat/completions", "req_openai_stream")
    emb = Target("/v1/embeddings", "req_embed")
    olj, olnd = Target("/api/chat", "req_ollama"), Target("/api/chat", "req_ollama_stream")
    ol_direct_nd = Target("/stream/api/chat", "req_ollama_stream")
    return [
        Scenario(
            "openai-json",
            "OpenAI /v1/chat/completions pass-through, JSON",
            {"direct": oj, "reference": oj, "ollamux": oj, "litellm": oj},
            "json",
        ),
        Scenario(
            "openai-sse",
            f"OpenAI /v1/chat/completions pass-through, streamed ({SSE_CHUNKS} SSE chunks)",
            {"direct": sse_direct, "reference": sse_direct, "ollamux": osse, "litellm": osse},
            "sse",
        ),
        Scenario(
            "ollama-json",
            "Ollama /api/chat translated to an OpenAI upstream, JSON "
            "(direct/reference: an Ollama-shaped upstream, relayed as is)",
            {"direct": olj, "reference": olj, "ollamux": olj},
            "json",
        ),
        Scenario(
            "ollama-ndjson",
            f"Ollama /api/chat translated, streamed ({SSE_CHUNKS} SSE chunks in, NDJSON out)",
            {"direct": ol_direct_nd, "reference": ol_direct_nd, "ollamux": olnd},
            "ndjson",
        ),
        Scenario(
            "embeddings",
            f"OpenAI /v1/embeddings pass-through ({EMBED_DIMS} dims)",
            {"direct": emb, "reference": emb, "ollamux": emb, "litellm": emb},
            "json",
        ),
    ]


@dataclass
class Cell:
    scenario: str
    conns: int
    stack: str
    rps: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    added_p50_ms: float | None = None
    cpu_us_per_req: float | None = None  # the server's own CPU per request: steadier than req/s when shared
    chunks_per_response: int | None = None
    chunks_per_s: float | None = None
    pct_of_reference: float | None = None
    errors: int = 0
    peak_rss_mb: float | None = None
    note: str = ""
    rounds: list[float] = field(default_factory=list)


def probe(url: str, body: bytes, kind: str) -> tuple[int | None, str]:
    """One request: the number of chunks in the answer, or None and why it is not usable."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
    except urllib.error.HTTPError as exc:
        return None, f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
    except OSError as exc:
        return None, f"request failed: {exc}"
    if kind == "sse":
        n = sum(1 for ln in data.split(b"\n") if ln.startswith(b"data:") and b"[DONE]" not in ln)
    elif kind == "ndjson":
        n = sum(1 for ln in data.split(b"\n") if ln.strip())
    else:
        try:
            json.loads(data)
        except ValueError:
            return None, f"not JSON: {data[:200]!r}"
        n = 1
    if n == 0:
        return None, f"empty answer: {data[:200]!r}"
    return n, ""


def run_wrk(url: str, body_file: Path, conns: int, seconds: float) -> dict[str, Any]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "wrk" / "post.lua"),
        url,
    ]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY_FILE": str(body_file)},
        timeout=seconds + 60,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            res: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
            return res
    raise RuntimeError(f"wrk gave no summary: {out.stdout[-500:]} {out.stderr[-500:]}")


# ---------------------------------------------------------------------------------------- 1,000 streams
async def hold_streams(url: str, body: bytes, n: int, proc: Proc, wait_s: float) -> dict[str, Any]:
    """Open n streams, wait until each has its first chunk, then sample the proxy's RSS while all are open."""
    import aiohttp

    opened = 0
    failed: list[str] = []
    all_open = asyncio.Event()
    gate = asyncio.Semaphore(100)  # the ramp: at most 100 streams connecting at once

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal opened
        await gate.acquire()
        released = False
        try:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                if r.status != 200:
                    failed.append(f"HTTP {r.status}")
                    return
                async for _ in r.content.iter_any():
                    if not released:
                        gate.release()
                        released = True
                        opened += 1
                        if opened == n:
                            all_open.set()
        except aiohttp.ClientError as exc:
            failed.append(type(exc).__name__)
        finally:
            if not released:
                gate.release()
            if len(failed) + opened >= n:
                all_open.set()

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        t0 = time.monotonic()
        tasks = [asyncio.create_task(one(session)) for _ in range(n)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_open.wait(), wait_s)
        ramp_s = time.monotonic() - t0
        await asyncio.sleep(1.0)
        samples = []
        for _ in range(5):
            samples.append(proc.rss())
            await asyncio.sleep(0.2)
        still = sum(1 for t in tasks if not t.done())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "streams_open": opened,
        "streams_still_open_at_sample": still,
        "failed": len(failed),
        "failures": sorted(set(failed))[:5],
        "ramp_s": round(ramp_s, 2),
        "rss_mb_open": max(samples),
        "hwm_mb": proc.hwm(),
    }


# ----------------------------------------------------------------------------------------------- runner
def rate_and_cpu(proc: Proc, path: str, body: Path, seconds: float) -> tuple[float, float]:
    """One wrk run at 32 connections: (req/s, CPU seconds per request of the process tree)."""
    cpu0 = proc.cpu()
    res = run_wrk(proc.url + path, body, 32, seconds)
    n = res["requests"]
    return n / (res["duration_us"] / 1e6), (proc.cpu() - cpu0) / max(1, n)


def pair_costs(pairs: list[tuple[tuple[float, float], tuple[float, float]]]) -> dict[str, Any]:
    """The cost a list of ((req/s, CPU per request) on, the same off) pairs reads: 1 - on/off, median and
    quartiles, and the CPU per request's on/off - 1 beside it."""
    costs = [100 * (1 - ra / rb) for (ra, _), (rb, _) in pairs]
    cpu_costs = [100 * (ca / cb - 1) for (_, ca), (_, cb) in pairs]
    q = statistics.quantiles(costs, n=4) if len(costs) > 1 else [costs[0]] * 3
    return {
        "cost_pct": round(statistics.median(costs), 2),
        "quartiles_pct": [round(q[0], 2), round(q[2], 2)],
        "cpu_cost_pct": round(statistics.median(cpu_costs), 2),
        "pairs_pct": [round(c, 1) for c in costs],
    }


def slice_costs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What sliced runs (bench/observer_switch) read: the request log + metrics cost in CPU per request.

    `cost_pct`: the event loop's CPU per request in the "on" slices plus the feeder thread's (its whole run's
    CPU over the "on" requests) against the loop's in the "off" slices; `loop_pct` the loop's alone;
    `cpu_cost_pct` also counts the writer process; `rps_cost_pct` is 1 - the slices' req/s on / off. The
    pairs (each "on" slice and the "off" one after it) give the spread: their loop costs' quartiles. The
    first two slices of a run (wrk connecting) are left out. A control run (nothing detached) reads the
    loop alone: its helpers work for every request."""
    on_n = off_n = on_cpu = off_cpu = on_wall = off_wall = threads = children = 0
    pairs: list[float] = []
    control = all(r.get("control") for r in runs)
    for r in runs:
        sl = r["slices"][2:]
        for state, n, cpu, wall in sl:
            if state == "on":
                on_n, on_cpu, on_wall = on_n + n, on_cpu + cpu, on_wall + wall
            else:
                off_n, off_cpu, off_wall = off_n + n, off_cpu + cpu, off_wall + wall
        for a, b in itertools.pairwise(sl):
            if a[0] == "on" and b[0] == "off" and a[1] and b[1] and b[2]:
                pairs.append(100 * ((a[2] / a[1]) / (b[2] / b[1]) - 1))
        threads += r["threads_ns"]
        children += r["children_ns"]
    if not (on_n and off_n and off_cpu):
        raise RuntimeError("a sliced run finished no requests")
    off = off_cpu / off_n
    loop = on_cpu / on_n
    feeder = 0.0 if control else threads / on_n
    writer = 0.0 if control else children / on_n
    q = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else [0.0, 0.0, 0.0]
    return {
        "cost_pct": round(100 * ((loop + feeder) / off - 1), 2),
        "loop_pct": round(100 * (loop / off - 1), 2),
        "cpu_cost_pct": round(100 * ((loop + feeder + writer) / off - 1), 2),
        "rps_cost_pct": round(100 * (1 - (on_n / on_wall) / (off_n / off_wall)), 2),
        "us_per_request": {
            "loop_off": round(off / 1e3, 2),
            "loop_on": round(loop / 1e3, 2),
            "feeder": round(feeder / 1e3, 2),
            "writer": round(writer / 1e3, 2),
        },
        "requests": {"on": on_n, "off": off_n},
        "pairs": len(pairs),
        "quartiles_pct": [round(q[0], 2), round(q[2], 2)],
        "median_pair_pct": round(q[1], 2),
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="ollamux-bench-"))
        os.chmod(self.work, 0o755)
        self.procs: list[Proc] = []
        self.stacks: dict[str, Proc] = {}
        self.notes: list[str] = []
        self.stack_info: dict[str, dict[str, Any]] = {}
        write_canned(self.work)

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def start(
        self,
        name: str,
        cmd: list[str],
        port: int,
        env: dict[str, str] | None = None,
        ready_timeout: float = 30,
        ready_path: str = "/",
    ) -> Proc:
        p = Proc(name, cmd, port, self.work, env)
        self.procs.append(p)
        p.wait_ready(ready_timeout, ready_path)
        return p

    def ollamux_cmd(self, cfg: Path) -> list[str]:
        return [PY, "-m", "ollamux", "serve", "--config", str(cfg), "--log-level", "warning"]

    def ollamux_env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(REPO / "src"), "HOME": str(self.work)}

    def metrics_key_known(self) -> bool:
        """Older trees have no `metrics:` key; the bare config then turns off the request log only."""
        cfg = self.work / "probe.yaml"
        cfg.write_text("metrics: {enabled: false}\n")
        r = subprocess.run(
            [PY, "-m", "ollamux", "check", "--config", str(cfg)],
            capture_output=True,
            text=True,
            env={**os.environ, **self.ollamux_env()},
            cwd=REPO,
            check=False,
        )
        return r.returncode == 0

    def start_ollamux(
        self,
        name: str,
        up: int,
        slow: int,
        *,
        log: bool = True,
        metrics: bool = True,
        granian: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> Proc:
        port = free_port()
        known = self.metrics_key_known()
        if not metrics and not known:
            self.notes.append("this ollamux has no `metrics:` switch: 'ollamux-bare' turns off the request log only")
        cfg = self.work / f"{name}.yaml"
        cfg.write_text(ollamux_conf(self.work, port, up, slow, log=log, metrics=metrics, metrics_key=known))
        # granian: "bridge" or "native", the candidate server layers (granian_bridge.py, granian_native.py)
        cmd = [PY, str(BENCH / f"granian_{granian}.py"), str(cfg)] if granian else self.ollamux_cmd(cfg)
        return self.start(name, cmd, port, {**self.ollamux_env(), **(extra_env or {})})

    def start_all(self) -> None:
        up = free_port()
        (self.work / "nginx.conf").write_text(nginx_conf(self.work, up))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.stacks["direct"] = self.start(
            "nginx", [nginx, "-p", str(self.work), "-c", str(self.work / "nginx.conf"), "-g", "daemon off;"], up
        )
        self.up_port = up
        wanted = self.args.stacks
        if "reference" in wanted:
            port = free_port()
            self.stacks["reference"] = self.start(
                "reference", [PY, str(BENCH / "reference_proxy.py"), str(port), f"http://127.0.0.1:{up}"], port
            )
        if "ollamux" in wanted:
            self.stacks["ollamux"] = self.start_ollamux("ollamux", up, up)
        if "ollamux-bare" in wanted:
            self.stacks["ollamux-bare"] = self.start_ollamux("ollamux-bare", up, up, log=False, metrics=False)
        if "ollamux-log" in wanted:
            self.stacks["ollamux-log"] = self.start_ollamux("ollamux-log", up, up, log=True, metrics=False)
        if "ollamux-metrics" in wanted:
            self.stacks["ollamux-metrics"] = self.start_ollamux("ollamux-metrics", up, up, log=False, metrics=True)
        if "ollamux-granian-bridge" in wanted:
            self.stacks["ollamux-granian-bridge"] = self.start_ollamux(
                "ollamux-granian-bridge", up, up, granian="bridge"
            )
        if "ollamux-granian-native" in wanted:
            self.stacks["ollamux-granian-native"] = self.start_ollamux(
                "ollamux-granian-native", up, up, granian="native"
            )
        if "litellm" in wanted:
            if not LITELLM_BIN.exists():
                self.notes.append(f"LiteLLM proxy not installed ({LITELLM_BIN}): its column is skipped")
            else:
                port = free_port()
                cfg = self.work / "litellm.yaml"
                cfg.write_text(litellm_conf(up))
                env = {
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_TELEMETRY": "False",
                    "LITELLM_LOG": "ERROR",
                    "HOME": str(self.work),
                    "DISABLE_ADMIN_UI": "True",
                    # no master key: no auth on the path, as in a local setup
                    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "True",
                }
                try:
                    self.stacks["litellm"] = self.start(
                        "litellm",
                        [
                            str(LITELLM_BIN),
                            "--config",
                            str(cfg),
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--num_workers",
                            "1",
                        ],
                        port,
                        env,
                        ready_timeout=180,
                        ready_path="/health/liveliness",
                    )
                    ver = subprocess.run(
                        [
                            str(LITELLM_BIN.parent / "python"),
                            "-c",
                            "import importlib.metadata as m; print(m.version('litellm'))",
                        ],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout.strip()
                    self.stack_info.setdefault("litellm", {})["version"] = ver
                except RuntimeError as exc:
                    self.notes.append(f"LiteLLM proxy did not start, its column is skipped: {exc}"[:600])
        for name, p in self.stacks.items():
            # idle: started, one request served, nothing in flight
            sc = scenarios()[2 if name != "litellm" else 0]
            t = sc.targets.get(name if not name.startswith("ollamux") else "ollamux")
            if t is not None:
                probe(p.url + t.path, (self.work / f"{t.body}.json").read_bytes(), sc.kind)
            time.sleep(0.3)
            self.stack_info.setdefault(name, {})["idle_rss_mb"] = p.rss()

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    # ------------------------------------------------------------------------------------ throughput
    def measure(self) -> list[Cell]:
        """Every cell of the throughput table. A row's rounds interleave its stacks (each round measures
        every stack once, in an order that rotates), so a slow spell of this shared machine falls on all
        of them rather than on the one that happened to be measured then; each cell keeps its best round."""
        cells: list[Cell] = []
        for sc in scenarios():
            if sc.name not in self.args.scenarios:
                continue
            for conns in self.args.conns:
                row: dict[str, Cell] = {}
                ready: list[tuple[str, Proc, Path, str]] = []  # stack, server, body, path
                for stack, proc in self.stacks.items():
                    t = sc.targets.get("ollamux" if stack.startswith("ollamux") else stack)
                    cell = Cell(sc.name, conns, stack)
                    row[stack] = cell
                    if t is None:
                        continue
                    body = self.work / f"{t.body}.json"
                    n, why = probe(proc.url + t.path, body.read_bytes(), sc.kind)
                    if n is None:
                        cell.note = f"unavailable: {why}"
                        self.log(f"  {sc.name} c={conns} {stack}: {cell.note}")
                        continue
                    cell.chunks_per_response = n
                    run_wrk(proc.url + t.path, body, conns, self.args.warmup)
                    ready.append((stack, proc, body, t.path))
                best: dict[str, dict[str, Any]] = {}
                for n_round in range(self.args.rounds):
                    k = n_round % len(ready) if ready else 0
                    for stack, proc, body, path in ready[k:] + ready[:k]:
                        cpu0 = proc.cpu()
                        with Sampler(proc if stack != "direct" else None) as s:
                            res = run_wrk(proc.url + path, body, conns, self.args.duration)
                        res["cpu_s"] = proc.cpu() - cpu0
                        rps = res["requests"] / (res["duration_us"] / 1e6)
                        row[stack].rounds.append(round(rps, 1))
                        res["rps"], res["peak"] = rps, s.peak
                        if stack not in best or rps > best[stack]["rps"]:
                            best[stack] = res
                for stack, _, _, _ in ready:
                    cell, res = row[stack], best[stack]
                    if not res["requests"]:
                        cell.note = f"no request completed in {self.args.duration:g} s"
                        continue
                    cell.rps = round(res["rps"], 1)
                    cell.p50_ms = round(res["p50_us"] / 1000, 3)
                    cell.cpu_us_per_req = round(1e6 * res["cpu_s"] / res["requests"], 1)
                    cell.p90_ms = round(res["p90_us"] / 1000, 3)
                    cell.p99_ms = round(res["p99_us"] / 1000, 3)
                    cell.errors = sum(
                        res[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
                    )
                    cell.peak_rss_mb = res["peak"] or None
                    if sc.kind != "json" and cell.chunks_per_response is not None:
                        cell.chunks_per_s = round(cell.rps * cell.chunks_per_response)
                    self.log(
                        f"  {sc.name} c={conns} {stack}: {cell.rps:,.0f} req/s p50 {cell.p50_ms} ms "
                        f"p99 {cell.p99_ms} ms" + (f" ERRORS {cell.errors}" if cell.errors else "")
                    )
                d, r = row.get("direct"), row.get("reference")
                for cell in row.values():
                    if cell.p50_ms is not None and d is not None and d.p50_ms is not None:
                        cell.added_p50_ms = round(cell.p50_ms - d.p50_ms, 3)
                    if cell.rps and r is not None and r.rps:
                        cell.pct_of_reference = round(100 * cell.rps / r.rps, 1)
                cells.extend(row.values())
        return cells

    # -------------------------------------------------------------------------------- log + metrics cost
    def log_cost(self) -> dict[str, Any]:
        """What the request log + metrics cost, from paired runs across several server processes.

        Why not the throughput table's two cells: two ollamux processes with the same configuration, started
        side by side, differ by up to ~10% in req/s on this machine and keep that difference for their
        whole life (the address-space layout and hash seed each process draws), as much as the few percent
        being measured. So several processes of each configuration run, and each pair (one of each, the
        order alternating, consecutive so a slow spell of the machine falls on both) gives one ratio; the
        cost is the median ratio. The same pairing between two processes of the *same*
        configuration (an A/A control) gives the resolution of this method on this machine."""
        procs_n = 2 if self.args.quick else 4
        pairs_n = 4 if self.args.quick else 8
        secs = self.args.duration if self.args.quick else 2.5
        up = self.up_port
        on = [self.stacks["ollamux"]] + [self.start_ollamux(f"ollamux-lc-on-{i}", up, up) for i in range(1, procs_n)]
        off = [self.stacks["ollamux-bare"]] + [
            self.start_ollamux(f"ollamux-lc-bare-{i}", up, up, log=False, metrics=False) for i in range(1, procs_n)
        ]
        out: dict[str, Any] = {"processes": procs_n, "pairs": pairs_n, "seconds": secs, "scenarios": {}}

        def paired(a: list[Proc], b: list[Proc], path: str, body: Path) -> dict[str, Any]:
            # every pair of processes in turn: (0,0) (1,1) (2,2) (0,1) ... with a list against itself (the
            # control) shifted by one, so a process is never paired with itself
            shift = 1 if a is b else 0
            pairs: list[tuple[tuple[float, float], tuple[float, float]]] = []
            for k in range(pairs_n):
                i = k % len(a)
                pa, pb = a[i], b[(i + shift + k // len(a)) % len(b)]
                if pa is pb:
                    pb = b[(i + 1) % len(b)]
                if k % 2:
                    rb, cb = rate_and_cpu(pb, path, body, secs)
                    ra, ca = rate_and_cpu(pa, path, body, secs)
                else:
                    ra, ca = rate_and_cpu(pa, path, body, secs)
                    rb, cb = rate_and_cpu(pb, path, body, secs)
                pairs.append(((ra, ca), (rb, cb)))
            return pair_costs(pairs)

        for name, path, body in self._log_cost_cases(on + off):
            r = out["scenarios"][name] = paired(on, off, path, body)
            self.log(
                f"  log cost {name}: median {r['cost_pct']:+.1f}% (quartiles {r['quartiles_pct'][0]:+.1f} / "
                f"{r['quartiles_pct'][1]:+.1f}), CPU per request {r['cpu_cost_pct']:+.1f}%"
            )
            if name == "openai-json":
                # the A/A control: the same pairing between the bare processes themselves
                aa = out["control"] = {"scenario": name, **paired(off, off, path, body)}
                self.log(f"  log cost A/A control {name}: median {aa['cost_pct']:+.1f}%")
        return out

    def _log_cost_cases(self, procs: list[Proc]) -> Iterator[tuple[str, str, Path]]:
        """(scenario, path, body file) for each scenario chosen that ollamux serves, every process warmed up on it
        first."""
        for sc in scenarios():
            t = sc.targets.get("ollamux")
            if sc.name not in self.args.scenarios or t is None:
                continue
            body = self.work / f"{t.body}.json"
            for p in procs:
                run_wrk(p.url + t.path, body, 32, self.args.warmup)
            yield sc.name, t.path, body

    def log_cost_in_place(self) -> dict[str, Any]:
        """What the request log + metrics cost, switched on and off inside each of two server processes, in
        slices of 200 ms (the target's figure).

        Each process runs with both on and loads bench/observer_switch/sitecustomize.py, whose thread detaches
        the two observers for every other slice while one wrk run goes on, and reads each slice's requests and
        the event loop's CPU time (see there). Why slices, and CPU: this machine's speed drifts by up to 2x
        over seconds (the 2 s pairs this phase used before read an A/A control of +3 to +9%, as large as the
        floor), and a slice is far shorter than the drift; the loop is saturated at 32 connections, so its
        CPU per request is what bounds req/s. The cost is the loop's CPU per request with both on, plus the
        feeder thread's (what the log marshals later, for the "on" requests), over the loop's with both off.
        Beside it: the same with the writer process's CPU (it runs beside the loop, on the other core), and
        the slices' req/s. The A/A control runs the same slicing with nothing detached."""
        procs_n = 2
        secs = self.args.duration if self.args.quick else 20.0
        slice_ms = 200
        up = self.up_port
        switch = BENCH / "observer_switch"
        procs: list[tuple[Proc, Path]] = []
        for i in range(procs_n):
            state = self.work / f"switch-{i}"
            env = {"PYTHONPATH": f"{switch}{os.pathsep}{REPO / 'src'}", "OLLAMUX_BENCH_SWITCH_FILE": str(state)}
            procs.append((self.start_ollamux(f"ollamux-switch-{i}", up, up, extra_env=env), state))
        out: dict[str, Any] = {
            "processes": procs_n,
            "seconds": secs,
            "slice_ms": slice_ms,
            "method": "sliced",
            "scenarios": {},
        }

        def sliced(proc: Proc, state: Path, path: str, body: Path, control: bool) -> dict[str, Any]:
            done = Path(f"{state}.slices")
            done.unlink(missing_ok=True)
            Path(f"{state}.mode").write_text(json.dumps({"control": control, "slice_ms": slice_ms}))
            os.kill(proc.popen.pid, signal.SIGUSR1)
            run_wrk(proc.url + path, body, 32, secs)
            os.kill(proc.popen.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not done.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name}: the sliced run wrote no figures")
                time.sleep(0.05)
            figures: dict[str, Any] = json.loads(done.read_text())
            return figures

        for name, path, body in self._log_cost_cases([p for p, _ in procs]):
            runs = [sliced(p, st, path, body, control=False) for p, st in procs]
            r = out["scenarios"][name] = slice_costs(runs)
            self.log(
                f"  log cost in place {name}: {r['cost_pct']:+.1f}% (loop {r['loop_pct']:+.1f}, pairs' quartiles "
                f"{r['quartiles_pct'][0]:+.1f} / {r['quartiles_pct'][1]:+.1f}, {r['pairs']} pairs), with the "
                f"writer {r['cpu_cost_pct']:+.1f}%, req/s {r['rps_cost_pct']:+.1f}%"
            )
            if name == "openai-json":
                runs = [sliced(p, st, path, body, control=True) for p, st in procs]
                aa = out["control"] = {"scenario": name, **slice_costs(runs)}
                self.log(f"  log cost in place A/A control {name}: {aa['cost_pct']:+.1f}%")
        for p, _ in procs:
            p.stop()
        return out

    # ---------------------------------------------------------------------------------------- memory
    def memory(self) -> list[dict[str, Any]]:
        """Fresh processes, 1,000 slow streams each: RSS idle and while all are open."""
        out: list[dict[str, Any]] = []
        slow = free_port()
        self.start("slow-upstream", [PY, str(BENCH / "slow_upstream.py"), str(slow), "0.5", "120"], slow)
        runs: list[tuple[str, str, str]] = []
        if "reference" in self.args.stacks:
            runs.append(("reference", "/v1/chat/completions", "req_slow_openai"))
        if "ollamux" in self.args.stacks:
            runs.append(("ollamux", "/api/chat", "req_slow_ollama"))
            runs.append(("ollamux", "/v1/chat/completions", "req_slow_openai"))
        for stack, path, body_name in runs:
            if stack == "reference":
                port = free_port()
                p = self.start(
                    "reference-mem",
                    [PY, str(BENCH / "reference_proxy.py"), str(port), f"http://127.0.0.1:{slow}"],
                    port,
                )
            else:
                p = self.start_ollamux(f"ollamux-mem-{len(out)}", self.up_port, slow)
            body = (self.work / f"{body_name}.json").read_bytes()
            entry: dict[str, Any] = {"stack": stack, "path": path, "streams": self.args.streams}
            try:
                # one short stream first, so idle RSS is that of a server that has served a request
                n, why = probe_first_chunk(p.url + path, body)
                if not n:
                    entry["note"] = f"unavailable: {why}"
                    self.log(f"  memory {stack} {path}: {entry['note']}")
                    out.append(entry)
                    continue
                time.sleep(0.3)
                entry["idle_rss_mb"] = p.rss()
                entry.update(asyncio.run(hold_streams(p.url + path, body, self.args.streams, p, 60)))
                self.log(
                    f"  memory {stack} {path}: idle {entry['idle_rss_mb']} MB, {entry['streams_open']} streams "
                    f"open {entry['rss_mb_open']} MB (ramp {entry['ramp_s']} s)"
                )
            finally:
                p.stop()
            out.append(entry)
        return out


def probe_first_chunk(url: str, body: bytes) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return len(r.read(1)), ""
    except urllib.error.HTTPError as exc:
        return 0, f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
    except OSError as exc:
        return 0, str(exc)


# ---------------------------------------------------------------------------------------------- targets
def find(cells: list[Cell], scenario: str, conns: int, stack: str) -> Cell | None:
    for c in cells:
        if (c.scenario, c.conns, c.stack) == (scenario, conns, stack) and c.rps:
            return c
    return None


def targets(
    cells: list[Cell],
    memory: list[dict[str, Any]],
    info: dict[str, dict[str, Any]],
    log_cost: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Issue #21's table: each target with its aim and the floor for resolving the issue, met or not."""
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        goal: str,
        floor: str,
        value: float | None,
        unit: str,
        ok: bool | None,
        floor_ok: bool | None,
        by_cpu: float | None = None,
    ) -> None:
        out.append(
            {
                "target": name,
                "goal": goal,
                "floor": floor,
                "measured": None if value is None else round(value, 2),
                "unit": unit,
                "met": ok,
                "floor_met": floor_ok,
                "by_cpu": None if by_cpu is None else round(by_cpu, 2),
            }
        )

    def cpu_ratio(a: Cell | None, b: Cell | None) -> float | None:
        """100 * b's CPU per request / a's: the req/s ratio two stacks would have on a core each."""
        if a is None or b is None or not a.cpu_us_per_req or not b.cpu_us_per_req:
            return None
        return 100 * b.cpu_us_per_req / a.cpu_us_per_req

    def share(sc: str, conns: int, of: str) -> tuple[float | None, float | None]:
        o, r = find(cells, sc, conns, "ollamux"), find(cells, sc, conns, of)
        v = 100 * o.rps / r.rps if o and r and o.rps and r.rps else None
        return v, cpu_ratio(o, r)

    def at_least(v: float | None, x: float) -> bool | None:
        return None if v is None else v >= x

    def at_most(v: float | None, x: float) -> bool | None:
        return None if v is None else v <= x

    for sc, label in (("openai-json", "/v1 JSON"), ("openai-sse", "/v1 SSE")):
        v, c = share(sc, 32, "reference")
        add(
            f"{label} c=32, % of the bare aiohttp pass-through",
            ">= 100%",
            ">= 90%",
            v,
            "%",
            at_least(v, 100),
            at_least(v, 90),
            c,
        )
    o, r = find(cells, "openai-json", 1, "ollamux"), find(cells, "openai-json", 1, "reference")
    v = o.p50_ms - r.p50_ms if o and r and o.p50_ms is not None and r.p50_ms is not None else None
    add(
        "p50 added over it at c=1 (/v1 JSON)", "<= +0.05 ms", "<= +0.15 ms", v, "ms", at_most(v, 0.05), at_most(v, 0.15)
    )
    v, c = share("ollama-ndjson", 32, "reference")
    add("Ollama NDJSON (translated) c=32, % of it", ">= 80%", ">= 70%", v, "%", at_least(v, 80), at_least(v, 70), c)
    o, r = find(cells, "openai-json", 32, "ollamux"), find(cells, "openai-json", 32, "litellm")
    v = o.rps / r.rps if o and r and o.rps and r.rps else None
    c = cpu_ratio(o, r)
    add(
        "vs LiteLLM (one worker), /v1 JSON c=32",
        ">= 60x",
        ">= 50x",
        v,
        "x",
        at_least(v, 60),
        at_least(v, 50),
        None if c is None else c / 100,
    )
    costs: list[tuple[float, str, float | None]] = []
    how = "the throughput table's cells"
    in_place = (log_cost or {}).get("in_place") or {}
    if in_place.get("scenarios"):
        # the observers switched inside each process (Bench.log_cost_in_place): no process-to-process spread
        how = (
            f"switched in place every {in_place['slice_ms']} ms in {in_place['processes']} processes, the server "
            "process's CPU per request (the writer process's beside it)"
        )
        costs = [(r["cost_pct"], sc, r["cpu_cost_pct"]) for sc, r in in_place["scenarios"].items()]
    elif log_cost and log_cost["scenarios"]:
        # the paired runs (Bench.log_cost): the median over pairs of processes, the CPU figure beside it
        how = f"median of {log_cost['pairs']} pairs over {log_cost['processes']} processes each"
        costs = [(r["cost_pct"], sc, r["cpu_cost_pct"]) for sc, r in log_cost["scenarios"].items()]
    else:
        for sc in sorted({c.scenario for c in cells}):
            on, off = find(cells, sc, 32, "ollamux"), find(cells, sc, 32, "ollamux-bare")
            if on and off and on.rps and off.rps:
                costs.append((100 * (1 - on.rps / off.rps), sc, None))
    worst = max(costs) if costs else None
    add(
        f"request log + metrics cost, any scenario (worst: {worst[1] if worst else '-'}) c=32; {how}",
        "<= 3%",
        "<= 5%",
        worst[0] if worst else None,
        "%",
        at_most(worst[0] if worst else None, 3),
        at_most(worst[0] if worst else None, 5),
        worst[2] if worst else None,
    )
    for m in memory:
        if m["stack"] == "ollamux" and "rss_mb_open" in m:
            full = m["streams_open"] >= m["streams"]
            add(
                f"RSS, {m['streams_open']} open streams ({m['path']})",
                "<= 80 MB",
                "<= 80 MB",
                m["rss_mb_open"],
                "MB",
                (m["rss_mb_open"] <= 80) if full else False,
                (m["rss_mb_open"] <= 80) if full else False,
            )
    idle = [m["idle_rss_mb"] for m in memory if m["stack"] == "ollamux" and "idle_rss_mb" in m]
    idle_v = max(idle) if idle else info.get("ollamux", {}).get("idle_rss_mb")
    add(
        "RSS idle (not in #21's table; kept from the first wave)",
        "< 80 MB",
        "< 80 MB",
        idle_v,
        "MB",
        None if idle_v is None else idle_v < 80,
        None if idle_v is None else idle_v < 80,
    )
    return out


# ------------------------------------------------------------------------------------------------ output
def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def table(cells: list[Cell]) -> str:
    head = (
        "| scenario | conns | stack | req/s | % of ref | p50 ms | p99 ms | +p50 vs direct ms | CPU us/req "
        "| chunks/s | peak RSS MB |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for c in cells:
        if c.rps is None and not c.note:
            continue
        if c.rps is None:
            rows.append(f"| {c.scenario} | {c.conns} | {c.stack} | {c.note[:60]} | | | | | | | |")
            continue
        err = f" ({c.errors} errors)" if c.errors else ""
        rows.append(
            f"| {c.scenario} | {c.conns} | {c.stack} | {fmt(c.rps)}{err} | {fmt(c.pct_of_reference, '.0f')} "
            f"| {fmt(c.p50_ms, '.2f')} | {fmt(c.p99_ms, '.2f')} | {fmt(c.added_p50_ms, '+.2f')} "
            f"| {fmt(c.cpu_us_per_req)} | {fmt(c.chunks_per_s)} | {fmt(c.peak_rss_mb, '.0f')} |"
        )
    return head + "\n".join(rows) + "\n"


def memory_table(memory: list[dict[str, Any]]) -> str:
    head = (
        "| stack | path | idle RSS MB | streams open | RSS MB with them open | peak (VmHWM) MB |\n"
        "|---|---|---:|---:|---:|---:|\n"
    )
    rows = [
        f"| {m['stack']} | {m['path']} | {fmt(m.get('idle_rss_mb'), '.0f')} | {m.get('streams_open', '-')} "
        f"| {fmt(m.get('rss_mb_open'), '.0f')} | {fmt(m.get('hwm_mb'), '.0f')} |"
        for m in memory
    ]
    return head + "\n".join(rows) + "\n"


def targets_table(ts: list[dict[str, Any]]) -> str:
    mark = {True: "met", False: "MISSED", None: "not measured"}
    head = "| target | aim | floor | measured | aim | floor | same by CPU/req |\n|---|---|---|---:|---|---|---:|\n"
    return (
        head
        + "\n".join(
            f"| {t['target']} | {t['goal']} | {t.get('floor', '')} | {fmt(t['measured'], '.2f')} {t['unit']} "
            f"| {mark[t['met']]} | {mark[t.get('floor_met')]} "
            f"| {fmt(t.get('by_cpu'), '.2f')} {t['unit'] if t.get('by_cpu') is not None else ''} |"
            for t in ts
        )
        + "\n"
    )


def versions() -> dict[str, str]:
    def run(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=20)
        except OSError:
            return ""
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else ""

    import aiohttp

    return {
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "nginx": run(["nginx", "-v"]),
        "wrk": run(["wrk", "-v"]),
        "cpu": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        ),
        "cpus": str(os.cpu_count()),
        "git": run(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }


# -------------------------------------------------------------------------------------------- profiling
def profile(bench: Bench, seconds: float) -> str:
    """py-spy on ollamux (log + metrics on) under 32 connections, each scenario; the reference as a baseline."""
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(pyspy).exists():
        return "py-spy is not installed (pip install py-spy): no profile\n"
    out = []
    runs = [("ollamux", sc) for sc in scenarios() if sc.name in bench.args.scenarios]
    runs += [("reference", sc) for sc in scenarios() if sc.name == "openai-json"]
    for stack, sc in runs:
        proc = bench.stacks.get(stack)
        if proc is None:
            continue
        t = sc.targets[stack]
        body = bench.work / f"{t.body}.json"
        if probe(proc.url + t.path, body.read_bytes(), sc.kind)[0] is None:
            continue
        raw = bench.work / f"profile-{stack}-{sc.name}.txt"
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "-p",
                str(proc.popen.pid),
                "-d",
                str(int(seconds) + 1),
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        run_wrk(proc.url + t.path, body, 32, seconds)
        spy.wait(seconds + 30)
        if not raw.exists():
            out.append(f"#### {stack}, {sc.name}: py-spy wrote nothing (ptrace not permitted?)\n")
            continue
        dest = BENCH / "results" / raw.name
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(raw, dest)
        out.append(summarize_profile(f"{stack}, {sc.name}", raw.read_text()))
    return "\n".join(out)


def summarize_profile(name: str, collapsed: str, top: int = 18) -> str:
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return f"### {name}: no samples\n"
    by_pkg: dict[str, int] = {}
    for f, n in self_t.items():
        pkg = next(
            (m for m in ("ollamux/", "aiohttp/", "asyncio/", "prometheus_client/", "threading", "uuid") if m in f),
            "other",
        )
        by_pkg[pkg] = by_pkg.get(pkg, 0) + n
    ranked = sorted(by_pkg.items(), key=lambda kv: -kv[1])
    share = ", ".join(f"{k.rstrip('/')} {100 * v / total:.0f}%" for k, v in ranked)
    lines = [f"#### {name} ({total} samples; self time by package: {share})", "", "| self % | function |", "|---:|---|"]
    for f, n in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * n / total:.1f} | {f} |")
    lines += ["", "| inclusive % | ollamux function |", "|---:|---|"]
    ours = [(f, n) for f, n in incl.items() if "ollamux/" in f]
    for f, n in sorted(ours, key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * n / total:.1f} | {f} |")
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)", keeping ollamux/ and aiohttp/ prefixes readable
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("ollamux/", "aiohttp/", "asyncio/", "yarl/", "multidict/", "prometheus_client/", "site-packages/"):
        i = path.rfind(marker)
        if i >= 0:
            path = path[i:].replace("site-packages/", "")
            break
    else:
        path = path.rsplit("/", 1)[-1]
    return f"{func} ({path})" if path else func


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short pass: 2 s per measurement, 300 streams")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 5, --quick 2)")
    p.add_argument(
        "--rounds",
        type=int,
        help="measure each cell N times (a row's stacks in turn), keep the best (default 3, --quick 1)",
    )
    p.add_argument("--conns", default="1,32", help="connection counts (default 1,32)")
    p.add_argument("--scenarios", default=",".join(s.name for s in scenarios()))
    p.add_argument("--stacks", default=",".join(STACKS))
    p.add_argument("--streams", type=int, help="concurrent streams for the memory run (default 1000)")
    p.add_argument("--no-memory", action="store_true", help="skip the 1,000-streams memory run")
    p.add_argument("--no-litellm", action="store_true", help="do not run the LiteLLM proxy")
    p.add_argument("--no-engine", action="store_true", help="skip the engine run (SmolLM2 direct vs through ollamux)")
    p.add_argument("--profile", action="store_true", help="also profile ollamux with py-spy under 32 connections")
    p.add_argument("--out", help="where to write the JSON (default bench/results/<timestamp>.json)")
    a = p.parse_args(argv)
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    # one round per cell let a slow spell of this shared machine decide a ratio target: best of three
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.warmup = 0.5 if a.quick else 1.0
    a.streams = a.streams or (300 if a.quick else 1000)
    a.conns = [int(c) for c in a.conns.split(",")]
    a.scenarios = a.scenarios.split(",")
    a.stacks = [s for s in a.stacks.split(",") if not (a.no_litellm and s == "litellm")]
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for tool in ("wrk",):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing (bench/run installs it)", file=sys.stderr)
            return 2
    bench = Bench(args)
    started = time.strftime("%Y-%m-%dT%H-%M-%S")
    load_before = os.getloadavg()
    t0 = time.monotonic()
    cells: list[Cell] = []
    memory: list[dict[str, Any]] = []
    prof = ""
    lc: dict[str, Any] | None = None
    engine_result: dict[str, Any] | None = None
    try:
        bench.log(f"bench: work dir {bench.work}; starting stacks")
        bench.start_all()
        bench.log("bench: throughput (" + ", ".join(bench.stacks) + ")")
        cells = bench.measure()
        if "ollamux" in bench.stacks and "ollamux-bare" in bench.stacks:
            bench.log("bench: request log + metrics cost, paired runs across server processes")
            lc = bench.log_cost()
            bench.log("bench: request log + metrics cost, switched on and off inside each server process")
            lc["in_place"] = bench.log_cost_in_place()
        if args.profile:
            bench.log("bench: profiling ollamux")
            prof = profile(bench, max(args.duration, 5))
        bench.stop_all()
        if not args.no_memory:
            bench.log(f"bench: memory, {args.streams} concurrent streams")
            memory = bench.memory()
        if not args.no_engine:
            bench.log("bench: the engine, SmolLM2 through ollamux against llama.cpp directly (bench/engine.py)")
            engine_result = engine_bench.run(
                engine_bench.parse_args(["--rounds", "2", "--pairs", "120"] if args.quick else [])
            )
    finally:
        bench.stop_all()
    elapsed = time.monotonic() - t0
    ts = targets(cells, memory, bench.stack_info, lc)
    if engine_result is not None:
        ts += engine_bench.targets(engine_result)
    result = {
        "started": started,
        "elapsed_s": round(elapsed, 1),
        "command": "bench/run " + " ".join(argv),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "versions": versions(),
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "conns": args.conns,
            "streams": args.streams,
            "sse_chunks": SSE_CHUNKS,
            "embed_dims": EMBED_DIMS,
        },
        "stacks": {k: {"title": STACK_TITLES[k], **v} for k, v in bench.stack_info.items()},
        "notes": bench.notes,
        "cells": [asdict(c) for c in cells],
        "memory": memory,
        "log_cost": lc,
        "engine": engine_result,
        "targets": ts,
    }
    out = Path(args.out) if args.out else BENCH / "results" / f"{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    report = render(result, cells, memory, ts, prof)
    print(report)
    (out.with_suffix(".md")).write_text(report)
    print(f"written: {out} and {out.with_suffix('.md')}", file=sys.stderr)
    if bench.work.exists() and not args.profile:
        shutil.rmtree(bench.work, ignore_errors=True)
    return 0


def _cost_rows(lc: dict[str, Any]) -> list[str]:
    rows = ["| scenario | median cost | quartiles | median CPU cost | each pair |", "|---|---:|---:|---:|---|"]
    items = list(lc["scenarios"].items())
    if lc.get("control"):
        items.append((f"A/A control ({lc['control']['scenario']})", lc["control"]))
    for name, r in items:
        q = r["quartiles_pct"]
        pairs = ", ".join(f"{c:+.1f}" for c in r["pairs_pct"])
        rows.append(
            f"| {name} | {r['cost_pct']:+.1f}% | {q[0]:+.1f} / {q[1]:+.1f} | {r['cpu_cost_pct']:+.1f}% | {pairs} |"
        )
    return rows


def log_cost_table(lc: dict[str, Any]) -> str:
    rows = [
        f"{lc['processes']} ollamux processes with the request log and metrics on, {lc['processes']} with both off; "
        f"{lc['pairs']} pairs of {lc['seconds']:g} s runs per scenario, one process of each, in alternating order. "
        "Cost: 1 - req/s on / req/s off; CPU: the on process's CPU per request (its writer child counted) over the "
        "off one's. The A/A control pairs the off processes among themselves: what this method reads when there "
        "is nothing to find.\n",
        *_cost_rows(lc),
    ]
    ip = lc.get("in_place")
    if ip and ip.get("scenarios"):
        rows += [
            f"\nSwitched in place (the target's figure): {ip['processes']} processes with both on, whose request log "
            f"and metrics observers bench/observer_switch detaches for every other {ip['slice_ms']} ms slice of one "
            f"{ip['seconds']:g} s wrk run per process and scenario. Cost: the event loop's CPU per request in the "
            "'on' slices plus the feeder thread's, over the loop's in the 'off' slices (the loop is saturated: "
            "its CPU per request bounds req/s); beside it the loop alone, the same with the writer process's CPU "
            "(which runs beside the loop), the slices' req/s, and the spread of adjacent on/off slice pairs. The "
            "A/A control slices the same way with nothing detached.\n",
            "| scenario | cost (server process) | loop alone | pairs' quartiles | with the writer process | "
            "req/s cost | us a request: loop off / on, feeder, writer |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        items = list(ip["scenarios"].items())
        if ip.get("control"):
            items.append((f"A/A control ({ip['control']['scenario']})", ip["control"]))
        for name, r in items:
            q, u = r["quartiles_pct"], r["us_per_request"]
            rows.append(
                f"| {name} | {r['cost_pct']:+.1f}% | {r['loop_pct']:+.1f}% | {q[0]:+.1f} / {q[1]:+.1f} "
                f"({r['pairs']}) | {r['cpu_cost_pct']:+.1f}% | {r['rps_cost_pct']:+.1f}% | {u['loop_off']:.1f} / "
                f"{u['loop_on']:.1f}, {u['feeder']:.2f}, {u['writer']:.2f} |"
            )
    return "\n".join(rows) + "\n"


def render(
    result: dict[str, Any], cells: list[Cell], memory: list[dict[str, Any]], ts: list[dict[str, Any]], prof: str
) -> str:
    v = result["versions"]
    parts = [
        f"## ollamux bench, {result['started']} ({result['elapsed_s']:.0f} s)\n",
        f"`{result['command'].strip()}` on {v['cpus']} x {v['cpu']}, Python {v['python']}, aiohttp {v['aiohttp']}, "
        f"{v['nginx']}, git {v['git']}; load average before {result['loadavg_before'][0]:.2f}, after "
        f"{result['loadavg_after'][0]:.2f}\n",
        "### Stacks (idle RSS after one request)\n",
        "\n".join(
            f"- {k}: {s['title']}, idle RSS {fmt(s.get('idle_rss_mb'), '.0f')} MB"
            + (f", version {s['version']}" if s.get("version") else "")
            for k, s in result["stacks"].items()
        )
        + "\n",
    ]
    if result["notes"]:
        parts.append("Notes:\n" + "\n".join(f"- {n}" for n in result["notes"]) + "\n")
    st = result["settings"]
    parts += [
        "### Throughput and latency\n",
        f"Each cell is the best of {st['rounds']} round(s) of {st['duration_s']:g} s; each round measures a row's "
        "stacks once, in an order that rotates.\n",
        table(cells),
    ]
    if memory:
        parts += [
            f"### Memory: {st['streams']} concurrent slow streams (fresh processes)\n",
            memory_table(memory),
        ]
    if result.get("engine"):
        parts += [
            "### The engine: SmolLM2 through ollamux against llama.cpp directly\n",
            engine_bench.render(result["engine"]),
        ]
    if result.get("log_cost"):
        parts += ["### Request log + metrics cost: paired runs (c=32)\n", log_cost_table(result["log_cost"])]
    parts += ["### Targets (issue #21)\n", targets_table(ts)]
    if prof:
        parts += ["### Profile (py-spy, ollamux, 32 connections)\n", prof]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
