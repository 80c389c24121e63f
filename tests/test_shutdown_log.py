"""SIGTERM under load: the real `ollamux serve` process must log every request it fully answered."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

from .fakes.openai_upstream import FakeOpenAI
from .servers import free_port


def _load(url: str, worker: int, stop: threading.Event, completed: list[str], lock: threading.Lock) -> None:
    """Alternate streamed, slow-streamed and plain chats; note the ids whose full answer arrived."""
    models = ["fake-model", "x-slow", "fake-model"]
    i = 0
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            i += 1
            rid = f"w{worker}-{i}"
            model = models[i % len(models)]
            stream = i % 2 == 0 or model == "x-slow"
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            try:
                r = c.post("/api/chat", json=body, headers={"x-request-id": rid})
                if r.status_code != 200:
                    continue
                last = json.loads(r.text.strip().splitlines()[-1])
                if last.get("done") is True and "error" not in last:  # the whole answer, final frame included
                    with lock:
                        completed.append(rid)
            except (httpx.TransportError, json.JSONDecodeError):
                time.sleep(0.01)  # the server is going away (or gone): keep trying until told to stop


def test_sigterm_under_load_logs_every_completed_request(fake_openai: tuple[FakeOpenAI, str], tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "requests.sqlite"
    cfg = tmp_path / "ollamux.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "server": {"port": port, "shutdown_grace": 5},
                "backends": {"fake": {"type": "openai", "url": f"{fake_openai[1]}/v1"}},
                "models": {"fake-model": {"backend": "fake"}, "x-*": {"backend": "fake"}},
                "request_log": {"path": str(db)},
                "metrics": {"backend_probe_interval": 0},
            }
        )
    )
    err_path = tmp_path / "stderr.log"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ollamux", "serve", "--config", str(cfg), "--log-format", "text"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    completed: list[str] = []
    lock = threading.Lock()
    workers: list[threading.Thread] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, "ollamux did not start"
            time.sleep(0.05)
        workers = [threading.Thread(target=_load, args=(url, w, stop, completed, lock)) for w in range(6)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60  # a loaded CI box may be slow to get going
        while True:  # steady load, with slow streams in flight when the signal lands
            time.sleep(0.5)
            with lock:
                if len(completed) >= 30:
                    break
            assert time.monotonic() < deadline, f"only {len(completed)} requests completed in 60 s"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, err_path.read_text()
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    conn = sqlite3.connect(db)
    try:
        logged = {r[0]: r[1] for r in conn.execute("SELECT id, status FROM requests")}
    finally:
        conn.close()
    missing = [rid for rid in completed if rid not in logged]
    assert not missing, f"{len(missing)} of {len(completed)} completed requests not logged: {missing[:10]}"
    assert all(logged[rid] == 200 for rid in completed)
