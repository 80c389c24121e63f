"""Hostile operators and clients of a real `ollamux serve`: an OTLP collector that takes connections and
never answers, traceparent headers that are malformed or huge, SIGHUP with a file that is not UTF-8, is a
directory, is empty (an editor caught mid-write), and two SIGHUPs at once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import basic_config
from .fakes.openai_upstream import FakeOpenAI
from .fakes.silent_server import SilentServer
from .served import serve_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Windows has no SIGHUP")

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def _config(upstream: str, tmp: Path, **extra: Any) -> dict[str, Any]:
    return {**basic_config(upstream), "request_log": {"path": str(tmp / "r.sqlite")}, **extra}


def _ok(url: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers, timeout=20)


# ---------------------------------------------------------------------------------------- tracing
VALID_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ODD_TRACE_HEADERS: list[list[tuple[bytes, bytes]]] = [
    [(b"traceparent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01")],  # all-zero ids
    [(b"traceparent", b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],  # version ff
    [(b"traceparent", VALID_PARENT.encode() + b"-extra")],
    [(b"traceparent", b"garbage \xe9\xe9")],
    [(b"traceparent", b"00-" + b"a" * 6000)],  # huge, within the header limit
    [(b"traceparent", VALID_PARENT.encode()), (b"tracestate", b"x" * 1500)],  # over 512 characters
    [(b"traceparent", VALID_PARENT.encode()), (b"tracestate", b"Not A Member")],
    [(b"traceparent", VALID_PARENT.encode()), (b"tracestate", b",".join(b"k%d=v" % i for i in range(40)))],
    [(b"traceparent", VALID_PARENT.encode()), (b"tracestate", b"a=1,a=2")],
]


def test_odd_trace_context_headers_are_served_and_not_logged_per_request(
    fake_openai: tuple[FakeOpenAI, str], silent: SilentServer, tmp_path: Path
) -> None:
    tracing = {"otlp_endpoint": f"http://127.0.0.1:{silent.port}/v1/traces"}
    with serve_config(tmp_path, _config(fake_openai[1], tmp_path, tracing=tracing)) as served:
        for _ in range(3):
            for headers in ODD_TRACE_HEADERS:
                r = httpx.post(f"{served.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=20)
                assert r.status_code == 200, (headers, r.text)
        log = served.log()
        # a client decides what these headers say: at most one line about them, never one per request
        said = [ln for ln in log.splitlines() if "trace" in ln.lower() and ("WARNING" in ln or "ERROR" in ln)]
        assert len(said) <= 1, said
        assert "Traceback" not in log


def test_a_hung_collector_costs_no_request_and_the_stop_says_what_it_dropped(
    fake_openai: tuple[FakeOpenAI, str], silent: SilentServer, tmp_path: Path
) -> None:
    tracing = {"otlp_endpoint": f"http://127.0.0.1:{silent.port}/v1/traces"}
    with serve_config(tmp_path, _config(fake_openai[1], tmp_path, tracing=tracing)) as served:
        for _ in range(20):
            assert _ok(served.url).status_code == 200
        proc = served.proc
    # serve_config's exit sent SIGTERM and waited (SIGKILL after 30 s): a clean exit is code 0
    assert proc.returncode == 0, served.log()[-3000:]
    [line] = served.lines("tracing: the collector at")
    assert f"http://127.0.0.1:{silent.port}/v1/traces" in line and "dropped" in line, line
    assert "Traceback" not in served.log()


def test_a_full_span_queue_is_said_once_not_once_per_span(
    fake_openai: tuple[FakeOpenAI, str], silent: SilentServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a small queue (the SDK reads these): the hung collector holds the first batch, the queue is full soon
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    tracing = {"otlp_endpoint": f"http://127.0.0.1:{silent.port}/v1/traces"}
    with serve_config(tmp_path, _config(fake_openai[1], tmp_path, tracing=tracing)) as served:
        for _ in range(40):
            assert _ok(served.url).status_code == 200
        full = [ln for ln in served.log().splitlines() if "queue" in ln.lower()]
        # never one line per dropped span (dozens here): the SDK says it once per 20 s window of the wall clock
        # (its DuplicateFilter keys on time.time() // 20), so a run that crosses a window's edge says it twice
        assert len(full) <= 2, full


# ---------------------------------------------------------------------------------------- reload
def test_sighup_with_a_file_that_is_not_utf8_or_is_a_directory_keeps_serving(
    fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    config = _config(fake_openai[1], tmp_path)
    with serve_config(tmp_path, config) as served:
        assert served.config is not None
        served.config.write_bytes(b"models:\n  caf\xe9: {backend: fake}\n")  # Latin-1, not UTF-8
        served.proc.send_signal(signal.SIGHUP)
        [line] = served.wait_for_line("config reload failed")
        assert "still serving the previous config" in line and "UTF-8" in line, line
        assert "Traceback" not in served.log() and "exception was never retrieved" not in served.log()
        assert _ok(served.url).status_code == 200
        served.config.unlink()
        served.config.mkdir()
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_line("config reload failed", count=2)
        assert _ok(served.url).status_code == 200
        served.config.rmdir()
        served.write_config(config)


def test_sighup_with_an_empty_file_keeps_the_running_config(
    fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    config = _config(fake_openai[1], tmp_path)
    with serve_config(tmp_path, config) as served:
        assert served.config is not None
        served.config.write_text("")  # an editor that truncates, then writes: the signal came in between
        served.proc.send_signal(signal.SIGHUP)
        [line] = served.wait_for_line("config reload failed")
        assert "empty" in line and "still serving the previous config" in line, line
        assert _ok(served.url).status_code == 200  # the models are still there


def test_two_sighups_at_once_leave_the_last_file_served(fake_openai: tuple[FakeOpenAI, str], tmp_path: Path) -> None:
    config = _config(fake_openai[1], tmp_path)
    with serve_config(tmp_path, config) as served:
        served.write_config({**config, "models": {**config["models"], "second": {"backend": "fake"}}})
        served.proc.send_signal(signal.SIGHUP)
        served.proc.send_signal(signal.SIGHUP)  # the second waits for the first (or the kernel merges them)
        served.wait_for_line("config reloaded")
        names = [m["id"] for m in httpx.get(f"{served.url}/v1/models", timeout=20).json()["data"]]
        assert "second" in names
        assert "Traceback" not in served.log()


def test_a_config_that_is_not_utf8_is_one_line_at_start(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"models:\n  caf\xe9: {backend: fake}\n")
    done = subprocess.run(
        [sys.executable, "-m", "ollamux", "check", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "is not UTF-8 text (byte 13 is 0xe9)" in done.stderr and "Traceback" not in done.stderr, done.stderr
