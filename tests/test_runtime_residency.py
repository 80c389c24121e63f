"""Residency wiring over real processes (the tiny fake model server): pin, preload, groups, loading stages."""

from __future__ import annotations

import asyncio
import time

import pytest

from ollamux.errors import ServiceUnavailable

from .runtime_helpers import alive
from .test_runtime_manager import Harness, eventually, h, status

__all__ = ["h"]  # the fixture, imported for these tests

pytestmark = pytest.mark.timeout(30)


async def test_a_pinned_model_is_not_evicted_and_not_idle_stopped(h: Harness) -> None:
    m = h.manager(
        {"a": {"cmd": h.cmd(), "pin": True, "ttl": 0.2}, "b": {"cmd": h.cmd(), "startup_timeout": 1}}, max_running=1
    )
    await m.acquire("runtime:a")
    m.release("runtime:a", 0)  # even a request's keep_alive 0 leaves a pinned model loaded
    await asyncio.sleep(0.5)  # past its ttl
    st = status(m, "a:latest")
    assert st.state == "ready" and st.expires_at is not None and st.expires_at - time.time() > 1e9
    with pytest.raises(ServiceUnavailable, match="waiting for a free slot"):
        await m.acquire("runtime:b")  # the only slot is pinned: b waits, then gives up
    assert status(m, "b:latest").state == "stopped"
    await m.unload("runtime:a")  # an explicit unload still stops it
    assert status(m, "a:latest").state == "stopped"


async def test_preload_starts_in_free_slots_only(h: Harness) -> None:
    m = h.manager({"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd()}, "c": {"cmd": h.cmd()}}, max_running=2)
    await m.preload(["a", "nope", "b", "c"])
    assert [status(m, n).state for n in ("a:latest", "b:latest", "c:latest")] == ["ready", "ready", "stopped"]
    assert len(h.starts()) == 2  # c found no free slot; a preload never evicts


async def test_loading_lists_the_stage_of_a_starting_model(h: Harness) -> None:
    m = h.manager({"slow": {"cmd": h.cmd("--delay", "1")}})
    task = asyncio.create_task(m.acquire("runtime:slow"))
    await eventually(lambda: [x.stage for x in m.loading()] == ["loading"])
    (item,) = m.loading()
    assert item.entry.name == "slow:latest" and item.ctx == 512 and time.time() - item.since < 5
    await task
    assert m.loading() == [] and [r.entry.name for r in m.running()] == ["slow:latest"]
    assert m.running()[0].size_vram == 0  # no GPU here
    m.release("runtime:slow", None)


async def test_group_members_load_together_and_an_exclusive_group_runs_alone(h: Harness) -> None:
    m = h.manager(
        {"a": {"cmd": h.cmd()}, "b": {"cmd": h.cmd()}, "x": {"cmd": h.cmd()}, "pinned": {"cmd": h.cmd(), "pin": True}},
        max_running=4,
        groups={"pair": {"members": ["a", "b"], "exclusive": True}},
    )
    await m.load("runtime:x")
    await m.load("runtime:pinned")
    pid_x = status(m, "x:latest").pid
    assert pid_x is not None
    await m.acquire("runtime:a")  # x is outside the exclusive group: stopped first; the pinned one stays
    assert status(m, "x:latest").state == "stopped" and not alive(pid_x)
    assert status(m, "pinned:latest").state == "ready"
    await eventually(lambda: status(m, "b:latest").state == "ready")  # its companion follows
    m.release("runtime:a", None)
    await m.load("runtime:x")  # an outsider starts beside them: the exclusivity is the group's, not x's
    assert status(m, "a:latest").state == "ready"


async def test_a_memory_budget_evicts_the_least_recently_used_idle_model(h: Harness) -> None:
    from ollamux.runtime.memory import OVERHEAD

    gib = 1024**3
    models = {n: {"cmd": h.cmd()} for n in ("a", "b", "c")}
    m = h.manager(models, max_running=3, memory_budget="2.5GiB")  # slots for three, memory for two
    for b in ("runtime:a", "runtime:b", "runtime:c"):
        m.models[b].size = gib  # a `cmd:` model naming no GGUF has no size: give each a 1 GiB file
    await m.load("runtime:a")
    await m.load("runtime:b")
    await m.load("runtime:a")  # a is used again: b is now the least recently used
    pid_b = status(m, "b:latest").pid
    assert pid_b is not None
    assert {r.entry.name: r.size for r in m.running()} == {"a:latest": gib + OVERHEAD, "b:latest": gib + OVERHEAD}
    await m.load("runtime:c")
    assert [status(m, n).state for n in ("a:latest", "b:latest", "c:latest")] == ["ready", "stopped", "ready"]
    assert not alive(pid_b)
    # with a and c busy, b cannot fit: refused at once, saying who holds the memory
    await m.acquire("runtime:a")
    await m.acquire("runtime:c")
    with pytest.raises(ServiceUnavailable, match=r"needs about 1.19 GiB .*memory_budget \(2.50 GiB\).*'a:latest'"):
        await m.acquire("runtime:b")
    assert status(m, "b:latest").state == "stopped"
    m.release("runtime:a", None)
    m.release("runtime:c", None)


async def test_a_model_bigger_than_the_budget_still_runs_alone(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    m = h.manager({"big": {"cmd": h.cmd()}, "small": {"cmd": h.cmd()}}, max_running=2, memory_budget="1GiB")
    m.models["runtime:big"].size = 2 * 1024**3
    await m.load("runtime:small")
    await m.load("runtime:big")  # the idle small model is stopped, then big starts alone, over the budget
    assert [status(m, n).state for n in ("big:latest", "small:latest")] == ["ready", "stopped"]
    assert "exceeds runtime.memory_budget" in caplog.text
