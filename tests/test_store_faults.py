"""Storage faults under a real `ollamux serve`: the request log degrades, serving never stops.

SQLite maps the WAL index (`requests.sqlite-shm`) into memory; a truncated `-shm` turns the next write
into SIGBUS, which once ended the whole server (exit 135). A deleted log directory used to swallow rows
silently (an unlinked file stays writable).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollamux.config import RequestLogSettings
from ollamux.observe import RequestRecord
from ollamux.store import RequestLog
from ollamux.store.sqlite_sink import SQLiteSink

from .fakes.openai_upstream import FakeOpenAI
from .servers import start_serve

Serve = tuple[subprocess.Popen[bytes], str, Path]


@pytest.fixture
def serve(fake_openai: tuple[FakeOpenAI, str], tmp_path: Path) -> Iterator[Serve]:
    """A real `ollamux serve` logging to tmp_path/logs/requests.sqlite: (process, url, database path)."""
    db = tmp_path / "logs" / "requests.sqlite"
    config = {
        "server": {"shutdown_grace": 5},
        "backends": {"fake": {"type": "openai", "url": f"{fake_openai[1]}/v1"}},
        "models": {"fake-model": {"backend": "fake"}},
        "request_log": {"path": str(db)},
        "metrics": {"backend_probe_interval": 0},
    }
    proc, url, _ = start_serve(config, tmp_path)
    try:
        yield proc, url, db
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _chat(c: httpx.Client, n: int = 1) -> None:
    for _ in range(n):
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        assert c.post("/api/chat", json=body).status_code == 200


def _log_state(c: httpx.Client) -> dict[str, Any]:
    log: dict[str, Any] = c.get("/health/ready").json()["request_log"]
    return log


def _wait_for(c: httpx.Client, proc: subprocess.Popen[bytes], ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll readiness (which logs no row) until `ok(request_log)`, failing at once if the server died."""
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, f"the server died with exit code {proc.returncode}"
        try:
            state = _log_state(c)
        except httpx.TransportError as exc:
            raise AssertionError(f"the server stopped answering (exit code {proc.poll()})") from exc
        if ok(state):
            return state
        assert time.monotonic() < deadline, f"request log never got there: {state}"
        time.sleep(0.1)


def _fault_then_recover(serve: Serve, fault: Callable[[Path], None], lift: Callable[[Path], None], died: str) -> None:
    """`fault` breaks the log file under the running writer and keeps new writers from opening it, so the
    degraded state holds still to be looked at; `lift` lets the next restart succeed."""
    proc, url, db = serve
    with httpx.Client(base_url=url, timeout=10) as c:
        _chat(c, 5)
        _wait_for(c, proc, lambda s: s["written"] == 5 and s["state"] == "ok")
        fault(db)
        _chat(c)  # its batch meets the fault
        failed = _wait_for(c, proc, lambda s: s["state"] == "failed" and s["dropped"] == 1)
        assert failed["written"] == 5 and failed["error"]
        r = c.get("/health/ready")
        assert r.status_code == 503 and "request log failed" in r.json()["problems"]
        _chat(c, 10)  # serving goes on while the log is down
        assert _log_state(c)["state"] == "failed"
        lift(db)
        # logging resumes once a new writer process has the file; the rows that waited meanwhile go in
        recovered = _wait_for(c, proc, lambda s: s["state"] == "ok" and s["written"] == 15)
        assert recovered["restarts"] >= 1 and recovered["dropped"] == 1
        assert c.get("/health/ready").status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0  # not -SIGBUS (135 in a shell): the fault never reached the server
    assert died in (db.parent.parent / "stderr.log").read_text()


def test_shm_fault_degrades_the_log_not_the_server(serve: Serve) -> None:
    def fault(db: Path) -> None:
        shm = db.with_name(db.name + "-shm")
        # truncated under the live mapping: the writer's next touch of a mapped page is SIGBUS, for root
        # too (a `chmod 000` does not stop root); then a directory in its place, which no new writer can
        # open, root or not
        os.truncate(shm, 0)
        shm.rename(shm.with_name("old-shm"))
        shm.mkdir()

    def lift(db: Path) -> None:
        db.with_name(db.name + "-shm").rmdir()

    _fault_then_recover(serve, fault, lift, "died of SIGBUS")


def test_deleted_log_directory_degrades_then_recovers(serve: Serve) -> None:
    def fault(db: Path) -> None:
        shutil.rmtree(db.parent)
        db.parent.write_text("")  # a file where the directory was: no new writer can recreate it

    def lift(db: Path) -> None:
        db.parent.unlink()

    _fault_then_recover(serve, fault, lift, "is gone")
    assert serve[2].exists()  # the restarted writer made a fresh log


# ------------------------------------------------------------------------------------ writer process, unit level
def _rec(i: int) -> RequestRecord:
    rec = RequestRecord(id=f"r{i}", api="ollama", route="/api/chat", model_requested="m", status=200)
    rec.end_ns = rec.start_ns + 5_000_000
    return rec


def _child(rl: RequestLog) -> subprocess.Popen[bytes]:
    sink = rl._sink
    assert isinstance(sink, SQLiteSink) and sink._child is not None
    return sink._child


def _child_pid(rl: RequestLog) -> int:
    return _child(rl).pid


def test_killed_writer_process_is_restarted_queue_stays_bounded(tmp_path: Path) -> None:
    rl = RequestLog(RequestLogSettings(path=tmp_path / "log.sqlite", queue_size=50), flush_interval=0.02)
    rl.open()
    try:
        rl.request_finished(_rec(0))
        assert rl.flush()
        rl._backoff = 2.0  # a first restart late enough to fill the queue meanwhile
        os.kill(_child_pid(rl), signal.SIGBUS)  # what a fault on the -shm mapping does
        deadline = time.monotonic() + 5
        while rl.status()["state"] != "failed":  # noticed with no row to write
            assert time.monotonic() < deadline, rl.status()
            time.sleep(0.01)
        assert "SIGBUS" in (rl.error or "") and rl.dropped == 0  # nothing was in its hands
        for i in range(200):  # during the backoff rows wait, at most queue_size of them
            rl.request_finished(_rec(100 + i))
        assert rl.queued == 50 and rl.dropped == 150
        assert rl.flush(10)  # a new writer process takes them
        assert rl.status()["state"] == "ok" and rl.restarts == 1 and rl.written == 1 + 50
    finally:
        rl.close()
    conn = sqlite3.connect(tmp_path / "log.sqlite")
    try:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 51
    finally:
        conn.close()


def test_close_writes_queued_rows_even_after_the_writer_died(tmp_path: Path) -> None:
    rl = RequestLog(RequestLogSettings(path=tmp_path / "log.sqlite"), flush_interval=60)  # only close() writes
    rl.open()
    os.kill(_child_pid(rl), signal.SIGKILL)
    _child(rl).wait(5)  # dead before any row is queued (a death mid-batch loses that batch: the serve tests above)
    for i in range(20):
        rl.request_finished(_rec(i))
    rl.close()  # no backoff at shutdown: one new writer process gets every queued row
    assert rl.written == 20 and rl.dropped == 0
