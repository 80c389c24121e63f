"""What the request log and the metrics cost per request, in CPU, with the writer process counted (issue #21).

One process holds a raw-socket upstream, an aiohttp client and four ollamux apps, one per configuration:
`off` (request log and metrics off), `log`, `metrics`, `both`. Each round runs every case through every
configuration, in an order that rotates from round to round, and reads:
  - the process's CPU (all threads: the event loop, the client and upstream alike in every configuration),
  - the request log's feeder thread (`/proc/self/task/<tid>/schedstat`), part of the above,
  - the writer child (`/proc/<pid>/schedstat`: on-CPU nanoseconds), found as the new child of this process
    once its app has started, after the log was flushed at the end of each run.
The table at the end gives each cell's minimum over the rounds (on this shared machine two identical runs
differ by 5-10%: compare minimums), and each configuration's cost as the difference to `off`.

    PYTHONPATH=src .venv/bin/python bench/observe_cost.py                    # 5 rounds of 2,000 requests
    PYTHONPATH=src .venv/bin/python bench/observe_cost.py --callgrind        # instructions, under valgrind

`--callgrind` runs this script under `valgrind --tool=callgrind` (children traced: the writer process is
counted too) once per configuration and case at two request counts, and prints the instructions per request
from the difference, which the machine's load does not move.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import canned  # bench/canned.py, beside this file
import orjson
import uvloop
from aiohttp import web

from ollamux import create_app
from ollamux.config import parse_settings
from ollamux.server import tune_gc
from ollamux.state import STATE

CHAT_ANSWER = canned.answer("application/json", canned.CHAT)
STREAM_ANSWER = canned.answer("text/event-stream", canned.STREAM)
EMBEDDING_ANSWER = canned.answer("application/json", canned.EMBEDDING)

_HI = [{"role": "user", "content": "hi"}]
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai-json": ("/v1/chat/completions", {"model": "m", "messages": _HI}),
    "openai-sse": ("/v1/chat/completions", {"model": "m", "stream": True, "messages": _HI}),
    "ollama-json": ("/api/chat", {"model": "m", "stream": False, "messages": _HI}),
    "ollama-ndjson": ("/api/chat", {"model": "m", "stream": True, "messages": _HI}),
    "embeddings": ("/v1/embeddings", {"model": "m", "input": "hi"}),
}
CONFIGS: dict[str, tuple[bool, bool]] = {  # name: (request log, metrics)
    "off": (False, False),
    "log": (True, False),
    "metrics": (False, True),
    "both": (True, True),
}
# not an ollamux: the client straight to the upstream, the part of every figure that is not ollamux's (run it
# with --only direct,...: its share subtracted gives a configuration's cost as a share of ollamux's own)
DIRECT = "direct"
_UNDER_CALLGRIND = "OBSERVE_COST_UNDER_CALLGRIND"


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive HTTP/1.1 with fixed answers: embeddings, an SSE stream when asked to stream, else JSON."""
    try:
        while True:
            head, body = await canned.read_request(reader)
            if b"/embeddings" in head[: head.find(b"\r\n")]:
                writer.write(EMBEDDING_ANSWER)
            else:
                writer.write(STREAM_ANSWER if b'"stream":true' in body else CHAT_ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def on_cpu_ns(path: str) -> int:
    """Nanoseconds a task spent on a CPU, from its schedstat (ns resolution; /proc/PID/stat has 10 ms ticks)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def children() -> set[int]:
    """This process's child processes (its threads each keep their own list)."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                out.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return out


@dataclass
class Stack:
    name: str
    url: str
    runner: web.AppRunner | None
    app: web.Application | None
    feeder_tid: int | None = None
    child_pid: int | None = None
    best: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # case: (total, feeder, child)


async def start_stack(name: str, upstream_port: int, tmp: str) -> Stack:
    if name == DIRECT:
        return Stack(name, f"http://127.0.0.1:{upstream_port}", None, None)
    log, metrics = CONFIGS[name]
    config: dict[str, Any] = {
        "backends": {"b": {"url": f"http://127.0.0.1:{upstream_port}/v1"}},
        "models": {"m": {"backend": "b"}},
        "request_log": {"path": f"{tmp}/{name}.sqlite"} if log else {"enabled": False},
        # as users run it: the backend probe is part of what metrics on costs (every 30 s: nothing here)
        "metrics": {"enabled": metrics},
    }
    threads_before = {t.native_id for t in threading.enumerate()}
    kids_before = children()
    app = create_app(parse_settings(config, dict(os.environ)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stack = Stack(name, f"http://127.0.0.1:{runner.addresses[0][1]}", runner, app)
    if log:
        feeders = [
            t.native_id
            for t in threading.enumerate()
            if t.name == "ollamux-request-log" and t.native_id not in threads_before
        ]
        kids = children() - kids_before
        assert len(feeders) == 1 and len(kids) == 1, (feeders, kids)
        stack.feeder_tid, stack.child_pid = feeders[0], kids.pop()
    return stack


async def run(client: aiohttp.ClientSession, stack: Stack, case: str, n: int) -> tuple[float, float, float]:
    """(total, feeder thread, writer child) CPU microseconds per request over `n` requests."""
    path, body = CASES[case]
    url, data = stack.url + path, orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    feeder = f"/proc/self/task/{stack.feeder_tid}/schedstat"
    child = f"/proc/{stack.child_pid}/schedstat"
    rl = stack.app[STATE].request_log if stack.app is not None else None
    f0 = on_cpu_ns(feeder) if stack.feeder_tid else 0
    c0 = on_cpu_ns(child) if stack.child_pid else 0
    t0 = time.process_time_ns()
    for _ in range(n):
        async with client.post(url, data=data, headers=headers) as r:
            assert r.status == 200, await r.text()
            await r.read()
    if rl is not None:
        # the rows of this run written before the clocks stop: the writer's share belongs to this run
        assert await asyncio.to_thread(rl.flush, 30.0), "the request log did not flush"
        if stack.child_pid and os.environ.get(_UNDER_CALLGRIND):
            # the writer's count dumped now: at shutdown, a child slow to exit under valgrind is killed
            # (after 10 s) before callgrind writes its file
            await asyncio.to_thread(subprocess.run, ["callgrind_control", "-d", str(stack.child_pid)], check=True)
    t1 = time.process_time_ns()
    f1 = on_cpu_ns(feeder) if stack.feeder_tid else 0
    c1 = on_cpu_ns(child) if stack.child_pid else 0
    # the child's on-CPU time is its own; the feeder's is part of the process's
    return ((t1 - t0 + c1 - c0) / n / 1e3, (f1 - f0) / n / 1e3, (c1 - c0) / n / 1e3)


def report(stacks: list[Stack], cases: list[str]) -> None:
    by = {s.name: s for s in stacks}
    off, direct = by.get("off"), by.get(DIRECT)
    costed = [s for s in stacks if s.name not in ("off", DIRECT)] if off is not None else []
    print("\nCPU per request, minimum over rounds (us; total = this process, all threads, + the writer child)")
    share = "ollamux's own (off - direct)" if direct is not None else "off (client and upstream included)"
    print(f"a configuration's cost: its total - off, and that as a share of {share}")
    head = "| case |" + "".join(f" {s.name} |" for s in stacks)
    head += "".join(f" {s.name} - off |" for s in costed) + " feeder (log) | child (log) |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for case in cases:
        cells = [f"{s.best[case][0]:.1f}" for s in stacks]
        if off is not None:
            base = off.best[case][0]
            own = base - direct.best[case][0] if direct is not None else base
            cells += [f"{s.best[case][0] - base:+.1f} ({(s.best[case][0] - base) / own * 100:+.1f}%)" for s in costed]
        logged = [s for s in stacks if s.feeder_tid]
        cells.append(" / ".join(f"{s.best[case][1]:.1f}" for s in logged) or "-")
        cells.append(" / ".join(f"{s.best[case][2]:.1f}" for s in logged) or "-")
        print(f"| {case} | " + " | ".join(cells) + " |")


async def main(requests: int, rounds: int, names: list[str], cases: list[str], warmup: int) -> None:
    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = up.sockets[0].getsockname()[1]
    tmp = tempfile.TemporaryDirectory()
    stacks = [await start_stack(n, port, tmp.name) for n in names]
    gc.collect()
    gc.freeze()
    async with aiohttp.ClientSession() as client:
        for s in stacks:
            for case in cases:
                await run(client, s, case, warmup)
        for r in range(rounds):
            for case in cases:
                order = stacks[r % len(stacks) :] + stacks[: r % len(stacks)]
                line = []
                for s in order:
                    total, feeder, child = await run(client, s, case, requests)
                    old = s.best.get(case)
                    # per column minimum: the feeder's and child's shares are each steadiest at their own least
                    s.best[case] = (
                        (total, feeder, child)
                        if old is None
                        else (min(old[0], total), min(old[1], feeder), min(old[2], child))
                    )
                    line.append(f"{s.name} {total:.1f}")
                print(f"round {r + 1} {case}: " + ", ".join(line), flush=True)
    for s in stacks:
        if s.runner is not None:
            await s.runner.cleanup()
    up.close()
    tmp.cleanup()
    report(stacks, cases)


# ------------------------------------------------------------------------------------------ callgrind
def _instructions(outdir: Path) -> tuple[int, int]:
    """(this process, its children) instructions from callgrind's out files in `outdir`: one per process, and
    a part file (`callgrind.out.PID.N`) per `callgrind_control -d`, each counting what ran since the last."""
    parents: set[str] = set()
    parent = kids = 0
    for f in sorted(outdir.glob("callgrind.out.*")):
        text = f.read_text(errors="replace")
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        cmd = re.search(r"^cmd: (.*)$", text, re.M)
        if m is None:
            continue
        if cmd is not None and "writer_process.py" in cmd.group(1):
            kids += int(m.group(1))
        else:
            parents.add(f.name.split(".")[2])
            parent += int(m.group(1))
    assert len(parents) == 1, f"one server process expected, found {sorted(parents)}"
    return parent, kids


def callgrind(names: list[str], cases: list[str], small: int, large: int) -> None:
    print(f"instructions per request under callgrind: ({large} - {small} requests) / {large - small}")
    print("| case | config | server (all threads) | writer child | total |")
    print("|---|---|---:|---:|---:|")
    for case in cases:
        for name in names:
            counts = []
            for n in (small, large):
                with tempfile.TemporaryDirectory() as d:
                    cmd = [
                        "valgrind",
                        "--tool=callgrind",
                        "--trace-children=yes",
                        "--trace-children-skip=*callgrind_control*,*perl*",
                        f"--callgrind-out-file={d}/callgrind.out.%p",
                        sys.executable,
                        __file__,
                        "--only",
                        name,
                        "--cases",
                        case,
                        "--requests",
                        str(n),
                        "--rounds",
                        "1",
                        "--warmup",
                        "50",
                    ]
                    # a fixed hash seed: dict and set layouts, and so the instruction counts, repeat run to run
                    env = {**os.environ, "PYTHONHASHSEED": "0", _UNDER_CALLGRIND: "1"}
                    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    counts.append(_instructions(Path(d)))
            per = [(b - a) / (large - small) for a, b in zip(counts[0], counts[1], strict=True)]
            print(f"| {case} | {name} | {per[0] / 1e6:.3f} M | {per[1] / 1e6:.3f} M | {sum(per) / 1e6:.3f} M |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--only", help=f"comma-separated configurations, of {', '.join(CONFIGS)}, {DIRECT}")
    ap.add_argument("--callgrind", action="store_true", help="instructions per request under valgrind instead")
    ap.add_argument("--callgrind-requests", default="100,500", help="the two request counts whose difference counts")
    args = ap.parse_args()
    chosen = args.only.split(",") if args.only else list(CONFIGS)
    picked = args.cases.split(",")
    for bad in [n for n in chosen if n not in (*CONFIGS, DIRECT)] + [c for c in picked if c not in CASES]:
        ap.error(f"unknown configuration or case {bad!r}")
    if args.callgrind:
        small, large = (int(x) for x in args.callgrind_requests.split(","))
        callgrind(chosen, picked, small, large)
    else:
        tune_gc()  # as `ollamux serve` does
        uvloop.install()
        asyncio.run(main(args.requests, args.rounds, chosen, picked, args.warmup))
