"""The ModelManager over real processes and sockets, with a tiny fake model server instead of a real model.

Each test starts a few `tests/fakes/tiny_model_server.py` processes as `runtime: {cmd: [...]}` models and
drives the real manager: coalesced starts, eviction, context restarts, failed starts, keep_alive, leases,
statuses, restarts after a crash (kill -9 of the child), and rescanning the models folder off the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ollamux.backends.base import Lease
from ollamux.backends.http import Clients, HTTPBackend, new_clients
from ollamux.config import parse_settings
from ollamux.errors import ServiceUnavailable
from ollamux.registry import Registry
from ollamux.runtime import gguf_meta, models_dir
from ollamux.runtime.backend import ManagedBackend
from ollamux.runtime.gguf_meta import DigestCache
from ollamux.runtime.manager import ModelManager, ModelStartError, ModelStatus
from ollamux.runtime.state import RestartPolicy

from .runtime_helpers import alive

SERVER = str(Path(__file__).parent / "fakes" / "tiny_model_server.py")

pytestmark = pytest.mark.timeout(30)


class Harness:
    """Builds managers on one client session; every manager is closed (its processes stopped) at the end."""

    def __init__(self, tmp: Path, client: Clients) -> None:
        self.tmp = tmp
        self.client = client
        self.record = tmp / "starts.txt"  # each tiny server appends "pid ctx" when it starts
        self.managers: list[ModelManager] = []

    def cmd(self, *extra: str) -> list[str]:
        return [sys.executable, SERVER, "--port", "${PORT}", "--ctx", "${CTX}", "--record", str(self.record), *extra]

    def manager(self, models: dict[str, dict[str, Any]], **runtime: Any) -> ModelManager:
        config = {
            "runtime": {"log_dir": str(self.tmp / "logs"), **runtime},
            "models": {name: {"runtime": {"ctx": 512, **spec}} for name, spec in models.items()},
        }
        settings = parse_settings(config, dict(os.environ))
        m = ModelManager(
            settings,
            self.client,
            Registry(settings.models, settings.default_model),
            {},
            digest_cache=DigestCache(self.tmp / "cache" / "digests.json"),
        )
        self.managers.append(m)
        return m

    def starts(self) -> list[tuple[int, int]]:
        if not self.record.exists():
            return []
        return [(int(p), int(c)) for p, c in (line.split() for line in self.record.read_text().splitlines())]


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with new_clients() as client:
        harness = Harness(tmp_path, client)
        try:
            yield harness
        finally:
            for m in harness.managers:
                await m.close()


def status(m: ModelManager, model: str) -> ModelStatus:
    return next(s for s in m.statuses() if s.model == model)


async def eventually(cond: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------------ lifecycle
async def test_concurrent_acquires_start_one_process(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd("--delay", "0.2")}})
    leases = await asyncio.gather(*(m.acquire("runtime:a") for _ in range(10)))
    assert len(h.starts()) == 1
    assert all(isinstance(x, Lease) and x.http is leases[0].http for x in leases)
    assert isinstance(leases[0].http, HTTPBackend)
    assert all(x.load_ns > 200_000_000 for x in leases)  # every one of them waited for the load
    pid = h.starts()[0][0]
    assert status(m, "a:latest") == ModelStatus("a:latest", "ready", 10, 0, 512, pid, None)
    for _ in leases:
        m.release("runtime:a", None)
    st = status(m, "a:latest")
    assert st.active == 0 and st.expires_at is not None and 290 < st.expires_at - time.time() <= 300  # ttl

    warm = await m.acquire("runtime:a")
    assert warm.load_ns == 0 and warm.http is leases[0].http and status(m, "a:latest").expires_at is None
    m.release("runtime:a", None)


async def test_lease_serves_and_keep_alive_zero_stops_on_release(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}})
    backend = ManagedBackend("runtime:a", m)
    assert backend.api == "openai" and backend.speaks("openai") and not backend.speaks("ollama")
    async with backend.lease(keep_alive=0) as lease:
        assert lease.load_ns > 0
        url = lease.http.base_url() + "/chat/completions"
        async with h.client.session.post(url, json={"model": "a", "messages": []}) as r:
            assert r.status == 200 and (await r.json())["choices"][0]["message"]["content"] == "hi"
        pid = status(m, "a:latest").pid
        assert pid is not None
    await eventually(lambda: status(m, "a:latest").state == "stopped")
    assert status(m, "a:latest").pid is None and not alive(pid)
    assert await backend.discover() == [] and await backend.running() == [] and await backend.probe("a") == {}


async def test_lease_that_fails_to_start_releases_nothing(h: Harness) -> None:
    m = h.manager({"bad": {"cmd": h.cmd("--crash")}})
    with pytest.raises(ModelStartError):
        async with ManagedBackend("runtime:bad", m).lease():
            pytest.fail("the body must not run")
    st = status(m, "bad:latest")
    assert (st.state, st.active, st.waiting) == ("failed", 0, 0)


async def test_idle_model_is_evicted_for_another(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd()}}, max_running=1)
    await m.acquire("runtime:a")
    m.release("runtime:a", None)
    lease = await m.acquire("runtime:b")
    assert lease.load_ns > 0
    (pid_a, _), (pid_b, _) = h.starts()
    assert status(m, "a:latest").state == "stopped" and not alive(pid_a)
    assert status(m, "b:latest").state == "ready" and status(m, "b:latest").pid == pid_b
    m.release("runtime:b", None)


async def test_busy_model_is_never_evicted_the_other_waits(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd()}}, max_running=1)
    await m.acquire("runtime:a")  # held: a request is using it
    waiter = asyncio.create_task(m.acquire("runtime:b"))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    assert status(m, "a:latest").state == "ready" and status(m, "a:latest").active == 1
    assert status(m, "b:latest").state == "stopped" and status(m, "b:latest").waiting == 1
    assert len(h.starts()) == 1
    m.release("runtime:a", None)  # now idle: b evicts it
    lease = await asyncio.wait_for(waiter, 5)
    assert lease.load_ns > 300_000_000  # the wait for a slot counts as load time
    assert status(m, "a:latest").state == "stopped" and status(m, "b:latest").state == "ready"
    m.release("runtime:b", None)


async def test_waiting_for_a_slot_gives_up_at_the_startup_timeout(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd(), "startup_timeout": 1}}, max_running=1)
    await m.acquire("runtime:a")
    with pytest.raises(ServiceUnavailable, match="waiting for a free slot"):
        await m.acquire("runtime:b")
    assert status(m, "b:latest").waiting == 0
    m.release("runtime:a", None)


async def test_larger_context_restarts_the_idle_process(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}})
    await m.acquire("runtime:a")
    m.release("runtime:a", None)
    same = await m.acquire("runtime:a", num_ctx=256)  # smaller than the running context: no restart
    m.release("runtime:a", None)
    assert same.load_ns == 0 and len(h.starts()) == 1
    bigger = await m.acquire("runtime:a", num_ctx=2048)
    assert bigger.load_ns > 0
    (old, ctx1), (new, ctx2) = h.starts()
    assert (ctx1, ctx2) == (512, 2048) and not alive(old)
    assert status(m, "a:latest").ctx == 2048 and status(m, "a:latest").pid == new
    m.release("runtime:a", None)


async def test_process_that_exits_while_starting_reports_its_last_lines(h: Harness) -> None:
    m = h.manager({"bad": {"cmd": h.cmd("--crash")}})
    with pytest.raises(ModelStartError, match="exited with code 3") as exc:
        await m.acquire("runtime:bad")
    assert "boom, the model file is corrupt" in exc.value.message and "loading model" in exc.value.message
    assert status(m, "bad:latest").state == "failed"
    with pytest.raises(ModelStartError):  # the next request tries again (and fails again)
        await m.acquire("runtime:bad")
    assert len(h.starts()) == 2


async def test_start_that_never_gets_healthy_times_out(h: Harness) -> None:
    m = h.manager({"slow": {"cmd": h.cmd("--delay", "10"), "startup_timeout": 1}})
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="did not become ready within 1s"):
        await m.acquire("runtime:slow")
    assert time.monotonic() - t0 < 3
    assert status(m, "slow:latest").state == "failed"
    await eventually(lambda: not alive(h.starts()[0][0]))  # the half-started process is killed


async def test_close_stops_every_process(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd()}}, max_running=2)
    await asyncio.gather(m.acquire("runtime:a"), m.acquire("runtime:b"))
    pids = [p for p, _ in h.starts()]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    await m.close()
    assert not any(alive(p) for p in pids)
    assert {s.state for s in m.statuses()} == {"stopped"}


# ------------------------------------------------------------------------------- restarts after a crash
async def running(m: ModelManager, backend: str) -> int:
    """Start the model, leave it idle, and return its pid."""
    await m.acquire(backend)
    m.release(backend, None)
    st = next(s for s in m.statuses() if f"runtime:{s.model.removesuffix(':latest')}" == backend)
    assert st.state == "ready" and st.pid is not None
    return st.pid


def change_cmd(m: ModelManager, backend: str, *args: str, h: Harness) -> None:
    """What the model's next start runs (say, its file was corrupted under the running process)."""
    model = m.model(backend)
    model.spec = replace(model.spec, cmd=tuple(h.cmd(*args)))


async def test_crashed_model_restarts_in_the_background(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}})
    old = await running(m, "runtime:a")
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: status(m, "a:latest").state == "restarting")
    st = status(m, "a:latest")
    assert st.pid is None and st.restart_at is not None and 0 < st.restart_at - time.time() <= 1  # first backoff
    # no request: the manager brings it back by itself
    await eventually(lambda: status(m, "a:latest").state == "ready")
    st = status(m, "a:latest")
    assert st.pid is not None and st.pid != old and alive(st.pid) and st.restart_at is None
    assert [p for p, _ in h.starts()] == [old, st.pid] and st.ctx == 512 and st.restarts == 1
    assert st.expires_at is not None and 290 < st.expires_at - time.time() <= 300  # it idles out like any start
    lease = await m.acquire("runtime:a")
    assert lease.load_ns == 0  # the next request finds it ready
    m.release("runtime:a", None)


async def test_restart_never_stays_failed_until_a_request(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd(), "restart": "never"}})
    m.restart_policy = RestartPolicy(first=0.1)
    old = await running(m, "runtime:a")
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: status(m, "a:latest").state == "failed")
    await asyncio.sleep(0.5)
    assert status(m, "a:latest").state == "failed" and len(h.starts()) == 1
    lease = await m.acquire("runtime:a")  # as before: a request starts it
    assert lease.load_ns > 0 and status(m, "a:latest").state == "ready" and len(h.starts()) == 2
    m.release("runtime:a", None)


async def test_restarts_that_keep_failing_back_off_then_recover(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}})
    m.restart_policy = RestartPolicy(first=0.2, cap=0.8, fail_after=3)
    old = await running(m, "runtime:a")
    change_cmd(m, "runtime:a", "--crash", h=h)
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    seen: list[float] = []  # when each restart's process recorded itself, from the kill
    states: list[str] = []
    while time.monotonic() - t0 < 3.4:
        seen += [time.monotonic() - t0] * (len(h.starts()) - 1 - len(seen))
        states.append(status(m, "a:latest").state)
        await asyncio.sleep(0.01)
    # waits of 0.2, 0.4, 0.8, 0.8 s between restarts: four of them in the window, not dozens
    assert 3 <= len(seen) <= 5, seen
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert seen[0] >= 0.2 and gaps[0] >= 0.4 and gaps[1] >= 0.8, seen
    assert len(gaps) < 3 or 0.8 <= gaps[2] < 1.5, seen  # capped: not 1.6
    # restarting until the third restart in a row failed, then failed (and still trying)
    assert states[0] in ("ready", "restarting") and "restarting" in states and states[-1] == "failed"
    assert states.index("failed") > states.index("restarting") and set(states) <= {"ready", "restarting", "failed"}
    assert status(m, "a:latest").restarts >= len(seen)  # the next one may have spawned since

    change_cmd(m, "runtime:a", h=h)  # the file is fixed: the next background try succeeds
    await eventually(lambda: status(m, "a:latest").state == "ready", within=3)
    assert alive(status(m, "a:latest").pid or 0)


async def test_request_during_a_pending_restart_starts_it_once(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}})
    old = await running(m, "runtime:a")
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: status(m, "a:latest").state == "restarting")
    lease = await m.acquire("runtime:a")  # at once, not after the 1 s backoff
    assert 0 < lease.load_ns < 900_000_000
    st = status(m, "a:latest")
    assert st.state == "ready" and st.restart_at is None
    await asyncio.sleep(1.3)  # past the backoff: the background restart found it running
    assert [p for p, _ in h.starts()] == [old, st.pid] and status(m, "a:latest").pid == st.pid
    m.release("runtime:a", None)


async def test_request_joins_a_background_restart_that_is_loading(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}})
    m.restart_policy = RestartPolicy(first=0.05)
    old = await running(m, "runtime:a")
    change_cmd(m, "runtime:a", "--delay", "0.6", h=h)
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: len(h.starts()) == 2)  # the background restart is loading
    assert status(m, "a:latest").state == "restarting"
    leases = await asyncio.gather(*(m.acquire("runtime:a") for _ in range(3)))
    assert all(x.load_ns > 0 for x in leases) and len(h.starts()) == 2  # they waited for it: one process
    assert status(m, "a:latest").pid == h.starts()[1][0]
    for _ in leases:
        m.release("runtime:a", None)


async def test_close_during_a_pending_restart_leaves_no_process(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd()}}, max_running=2)
    m.restart_policy = RestartPolicy(first=0.5)
    old_a, old_b = await running(m, "runtime:a"), await running(m, "runtime:b")
    change_cmd(m, "runtime:b", "--delay", "10", h=h)
    os.kill(old_b, signal.SIGKILL)
    await eventually(lambda: len(h.starts()) == 3)  # b's restart is loading
    os.kill(old_a, signal.SIGKILL)
    await eventually(lambda: status(m, "a:latest").state == "restarting")  # a's waits out its backoff
    await m.close()
    await asyncio.sleep(0.7)  # past a's backoff
    assert len(h.starts()) == 3 and not any(alive(p) for p, _ in h.starts())
    assert {s.state for s in m.statuses()} == {"stopped"}


async def test_background_restart_never_evicts(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd()}}, max_running=1)
    m.restart_policy = RestartPolicy(first=0.3)
    old = await running(m, "runtime:a")
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: status(m, "a:latest").state == "restarting")
    await m.acquire("runtime:b")  # takes the slot a's crash freed, and holds it
    await asyncio.sleep(0.6)
    # no room at a's turn: not restarted, and not a failure either; it starts when asked
    assert status(m, "a:latest").state == "stopped" and status(m, "b:latest").state == "ready"
    assert len(h.starts()) == 2
    m.release("runtime:b", None)
    lease = await m.acquire("runtime:a")  # on demand, evicting the now idle b
    assert lease.load_ns > 0 and status(m, "b:latest").state == "stopped"
    m.release("runtime:a", None)


async def test_request_takes_the_slot_of_a_background_restart(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd()}}, max_running=1)
    m.restart_policy = RestartPolicy(first=0.05)
    old = await running(m, "runtime:a")
    change_cmd(m, "runtime:a", "--delay", "10", h=h)
    os.kill(old, signal.SIGKILL)
    await eventually(lambda: len(h.starts()) == 2)  # a's restart is loading, slowly, for nobody
    lease = await m.acquire("runtime:b")
    assert lease.load_ns < 3_000_000_000  # it did not wait for a's load
    assert status(m, "a:latest").state == "stopped" and not alive(h.starts()[1][0])
    m.release("runtime:b", None)


async def test_models_stopped_on_purpose_are_not_restarted(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd()}}, max_running=2)
    m.restart_policy = RestartPolicy(first=0.05)
    await m.acquire("runtime:a")
    m.release("runtime:a", 0.2)  # idle expiry
    await running(m, "runtime:b")
    await m.unload("runtime:b")
    await eventually(lambda: status(m, "a:latest").state == "stopped")
    await asyncio.sleep(0.4)
    assert [s.state for s in m.statuses()] == ["stopped", "stopped"] and len(h.starts()) == 2


# ------------------------------------------------------------------------------------------ rescans
def write_gguf(path: Path, arch: str = "llama", ctx: int = 8192) -> None:
    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    kv = s("general.architecture") + struct.pack("<I", 8) + s(arch)
    kv += s(f"{arch}.context_length") + struct.pack("<II", 4, ctx)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv)


def bump_mtime(folder: Path) -> None:
    # a file added within one clock tick of the last scan may leave the folder's mtime unchanged
    st = folder.stat()
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every GGUF header parsed: (file name, whether it ran on the event loop's thread)."""
    seen: list[tuple[str, bool]] = []
    real = gguf_meta.read_gguf
    loop_thread = threading.get_ident()

    def spy(path: Path) -> gguf_meta.GGUFInfo:
        seen.append((path.name, threading.get_ident() == loop_thread))
        return real(path)

    monkeypatch.setattr(gguf_meta, "read_gguf", spy)
    return seen


async def test_rescan_reads_headers_off_the_loop_and_only_new_files(h: Harness, reads: list[tuple[str, bool]]) -> None:
    folder = h.tmp / "models"
    folder.mkdir()
    write_gguf(folder / "one.Q4_0.gguf", ctx=6000)
    m = h.manager({}, models_dir=str(folder))
    registered: list[int] = []
    m.on_new_models = lambda: registered.append(len(m.models))
    await m.rescan()
    assert reads == [("one.Q4_0.gguf", False)]
    entry = m.registry.find("one:q4_0")
    assert entry is not None and entry.meta["context_length"] == 6000 and registered == [1]
    assert m.model("runtime:one:q4_0").ctx_for(10**6) == 6000  # never more than it was trained for
    assert [s.model for s in m.statuses()] == ["one:q4_0"]

    await m.rescan()  # the folder did not change: nothing is read
    assert len(reads) == 1
    write_gguf(folder / "two.gguf")
    bump_mtime(folder)
    await m.rescan()
    assert reads == [("one.Q4_0.gguf", False), ("two.gguf", False)]  # one.Q4_0 came from the cache
    assert m.registry.find("two") is not None

    (folder / "one.Q4_0.gguf").unlink()
    bump_mtime(folder)
    await m.rescan()
    assert m.registry.find("one:q4_0") is None and [s.model for s in m.statuses()] == ["two:latest"]


async def test_concurrent_rescans_coalesce(
    h: Harness, reads: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = h.tmp / "models"
    folder.mkdir()
    write_gguf(folder / "one.gguf")
    listings: list[int] = []
    real_scan = models_dir.scan

    def slow_scan(path: Path) -> list[models_dir.ModelFile]:
        listings.append(threading.get_ident())
        time.sleep(0.1)  # a slow disk: the other calls arrive while this one runs
        return real_scan(path)

    monkeypatch.setattr(models_dir, "scan", slow_scan)
    m = h.manager({}, models_dir=str(folder))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    calls: list[Awaitable[None]] = [m.rescan() for _ in range(8)]
    await asyncio.gather(*calls)
    t.cancel()
    assert len(listings) == 1 and listings[0] != threading.get_ident()
    assert ticks >= 5  # the loop kept running while the folder was read
    assert m.registry.find("one") is not None


async def test_digests_are_added_in_the_background_once(h: Harness, reads: list[tuple[str, bool]]) -> None:
    folder = h.tmp / "models"
    folder.mkdir()
    write_gguf(folder / "one.gguf")
    (folder / "broken.gguf").write_bytes(b"not a gguf")
    m = h.manager({}, models_dir=str(folder))
    await m.rescan()

    def digest() -> Any:
        entry = m.registry.find("one")
        return entry.meta.get("digest") if entry is not None else None

    await eventually(lambda: digest() is not None)
    assert len(digest()) == 64
    await asyncio.sleep(0.1)
    # the broken file is parsed once (its failure is cached too) and never sets off a loop of rescans
    assert sorted(reads) == [("broken.gguf", False), ("one.gguf", False)]
    assert m.registry.find("broken") is None  # not a GGUF: never offered as a model whose every start fails


async def test_first_rescan_describes_configured_gguf_files(h: Harness, reads: list[tuple[str, bool]]) -> None:
    gguf = h.tmp / "conf.gguf"
    write_gguf(gguf, arch="qwen2", ctx=1024)
    m = h.manager({"conf": {"gguf": str(gguf)}, "c2": {"cmd": [*h.cmd(), "--model", str(gguf)]}})
    assert reads == []  # building the manager reads nothing
    await m.rescan()
    assert reads == [("conf.gguf", False)]  # off the loop; the second model's read came from the cache
    for name in ("conf", "c2"):
        model = m.model(f"runtime:{name}")
        assert model.gguf == gguf and model.max_ctx == 1024
        assert m.probed[(model.entry.backend, model.entry.upstream)]["family"] == "qwen2"
    await m.rescan()  # done once: no models folder, nothing more to read
    assert len(reads) == 1
