"""A bounded soak: a few thousand mixed requests against a real `ollamux serve` process while replicas are
killed and restarted, upstreams answer garbage and clients hang up mid-stream.

The upstreams are real servers in this process (a LoopThread): two replicas of a flaky OpenAI-compatible
backend (dropped and restored on a schedule), a hostile backend (garbage chosen by model name) and an
Ollama backend (for the OpenAI front on an Ollama back). ollamux runs as its own process, so a crash shows
as the process dying and its memory can be read from /proc. Asserted: it stays up, never answers 500,
every answer is in its API's envelope, the request log has exactly one row per request id sent (abandoned
ones included) after a graceful SIGTERM, its RSS after the load is back near its post-warm-up value, and
its operator log holds no traceback.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from .fakes.flaky_upstream import Flaky
from .fakes.hostile_upstream import Hostile
from .fakes.ollama_upstream import FakeOllama
from .servers import LoopThread, free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc")

CONCURRENCY = 32
WARMUP = 500  # requests before the RSS baseline: every code path, pool and cache has been used once
ROUNDS = 7  # load rounds, /health polled and the process checked between them
PER_ROUND = 500  # 3,500 requests under chaos, 4,000 in all
SETTLE = 2.0  # seconds of quiet before the second RSS reading
# Why 40 MB: CPython's allocator rarely hands freed arenas back to the OS, so RSS after a burst sits a few
# MB above the warm baseline (fragmentation, 32 concurrent requests' worth of buffers). A leak of just
# 12 KB per request (a record, a response body, a task kept alive) over the 3,500 loaded requests is 40 MB
# and fails; the growth measured here (allocator noise, warm caches) is +7 to +9 MB.
RSS_SLACK_KB = 40 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=30)
# the hostile backend's garbage, by model name: each is a model on backend 'bad' (the Ollama API on an OpenAI
# backend) and, as o-<name>, on backend 'bad-ol' (the OpenAI API on an Ollama backend)
GARBAGE = ["html", "choices-int", "choice-str", "delta-str", "message-str", "content-int", "usage-str"]
GARBAGE_STREAM_ONLY = ["error-midstream"]
EXPECTED_ERRORS = {400, 502, 503, 504}  # bad JSON; garbage, dead replicas, breaker open, timeouts
MSG = [{"role": "user", "content": "hi"}]


@dataclass
class Outcome:
    rid: str
    kind: str
    status: int = 0  # 0: no answer at all (a transport error on our side of the proxy)
    problem: str | None = None  # what was wrong with the answer, if anything
    abandoned: bool = False
    streamed: bool = False


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def statuses(self) -> Counter[int]:
        return Counter(o.status for o in self.outcomes)

    def problems(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem is not None]


# ------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Req:
    kind: str
    path: str
    api: str  # ollama | openai
    body: dict[str, Any] | None  # None: a malformed body
    stream: bool
    disconnect: bool = False


def pick(rng: random.Random) -> Req:
    """One request from the mix (weights roughly as a mixed fleet of clients would send)."""
    roll = rng.random()
    stream = rng.random() < 0.5
    if roll < 0.20:
        return Req("ol-chat", "/api/chat", "ollama", {"model": "m", "messages": MSG, "stream": stream}, stream)
    if roll < 0.40:
        return Req(
            "oa-chat", "/v1/chat/completions", "openai", {"model": "m", "messages": MSG, "stream": stream}, stream
        )
    if roll < 0.48:
        return Req("ol-generate", "/api/generate", "ollama", {"model": "m", "prompt": "hi", "stream": stream}, stream)
    if roll < 0.54:
        return Req("oa-embed", "/v1/embeddings", "openai", {"model": "m", "input": "hi"}, False)
    if roll < 0.62:  # the OpenAI front on the Ollama backend
        body = {"model": "qwen3", "messages": MSG, "stream": stream}
        return Req("oa-on-ollama", "/v1/chat/completions", "openai", body, stream)
    if roll < 0.64:
        return Req("oa-embed-ollama", "/v1/embeddings", "openai", {"model": "nomic", "input": ["a", "b"]}, False)
    if roll < 0.80:  # garbage, either API, streamed or not
        model = rng.choice(GARBAGE + (GARBAGE_STREAM_ONLY if stream else []))
        if rng.random() < 0.5:
            return Req(
                f"ol-garbage:{model}",
                "/api/chat",
                "ollama",
                {"model": model, "messages": MSG, "stream": stream},
                stream,
            )
        # the OpenAI front on the hostile server as an Ollama backend: translated, so judged (OpenAI on OpenAI
        # is a byte pass-through that relays whatever came, by design)
        body = {"model": f"o-{model}", "messages": MSG, "stream": stream}
        return Req(f"oa-garbage:{model}", "/v1/chat/completions", "openai", body, stream)
    if roll < 0.92:  # a client that hangs up after the first chunk
        if rng.random() < 0.5:
            return Req("ol-gone", "/api/chat", "ollama", {"model": "m", "messages": MSG, "stream": True}, True, True)
        body = {"model": rng.choice(["m", "qwen3"]), "messages": MSG, "stream": True}
        return Req("oa-gone", "/v1/chat/completions", "openai", body, True, True)
    if rng.random() < 0.5:
        return Req("ol-badjson", "/api/chat", "ollama", None, False)
    return Req("oa-badjson", "/v1/chat/completions", "openai", None, False)


def check_error_envelope(req: Req, obj: Any) -> str | None:
    if req.api == "ollama":
        ok = isinstance(obj, dict) and isinstance(obj.get("error"), str)
    else:
        err = obj.get("error") if isinstance(obj, dict) else None
        ok = isinstance(err, dict) and isinstance(err.get("message"), str)
    return None if ok else f"not a {req.api} error envelope: {str(obj)[:200]}"


def check_whole(req: Req, obj: Any) -> str | None:
    """A non-streamed 200 in its API's shape."""
    if not isinstance(obj, dict):
        return f"not an object: {str(obj)[:200]}"
    if req.kind.startswith("oa-embed"):
        ok = isinstance(obj.get("data"), list) and all(isinstance(d.get("embedding"), list) for d in obj["data"])
    elif req.api == "openai":
        choices = obj.get("choices")
        ok = (
            isinstance(choices, list)
            and len(choices) > 0
            and isinstance(choices[0].get("message"), dict)
            and isinstance(choices[0]["message"].get("content"), str)
        )
    elif req.path == "/api/generate":
        ok = obj.get("done") is True and isinstance(obj.get("response"), str)
    else:
        ok = obj.get("done") is True and isinstance(obj.get("message"), dict)
    return None if ok else f"not a {req.kind} answer: {str(obj)[:200]}"


def check_ndjson(lines: list[bytes]) -> str | None:
    objs = []
    for raw in lines:
        if raw.strip():
            try:
                objs.append(json.loads(raw))
            except json.JSONDecodeError:
                return f"an NDJSON line is not JSON: {raw[:200]!r}"
    if not objs:
        return "an empty stream"
    for o in objs[:-1]:
        if not isinstance(o, dict) or o.get("done") is not False or "error" in o:
            return f"a bad line before the last: {str(o)[:200]}"
    last = objs[-1]
    if isinstance(last, dict) and (last.get("done") is True or isinstance(last.get("error"), str)):
        return None
    return f"the stream ends neither done nor in error: {str(last)[:200]}"


def check_sse(lines: list[bytes]) -> str | None:
    frames = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(b":"):
            continue
        if not line.startswith(b"data: "):
            return f"not an SSE data line: {raw[:200]!r}"
        frames.append(line[6:])
    if not frames:
        return "an empty stream"
    if frames[-1] == b"[DONE]":
        frames = frames[:-1]
        ended = True
    else:
        ended = False
    objs = []
    for f in frames:
        try:
            objs.append(json.loads(f))
        except json.JSONDecodeError:
            return f"an SSE frame is not JSON: {f[:200]!r}"
    for o in objs[:-1] if objs else []:
        if not isinstance(o, dict) or not isinstance(o.get("choices"), list):
            return f"a bad chunk: {str(o)[:200]}"
    if ended and (not objs or (isinstance(objs[-1], dict) and isinstance(objs[-1].get("choices"), list))):
        return None
    if objs and isinstance(objs[-1], dict):
        err = objs[-1].get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return None  # ended by an error frame (with or without [DONE])
    return f"the stream ends neither in [DONE] nor in an error frame: {str(objs[-1:])[:200]}"


async def send(session: aiohttp.ClientSession, url: str, req: Req, rid: str) -> Outcome:
    out = Outcome(rid, req.kind, abandoned=req.disconnect, streamed=req.stream)
    headers = {"x-request-id": rid, "Content-Type": "application/json"}
    data = json.dumps(req.body).encode() if req.body is not None else b'{"model": "m", "messages": [{"role": '
    try:
        async with session.post(url + req.path, data=data, headers=headers) as r:
            out.status = r.status
            if r.headers.get("x-request-id") != rid:
                out.problem = f"x-request-id came back as {r.headers.get('x-request-id')!r}"
                return out
            if req.disconnect:
                if r.status == 200:
                    await r.content.readline()  # the first chunk (or the first SSE line), then hang up
                r.close()
                return out
            if r.status != 200 or not req.stream:
                raw = await r.read()
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    out.problem = f"HTTP {r.status} body is not JSON: {raw[:200]!r}"
                    return out
                out.problem = check_whole(req, obj) if r.status == 200 else check_error_envelope(req, obj)
                return out
            lines = [raw async for raw in r.content]
            out.problem = check_ndjson(lines) if req.api == "ollama" else check_sse(lines)
    except (TimeoutError, aiohttp.ClientError) as exc:
        out.problem = f"transport error: {type(exc).__name__}: {exc}"
    return out


async def drive(url: str, reqs: list[tuple[str, Req]], tally: Tally) -> None:
    queue: asyncio.Queue[tuple[str, Req]] = asyncio.Queue()
    for item in reqs:
        queue.put_nowait(item)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:

        async def client() -> None:
            while not queue.empty():
                rid, req = queue.get_nowait()
                tally.outcomes.append(await send(session, url, req, rid))

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))


async def chaos(a: Flaky, b: Flaky, stop: asyncio.Event, events: list[str]) -> None:
    """Kill and restore the replicas in turn: one down at a time mostly, both down now and then."""
    step = 0
    while not stop.is_set():
        step += 1
        victims = [a, b] if step % 5 == 0 else [a if step % 2 else b]
        for v in victims:
            await asyncio.to_thread(v.kill)
        events.append(f"kill {'+'.join(v.name for v in victims)}")
        try:
            await asyncio.wait_for(stop.wait(), 0.15 if len(victims) == 2 else 0.3)
        except TimeoutError:
            pass
        for v in victims:
            await asyncio.to_thread(v.start)
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


# -------------------------------------------------------------------------------------------- process


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def healthy(url: str) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s, s.get(url + "/health") as r:
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


@pytest.fixture
def upstreams(loop_thread: LoopThread) -> Iterator[tuple[Flaky, Flaky, str, str]]:
    a = Flaky(loop_thread, name="a", chunks=4, chunk_delay=0.05).start()
    b = Flaky(loop_thread, name="b", chunks=4, chunk_delay=0.05).start()
    bad_runner, bad_url = loop_thread.start_app(Hostile().app())
    ol_runner, ol_url = loop_thread.start_app(FakeOllama().app())
    yield a, b, bad_url, ol_url
    a.kill()
    b.kill()
    loop_thread.stop_app(bad_runner)
    loop_thread.stop_app(ol_runner)


@pytest.mark.timeout(180)
def test_soak_mixed_load_with_chaos(upstreams: tuple[Flaky, Flaky, str, str], tmp_path: Path) -> None:
    a, b, bad_url, ol_url = upstreams
    port = free_port()
    db = tmp_path / "requests.sqlite"
    cfg = tmp_path / "ollamux.yaml"
    fast = {"backoff": 0.01, "backoff_max": 0.05, "breaker": {"failures": 50, "cooldown": 0.5}}
    cfg.write_text(
        yaml.safe_dump(
            {
                "server": {"shutdown_grace": 5},
                "backends": {
                    "rep": {
                        "type": "openai",
                        "urls": [a.url + "/v1", b.url + "/v1"],
                        "retries": 2,
                        "health_interval": 0.2,
                        "health_timeout": 0.5,
                        "idle_timeout": 5,
                        **fast,
                    },
                    "bad": {"type": "openai", "url": bad_url + "/v1", "retries": 0, **fast},
                    "bad-ol": {"type": "ollama", "url": bad_url, "retries": 0, **fast},
                    "ol": {"type": "ollama", "url": ol_url, "retries": 1, **fast},
                },
                "models": {
                    "m": {"backend": "rep", "upstream": "m-up", "capabilities": ["completion", "embedding"]},
                    "qwen3": {"backend": "ol"},
                    "nomic": {"backend": "ol", "upstream": "nomic:v1", "capabilities": ["embedding"]},
                    **{g: {"backend": "bad"} for g in GARBAGE + GARBAGE_STREAM_ONLY},
                    **{f"o-{g}": {"backend": "bad-ol", "upstream": g} for g in GARBAGE + GARBAGE_STREAM_ONLY},
                },
                "request_log": {"path": str(db), "queue_size": 100_000},
                "metrics": {"backend_probe_interval": 0},
            }
        )
    )
    err_path = tmp_path / "stderr.log"
    ollamux = Path(sys.executable).with_name("ollamux")
    cmd = [str(ollamux), "serve", "--config", str(cfg), "--port", str(port), "--log-format", "text"]
    with err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(20260101)
    sent: list[str] = []
    tally = Tally()
    chaos_events: list[str] = []
    t_start = time.monotonic()

    def batch(prefix: str, n: int) -> list[tuple[str, Req]]:
        out = [(f"soak-{prefix}-{i}", pick(rng)) for i in range(n)]
        sent.extend(rid for rid, _ in out)
        return out

    def alive(where: str) -> None:
        assert proc.poll() is None, f"ollamux died ({where}), exit {proc.returncode}:\n{err_path.read_text()[-4000:]}"

    async def scenario() -> tuple[int, int]:
        deadline = time.monotonic() + 30
        while not await healthy(url):
            alive("at start")
            assert time.monotonic() < deadline, "ollamux did not start"
            await asyncio.sleep(0.05)

        await drive(url, batch("warm", WARMUP), tally)
        await asyncio.sleep(SETTLE)
        alive("after warm-up")
        rss_warm = rss_kb(proc.pid)

        stop = asyncio.Event()
        chaos_task = asyncio.create_task(chaos(a, b, stop, chaos_events))
        try:
            for r in range(ROUNDS):
                await drive(url, batch(f"r{r}", PER_ROUND), tally)
                alive(f"after round {r}")
                assert await healthy(url), f"/health failed after round {r}"
        finally:
            stop.set()
            await chaos_task
        await asyncio.sleep(SETTLE)
        alive("after the load")
        return rss_warm, rss_kb(proc.pid)

    try:
        rss_warm, rss_after = asyncio.run(scenario())
        t_load = time.monotonic() - t_start
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    oplog = err_path.read_text(errors="replace")
    assert code == 0, f"exit {code}:\n{oplog[-4000:]}"

    statuses = tally.statuses()
    problems = tally.problems()
    print(
        f"\nsoak: {len(tally.outcomes)} requests in {t_load:.1f}s, statuses {dict(sorted(statuses.items()))}, "
        f"{sum(o.abandoned for o in tally.outcomes)} abandoned, {len(chaos_events)} kills, "
        f"RSS warm {rss_warm / 1024:.1f} MB -> after {rss_after / 1024:.1f} MB "
        f"({(rss_after - rss_warm) / 1024:+.1f} MB)"
    )

    assert len(tally.outcomes) == len(sent) == WARMUP + ROUNDS * PER_ROUND
    assert not problems, f"{len(problems)} bad answers, e.g. {problems[:5]}"
    unexpected = {s: n for s, n in statuses.items() if s != 200 and s not in EXPECTED_ERRORS}
    assert not unexpected, f"unexpected statuses {unexpected}: " + str(
        [o for o in tally.outcomes if o.status in unexpected][:5]
    )
    assert chaos_events, "the replicas were never killed"

    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT id, status, abandoned FROM requests").fetchall()
        errors = con.execute(
            "SELECT status, substr(error, 1, 90) AS e, count(*) FROM requests WHERE status >= 500"
            " GROUP BY status, e ORDER BY count(*) DESC LIMIT 8"
        ).fetchall()
    finally:
        con.close()
    logged = Counter(r[0] for r in rows)
    missing = [rid for rid in sent if rid not in logged]
    doubled = [rid for rid, n in logged.items() if n != 1]
    extra = [rid for rid in logged if not rid.startswith("soak-")]
    assert not missing, f"{len(missing)} of {len(sent)} requests not logged, e.g. {missing[:10]}"
    assert not doubled, f"{len(doubled)} ids logged more than once, e.g. {doubled[:10]}"
    assert not extra, f"rows for requests never sent: {extra[:10]}"
    by_id = {r[0]: (r[1], r[2]) for r in rows}
    for o in tally.outcomes:
        status, abandoned = by_id[o.rid]
        if o.abandoned:
            assert status == 499 or status == o.status or status in EXPECTED_ERRORS, (o, status)
        elif o.streamed and o.status == 200:  # the status line went out first; the log has how it ended
            # an error the upstream itself reported mid-stream ("the model crashed") is logged as its 500
            upstream_500 = status == 500 and o.kind.endswith("error-midstream")
            assert status == 200 or status in EXPECTED_ERRORS or upstream_500, f"{o} logged as {status}"
        else:
            assert status == o.status, f"{o} logged as {status}"
            assert not abandoned, f"{o} logged as abandoned"
    kinds: dict[str, Counter[int]] = {}
    for o in tally.outcomes:
        kinds.setdefault(o.kind.split(":")[0], Counter())[o.status] += 1
    print("soak: by kind " + ", ".join(f"{k} {dict(sorted(c.items()))}" for k, c in sorted(kinds.items())))
    print("soak: top 5xx in the log " + "; ".join(f"{st} x{n}: {e}" for st, e, n in errors))
    print(f"soak: log rows {len(rows)}, statuses {dict(sorted(Counter(r[1] for r in rows).items()))}")

    assert "Traceback" not in oplog, oplog[oplog.index("Traceback") - 2000 :][:6000]
    assert rss_after - rss_warm < RSS_SLACK_KB, f"RSS grew {(rss_after - rss_warm) / 1024:.1f} MB over the load"
