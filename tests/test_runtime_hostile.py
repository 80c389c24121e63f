"""Many clients at once against models ollamux runs itself, with real processes: the supervision under load.

Every model here is `tests/fakes/tiny_model_server.py` as a `cmd:` model (a real child process on a real
port), most with `--stream-delay`, so streams are in flight while another client unloads the model, loads it
in a loop, kills its process or asks for another model. Each test checks what every client got, in its own
format, what /api/ps and the manager then say, and that no process, slot or waiter is left behind.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollamux.runtime.manager import ModelManager
from ollamux.runtime.state import RestartPolicy

from .runtime_helpers import Proxy, alive, start_proxy, wait_for
from .servers import LoopThread

SERVER = str(Path(__file__).parent / "fakes" / "tiny_model_server.py")

pytestmark = pytest.mark.timeout(60)

DONE = "data: [DONE]\n\n"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def cmd(record: Path, *extra: str) -> list[str]:
    return [sys.executable, SERVER, "--port", "${PORT}", "--ctx", "${CTX}", "--record", str(record), *extra]


def starts(record: Path) -> list[int]:
    return [int(line.split()[0]) for line in record.read_text().splitlines()] if record.exists() else []


def drained(m: ModelManager) -> bool:
    return all(s.active == 0 and s.waiting == 0 for s in m.statuses())


@pytest.fixture
def proxy_of(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Any]:
    made: list[Proxy] = []

    def make(models: dict[str, dict[str, Any]], **runtime: Any) -> Proxy:
        config = {
            "runtime": runtime,
            "models": {name: {"runtime": {"ctx": 512, **spec}} for name, spec in models.items()},
        }
        p = start_proxy(loop_thread, config, tmp_path)
        made.append(p)
        return p

    yield make
    for p in made:
        # nothing is left counted or queued once every client is done
        m = p.manager
        # a request is released just after its client read the last byte: give that a moment
        wait_for(functools.partial(drained, m), what="every request to be released")
        assert not m._held and not m._slot_queue
        assert all(not x.wider and not x.yielding for x in m.models.values())
        p.close()
    # and no model process outlives its ollamux
    pids = [pid for f in tmp_path.glob("*.txt") for pid in starts(f)]
    wait_for(lambda: not any(alive(pid) for pid in pids), what="every model process to exit")


async def ollama_stream(c: httpx.AsyncClient, model: str, **extra: Any) -> tuple[int, list[dict[str, Any]]]:
    async with c.stream("POST", "/api/chat", json={"model": model, **CHAT, **extra}) as r:
        lines = [json.loads(line) async for line in r.aiter_lines() if line.strip()]
        return r.status_code, lines


async def openai_stream(c: httpx.AsyncClient, model: str) -> tuple[int, str]:
    async with c.stream("POST", "/v1/chat/completions", json={"model": model, **CHAT}) as r:
        return r.status_code, (await r.aread()).decode()


def ollama_text(lines: list[dict[str, Any]]) -> str:
    return "".join(x.get("message", {}).get("content", "") for x in lines)


# ------------------------------------------------------------------------------ unload mid-stream
@pytest.mark.parametrize("pin", [False, True], ids=["plain", "pinned"])
async def test_an_unload_while_streams_run_stops_the_model_once_they_end(
    proxy_of: Any, tmp_path: Path, pin: bool
) -> None:
    """16 streams on one model; an unload arrives mid-stream: every stream completes, then the model stops
    (Ollama: keep_alive 0 takes effect when the requests in flight end; those that began earlier do not undo
    it). A pinned model too: an explicit unload is the one thing that stops it."""
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--stream-delay", "0.3"), "pin": pin}})
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        assert (await c.post("/api/generate", json={"model": "a"})).status_code == 200  # loaded
        streams = [asyncio.ensure_future(ollama_stream(c, "a")) for _ in range(16)]
        await asyncio.sleep(0.4)  # every stream has begun
        unload = await c.post("/api/generate", json={"model": "a", "keep_alive": 0})
        assert unload.status_code == 200 and unload.json()["done_reason"] == "unload"
        results = await asyncio.gather(*streams)
    assert all(status == 200 and ollama_text(lines) == "hi" and lines[-1]["done"] for status, lines in results)
    (pid,) = starts(record)
    wait_for(lambda: not alive(pid), what="the unloaded model's process to exit")
    assert p.ps() == {}
    (st,) = p.manager.statuses()
    assert (st.state, st.active, st.waiting) == ("stopped", 0, 0)


async def test_an_unload_while_the_model_loads_wins_over_the_requests_waiting_for_it(
    proxy_of: Any, tmp_path: Path
) -> None:
    """Requests wait for a slow start; an unload arrives meanwhile: they are served, then the model stops."""
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--delay", "0.6")}})
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        streams = [asyncio.ensure_future(ollama_stream(c, "a")) for _ in range(6)]
        wait_for_waiting = 0
        while not any(s.waiting == 6 for s in p.manager.statuses()):
            await asyncio.sleep(0.02)
            wait_for_waiting += 1
            assert wait_for_waiting < 250
        unload = await c.post("/api/generate", json={"model": "a", "keep_alive": 0})
        assert unload.status_code == 200
        results = await asyncio.gather(*streams)
    assert all(status == 200 and ollama_text(lines) == "hi" for status, lines in results)
    (pid,) = starts(record)
    wait_for(lambda: not alive(pid), what="the unloaded model's process to exit")
    assert p.ps() == {}


async def test_loads_in_a_loop_beside_streams_start_one_process_and_free_every_count(
    proxy_of: Any, tmp_path: Path
) -> None:
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--stream-delay", "0.05", "--delay", "0.3")}})
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:

        async def loads() -> list[int]:
            return [(await c.post("/api/generate", json={"model": "a"})).status_code for _ in range(15)]

        streams = [asyncio.ensure_future(ollama_stream(c, "a")) for _ in range(12)]
        loaded = await asyncio.gather(loads(), loads())
        results = await asyncio.gather(*streams)
    assert all(code == 200 for codes in loaded for code in codes)
    assert all(status == 200 and ollama_text(lines) == "hi" for status, lines in results)
    assert len(starts(record)) == 1
    wait_for(lambda: p.manager.statuses()[0].active == 0, what="the last request's release")
    (st,) = p.manager.statuses()
    assert (st.state, st.active, st.waiting) == ("ready", 0, 0)
    assert list(p.ps()) == ["a:latest"]


# ---------------------------------------------------------------------------- a start that fails
async def test_a_model_that_cannot_start_asked_by_ten_clients_is_one_attempt_and_ten_clear_errors(
    proxy_of: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = tmp_path / "starts.txt"
    p = proxy_of({"bad": {"cmd": cmd(record, "--delay", "0.3", "--crash")}})
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        ollama = [c.post("/api/chat", json={"model": "bad", **CHAT, "stream": False}) for _ in range(5)]
        openai = [c.post("/v1/chat/completions", json={"model": "bad", **CHAT, "stream": False}) for _ in range(5)]
        answers = await asyncio.gather(*ollama, *openai)
    assert len(starts(record)) == 1  # one process for ten clients
    for r in answers[:5]:
        assert r.status_code == 500 and "boom, the model file is corrupt" in r.json()["error"]
    for r in answers[5:]:
        assert r.status_code == 500 and "boom, the model file is corrupt" in r.json()["error"]["message"]
    (st,) = p.manager.statuses()
    assert (st.state, st.active, st.waiting, st.pid) == ("failed", 0, 0, None)
    assert p.ps() == {}
    # the runtime tells the operator of the failed start, with the lines the process printed, once
    told = [r for r in caplog.records if r.name == "ollamux.runtime" and "boom" in r.getMessage()]
    assert len(told) == 1 and "failed to start" in told[0].getMessage()


async def test_the_lines_a_failed_start_printed_reach_the_operator_log_once(
    proxy_of: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten requests for a model that cannot start: ten request lines (one per 5xx, by design), but the
    process's output (the log tail in the error) should be in the operator log once, not ten times over."""
    p = proxy_of({"bad": {"cmd": cmd(tmp_path / "starts.txt", "--delay", "0.3", "--crash")}})
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        await asyncio.gather(*(c.post("/api/chat", json={"model": "bad", **CHAT}) for _ in range(10)))
    tails = [r for r in caplog.records if "tiny_model_server: loading model" in r.getMessage()]
    assert len(tails) == 1, [r.name for r in tails]


# ------------------------------------------------------------------------------- a crash mid-stream
async def anthropic_stream(c: httpx.AsyncClient, model: str) -> tuple[int, str]:
    body = {"model": model, "max_tokens": 8, **CHAT}
    async with c.stream("POST", "/v1/messages", json=body) as r:
        return r.status_code, (await r.aread()).decode()


async def until(cond: Any, what: str, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_process_killed_mid_stream_is_one_error_frame_per_client_and_comes_back(
    proxy_of: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--stream-delay", "0.5")}})
    p.manager.restart_policy = RestartPolicy(first=60)  # the background restart waits: the next request starts it
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        assert (await c.post("/api/generate", json={"model": "a"})).status_code == 200
        ollama = [asyncio.ensure_future(ollama_stream(c, "a")) for _ in range(3)]
        openai = [asyncio.ensure_future(openai_stream(c, "a")) for _ in range(3)]
        anthropic = [asyncio.ensure_future(anthropic_stream(c, "a")) for _ in range(3)]
        await until(lambda: p.manager.statuses()[0].active == 9, "nine streams in flight")
        await asyncio.sleep(0.3)  # each has its first bytes
        (pid,) = starts(record)
        os.kill(pid, signal.SIGKILL)
        for status, lines in await asyncio.gather(*ollama):
            assert status == 200 and "error" in lines[-1] and not lines[-1].get("done")
        for status, text in await asyncio.gather(*openai):
            frames = [f for f in text.split("\n\n") if f.startswith("data: ")]
            assert status == 200 and "error" in json.loads(frames[-1].removeprefix("data: "))
        for status, text in await asyncio.gather(*anthropic):
            assert status == 200 and text.rstrip().split("\n\n")[-1].startswith("event: error")
        await until(lambda: p.manager.statuses()[0].active == 0, "the cut requests' release")
        # the streams can end (their sockets cut) before the supervisor has reaped the process: wait for that
        await until(lambda: p.manager.statuses()[0].pid is None, "the supervisor to see the process gone")
        (st,) = p.manager.statuses()
        assert st.active == 0 and st.waiting == 0 and st.pid is None and st.state == "restarting"
        assert p.ps() == {}  # nothing is running: /api/ps does not list a dead process
        ready = await c.get("/health/ready")
        assert ready.status_code == 503 and "model a:latest restarting" in ready.json()["problems"]
        # the next request is served: it starts the model at once (the background restart, due later, finds it running)
        status, lines = await ollama_stream(c, "a")
        assert status == 200 and ollama_text(lines) == "hi"
        assert (await c.get("/health/ready")).status_code == 200
    assert len(starts(record)) == 2 and not alive(pid)
    crashes = [r for r in caplog.records if r.name == "ollamux.runtime" and "exited unexpectedly" in r.getMessage()]
    assert len(crashes) == 1


# -------------------------------------------------------------------------- one slot, two models
async def test_a_stream_that_waited_for_its_model_is_not_evicted_before_it_begins(
    proxy_of: Any, tmp_path: Path
) -> None:
    """max_running 1: an OpenAI stream waits (kept alive) for its slow model while a request for another
    model waits for the slot. The model gets ready for the stream: the other request must not evict it in
    the moment between its load and its stream."""
    ra, rb = tmp_path / "a.txt", tmp_path / "b.txt"
    p = proxy_of(
        {"a": {"cmd": cmd(ra, "--delay", "1.4")}, "b": {"cmd": cmd(rb)}},
        max_running=1,
    )
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        first = asyncio.ensure_future(openai_stream(c, "a"))
        await until(lambda: bool(p.manager.loading()), "a to be loading")
        second = asyncio.ensure_future(ollama_stream(c, "b"))
        status, text = await first
        assert status == 200 and '"content": "hi"' in text and text.endswith("data: [DONE]\n\n"), text
        status_b, lines = await second
        assert status_b == 200 and ollama_text(lines) == "hi"
    assert len(starts(ra)) == 1 and len(starts(rb)) == 1


async def test_one_slot_two_models_asked_alternately_never_cuts_a_stream(proxy_of: Any, tmp_path: Path) -> None:
    ra, rb = tmp_path / "a.txt", tmp_path / "b.txt"
    p = proxy_of(
        {"a": {"cmd": cmd(ra, "--stream-delay", "0.05")}, "b": {"cmd": cmd(rb, "--stream-delay", "0.05")}},
        max_running=1,
    )
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:

        async def client(i: int) -> list[tuple[int, str]]:
            out = []
            for j in range(4):
                model = "ab"[(i + j) % 2]
                status, lines = await ollama_stream(c, model)
                out.append((status, ollama_text(lines) if status == 200 else lines[0]["error"]))
            return out

        results = [r for rs in await asyncio.gather(*(client(i) for i in range(6))) for r in rs]
    assert results == [(200, "hi")] * 24  # every stream whole: none was cut by an eviction
    wait_for(lambda: all(s.active == 0 for s in p.manager.statuses()), what="the last request's release")
    running = [s for s in p.manager.statuses() if s.state != "stopped"]
    assert len(running) == 1 and running[0].active == 0 and running[0].waiting == 0
    live = [pid for pid in starts(ra) + starts(rb) if alive(pid)]
    assert len(live) == 1 and live[0] == running[0].pid


async def test_a_request_that_cannot_get_the_slot_in_time_gets_a_clear_503(proxy_of: Any, tmp_path: Path) -> None:
    p = proxy_of(
        {
            "a": {"cmd": cmd(tmp_path / "a.txt", "--stream-delay", "0.6")},
            "b": {"cmd": cmd(tmp_path / "b.txt"), "startup_timeout": 1},
        },
        max_running=1,
    )
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        holder = asyncio.ensure_future(ollama_stream(c, "a"))
        await until(lambda: any(s.active for s in p.manager.statuses()), "a's stream")
        waiter = await c.post("/api/chat", json={"model": "b", **CHAT, "stream": False})
        status, lines = await holder
    assert status == 200 and ollama_text(lines) == "hi"
    assert waiter.status_code == 503 and waiter.headers["Retry-After"]
    assert "waiting for a free slot (runtime.max_running is 1" in waiter.json()["error"]
    assert [(s.model, s.waiting) for s in p.manager.statuses()] == [("a:latest", 0), ("b:latest", 0)]


# ------------------------------------------------------------------------ clients that go away
async def test_clients_gone_while_the_model_loads_free_their_wait_and_the_load_goes_on(
    proxy_of: Any, tmp_path: Path
) -> None:
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--delay", "1.0")}})
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        gone: list[asyncio.Future[Any]] = [asyncio.ensure_future(ollama_stream(c, "a")) for _ in range(4)]
        gone += [asyncio.ensure_future(openai_stream(c, "a")) for _ in range(4)]  # these are kept alive
        await until(lambda: p.manager.statuses()[0].waiting == 8, "eight clients waiting for the load")
        for t in gone:
            t.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        await until(lambda: p.manager.statuses()[0].waiting == 0, "the waits to be freed")
        await until(lambda: p.manager.statuses()[0].state == "ready", "the load to finish")
        (st,) = p.manager.statuses()
        assert st.active == 0 and st.expires_at is not None  # idle: its ttl runs
        assert list(p.ps()) == ["a:latest"] and len(starts(record)) == 1
        status, lines = await ollama_stream(c, "a")  # and it serves the next client at once
        assert status == 200 and ollama_text(lines) == "hi" and len(starts(record)) == 1


async def test_clients_gone_while_waiting_for_the_slot_start_nothing(proxy_of: Any, tmp_path: Path) -> None:
    ra, rb = tmp_path / "a.txt", tmp_path / "b.txt"
    p = proxy_of({"a": {"cmd": cmd(ra, "--stream-delay", "0.4")}, "b": {"cmd": cmd(rb)}}, max_running=1)
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        holder = asyncio.ensure_future(ollama_stream(c, "a"))
        await until(lambda: any(s.active for s in p.manager.statuses()), "a's stream")
        waiters = [asyncio.ensure_future(openai_stream(c, "b")) for _ in range(5)]
        await until(lambda: {s.model: s.waiting for s in p.manager.statuses()}["b:latest"] == 5, "b's waiters")
        for t in waiters:
            t.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await until(lambda: {s.model: s.waiting for s in p.manager.statuses()}["b:latest"] == 0, "b's waits freed")
        status, lines = await holder
        assert status == 200 and ollama_text(lines) == "hi"
    assert not rb.exists()  # nobody waits for b any more: it is not started, a is not evicted for it
    assert list(p.ps()) == ["a:latest"]


# ------------------------------------------------------------------------------ ttl races a request
async def test_requests_racing_the_idle_stop_are_all_served_and_leave_one_process(
    proxy_of: Any, tmp_path: Path
) -> None:
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record), "ttl": 0.2}})
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:

        async def client(offset: float) -> list[int]:
            out = []
            await asyncio.sleep(offset)
            for _ in range(6):
                status, lines = await ollama_stream(c, "a")
                out.append(status if ollama_text(lines) == "hi" else -status)
                await asyncio.sleep(0.2)  # about when the idle stop is due
            return out

        results = await asyncio.gather(*(client(i * 0.03) for i in range(4)))
    assert all(r == [200] * 6 for r in results), results
    await until(lambda: p.manager.statuses()[0].state == "stopped", "the idle stop")
    assert [pid for pid in starts(record) if alive(pid)] == [] and p.ps() == {}


# ----------------------------------------------------------------- a larger context while it is busy
async def test_a_larger_context_that_cannot_wait_long_enough_says_what_it_waited_for(
    proxy_of: Any, tmp_path: Path
) -> None:
    """A request asks for more context than the busy model runs with: it waits for the streams to end to
    restart it; when they outlast its wait, its 503 says so, not that a slot of runtime.max_running is busy."""
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--stream-delay", "0.5"), "startup_timeout": 1}}, max_running=2)
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        holder = asyncio.ensure_future(ollama_stream(c, "a"))
        await until(lambda: p.manager.statuses()[0].active == 1, "a's stream")
        bigger = await c.post("/api/chat", json={"model": "a", **CHAT, "stream": False, "options": {"num_ctx": 2048}})
        status, lines = await holder
    assert status == 200 and ollama_text(lines) == "hi"
    assert bigger.status_code == 503 and bigger.headers["Retry-After"]
    message = bigger.json()["error"]
    assert "max_running" not in message, message
    assert "context 2048" in message and "512" in message, message
    assert len(starts(record)) == 1  # the running model was not restarted under its stream


# ------------------------------------------------------------------------------------------ chaos
async def test_streams_beside_unloads_and_loads_in_a_loop_are_all_served_and_leave_nothing(
    proxy_of: Any, tmp_path: Path
) -> None:
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--stream-delay", "0.02")}, "b": {"cmd": cmd(tmp_path / "b.txt")}})
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:

        async def streamer(i: int) -> list[str]:
            out = []
            for j in range(5):
                if (i + j) % 2:
                    status, lines = await ollama_stream(c, "a")
                    out.append(f"{status} {ollama_text(lines)}")
                else:
                    status, text = await openai_stream(c, "a")
                    whole = text.endswith(DONE)
                    out.append(f"{status} {'hi' if whole else text}")
            return out

        async def flipper() -> list[int]:
            codes = []
            for k in range(12):
                body: dict[str, Any] = {"model": "a", "keep_alive": 0} if k % 2 == 0 else {"model": "a"}
                codes.append((await c.post("/api/generate", json=body)).status_code)
                await asyncio.sleep(0.05)
            return codes

        streams = asyncio.gather(*(streamer(i) for i in range(10)))
        served, flips = await asyncio.gather(streams, flipper())
        assert flips == [200] * 12
        assert [x for s in served for x in s] == ["200 hi"] * 50
        await c.post("/api/generate", json={"model": "a", "keep_alive": 0})
    await until(lambda: p.manager.statuses()[0].state == "stopped", "the last unload")
    assert [(s.active, s.waiting) for s in p.manager.statuses()] == [(0, 0), (0, 0)]
    assert [pid for pid in starts(record) if alive(pid)] == [] and p.ps() == {}


async def test_a_process_killed_while_it_loads_fails_its_waiters_once_and_the_next_request_starts_it(
    proxy_of: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--delay", "1.0")}})
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        waiters = [asyncio.ensure_future(c.post("/api/chat", json={"model": "a", **CHAT})) for _ in range(5)]
        await until(lambda: len(starts(record)) == 1 and p.manager.statuses()[0].waiting == 5, "five waiting")
        (pid,) = starts(record)
        os.kill(pid, signal.SIGKILL)
        for r in await asyncio.gather(*waiters):
            assert r.status_code == 500 and "exited with code -9" in r.json()["error"]
        (st,) = p.manager.statuses()
        assert (st.state, st.active, st.waiting, st.pid) == ("failed", 0, 0, None) and p.ps() == {}
        status, lines = await ollama_stream(c, "a")
        assert status == 200 and ollama_text(lines) == "hi" and len(starts(record)) == 2
    told = [r for r in caplog.records if r.name == "ollamux.runtime" and "exited with code -9" in r.getMessage()]
    assert len(told) == 1


async def test_a_larger_context_is_not_starved_by_requests_arriving_after_it(proxy_of: Any, tmp_path: Path) -> None:
    """Three clients keep the model busy with overlapping streams; a request for a larger context arrives:
    requests that arrive after it wait behind it (as Ollama's queue does), so the model drains, restarts
    with the larger context once, and serves it and them; nobody gets a 503."""
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--stream-delay", "0.1"), "startup_timeout": 4}})
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        assert (await c.post("/api/generate", json={"model": "a"})).status_code == 200

        async def busy(offset: float) -> list[int]:
            await asyncio.sleep(offset)
            out = []
            while not stop.is_set():
                status, lines = await ollama_stream(c, "a")
                out.append(status if ollama_text(lines) == "hi" else -status)
            return out

        clients = [asyncio.ensure_future(busy(i * 0.15)) for i in range(3)]
        await asyncio.sleep(0.5)
        bigger = await c.post("/api/chat", json={"model": "a", **CHAT, "stream": False, "options": {"num_ctx": 2048}})
        await asyncio.sleep(0.3)
        stop.set()
        served = await asyncio.gather(*clients)
    assert bigger.status_code == 200, bigger.text
    assert all(s and set(s) == {200} for s in served), served
    assert [ctx for _, ctx in (line.split() for line in record.read_text().splitlines())] == ["512", "2048"]


async def test_clients_gone_mid_stream_free_their_requests(proxy_of: Any, tmp_path: Path) -> None:
    record = tmp_path / "starts.txt"
    p = proxy_of({"a": {"cmd": cmd(record, "--stream-delay", "0.4")}})
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        assert (await c.post("/api/generate", json={"model": "a"})).status_code == 200
        streams: list[asyncio.Future[Any]] = [asyncio.ensure_future(ollama_stream(c, "a")) for _ in range(5)]
        streams += [asyncio.ensure_future(openai_stream(c, "a")) for _ in range(5)]
        await until(lambda: p.manager.statuses()[0].active == 10, "ten streams")
        await asyncio.sleep(0.2)
        for t in streams:
            t.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        await until(lambda: p.manager.statuses()[0].active == 0, "the requests to be released")
        (st,) = p.manager.statuses()
        assert st.state == "ready" and st.waiting == 0 and st.expires_at is not None and len(starts(record)) == 1


async def test_a_request_for_another_model_is_not_starved_by_requests_arriving_after_it(
    proxy_of: Any, tmp_path: Path
) -> None:
    """max_running 1, three clients keep model a busy with overlapping streams; a request for b arrives.
    The requests that arrive after it queue behind it, as in Ollama (a drains, b loads, then a again): let in,
    they would keep a busy until b's request ran out of its wait (startup_timeout) with a 503."""
    p = proxy_of(
        {
            "a": {"cmd": cmd(tmp_path / "a.txt", "--stream-delay", "0.1")},
            "b": {"cmd": cmd(tmp_path / "b.txt"), "startup_timeout": 2},
        },
        max_running=1,
    )
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        assert (await c.post("/api/generate", json={"model": "a"})).status_code == 200

        async def busy(offset: float) -> None:
            await asyncio.sleep(offset)
            while not stop.is_set():
                await ollama_stream(c, "a")

        clients = [asyncio.ensure_future(busy(i * 0.15)) for i in range(3)]
        await asyncio.sleep(0.5)
        other = await c.post("/api/chat", json={"model": "b", **CHAT, "stream": False})
        stop.set()
        await asyncio.gather(*clients)
    assert other.status_code == 200, other.text
