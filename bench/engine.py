"""The engine measured: how much of llama.cpp's own token rate reaches a client through ollamux (#21).

One llama.cpp server (ollamux's built-in engine, `python -m ollamux.runtime.engine`, with SmolLM2-135M) is
started once per slot count; ollamux (request log and metrics on, as users run it) is put in front of that
same server as an OpenAI-type backend, so both paths hit one engine and the difference is ollamux alone.
Rounds alternate direct / through ollamux (ABAB...) so that drift of a shared machine falls on both.

Each request streams a chat completion of exactly `--tokens` tokens (`ignore_eos`, temperature 0); the
figures are aggregate completion tokens per second over the wall time of k concurrent streams and the time
to the first content chunk. Then the slots question: 4 concurrent streams on an engine with one slot (they
queue) against one with 4 slots (continuous batching, a unified KV cache). Then the prompt cache across
turns of one conversation: the second turn's time to first token with llama.cpp's slot reuse against the
same turn with `cache_prompt: false`.

    .venv/bin/python bench/engine.py [--tokens 64] [--rounds 6] [--pairs 360] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PY = sys.executable
MODEL = "smol"
# a long, fixed system prompt: prompt processing is part of time to first token, and turn two can reuse it
SYSTEM = "You are a terse assistant. " + " ".join(f"Rule {i}: answer in plain words." for i in range(60))


def find_model() -> Path:
    models = Path(os.environ.get("OLLAMUX_MODELS", Path.home() / ".ollamux" / "models")).expanduser()
    path = models / GGUF
    if not path.exists():
        raise SystemExit(f"bench/engine: {path} is missing: run scripts/setup (or scripts/fetch_model.py)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench/engine: {url} did not answer (exit code {proc.poll()})")


@contextmanager
def started(argv: list[str], health: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_http(health, proc)
        except SystemExit:
            sys.stderr.write(log.read_text(errors="replace")[-3000:])
            raise
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Run:
    path: str  # "direct" or "ollamux"
    slots: int
    streams: int
    tokens_per_s: float  # aggregate completion tokens / wall seconds, median of the rounds
    ttft_ms: float  # median time to the first content chunk
    completion_tokens: int
    round_tokens_per_s: list[float]  # each round's figure, in round order (pairs with the other path's)


def client() -> aiohttp.ClientSession:
    # a new connection per request on both paths: llama.cpp's HTTP server drops idle keep-alive connections
    # after a few seconds, and a reused one it has closed fails the request; costs both paths the same
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=600), connector=aiohttp.TCPConnector(force_close=True)
    )


async def one_stream(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], tokens: int, cache: bool = True
) -> tuple[float, int, str]:
    """One streamed chat completion: (seconds to the first content chunk, completion tokens, text)."""
    body = {
        "model": MODEL,
        "messages": messages,
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,  # llama.cpp: exactly max_tokens tokens, whatever the model would say
        "cache_prompt": cache,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first: float | None = None
    count = 0
    text: list[str] = []
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if first is None:
                        first = time.perf_counter() - t0
                    text.append(piece)
            usage = event.get("usage")
            if usage:
                count = int(usage.get("completion_tokens") or 0)
    return (first if first is not None else time.perf_counter() - t0), count, "".join(text)


async def measure(url: str, streams: int, tokens: int, per_stream: int) -> tuple[float, float, int]:
    """k concurrent streams, each `per_stream` requests in a row: (tokens/s, median ttft ms, tokens)."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Count to a hundred."}]
    ttfts: list[float] = []
    total = 0
    async with client() as session:
        await one_stream(session, url, messages, 4)  # warm: the prompt cache and the connection

        async def worker(i: int) -> None:
            nonlocal total
            for j in range(per_stream):
                # a different user turn per request: no two requests are served from one cached answer
                msgs = [messages[0], {"role": "user", "content": f"Count to a hundred, stream {i} turn {j}."}]
                ttft, n, _ = await one_stream(session, url, msgs, tokens)
                ttfts.append(ttft)
                total += n

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(streams)))
        wall = time.perf_counter() - t0
    return total / wall, statistics.median(ttfts) * 1000, total


async def turn_two_ttft(url: str, cache: bool, repeats: int = 5) -> float:
    """Median time to first token of a conversation's second turn, after its first turn was answered."""
    out: list[float] = []
    async with client() as session:
        for i in range(repeats):
            history = [{"role": "system", "content": SYSTEM + f" Conversation {i}."}]
            history.append({"role": "user", "content": "Name three colours."})
            _, _, answer = await one_stream(session, url, history, 24, cache)
            history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And three more?"}]
            ttft, _, _ = await one_stream(session, url, history, 8, cache)
            out.append(ttft)
    return statistics.median(out) * 1000


async def ttft_pairs(urls: dict[str, str], pairs: int) -> list[float]:
    """Time to first token added by ollamux, pair by pair: one request direct and one through ollamux,
    back to back (the order alternating), each pair's difference in ms. A difference of medians over
    separate rounds moves by several ms with the engine's own jitter (~50 ms +- 10 here); pairs cancel most
    of it, but a pair's difference still spreads ~+-6 ms (quartiles): 120 pairs left the median's 90%
    bootstrap interval ~7 ms wide (session 18), so the bench takes 360 and prints the interval."""
    messages = [{"role": "system", "content": SYSTEM}]
    out: list[float] = []
    async with client() as session:
        for path in ("direct", "ollamux"):
            await one_stream(session, urls[path], [*messages, {"role": "user", "content": "warm"}], 4)
        for i in range(pairs):
            got: dict[str, float] = {}
            for path in ("direct", "ollamux") if i % 2 == 0 else ("ollamux", "direct"):
                # a turn of its own for each request (same length): the second of a pair must not find the
                # first one's prompt in llama.cpp's cache
                turn = {"role": "user", "content": f"Count to a hundred, pair {i}{'a' if path == 'direct' else 'b'}."}
                got[path], _, _ = await one_stream(session, urls[path], [*messages, turn], 4)
            out.append((got["ollamux"] - got["direct"]) * 1000)
    return out


def ollamux_config(work: Path, engine_port: int, port: int) -> Path:
    cfg = {
        "server": {"host": "127.0.0.1", "port": port},
        "backends": {"engine": {"type": "openai", "url": f"http://127.0.0.1:{engine_port}/v1"}},
        "models": {MODEL: {"backend": "engine"}},
        "request_log": {"path": str(work / "requests.sqlite")},
        "runtime": {"models_dir": str(work / "no-models")},
    }
    path = work / "ollamux.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    gguf = find_model()
    runs: list[Run] = []
    cache: dict[str, float] = {}
    pairs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ollamux-engine-bench-") as tmp:
        work = Path(tmp)
        for slots in (1, 4):
            eport, oport = free_port(), free_port()
            engine = [PY, "-m", "ollamux.runtime.engine", "--model", str(gguf), "--port", str(eport)]
            engine += ["--ctx", str(2048 * slots), "--parallel", str(slots), "--alias", MODEL]
            if args.threads:
                engine += ["--threads", str(args.threads)]
            serve = [PY, "-m", "ollamux", "serve", "--config", str(ollamux_config(work, eport, oport))]
            with (
                started(engine, f"http://127.0.0.1:{eport}/health", work / f"engine-{slots}.log"),
                started(serve, f"http://127.0.0.1:{oport}/health", work / f"ollamux-{slots}.log"),
            ):
                urls = {"direct": f"http://127.0.0.1:{eport}", "ollamux": f"http://127.0.0.1:{oport}"}
                for streams in (1, 4):
                    got: dict[str, list[tuple[float, float, int]]] = {"direct": [], "ollamux": []}
                    for r in range(args.rounds):
                        order = ("direct", "ollamux") if r % 2 == 0 else ("ollamux", "direct")
                        for path in order:
                            got[path].append(asyncio.run(measure(urls[path], streams, args.tokens, args.per_stream)))
                            print(
                                f"  slots={slots} streams={streams} {path}: {got[path][-1][0]:.1f} tok/s",
                                file=sys.stderr,
                            )
                    for path, vals in got.items():
                        runs.append(
                            Run(
                                path,
                                slots,
                                streams,
                                statistics.median(v[0] for v in vals),
                                statistics.median(v[1] for v in vals),
                                sum(v[2] for v in vals),
                                [v[0] for v in vals],
                            )
                        )
                if slots == 1:  # one slot, one request at a time: nothing but the path differs
                    pairs = asyncio.run(ttft_pairs(urls, args.pairs))
                if slots == 4:
                    for path in ("direct", "ollamux"):
                        cache[f"{path} cached"] = asyncio.run(turn_two_ttft(urls[path], True))
                        cache[f"{path} uncached"] = asyncio.run(turn_two_ttft(urls[path], False))
    return {"runs": [asdict(r) for r in runs], "turn_two_ttft_ms": cache, "ttft_pairs_ms": pairs, "tokens": args.tokens}


def find_run(result: dict[str, Any], path: str, slots: int, streams: int) -> dict[str, Any] | None:
    return next(
        (r for r in result["runs"] if r["path"] == path and r["slots"] == slots and r["streams"] == streams), None
    )


def paired_share(direct: dict[str, Any], through: dict[str, Any]) -> float:
    """ollamux's token rate as a % of llama.cpp's: the median of the rounds' own ratios (a round measures
    both paths back to back, so the machine's drift between rounds cancels), or the ratio of the two
    medians for a result from before rounds were kept."""
    d, o = direct.get("round_tokens_per_s"), through.get("round_tokens_per_s")
    if d and o and len(d) == len(o) and all(d):
        return 100 * float(statistics.median(b / a for a, b in zip(d, o, strict=True)))
    return 100 * float(through["tokens_per_s"]) / float(direct["tokens_per_s"])


def median_interval(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 90% bootstrap interval of the median of `values` (fixed seed: the same figures give the same
    interval)."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return meds[draws // 20], meds[draws - 1 - draws // 20]


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The engine rows of #21's target table: share of llama.cpp's token rate, ttft added, slots."""
    out: list[dict[str, Any]] = []
    for streams in (1, 4):
        d, o = find_run(result, "direct", 4, streams), find_run(result, "ollamux", 4, streams)
        if d and o and d["tokens_per_s"]:
            share = paired_share(d, o)
            out.append(
                {
                    "target": f"engine tokens/s through ollamux vs llama.cpp direct, {streams} stream(s)",
                    "goal": ">= 97%",
                    "floor": ">= 95%",
                    "measured": round(share, 1),
                    "unit": "%",
                    "met": share >= 97,
                    "floor_met": share >= 95,
                }
            )
            added = o["ttft_ms"] - d["ttft_ms"]
            pairs = result.get("ttft_pairs_ms") or []
            how = ""
            if streams == 1 and pairs:
                added, how = statistics.median(pairs), " (median of back-to-back pairs, 1 slot)"
            out.append(
                {
                    "target": f"time to first token added by ollamux, {streams} stream(s){how}",
                    "goal": "<= 1 ms",
                    "floor": "<= 1 ms",
                    "measured": round(added, 2),
                    "unit": "ms",
                    "met": added <= 1.0,
                    "floor_met": added <= 1.0,
                }
            )
    one, four = find_run(result, "ollamux", 1, 4), find_run(result, "ollamux", 4, 4)
    if one and four and one["tokens_per_s"]:
        gain = four["tokens_per_s"] / one["tokens_per_s"]
        out.append(
            {
                "target": "4 streams on 4 slots vs on 1 slot (aggregate tokens/s through ollamux)",
                "goal": "> 1x (share, not queue)",
                "floor": "> 1x",
                "measured": round(gain, 2),
                "unit": "x",
                "met": gain > 1.0,
                "floor_met": gain > 1.0,
            }
        )
    return out


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Engine: SmolLM2-135M Q4_1, {result['tokens']} tokens per streamed request, median of rounds; "
        "each round measures both paths back to back.",
        "",
        "| slots | streams | path | tokens/s (aggregate) | ttft p50 (ms) | % of direct (median of rounds' ratios) |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in result["runs"]:
        d = find_run(result, "direct", r["slots"], r["streams"])
        share = f"{paired_share(d, r):.1f}%" if r["path"] == "ollamux" and d and d["tokens_per_s"] else ""
        lines.append(
            f"| {r['slots']} | {r['streams']} | {r['path']} | {r['tokens_per_s']:.1f} | {r['ttft_ms']:.1f} | {share} |"
        )
    pairs = sorted(result.get("ttft_pairs_ms") or [])
    if pairs:
        q = statistics.quantiles(pairs, n=4)
        lo, hi = median_interval(pairs)
        lines += [
            "",
            f"Time to first token added by ollamux, {len(pairs)} back-to-back pairs (direct, then through ollamux, "
            f"the order alternating; 1 slot): median {statistics.median(pairs):+.2f} ms (90% bootstrap interval "
            f"{lo:+.2f} / {hi:+.2f}), quartiles {q[0]:+.2f} / {q[2]:+.2f} ms.",
        ]
    c = result["turn_two_ttft_ms"]
    if c:
        lines += ["", "Second turn of a conversation, time to first token (ms, 4 slots):", ""]
        lines += ["| path | prompt cache on | cache_prompt false |", "|---|---:|---:|"]
        for path in ("direct", "ollamux"):
            lines.append(f"| {path} | {c[f'{path} cached']:.1f} | {c[f'{path} uncached']:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=64, help="completion tokens per request")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds per cell")
    p.add_argument("--pairs", type=int, default=360, help="back-to-back pairs for the time to first token")
    p.add_argument("--per-stream", type=int, default=3, help="requests each concurrent stream makes")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads (default: its own)")
    p.add_argument("--json", default=None, help="also write the result here")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    result = run(args)
    result["targets"] = targets(result)
    print(render(result))
    for t in result["targets"]:
        print(f"- {t['target']}: {t['measured']} {t['unit']} (goal {t['goal']}): {'met' if t['met'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
