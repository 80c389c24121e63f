"""After a run with keys (good, wrong, refused, rate-limited), no secret appears anywhere an operator or
a client can look: the SQLite request log, the operator log, /metrics, /api/show and /v1/models."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import httpx

from ollamux import create_app
from ollamux.config import parse_settings

from .conftest import basic_config
from .fakes.openai_upstream import FakeOpenAI
from .servers import LoopThread
from .test_guard_auth import ALICE, BOB

WRONG = "sk-alice-0123456789abcdeX"  # one character off: a near miss must not be logged either
BACKEND = "sk-backend-secret"
HI = [{"role": "user", "content": "hi"}]


class _All(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_no_secret_in_logs_metrics_or_show(
    loop_thread: LoopThread, fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    cfg: dict[str, Any] = basic_config(fake_openai[1])
    assert cfg["backends"]["fake"]["api_key"] == BACKEND
    cfg["auth"] = {"keys": {"alice": {"key": ALICE, "models": ["fake-model"]}, "bob": {"key": BOB}}}
    cfg["limits"] = {"requests_per_minute": 600, "burst": 30}
    cfg["request_log"] = {"path": str(tmp_path / "requests.sqlite"), "capture_bodies": True}
    handler = _All()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        runner, url = loop_thread.start_app(create_app(parse_settings(cfg, dict(os.environ))))
        try:
            pages = _exercise(url)
        finally:
            loop_thread.stop_app(runner)  # flushes the request log
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    secrets = [ALICE, BOB, WRONG, BACKEND, ALICE[:12], BACKEND[3:]]
    files = [p for p in tmp_path.iterdir() if p.name.startswith("requests.sqlite")]
    assert files, "the request log was not written"
    db = b"".join(p.read_bytes() for p in files)
    assert b"alice" in db or b"bob" in db, "key names are logged (the name, never the key)"
    logs = "\n".join(handler.lines)
    assert logs, "no operator log lines were captured"
    for secret in secrets:
        assert secret.encode() not in db, f"{secret!r} in the request log"
        assert secret not in logs, f"{secret!r} in the operator log"
        for name, text in pages.items():
            assert secret not in text, f"{secret!r} in {name}"


def _exercise(url: str) -> dict[str, str]:
    pages: dict[str, str] = {}
    a, b, w = ({"Authorization": f"Bearer {k}"} for k in (ALICE, BOB, WRONG))
    with httpx.Client(timeout=10) as c:
        chat = {"model": "fake-model", "messages": HI, "stream": False}
        assert c.post(url + "/api/chat", json=chat, headers=a).status_code == 200
        assert c.post(url + "/api/chat", json={**chat, "stream": True}, headers=a).status_code == 200
        assert c.post(url + "/v1/chat/completions", json=chat, headers={"x-api-key": ALICE}).status_code == 200
        assert c.post(url + "/v1/chat/completions", json={**chat, "stream": True}, headers=b).status_code == 200
        assert c.post(url + "/api/chat", json={**chat, "model": "tools"}, headers=a).status_code == 403
        assert c.post(url + "/api/chat", json=chat, headers=w).status_code == 401
        assert c.post(url + "/v1/embeddings", json={"model": "embed-model", "input": "x"}, headers=w).status_code == 401
        assert c.post(url + "/api/chat", json={**chat, "model": "bad-request"}, headers=b).status_code in (400, 404)
        r = c.post(url + "/v1/chat/completions", json={**chat, "model": "x-server-error"}, headers=b)
        assert r.status_code >= 500
        for model in ("fake-model", "llama3.2", "tools", "x-any"):
            r = c.post(url + "/api/show", json={"model": model}, headers=b)
            assert r.status_code == 200 and "modelfile" in r.json()
            pages[f"/api/show {model}"] = r.text
        pages["/v1/models"] = c.get(url + "/v1/models", headers=b).text
        pages["/api/tags"] = c.get(url + "/api/tags", headers=b).text
        codes = [c.get(url + "/api/tags", headers=b).status_code for _ in range(40)]
        assert 429 in codes  # bob's rate limit tripped
        pages["/metrics"] = c.get(url + "/metrics", headers=a).text
        pages["/health/ready"] = c.get(url + "/health/ready").text
    assert "ollamux_" in pages["/metrics"] or "# HELP" in pages["/metrics"]
    return pages
