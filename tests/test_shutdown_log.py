"""SIGTERM under load: the real `ollamux serve` process must log every request it fully answered."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from .fakes.openai_upstream import FakeOpenAI
from .servers import start_serve


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
    db = tmp_path / "requests.sqlite"
    config = {
        "server": {"shutdown_grace": 5},
        "backends": {"fake": {"type": "openai", "url": f"{fake_openai[1]}/v1"}},
        "models": {"fake-model": {"backend": "fake"}, "x-*": {"backend": "fake"}},
        "request_log": {"path": str(db)},
        "metrics": {"backend_probe_interval": 0},
    }
    proc, url, err_path = start_serve(config, tmp_path)
    stop = threading.Event()
    completed: list[str] = []
    lock = threading.Lock()
    workers: list[threading.Thread] = []
    try:
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
