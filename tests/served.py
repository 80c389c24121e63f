"""A real `ollamux serve --config FILE` subprocess for the TLS and reload tests: started on a free port,
waited for until /health answers (over https when the config says so), stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from .servers import free_port


class Served:
    """A running `ollamux serve` (this module's and test_cli_serve.py's): its URL, its stderr, its config."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, stderr: Path, config: Path | None = None) -> None:
        self.proc = proc
        self.url = url
        self.config = config
        self.stderr = stderr

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.log().splitlines() if needle in line]

    def wait_for_line(self, needle: str, count: int = 1, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(found := self.lines(needle)) < count:
            assert self.proc.poll() is None, f"ollamux exited with {self.proc.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no {count} lines with {needle!r} in:\n{self.log()}"
            time.sleep(0.05)
        return found

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace the config file (same port), as an operator edits it before `kill -HUP`."""
        assert self.config is not None, "started without a config file"
        port = int(self.url.rsplit(":", 1)[1])
        self.config.write_text(yaml.safe_dump(_with_port(config, port)))


def _with_port(config: dict[str, Any], port: int) -> dict[str, Any]:
    return {**config, "server": {**config.get("server", {}), "port": port}}


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMUX_CONFIG", "OLLAMA_HOST", "OLLAMUX_MODELS")}
    return {**env, "HOME": str(home)}


@contextmanager
def serve_config(tmp: Path, config: dict[str, Any], *, verify: ssl.SSLContext | bool = True) -> Iterator[Served]:
    port = free_port()
    cfg = tmp / "ollamux.yaml"
    cfg.write_text(yaml.safe_dump(_with_port(config, port)))
    err_path = tmp / "stderr.log"
    scheme = "https" if config.get("server", {}).get("tls_cert") else "http"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ollamux", "serve", "--config", str(cfg), "--log-format", "text"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=clean_env(tmp),
        )
    served = Served(proc, f"{scheme}://127.0.0.1:{port}", err_path, cfg)
    with running(served, "/health", verify=verify):
        yield served


@contextmanager
def running(served: Served, ready_path: str, *, verify: ssl.SSLContext | bool = True) -> Iterator[Served]:
    """Wait until `served` answers 200 at `ready_path` (it must not exit first), then, on leaving, stop it with
    SIGTERM as a service manager does (SIGKILL if it takes more than 30 s)."""
    proc = served.proc
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"ollamux exited with {proc.returncode}:\n{served.log()}"
            try:
                if httpx.get(served.url + ready_path, timeout=1, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"ollamux did not start:\n{served.log()}"
            time.sleep(0.05)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
