"""End to end with the real SmolLM2: llama.cpp options reach the engine, preload, pin under max_running 1."""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from .runtime_helpers import Proxy, model_file, start_proxy, wait_for
from .servers import LoopThread

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CTX = 512


@pytest.fixture(scope="module")
def proxy(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    gguf = str(model_file())
    base = {"gguf": gguf, "ctx": CTX, "threads": 2}
    config = {
        "runtime": {"max_running": 1, "preload": ["smol-pin"]},
        "models": {
            "smol-pin": {
                "runtime": {
                    **base,
                    "pin": True,
                    "ttl": 1,  # pinned: ignored
                    "options": {
                        "verbosity": 4,
                        "n_batch": 256,
                        "sampling": {"top_k": 7},
                        "flash_attn": "off",
                        "cache_type_k": "q8_0",
                    },
                }
            },
            "smol-other": {"runtime": {**base, "startup_timeout": 3}},
        },
    }
    p = start_proxy(loop_thread, config, tmp_path_factory.mktemp("residency-e2e"))
    yield p
    p.close()


def test_preloaded_without_a_request(proxy: Proxy) -> None:
    # start-up did not wait for it: /health answers at once, the model comes up in the background
    assert httpx.get(proxy.url + "/health", timeout=5).status_code == 200
    wait_for(lambda: "smol-pin:latest" in proxy.ps(), timeout=90, what="the preloaded model")
    assert proxy.ps()["smol-pin:latest"]["size_vram"] == 0  # a CPU build


def test_options_reach_the_engine(proxy: Proxy) -> None:
    wait_for(lambda: "smol-pin:latest" in proxy.ps(), timeout=90, what="the preloaded model")
    http = proxy.manager.models["runtime:smol-pin"].http
    assert http is not None
    props = httpx.get(http.base_url().removesuffix("/v1") + "/props", timeout=10).json()
    assert props["default_generation_settings"]["params"]["top_k"] == 7  # sampling.top_k
    log = (proxy.manager.settings.log_dir / "smol-pin_latest.log").read_text(errors="replace")
    # llama.cpp prints its context at verbosity 4 (an option too): the batch and the K cache type asked
    assert re.search(r"n_batch\s+=\s+256", log), log[-3000:]
    assert "K (q8_0)" in log


def test_pinned_model_is_not_evicted(proxy: Proxy) -> None:
    wait_for(lambda: "smol-pin:latest" in proxy.ps(), timeout=90, what="the preloaded model")
    pid = proxy.pid("smol-pin:latest")
    r = proxy.post(
        "/api/generate", {"model": "smol-other", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    )
    assert r.status_code == 503 and "waiting for a free slot" in r.text, r.text
    assert proxy.pid("smol-pin:latest") == pid and "smol-other:latest" not in proxy.ps()
    r = proxy.post(
        "/api/generate", {"model": "smol-pin", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    )
    assert r.status_code == 200, r.text
    assert proxy.pid("smol-pin:latest") == pid


def test_group_members_load_together_and_an_exclusive_group_stops_the_rest(
    loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A chat model and its embedding companion load together; a model of an exclusive group stops the
    models outside it. Real SmolLM2 processes under one app."""
    base = {"gguf": str(model_file()), "ctx": CTX, "threads": 2}
    config = {
        "runtime": {
            "max_running": 3,
            "groups": {
                "rag": {"members": ["smol-chat", "smol-embed"]},
                "solo": {"members": ["smol-solo"], "exclusive": True},
            },
        },
        "models": {name: {"runtime": base} for name in ("smol-chat", "smol-embed", "smol-solo")},
    }
    p = start_proxy(loop_thread, config, tmp_path_factory.mktemp("groups-e2e"))
    try:
        r = p.post(
            "/api/generate", {"model": "smol-chat", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
        )
        assert r.status_code == 200
        wait_for(lambda: {"smol-chat:latest", "smol-embed:latest"} <= set(p.ps()), timeout=90, what="the companion")
        r = p.post(
            "/api/generate", {"model": "smol-solo", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
        )
        assert r.status_code == 200
        wait_for(lambda: set(p.ps()) == {"smol-solo:latest"}, timeout=60, what="the exclusive group alone")
    finally:
        p.close()


def test_api_ps_shows_a_loading_model_with_its_stage(
    loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """While the real engine reads SmolLM2 in, /api/ps lists it under `loading` with its stage, and not
    among the loaded `models` (Ollama clients read every item there as loaded)."""
    config = {"models": {"smol-load": {"runtime": {"gguf": str(model_file()), "ctx": CTX, "threads": 2}}}}
    p = start_proxy(loop_thread, config, tmp_path_factory.mktemp("loading-e2e"))
    try:
        seen: list[dict[str, object]] = []
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = pool.submit(p.post, "/api/generate", {"model": "smol-load", "keep_alive": "5m"})
            while not started.done():
                body = httpx.get(p.url + "/api/ps", timeout=5).json()
                seen += body.get("loading", [])
                assert all(m["name"] != "smol-load:latest" for m in body["models"]) or not body.get("loading")
                time.sleep(0.02)
            assert started.result().status_code == 200
        assert seen and {s["stage"] for s in seen} <= {"spawning", "loading"}
        assert seen[0]["name"] == "smol-load:latest"
        body = httpx.get(p.url + "/api/ps", timeout=5).json()
        assert "loading" not in body and [m["name"] for m in body["models"]] == ["smol-load:latest"]
    finally:
        p.close()
