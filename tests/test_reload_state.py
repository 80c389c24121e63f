"""`reload(state, settings)` on a running app (in process, real sockets): managed models keep running when
their spec is unchanged, restart with a changed one once idle, stop once their requests end when removed;
limits change for new requests; what needs a restart is reported and kept."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from ollamux import create_app
from ollamux.config import parse_settings
from ollamux.reload import reload, restart_only
from ollamux.runtime.manager import ModelManager
from ollamux.state import STATE, AppState

from .conftest import basic_config
from .fakes.openai_upstream import FakeOpenAI
from .servers import LoopThread

SERVER = str(Path(__file__).parent / "fakes" / "tiny_model_server.py")
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": False}

pytestmark = pytest.mark.timeout(60)


class App:
    def __init__(self, lt: LoopThread, runner: web.AppRunner, url: str, base: dict[str, Any]) -> None:
        self.lt, self.runner, self.url, self.base = lt, runner, url, base

    @property
    def state(self) -> AppState:
        return self.runner.app[STATE]

    @property
    def manager(self) -> ModelManager:
        m = self.state.runtime
        assert m is not None
        return m

    def reload(self, config: dict[str, Any]) -> list[str]:
        settings = parse_settings({**self.base, **config}, dict(os.environ))
        done = self.lt.run(reload(self.state, settings))
        return done.changes

    def chat(self, model: str, **headers: str) -> httpx.Response:
        return httpx.post(self.url + "/api/chat", json={**CHAT, "model": model}, headers=headers, timeout=20)


@pytest.fixture
def start(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Any]:
    apps: list[App] = []

    def go(config: dict[str, Any]) -> App:
        base = {"request_log": {"enabled": False}, "runtime": {"log_dir": str(tmp_path / "logs"), "max_running": 8}}
        settings = parse_settings({**base, **config}, dict(os.environ))
        runner, url = loop_thread.start_app(create_app(settings))
        apps.append(App(loop_thread, runner, url, base))
        return apps[-1]

    yield go
    for a in apps:
        loop_thread.stop_app(a.runner)


def _tiny(record: Path, ctx: int = 512) -> dict[str, Any]:
    cmd = [sys.executable, SERVER, "--port", "${PORT}", "--ctx", "${CTX}", "--record", str(record)]
    return {"runtime": {"cmd": cmd, "ctx": ctx, "ttl": 600}}


def _starts(record: Path) -> list[tuple[int, int]]:
    lines = record.read_text().splitlines() if record.exists() else []
    return [(int(p), int(c)) for p, c in (line.split() for line in lines)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a child that exited but was not reaped yet is a zombie: gone for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _eventually(cond: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_managed_models_follow_the_reloaded_config(start: Any, tmp_path: Path) -> None:
    rec = {name: tmp_path / f"{name}.txt" for name in ("keep", "gone", "changed", "fresh")}
    app = start({"models": {name: _tiny(rec[name]) for name in ("keep", "gone", "changed")}})
    for name in ("keep", "gone", "changed"):
        r = app.chat(name)
        assert r.status_code == 200, r.text
    [(keep_pid, _)], [(gone_pid, _)], [(changed_pid, _)] = (_starts(rec[n]) for n in ("keep", "gone", "changed"))
    # a request still running on "gone" when the reload removes it: held as a handler holds its lease
    app.lt.run(app.manager.acquire("runtime:gone"))
    changes = app.reload(
        {
            "models": {
                "keep": _tiny(rec["keep"]),
                "changed": _tiny(rec["changed"], ctx=1024),
                "fresh": _tiny(rec["fresh"]),
            }
        }
    )
    assert sorted(changes) == [
        "model 'changed' runtime changed: restarts with it once its requests end",
        "model 'fresh' added",
        "model 'gone' removed: stops once its requests end",
    ]
    assert app.chat("gone").status_code == 404  # new requests: not a model any more
    _eventually(lambda: not _alive(changed_pid))  # idle: restarted (stopped now, started on demand)
    assert _alive(gone_pid)  # its request is still running
    r = app.chat("changed")
    assert r.status_code == 200, r.text
    assert [c for _, c in _starts(rec["changed"])] == [512, 1024]  # started again, with the new spec
    assert app.chat("fresh").status_code == 200 and len(_starts(rec["fresh"])) == 1
    app.lt.run(_release(app.manager, "runtime:gone"))
    _eventually(lambda: not _alive(gone_pid))  # its last request ended: stopped
    # the unchanged model never stopped, and never started again
    assert app.chat("keep").status_code == 200
    assert _alive(keep_pid) and _starts(rec["keep"]) == [(keep_pid, 512)]


async def _release(m: ModelManager, backend: str) -> None:
    m.release(backend, None)


def test_reloaded_limits_apply_to_new_requests(start: Any, fake_openai: tuple[FakeOpenAI, str]) -> None:
    config = basic_config(fake_openai[1])
    app = start({**config, "limits": {"requests_per_minute": 1, "burst": 1}})
    assert app.chat("fake-model").status_code == 200
    assert app.chat("fake-model").status_code == 429
    app.reload({**config, "limits": {"requests_per_minute": 600, "burst": 50}})
    assert [app.chat("fake-model").status_code for _ in range(3)] == [200, 200, 200]
    # unchanged limits keep their buckets: a reload is no way around a limit
    app.reload({**config, "limits": {"requests_per_minute": 1, "burst": 1}})
    assert app.chat("fake-model").status_code == 200
    app.reload({**config, "limits": {"requests_per_minute": 1, "burst": 1}, "default_model": "fake-model"})
    assert app.chat("fake-model").status_code == 429


def test_a_changed_backend_is_a_new_one_and_an_unchanged_one_is_kept(
    start: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    config = basic_config(fake_openai[1])
    app = start(config)
    before = app.state.backends["fake"]
    app.reload({**config, "default_model": "fake-model"})
    assert app.state.backends["fake"] is before  # same settings: same object, same replica health
    changed = {**config["backends"]["fake"], "timeout": 30}
    assert app.reload({**config, "backends": {"fake": changed}}) == ["backend 'fake' changed"]
    assert app.state.backends["fake"] is not before
    assert app.state.backends["fake"].settings.timeouts.total == 30
    assert app.chat("fake-model").status_code == 200
    assert app.state.health is not None and set(app.state.health.backends) == {"fake"}


def test_what_needs_a_restart_is_reported_and_kept() -> None:
    old = parse_settings({"server": {"port": 1234}, "request_log": {"path": "/a.sqlite"}}, {})
    new = parse_settings(
        {"server": {"port": 4321, "cors_origins": ["http://x"]}, "request_log": {"path": "/b.sqlite"}}, {}
    )
    kept, changed = restart_only(old, new)
    assert changed == ["server.port", "request_log"]
    assert kept.server.port == 1234 and kept.request_log.path == Path("/a.sqlite")
    assert kept.server.cors_origins == ("http://x",)  # read per request: changes
    assert restart_only(old, old) == (old, [])
