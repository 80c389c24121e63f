"""Malformed requests cost one info line in the operator log, not an error with a traceback each."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .servers import free_port


def test_malformed_requests_do_not_flood_the_operator_log(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server: {{port: {port}}}\nrequest_log: {{enabled: false}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ollamux", "serve", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HOME": str(tmp_path)},
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/").status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for payload in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(payload)
                s.settimeout(5)
                assert s.recv(100).startswith(b"HTTP/1.0 400")
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200  # still serving
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    lines = [ln for ln in err.splitlines() if "aiohttp.server" in ln]
    assert lines, err  # (aiohttp answers a garbage request line without logging it at all)
    assert all('"level":"info"' in ln and "malformed request" in ln and "Traceback" not in ln for ln in lines), err
