"""Many clients at once against the built-in engine with the real SmolLM2, where the behaviour is llama.cpp's
own: more streams than slots (llama.cpp queues the rest), and a GGUF file that llama.cpp cannot load.

The faults that do not depend on llama.cpp (crashes, eviction, clients going away) are tested faster with a
fake model server in test_runtime_hostile.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from .runtime_helpers import alive, model_file, start_proxy, wait_for
from .servers import LoopThread

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ASK = [{"role": "user", "content": "Count from one to twenty."}]


async def until(cond: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_twelve_streams_on_four_slots_and_an_unload_mid_stream(loop_thread: LoopThread, tmp_path: Path) -> None:
    """Twelve streams, three fronts, on one model with four slots: llama.cpp serves four and queues eight;
    every one completes whole. An unload sent while they run stops the model once the last one ends."""
    config = {"models": {"smol": {"runtime": {"gguf": str(model_file()), "ctx": 512, "threads": 2}}}}
    p = start_proxy(loop_thread, config, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=p.url, timeout=120) as c:
            assert (await c.post("/api/generate", json={"model": "smol"})).status_code == 200
            pid = p.pid("smol:latest")

            async def ollama() -> str:
                body = {"model": "smol", "messages": ASK, "options": {"num_predict": 12}}
                async with c.stream("POST", "/api/chat", json=body) as r:
                    lines = [json.loads(x) async for x in r.aiter_lines() if x.strip()]
                    whole = r.status_code == 200 and lines[-1].get("done") and "error" not in lines[-1]
                    return "whole" if whole else f"{r.status_code} {lines[-1]}"

            async def openai() -> str:
                body = {"model": "smol", "messages": ASK, "max_tokens": 12, "stream": True}
                async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    text = (await r.aread()).decode()
                    whole = r.status_code == 200 and text.endswith("data: [DONE]\n\n") and '"error"' not in text
                    return "whole" if whole else f"{r.status_code} {text[-300:]}"

            async def anthropic() -> str:
                body = {"model": "smol", "messages": ASK, "max_tokens": 12, "stream": True}
                async with c.stream("POST", "/v1/messages", json=body) as r:
                    text = (await r.aread()).decode()
                    whole = r.status_code == 200 and "event: message_stop" in text and "event: error" not in text
                    return "whole" if whole else f"{r.status_code} {text[-300:]}"

            streams: list[asyncio.Future[str]] = [
                asyncio.ensure_future(f()) for f in (ollama, openai, anthropic) for _ in range(4)
            ]
            await until(lambda: p.manager.statuses()[0].active == 12)
            unload = await c.post("/api/generate", json={"model": "smol", "keep_alive": 0})
            assert unload.status_code == 200 and unload.json()["done_reason"] == "unload"
            assert await asyncio.gather(*streams) == ["whole"] * 12
        wait_for(lambda: not alive(pid), what="the unloaded engine to exit")
        assert p.ps() == {}
    finally:
        p.close()


async def test_a_corrupt_gguf_asked_by_ten_clients_is_one_start_and_ten_clear_errors(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(model_file().read_bytes()[:30_000_000])  # the header is whole, the tensors are cut
    p = start_proxy(loop_thread, {"models": {"broken": {"runtime": {"gguf": str(broken), "ctx": 512}}}}, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=p.url, timeout=60) as c:
            body: dict[str, Any] = {"model": "broken", "messages": ASK}
            answers = await asyncio.gather(
                *(c.post("/api/chat", json={**body, "stream": False}) for _ in range(5)),
                *(c.post("/v1/chat/completions", json=body) for _ in range(5)),
            )
        for r in answers[:5]:
            assert r.status_code == 500 and "failed to load model" in r.json()["error"]
        for r in answers[5:]:
            assert r.status_code == 500 and "failed to load model" in r.json()["error"]["message"]
        log = (tmp_path / "logs" / "broken_latest.log").read_text()
        assert log.count("ollamux starts:") == 1  # one engine for the ten of them
        (st,) = p.manager.statuses()
        assert (st.state, st.active, st.waiting, st.pid) == ("failed", 0, 0, None)
        assert p.ps() == {}
    finally:
        p.close()
