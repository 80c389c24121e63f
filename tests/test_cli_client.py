"""`ollamux run | list | ps | show | stop` as terminal programs against a real server with SmolLM2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from ollamux.cli.client import ollama_host

from .runtime_helpers import Proxy, link_into, model_file, start_proxy
from .servers import LoopThread

MODEL = "smollm2-135m-instruct:q4_1"


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("example.com:8080", "http://example.com:8080"),
        ("https://example.com", "https://example.com:443"),
        ("http://example.com/ollama/", "http://example.com:80/ollama"),
        (":1234", "http://127.0.0.1:1234"),
        ("[::1]:5000", "http://[::1]:5000"),
        ("::1", "http://[::1]:11434"),
    ],
)
def test_ollama_host_is_read_like_the_ollama_cli(value: str, url: str) -> None:
    assert ollama_host({"OLLAMA_HOST": value}) == url


@pytest.fixture(scope="module")
def server(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("cli")
    link_into(tmp / "models", model_file())
    p = start_proxy(loop_thread, {"runtime": {"models_dir": str(tmp / "models"), "ctx": 512}}, tmp)
    yield p
    p.close()


def env_for(server: Proxy) -> dict[str, str]:
    return {**os.environ, "OLLAMA_HOST": server.url.removeprefix("http://"), "TERM": "dumb"}


def ollamux(server: Proxy, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollamux", *args],
        env=env_for(server),
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


pytestmark = pytest.mark.e2e


def test_run_with_a_prompt_streams_the_answer(server: Proxy) -> None:
    r = ollamux(server, "run", MODEL, "Say", "hello.")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    piped = ollamux(server, "run", MODEL, stdin="Say hi.")
    assert piped.returncode == 0 and piped.stdout.strip()


def test_list_ps_show_stop(server: Proxy) -> None:
    ollamux(server, "run", MODEL, "Hi")
    out = ollamux(server, "list").stdout
    assert out.splitlines()[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"] and MODEL in out and "98 MB" in out
    ps = ollamux(server, "ps").stdout
    assert MODEL in ps and "100% CPU" in ps and "512" in ps and "from now" in ps
    show = ollamux(server, "show", MODEL).stdout
    assert "architecture" in show and "llama" in show and "Q4_1" in show and "completion" in show
    assert ollamux(server, "stop", MODEL).returncode == 0
    assert MODEL not in ollamux(server, "ps").stdout


def test_unknown_model_is_an_error(server: Proxy) -> None:
    r = ollamux(server, "run", "nope", "hi")
    assert r.returncode == 1 and "Error: model 'nope' not found" in r.stderr


def test_interactive_session_in_a_terminal(server: Proxy, tmp_path: Path) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "ollamux", "run", MODEL],
        env=env_for(server),
        encoding="utf-8",
        timeout=90,
        dimensions=(40, 200),
    )
    try:
        child.expect_exact(">>> ")
        child.sendline("/set parameter num_predict 16")
        child.expect_exact("Set parameter 'num_predict' to '16'")
        child.expect_exact(">>> ")
        child.sendline("Say hello.")
        child.expect_exact(">>> ")  # the answer streamed, then the prompt again
        answer = child.before or ""
        assert answer.replace("Say hello.", "").strip()
        child.sendline("And again?")  # the session keeps its history
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
