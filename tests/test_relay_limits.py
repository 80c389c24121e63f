"""Size limits of the relay, over real sockets: `max_event_bytes` (one SSE event or NDJSON line) and
`max_response_bytes` (a whole non-streamed answer), both per backend.

The 1 GB test runs the proxy as a real `ollamux serve` process, so its peak memory (VmHWM) is its own;
the fake upstream writes the gigabyte from a generator in 1 MiB pieces, so no process holds it whole.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import ProxyFactory
from .fakes.hostile_upstream import Hostile
from .servers import LoopThread, free_port
from .test_relay import (
    API_CHAT,
    GOOD,
    MIB,
    V1_CHAT,
    Call,
    Kind,
    Relay,
    envelope_message,
    ndjson_lines,
    new_rid,
    ollama_final_error,
    ollama_text,
    openai_final_error,
    openai_text,
    raw_post,
    relay_config,
    sse_events,
)


@pytest.fixture(scope="module")
def hostile_url(loop_thread: LoopThread) -> Iterator[str]:
    runner, url = loop_thread.start_app(Hostile().app())
    yield url
    loop_thread.stop_app(runner)


# ------------------------------------------------------------------------------------ max_event_bytes


@pytest.mark.parametrize(
    ("kind", "call"),
    [
        pytest.param("openai", API_CHAT, id="a-api-chat-sse-event"),
        pytest.param("ollama", V1_CHAT, id="b-v1-chat-ndjson-line"),
    ],
)
def test_an_event_over_max_event_bytes_ends_the_stream_with_one_error_naming_the_key(
    start_proxy: ProxyFactory, hostile_url: str, tmp_path: Path, kind: Kind, call: Call
) -> None:
    db = tmp_path / "requests.sqlite"
    p = Relay(start_proxy(relay_config(kind, hostile_url, db, max_event_bytes=MIB)), db)
    rid = new_rid("event-limit")
    # two good tokens, then one 2 MiB event, then a normal finish the proxy must not get to
    ans = raw_post(p.url, call.path, call.body(f"huge-event-{2 * MIB}", stream=True), rid)
    assert ans.status == 200  # the stream had started
    assert b"HTTP/1.1" not in ans.body
    if call.api == "ollama":
        lines = ndjson_lines(ans.payload)
        assert ollama_text(lines) == GOOD
        msg = ollama_final_error(lines)
    else:
        events = sse_events(ans.payload)
        assert openai_text(events) == GOOD
        msg = openai_final_error(events)
    assert "max_event_bytes" in msg, msg
    row = p.row(rid)
    assert row["streamed"] == 1 and row["status"] >= 500 and "max_event_bytes" in row["error"], row


# --------------------------------------------------------------------------------- max_response_bytes


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of a process so far (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def _wait_up(url: str, proc: subprocess.Popen[bytes], stderr: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"ollamux exited ({proc.returncode}): {stderr.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "ollamux did not start"
        time.sleep(0.05)


def test_a_1gb_answer_over_max_response_bytes_is_502_and_the_proxy_never_holds_it(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    fake_runner, fake_url = loop_thread.start_app(Hostile().app())
    port = free_port()
    cfg = tmp_path / "ollamux.yaml"
    config = relay_config("openai", fake_url, tmp_path / "requests.sqlite", max_response_bytes=32 * MIB)
    config["server"] = {"shutdown_grace": 1}
    cfg.write_text(yaml.safe_dump(config))
    exe = Path(sys.executable).with_name("ollamux")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ollamux"]
    err_path = tmp_path / "stderr.log"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [*cmd, "serve", "--config", str(cfg), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=err
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc, err_path)
        body = API_CHAT.body(f"huge-body-{1024 * MIB}", stream=False)  # /api/chat, stream: false
        head = b""
        got = 0
        t0 = time.monotonic()
        with httpx.Client(timeout=30) as c, c.stream("POST", url + "/api/chat", json=body) as r:
            status = r.status_code
            for b in r.iter_raw():  # counted, never kept: the test process must not hold it either
                if len(head) < 4096:
                    head += b
                got += len(b)
                if got > 64 * MIB:
                    break
        elapsed = time.monotonic() - t0
        peak = _vm_hwm_mb(proc.pid)
        assert status == 502, f"HTTP {status} after {elapsed:.1f}s, {got / MIB:.0f} MiB relayed; peak RSS {peak:.0f} MB"
        msg = envelope_message(head, "ollama")
        assert "max_response_bytes" in msg, msg
        # the limit is 32 MiB: the proxy may hold about that (plus its ~50 MB baseline), never the gigabyte
        assert peak < 400, f"the proxy's peak RSS reached {peak:.0f} MB"
        assert elapsed < 20, f"the refusal took {elapsed:.1f}s"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        loop_thread.stop_app(fake_runner)
