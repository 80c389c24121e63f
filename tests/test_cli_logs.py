"""`ollamux logs` over a real request log file: last N, filters, stats, JSON, follow, config lookup."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ollamux.cli import main
from ollamux.cli.logs import follow, parse_time
from ollamux.config import RequestLogSettings
from ollamux.observe import RequestRecord
from ollamux.store import Filters, LogReader, RequestLog

BASE = float(int(time.time()) - 3600)  # the fixture's rows start an hour ago, one a second


def _rec(i: int, **kw: Any) -> RequestRecord:
    rec = RequestRecord(
        id=f"req-{i:04d}",
        api="ollama",
        route="/api/chat",
        model_requested="smol",
        model_served="smol",
        backend="local",
        status=200,
        prompt_tokens=10,
        completion_tokens=5,
    )
    rec.end_ns = rec.start_ns + (i + 1) * 1_000_000
    rec.first_token_ns = rec.start_ns + 500_000
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "requests.sqlite"
    rl = RequestLog(RequestLogSettings(path=path), flush_interval=0.01)
    rl.open()
    for i in range(30):
        rl.request_finished(_rec(i, started=BASE + i))
    rl.request_finished(
        _rec(
            30,
            model_requested="big",
            status=502,
            error="backend down",
            api="openai",
            route="/v1/chat/completions",
            key_name="ci",
        )
    )
    rl.request_finished(_rec(31, model_requested="big", status=499, abandoned=True, streamed=True))
    rl.close()
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["logs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_last_n_plain(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--db", str(db), "-n", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert "req-0029" in lines[0] and "smol" in lines[0] and "10/5tok" in lines[0]
    assert "502" in lines[1] and "error: backend down" in lines[1] and "key=ci" in lines[1]
    assert "abandoned" in lines[2] and "499" in lines[2]


def test_filters_and_json(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--db", str(db), "--json", "--status", "error", "-n", "50")
    got = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and [g["id"] for g in got] == ["req-0030", "req-0031"]
    assert got[0]["error"] == "backend down" and got[0]["latency_ms"] == pytest.approx(31.0)
    _, out, _ = run(capsys, "--db", str(db), "--json", "--api", "openai")
    assert [json.loads(x)["id"] for x in out.splitlines()] == ["req-0030"]
    until = datetime.datetime.fromtimestamp(BASE + 10).isoformat()  # local time, as a user types it
    _, out, _ = run(capsys, "--db", str(db), "--json", "--model", "smol", "-n", "100", "--until", until)
    assert len(out.splitlines()) == 10
    _, out, _ = run(capsys, "--db", str(db), "--json", "--since", "10m", "-n", "100")
    assert len(out.splitlines()) == 2
    code, _, err = run(capsys, "--db", str(db), "--status", "weird")
    assert code == 2 and "status filter" in err


def test_stats(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--db", str(db), "--stats", "--json")
    stats = {s["model"]: s for s in json.loads(out)}
    assert code == 0 and stats["smol"]["count"] == 30 and stats["smol"]["errors"] == 0
    assert stats["smol"]["latency_p50_ms"] == pytest.approx(15.0)
    assert stats["smol"]["latency_p95_ms"] == pytest.approx(29.0)
    assert stats["smol"]["ttft_p50_ms"] == pytest.approx(0.5)
    assert stats["smol"]["prompt_tokens"] == 300 and stats["smol"]["completion_tokens"] == 150
    assert stats["big"]["errors"] == 1 and stats["big"]["abandoned"] == 1
    code, out, _ = run(capsys, "--db", str(db), "--stats")
    header, *rows = out.splitlines()
    assert "p95" in header and "ttft p50" in header and rows[0].startswith("big") and rows[1].startswith("smol")


def test_db_from_config(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "ollamux.yaml"
    cfg.write_text(f"request_log:\n  path: {db.name}\n")  # relative to the config file
    code, out, _ = run(capsys, "--config", str(cfg), "-n", "1")
    assert code == 0 and "req-0031" in out
    monkeypatch.setenv("OLLAMUX_CONFIG", str(cfg))
    code, out, _ = run(capsys, "-n", "1")
    assert code == 0 and "req-0031" in out


def test_missing_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--db", str(tmp_path / "nope.sqlite"))
    assert code == 1 and "no request log" in err
    assert not (tmp_path / "nope.sqlite").exists()  # reading never creates a log


def test_follow_sees_new_rows(db: Path) -> None:
    rl = RequestLog(RequestLogSettings(path=db), flush_interval=0.01)
    rl.open()
    seen: list[str] = []
    with LogReader(db) as reader:
        start = reader.max_seq()
        stop = threading.Event()
        t = threading.Thread(
            target=follow,
            args=(reader, Filters(model="new"), start, lambda rows: seen.extend(r["id"] for r in rows)),
            kwargs={"interval": 0.01, "should_stop": stop.is_set},
        )
        t.start()
        try:
            rl.request_finished(_rec(100, model_requested="new"))
            rl.request_finished(_rec(101, model_requested="other"))
            rl.request_finished(_rec(102, model_requested="new"))
            deadline = time.monotonic() + 5
            while len(seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            t.join(5)
            rl.close()
    assert seen == ["req-0100", "req-0102"]


def test_follow_as_a_process(db: Path) -> None:
    """The real command: prints the last rows, then keeps printing; stopped by the test."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ollamux", "logs", "--db", str(db), "-n", "1", "--follow", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["id"] == "req-0031"
        rl = RequestLog(RequestLogSettings(path=db), flush_interval=0.01)
        rl.open()
        rl.request_finished(_rec(200))
        rl.close()
        assert json.loads(proc.stdout.readline())["id"] == "req-0200"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_parse_time() -> None:
    assert parse_time("90s", now=1000.0) == 910.0
    assert parse_time("2h", now=10000.0) == 2800.0
    assert parse_time("2025-01-31T12:00:00Z") == 1738324800.0
    with pytest.raises(ValueError):
        parse_time("yesterday")
