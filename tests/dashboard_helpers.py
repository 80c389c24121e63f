"""What the dashboard's browser tests share: Debian's Chromium under Playwright, and an ollamux app behind it.

The app runs in the tests' server thread (a real socket on loopback) with two fake backends (OpenAI and
Ollama), a `slow` model whose answer streams in steps, a model that fails upstream, and a managed `cmd:`
model (tests/fakes/tiny_model_server.py) that the Models page can load and unload. Playwright's sync API
drives the browser from the test's own thread; nothing downloads a browser.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ollamux.store import schema

from .servers import free_port

CHROMIUM = Path("/usr/bin/chromium")
# As root in a container: no sandbox; the background-networking flags keep Chromium from dialling out
# (those connections are refused here, and it would otherwise retry them while the tests run)
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TINY_SERVER = Path(__file__).parent / "fakes" / "tiny_model_server.py"
ADMIN_KEY = "sk-dash-admin"
USER_KEY = "sk-dash-user"


def dashboard_config(
    openai_url: str, ollama_url: str, tmp: Path, *, keys: bool = False, hub: str | None = None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "backends": {
            "fake": {"type": "openai", "url": f"{openai_url}/v1", "api_key": "sk-backend-secret"},
            "ol": {"type": "ollama", "url": ollama_url},
            "spare": {"type": "openai", "url": f"http://127.0.0.1:{free_port()}/v1"},  # nothing listens: down
        },
        "models": {
            "fake-model": {"backend": "fake"},
            "slow": {"backend": "fake"},  # the fake streams its answer 0.2 s a chunk
            "broken": {"backend": "fake", "upstream": "server-error"},  # the fake answers 500
            "qwen3": {"backend": "ol", "upstream": "qwen3:latest"},
            "offline": {"backend": "spare"},
            "tiny": {
                "runtime": {"cmd": [sys.executable, str(TINY_SERVER), "--port", "${PORT}", "--ctx", "${CTX}"]},
            },
        },
        "request_log": {"path": str(tmp / "requests.sqlite")},
        "runtime": {"log_dir": str(tmp / "logs")},
    }
    if hub is not None:  # pulls from this (fake) hub into a models folder of its own
        config["runtime"].update(hf_endpoint=hub, models_dir=str(tmp / "models"))
    if keys:
        config["auth"] = {
            "keys": {"boss": {"key": ADMIN_KEY, "admin": True}, "app": {"key": USER_KEY}},
        }
    return config


def seed_history(db: Path, minutes: int = 55, seed: int = 7) -> None:
    """Rows of the hour before now in the request log, written before the app opens it, so the screenshots'
    charts have a past to draw (the functional tests run on a log with only the requests they make)."""
    rng = random.Random(seed)
    now = time.time()
    conn = schema.connect(db)
    cols = schema.COLUMNS
    rows = []
    for i in range(minutes * 6):
        ts = now - minutes * 60 + i * 10 + rng.random() * 10
        model, backend, api = rng.choice(
            [("fake-model", "fake", "openai"), ("qwen3", "ol", "ollama"), ("fake-model", "fake", "ollama")]
        )
        status = 500 if rng.random() < 0.04 else 200
        latency = rng.lognormvariate(5.5, 0.4)
        completion = rng.randint(20, 300)
        values = {
            "id": f"seed-{i}",
            "ts": ts,
            "api": api,
            "method": "POST",
            "route": "/v1/chat/completions" if api == "openai" else "/api/chat",
            "model_requested": model,
            "model_served": model,
            "backend": backend,
            "upstream_url": None,
            "status": status,
            "streamed": 1,
            "abandoned": 0,
            "latency_ms": latency * 4,
            "ttft_ms": latency * 0.4,
            "prompt_tokens": rng.randint(10, 400),
            "completion_tokens": completion if status == 200 else None,
            "tokens_per_s": rng.uniform(30, 60) if status == 200 else None,
            "error": "upstream answered 500" if status != 200 else None,
            "client": "127.0.0.1",
            "key_name": None,
            "request_body": None,
            "response_text": None,
        }
        rows.append(tuple(values.get(c) for c in cols))  # None for a column added since
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO requests ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
    conn.execute("COMMIT")
    conn.close()


def admin_get(url: str, path: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(url + path, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll `cond` until it returns something truthy (the request log is written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
