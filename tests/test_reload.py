"""`kill -HUP` on a running `ollamux serve`: new requests get the new config (models, backends, keys), a
stream already running finishes on the backend it started with even when the reload removed it, and a
config that does not load leaves the running one serving."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from .conftest import basic_config
from .fakes.openai_upstream import FakeOpenAI
from .served import serve_config
from .servers import LoopThread

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Windows has no SIGHUP")

ALPHA, BETA, GAMMA = "sk-alpha-0123456789", "sk-beta-0123456789", "sk-gamma-0123456789"
PIECES = [f"piece-{i} " for i in range(5)]


class GatedStream:
    """An OpenAI-compatible upstream whose stream sends two chunks, then waits until the test opens the
    gate, then sends the rest: a stream that is certainly in progress while the config is reloaded."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.gate = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    def open(self) -> None:
        self.lt.loop.call_soon_threadsafe(self.gate.set)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, piece in enumerate(PIECES):
            if i == 2:
                await self.gate.wait()
            frame = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            await resp.write(b"data: " + json.dumps(frame).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture
def gated(loop_thread: LoopThread) -> Iterator[tuple[GatedStream, str]]:
    g = GatedStream(loop_thread)
    runner, url = loop_thread.start_app(g.app())
    yield g, url
    g.open()
    loop_thread.stop_app(runner)


def _config(fake: str, gated: str, tmp: Path) -> dict[str, Any]:
    return {
        "backends": {"fake": {"url": f"{fake}/v1"}, "gated": {"url": f"{gated}/v1", "retries": 0}},
        "models": {"streamer": {"backend": "gated"}, "old-model": {"backend": "fake", "upstream": "fake-model"}},
        "auth": {"keys": {"alpha": {"key": ALPHA}, "beta": {"key": BETA}}},
        "request_log": {"path": str(tmp / "requests.sqlite")},
    }


def _reloaded_config(fake: str, tmp: Path) -> dict[str, Any]:
    return {
        "backends": {"fake": {"url": f"{fake}/v1"}},  # the streaming backend is gone
        "models": {"new-model": {"backend": "fake", "upstream": "fake-model"}},
        "auth": {"keys": {"alpha": {"key": ALPHA}, "gamma": {"key": GAMMA}}},
        "request_log": {"path": str(tmp / "elsewhere.sqlite")},  # read once at start-up: needs a restart
    }


def _chat(url: str, model: str, key: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=20)


def test_sighup_swaps_models_backends_and_keys_while_a_stream_finishes(
    fake_openai: tuple[FakeOpenAI, str], gated: tuple[GatedStream, str], tmp_path: Path
) -> None:
    gate, gated_url = gated
    with serve_config(tmp_path, _config(fake_openai[1], gated_url, tmp_path)) as served:
        assert _chat(served.url, "old-model", BETA).status_code == 200
        got: list[str] = []
        first = threading.Event()
        failure: list[BaseException] = []

        def stream() -> None:
            body = {"model": "streamer", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            try:
                with httpx.stream(
                    "POST",
                    f"{served.url}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {ALPHA}"},
                    timeout=30,
                ) as resp:
                    assert resp.status_code == 200
                    for line in resp.iter_lines():
                        if line.startswith("data: "):
                            got.append(line[6:])
                            first.set()
            except BaseException as exc:  # reported by the test thread
                failure.append(exc)
                first.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first.wait(20)
        served.write_config(_reloaded_config(fake_openai[1], tmp_path))
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_line("config reloaded")
        # the new config, for new requests
        assert _chat(served.url, "new-model", ALPHA).status_code == 200
        assert _chat(served.url, "new-model", GAMMA).status_code == 200
        old = _chat(served.url, "old-model", ALPHA)
        assert old.status_code == 404 and "old-model" in old.json()["error"]["message"]
        assert _chat(served.url, "streamer", ALPHA).status_code == 404  # its backend went with it
        assert _chat(served.url, "new-model", BETA).status_code == 401
        # the stream started before the reload is still running on the removed backend: it completes whole
        assert reader.is_alive() and not failure
        gate.open()
        reader.join(30)
        assert not failure, failure
        assert got[-1] == "[DONE]"
        text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in got[:-1] if d != "[DONE]")
        assert text == "".join(PIECES)
        assert len(served.lines("request_log changed, which needs a restart")) == 1
        [summary] = served.lines("config reloaded")
        for change in ("backend 'gated' removed", "model 'new-model' added", "model 'old-model' removed"):
            assert change in summary
        assert "key 'gamma' added" in summary and "key 'beta' removed" in summary
        assert not any(key in served.log() for key in (ALPHA, BETA, GAMMA))  # names only, never the keys


def test_a_broken_config_on_sighup_keeps_the_running_one(fake_openai: tuple[FakeOpenAI, str], tmp_path: Path) -> None:
    config = {**basic_config(fake_openai[1]), "request_log": {"path": str(tmp_path / "r.sqlite")}}
    with serve_config(tmp_path, config) as served:
        broken = {**config, "models": {**config["models"], "extra": {"backend": "nowhere"}}}
        served.write_config(broken)
        served.proc.send_signal(signal.SIGHUP)
        [line] = served.wait_for_line("config reload failed")
        assert "models.extra.backend" in line and "still serving the previous config" in line
        assert "Traceback" not in served.log()
        ok = httpx.post(
            f"{served.url}/api/chat",
            json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": False},
            timeout=20,
        )
        assert ok.status_code == 200 and ok.json()["message"]["content"] == "Hello from the fake!"
        # a file that is not even YAML: the same, and the next good one is taken
        assert served.config is not None
        served.config.write_text("models: [unclosed\n")
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_line("config reload failed", count=2)
        served.write_config({**config, "models": {"only-one": {"backend": "fake", "upstream": "fake-model"}}})
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_line("config reloaded")
        tags = httpx.get(f"{served.url}/api/tags", timeout=20).json()
        assert [m["name"] for m in tags["models"]] == ["only-one:latest"]
