"""bench/observer_switch, the request log + metrics cost's in-place switch, does what the bench's figure
assumes: in a sliced run the log keeps exactly the requests of the "on" slices, every request of the run is in
one slice, and the loop's CPU, the feeder thread's and the writer process's are all found (a zero there would
make the bench's cost silently wrong). No figure is judged."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from aiohttp import web

from .servers import LoopThread, free_port

ROOT = Path(__file__).resolve().parent.parent
CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
ROUTE = "/v1/chat/completions"


def _rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        n: int = conn.execute("SELECT count(*) FROM requests WHERE route = ?", (ROUTE,)).fetchone()[0]
    return n


def _wait_rows(db: Path, want: int) -> int:
    deadline = time.monotonic() + 10
    n = -1
    while time.monotonic() < deadline:
        n = _rows(db) if db.exists() else 0
        if n >= want:
            time.sleep(1.5)  # and nothing more comes
            return _rows(db)
        time.sleep(0.1)
    return n


def test_a_sliced_run_logs_exactly_its_on_slices_and_finds_every_helper(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    async def chat(_request: web.Request) -> web.Response:
        return web.json_response(CHAT)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner, up = loop_thread.start_app(app)
    port = free_port()
    db = tmp_path / "requests.sqlite"
    cfg = tmp_path / "ollamux.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": port},
                "backends": {"b": {"url": f"{up}/v1"}},
                "models": {"m": {"backend": "b"}},
                "request_log": {"path": str(db)},
                "metrics": {"backend_probe_interval": 0},
            }
        )
    )
    state = tmp_path / "switch"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'bench' / 'observer_switch'}{os.pathsep}{ROOT / 'src'}",
        "OLLAMUX_BENCH_SWITCH_FILE": str(state),
    }
    cmd = [sys.executable, "-m", "ollamux", "serve", "--config", str(cfg), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    try:
        with httpx.Client(base_url=url, timeout=10) as c:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "ollamux did not start"
                time.sleep(0.05)
            for _ in range(20):
                assert c.post(ROUTE, json=body).status_code == 200
            before = _wait_rows(db, 20)
            assert before == 20
            Path(f"{state}.mode").write_text(json.dumps({"slice_ms": 100}))
            os.kill(proc.pid, signal.SIGUSR1)
            sent = 0
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                assert c.post(ROUTE, json=body).status_code == 200
                sent += 1
            os.kill(proc.pid, signal.SIGUSR1)
            done = Path(f"{state}.slices")
            deadline = time.monotonic() + 10
            while not done.exists():
                assert time.monotonic() < deadline, "the sliced run wrote no figures"
                time.sleep(0.05)
            figures = json.loads(done.read_text())
            after = _wait_rows(db, before + 1)
        slices = figures["slices"]
        assert {s[0] for s in slices} == {"on", "off"} and len(slices) >= 10, slices
        assert sum(s[1] for s in slices) == sent  # every request of the run is in one slice
        on = sum(s[1] for s in slices if s[0] == "on")
        off = sent - on
        assert on > 0 and off > 0, slices
        # detached means detached: the log kept the "on" slices' requests and no other (a request that
        # finished while the slice changed may fall on either side)
        assert abs((after - before) - on) <= 2, (after - before, on, off)
        assert all(s[2] > 0 for s in slices if s[1]), slices  # the loop's CPU, every slice that served
        assert figures["threads_ns"] > 0 and figures["children_ns"] > 0, figures  # the feeder, the writer
    finally:
        proc.terminate()
        proc.wait(10)
        loop_thread.stop_app(runner)
