"""What the operations routes tell a caller: readiness details only to key holders on a keyed server,
and `/api/ps` only the running models the caller's key may use. Over real sockets, against the fakes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import ProxyFactory, basic_config
from .fakes.ollama_upstream import FakeOllama
from .fakes.openai_upstream import FakeOpenAI

OPS = "sk-ops-0123456789abcdef"
NARROW = "sk-narrow-0123456789abcdef"
WIDE = "sk-wide-0123456789abcdef"
NOT_ONLY = "sk-not-only-0123456789ab"


def _keyed(cfg: dict[str, Any], **auth: Any) -> dict[str, Any]:
    cfg["auth"] = {
        "keys": {
            "ops": {"key": OPS, "models": ["fake-model"]},  # readiness: any key will do, whatever its models
            "narrow": {"key": NARROW, "models": ["qwen3"]},
            "wide": {"key": WIDE},
            "not-only": {"key": NOT_ONLY, "models": ["not-*"]},
        },
        **auth,
    }
    return cfg


def _probes(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/models"))


# ----------------------------------------------------------------------------------------- readiness
def test_readiness_without_a_valid_key_says_only_the_status(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Any
) -> None:
    url = fake_openai[1]
    proxy = start_proxy(_keyed(basic_config(url)))
    with httpx.Client(base_url=proxy, timeout=10) as c:
        for headers in ({}, {"Authorization": "Bearer sk-wrong-key-000000"}, {"x-api-key": "nope"}):
            r = c.get("/health/ready", headers=headers)
            assert r.status_code == 200, headers  # still public: a load balancer needs no key
            assert r.json() == {"status": "ready"}, headers
            # nothing that maps the deployment: no upstream URL, no log file
            assert url not in r.text and str(tmp_path) not in r.text
        for headers in ({"Authorization": f"Bearer {OPS}"}, {"x-api-key": WIDE}):
            r = c.get("/health/ready", headers=headers)
            assert r.status_code == 200
            body = r.json()
            assert body["status"] == "ready" and body["problems"] == []
            assert body["backends"]["fake"]["replicas"][0]["url"].startswith(url)
            assert body["request_log"]["path"] == str(tmp_path / "requests.sqlite")


def test_degraded_readiness_keeps_its_503_for_anonymous_callers(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    cfg = _keyed(basic_config(fake_openai[1]))
    cfg["backends"]["dead"] = {"type": "ollama", "url": "http://127.0.0.1:9"}
    with httpx.Client(base_url=start_proxy(cfg), timeout=10) as c:
        r = c.get("/health/ready")
        assert r.status_code == 503 and r.json() == {"status": "degraded"}
        r = c.get("/health/ready", headers={"Authorization": f"Bearer {NARROW}"})
        assert r.status_code == 503
        assert r.json()["problems"] == ["backend dead unreachable"]


def test_readiness_on_an_open_server_stays_public_in_full(proxy: str) -> None:
    r = httpx.get(proxy + "/health/ready", timeout=10)
    assert r.status_code == 200
    assert {"backends", "request_log", "models", "version"} <= set(r.json())


def test_readiness_off_the_public_paths_needs_a_key_and_then_shows_everything(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    # the guard checks the key itself then (and sets the key name): readiness must honour that as well
    proxy = start_proxy(_keyed(basic_config(fake_openai[1]), public_paths=["/health"]))
    with httpx.Client(base_url=proxy, timeout=10) as c:
        assert c.get("/health/ready").status_code == 401
        r = c.get("/health/ready", headers={"Authorization": f"Bearer {OPS}"})
        assert r.status_code == 200 and "backends" in r.json()


def test_a_burst_of_anonymous_readiness_calls_makes_at_most_a_couple_of_upstream_calls(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    # an anonymous caller may knock on /health/ready as often as it likes: that must not turn the proxy
    # into an amplifier hitting the backend (with the backend's key) once per knock
    fake, url = fake_openai
    cfg = _keyed(basic_config(url))
    cfg["metrics"] = {"backend_probe_interval": 0}  # only readiness probes: the count is readiness's alone
    proxy = start_proxy(cfg)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=proxy, timeout=30, limits=limits) as c:
            return await asyncio.gather(*(c.get("/health/ready") for _ in range(300)))

    before = _probes(fake)
    answers = asyncio.run(burst())
    probes = _probes(fake) - before
    assert [r.status_code for r in answers] == [200] * 300
    assert all(r.json() == {"status": "ready"} for r in answers)
    assert probes <= 2


# ------------------------------------------------------------------------------------------- /api/ps
def _ps_config(upstream: str) -> dict[str, Any]:
    return {
        "backends": {"ol": {"type": "ollama", "url": upstream}},
        # the fake reports both as loaded: qwen3 by its own entry, not-ours through a wildcard route
        "models": {"qwen3": {"backend": "ol"}, "not-*": {"backend": "ol"}},
    }


def _ps(proxy: str, key: str | None) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(proxy + "/api/ps", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return sorted(m["name"] for m in r.json()["models"])


def test_ps_lists_only_the_models_the_callers_key_may_use(
    fake_ollama: tuple[FakeOllama, str], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(_keyed(_ps_config(fake_ollama[1])))
    assert _ps(proxy, NARROW) == ["qwen3:latest"]
    assert _ps(proxy, NOT_ONLY) == ["not-ours:latest"]
    assert _ps(proxy, WIDE) == ["not-ours:latest", "qwen3:latest"]
    assert _ps(proxy, OPS) == []  # a key for another model sees nothing running
    assert httpx.get(proxy + "/api/ps", timeout=10).status_code == 401


def test_ps_on_an_open_server_lists_everything(fake_ollama: tuple[FakeOllama, str], start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(_ps_config(fake_ollama[1]))
    assert _ps(proxy, None) == ["not-ours:latest", "qwen3:latest"]


def test_readiness_recovers_after_a_managed_model_is_killed_without_any_request(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    # an orchestrator gating traffic on readiness sends no request to a degraded instance: the crashed
    # model must come back by itself (restart: on-failure, the default), and readiness with it
    server = str(Path(__file__).parent / "fakes" / "tiny_model_server.py")
    cmd = [sys.executable, server, "--port", "${PORT}", "--ctx", "${CTX}"]
    url = start_proxy(
        {"runtime": {"log_dir": str(tmp_path / "logs")}, "models": {"tiny": {"runtime": {"cmd": cmd, "ctx": 512}}}}
    )
    with httpx.Client(base_url=url, timeout=10) as c:
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        assert c.post("/api/chat", json=chat).status_code == 200
        (model,) = c.get("/health/ready").json()["models"]
        assert model["state"] == "ready" and model["pid"]
        os.kill(model["pid"], signal.SIGKILL)
        seen: set[str] = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = c.get("/health/ready")
            (now,) = r.json()["models"]
            seen.add(now["state"])
            if now["state"] == "ready" and now["pid"] != model["pid"]:
                break
            if now["state"] != "ready":  # (ready with the old pid: the death is not noticed yet)
                assert r.status_code == 503  # while the model is down or restarting, the instance is degraded
            time.sleep(0.05)
        else:
            raise AssertionError(f"readiness never recovered; states seen: {seen}")
        assert seen - {"ready"}, seen  # the crash was seen, and recovered from with no request
        assert r.status_code == 200 and r.json()["status"] == "ready"
