"""Shared by the managed-runtime tests: the SmolLM2 file, and an ollamux app whose manager tests can reach."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from ollamux import create_app
from ollamux.config import parse_settings
from ollamux.runtime.manager import ModelManager
from ollamux.state import STATE

from .servers import LoopThread

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_file() -> Path:
    """The real model for end-to-end tests; missing is a failure (CI runs scripts/setup first), not a skip."""
    override = os.environ.get("OLLAMUX_TEST_GGUF")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ollamux"
    path = Path(override) if override else cache / GGUF_NAME
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/setup (or scripts/fetch_model.py) to fetch SmolLM2", pytrace=False)
    return path


def link_into(folder: Path, src: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / (name or src.name)
    try:
        os.link(src, dst)
    except OSError:
        os.symlink(src, dst)
    return dst


@dataclass
class Proxy:
    url: str
    runner: web.AppRunner
    loop_thread: LoopThread

    @property
    def manager(self) -> ModelManager:
        m = self.runner.app[STATE].runtime
        assert isinstance(m, ModelManager)
        return m

    def ps(self) -> dict[str, dict[str, Any]]:
        r = httpx.get(self.url + "/api/ps", timeout=10)
        assert r.status_code == 200, r.text
        return {m["name"]: m for m in r.json()["models"]}

    def pid(self, name: str) -> int:
        for r in self.manager.running():
            if r.entry.name == name:
                return r.pid
        raise AssertionError(f"{name} is not running")

    def post(self, path: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=timeout)

    def close(self) -> None:
        self.loop_thread.stop_app(self.runner)


def start_proxy(loop_thread: LoopThread, config: dict[str, Any], tmp: Path) -> Proxy:
    config = dict(config)
    config.setdefault("request_log", {"path": str(tmp / "requests.sqlite")})
    runtime = dict(config.get("runtime") or {})
    runtime.setdefault("log_dir", str(tmp / "logs"))
    config["runtime"] = runtime
    settings = parse_settings(config, dict(os.environ))
    runner, url = loop_thread.start_app(create_app(settings))
    return Proxy(url, runner, loop_thread)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    """Whether process `pid` exists (a model process ollamux should have stopped, say)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
