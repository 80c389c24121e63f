"""`ollamux run` as `ollama run`: the slash commands, the flags and one-shot use, in a pseudo-terminal
against a running ollamux in front of a fake Ollama backend (what reaches the backend is asserted too).
The session's pure logic (commands, multi-line input, stats, word wrap, the start-up banner) is tested
directly first."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest
from aiohttp import web

from ollamux.cli.run_session import MultiLine, Session, find_image_paths, format_stats, go_duration, handle_command
from ollamux.cli.serve_banner import served_lines
from ollamux.cli.wordwrap import StreamWrapper
from ollamux.config import Settings, parse_settings
from ollamux.registry import ModelEntry

from .conftest import ProxyFactory
from .fakes.capture import Captured
from .fakes.ollama_upstream import METRICS, FakeOllama
from .servers import LoopThread, start_serve


# ------------------------------------------------------------------------------------------ pure logic
def test_go_durations_read_as_go_prints_them() -> None:
    assert [go_duration(n) for n in (0, 512, 2_500, 5_000_000, 1_500_000_000, 61_000_000_000)] == [
        "0s",
        "512ns",
        "2.5µs",
        "5ms",
        "1.5s",
        "1m1s",
    ]


def test_stats_block_is_ollamas() -> None:
    assert format_stats(METRICS).splitlines() == [
        "total duration:       5ms",
        "load duration:        1ms",
        "prompt eval count:    7 token(s)",
        "prompt eval duration: 2ms",
        "prompt eval rate:     3500.00 tokens/s",
        "eval count:           3 token(s)",
        "eval duration:        2ms",
        "eval rate:            1500.00 tokens/s",
    ]


def test_multi_line_input_opens_and_closes_on_triple_quotes() -> None:
    m = MultiLine()
    assert m.feed("plain") == "plain"
    assert m.feed('"""first') is None and m.open
    assert m.feed("second") is None
    assert m.feed('third"""') == "first\nsecond\nthird" and not m.open
    assert m.feed('"""one line"""') == "one line"
    assert m.feed('/set system """You are') is None
    assert m.feed('a pirate."""') == "/set system You are\na pirate."
    s = Session("m")
    handle_command(s, "/set system You are\na pirate.")
    assert s.system == "You are\na pirate."


def test_set_parameter_is_typed_as_ollamas_options() -> None:
    s = Session("m")
    assert handle_command(s, "/set parameter temperature 0.5")[0] == "Set parameter 'temperature' to '0.5'"
    handle_command(s, "/set parameter num_predict 8")
    handle_command(s, "/set parameter stop a b")
    assert s.options == {"temperature": 0.5, "num_predict": 8, "stop": ["a", "b"]}
    said, _ = handle_command(s, "/set parameter num_predict lots")
    assert said == "Couldn't set parameter: invalid int value [lots]"
    assert handle_command(s, "/set parameter nope 1")[0] == "Couldn't set parameter: unknown parameter 'nope'"


def test_save_body_carries_the_session() -> None:
    s = Session("qwen3", system="Be brief.", options={"temperature": 0.2})
    s.remember({"role": "user", "content": "hi"}, "hello", "hmm")
    assert s.save_body("mine") == {
        "model": "mine",
        "from": "qwen3",
        "stream": False,
        "system": "Be brief.",
        "parameters": {"temperature": 0.2},
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    }


def test_image_paths_are_found_quoted_or_escaped(tmp_path: Path) -> None:
    (tmp_path / "a b.png").write_bytes(b"x")
    (tmp_path / "c.jpg").write_bytes(b"x")
    prompt = f"what is '{tmp_path}/a b.png' and {tmp_path}/c.jpg and {tmp_path}/missing.png"
    assert [p.name for _, p in find_image_paths(prompt)] == ["a b.png", "c.jpg"]


def test_word_wrap_breaks_between_words() -> None:
    w = StreamWrapper(12)
    out = "".join(w.feed(t) for t in ["Hello", " from", " Ollama", " again", " and", " more"]) + w.flush()
    assert out == "Hello from\nOllama again\nand more"
    assert all(len(line) <= 12 for line in out.splitlines())


def test_start_up_banner_lists_models_or_warns(tmp_path: Path) -> None:
    settings = parse_settings({"runtime": {"models_dir": str(tmp_path)}}, {})
    assert served_lines(settings, [])[-1].startswith(f"warning: no models to serve; put GGUF files in {tmp_path}")
    entries = [ModelEntry("smol:latest", "", "smol", source="models_dir"), ModelEntry("x:latest", "b", "x")]
    lines = served_lines(settings, entries)
    assert lines[0] == f"models folder: {tmp_path}" and lines[1] == "serving 2 models:"
    assert lines[2].split() == ["smol:latest", "models", "folder"] and lines[3].split() == ["x:latest", "backend", "b"]
    # no models folder: a pull has nowhere to go, so it is not suggested (tests/test_new_user_cli.py)
    assert (
        served_lines(Settings(), [])[-1]
        == "warning: no models to serve; name a backend (--backend URL or a config file)"
    )


def test_serve_prints_what_it_serves_after_registering_it(fake_ollama: tuple[FakeOllama, str], tmp_path: Path) -> None:
    config = {"backends": {"ol": {"type": "ollama", "url": fake_ollama[1], "discover": True}}}
    proc, _, err = start_serve(config, tmp_path)
    proc.terminate()
    proc.wait(timeout=30)
    log = err.read_text()
    assert f"backend ol: ollama {fake_ollama[1]} (models discovered)" in log
    assert "serving 4 models:" in log and "qwen3:latest" in log  # discovered by the lifespan, then printed
    assert log.index("serving 4 models:") < log.index("ollamux listening on")


def test_serve_with_nothing_to_serve_warns(tmp_path: Path) -> None:
    proc, _, err = start_serve({"backends": {}, "runtime": {"models_dir": str(tmp_path / "empty")}}, tmp_path)
    proc.terminate()
    proc.wait(timeout=30)
    assert "warning: no models to serve" in err.read_text()


# ------------------------------------------------------------------------- in a terminal, over HTTP
class VisionOllama(FakeOllama):
    """The fake Ollama with a model that can see, `llava`, and one slow to answer, `slow` (both answer as qwen3)."""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if b'"slow' in await request.read():
            await asyncio.sleep(1.5)  # long enough for the spinner to turn
        return await super().chat(request)

    async def show(self, request: web.Request) -> web.Response:
        resp = await super().show(request)
        if resp.status == 200 and self.requests[-1].json.get("model", "").startswith("llava"):
            body: Any = json.loads(resp.body)  # type: ignore[arg-type]
            body["capabilities"] = ["completion", "vision"]
            body["license"] = "Llava licence text"
            return web.json_response(body)
        return resp


@pytest.fixture(scope="module")
def backend(loop_thread: LoopThread) -> Iterator[tuple[VisionOllama, str]]:
    fake = VisionOllama(models=["qwen3:latest", "think:latest", "llava:latest", "slow:latest"])
    runner, url = loop_thread.start_app(fake.app())
    yield fake, url
    loop_thread.stop_app(runner)


@pytest.fixture
def host(backend: tuple[VisionOllama, str], start_proxy: ProxyFactory) -> str:
    url = start_proxy({"backends": {"ol": {"type": "ollama", "url": backend[1], "discover": True}}})
    return url.removeprefix("http://")


def env_for(host: str) -> dict[str, str]:
    return {**os.environ, "OLLAMA_HOST": host, "TERM": "dumb"}


def spawn(host: str, *args: str) -> pexpect.spawn[str]:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "ollamux", "run", *args],
        env=env_for(host),
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    child.expect_exact(">>> ")
    return child


def ask(child: pexpect.spawn[str], line: str) -> str:
    """Send a line; what was printed before the next prompt."""
    child.sendline(line)
    child.expect_exact(">>> ")
    return str(child.before or "")


def bye(child: pexpect.spawn[str]) -> None:
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def chats(fake: FakeOllama, since: int) -> list[dict[str, Any]]:
    """The /api/chat bodies the backend got after `since` requests, the model-loading empty ones left out."""
    got: list[Captured] = fake.requests[since:]
    return [c.json for c in got if c.path == "/api/chat" and c.json.get("messages")]


def test_a_plain_prompt_streams_and_keeps_history(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "qwen3")
    assert "Hello from Ollama!" in ask(child, "Hi there")
    ask(child, "Again")
    bye(child)
    sent = chats(fake, start)
    assert [m["content"] for m in sent[-1]["messages"]] == ["Hi there", "Hello from Ollama!", "Again"]


def test_set_parameter_reaches_the_backend_typed(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "qwen3")
    assert "Set parameter 'temperature' to '0.25'" in ask(child, "/set parameter temperature 0.25")
    assert "Set parameter 'num_predict' to '9'" in ask(child, "/set parameter num_predict 9")
    assert "Couldn't set parameter" in ask(child, "/set parameter top_k many")
    ask(child, "Hi")
    bye(child)
    options = chats(fake, start)[-1]["options"]
    assert options["temperature"] == 0.25 and options["num_predict"] == 9 and isinstance(options["num_predict"], int)


def test_set_system_reaches_the_backend(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "qwen3")
    assert "Set system message." in ask(child, "/set system You are a pirate.")
    ask(child, "Hi")
    assert "You are a pirate." in ask(child, "/show system")
    bye(child)
    assert chats(fake, start)[-1]["messages"][0] == {"role": "system", "content": "You are a pirate."}


def test_set_format_json_and_unset(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "qwen3")
    assert "Set format to 'json' mode." in ask(child, "/set format json")
    ask(child, "One")
    assert "Disabled format." in ask(child, "/unset format")
    ask(child, "Two")
    bye(child)
    one, two = chats(fake, start)[-2:]
    assert one["format"] == "json" and "format" not in two


def test_set_think_and_nothink(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "think")
    assert "Set 'think' mode." in ask(child, "/set think")
    out = ask(child, "Ponder")
    assert "Thinking..." in out and "Let me think." in out and "...done thinking." in out
    assert "Set 'nothink' mode." in ask(child, "/set nothink")
    ask(child, "Quick")
    bye(child)
    on, off = chats(fake, start)[-2:]
    assert on["think"] is True and off["think"] is False


def test_thinking_is_dimmed_on_a_terminal_and_hidden_with_hidethinking(host: str) -> None:
    child = spawn(host, "think")
    assert "\x1b[2mThinking...\n" in ask(child, "Ponder").replace("\r\n", "\n")
    bye(child)
    child = spawn(host, "think", "--hidethinking")
    out = ask(child, "Ponder")
    assert "Hello from Ollama!" in out and "Let me think" not in out and "Thinking" not in out
    bye(child)


def test_set_verbose_prints_the_stats_block_and_quiet_stops_it(host: str) -> None:
    child = spawn(host, "qwen3")
    assert "Set 'verbose' mode." in ask(child, "/set verbose")
    out = ask(child, "Hi")
    for label in ("total duration:", "load duration:", "prompt eval count:", "prompt eval duration:"):
        assert label in out
    assert "prompt eval rate:     3500.00 tokens/s" in out and "eval count:           3 token(s)" in out
    assert "eval duration:" in out and "eval rate:            1500.00 tokens/s" in out
    assert "Set 'quiet' mode." in ask(child, "/set quiet")
    assert "total duration" not in ask(child, "Hi")
    bye(child)


def test_show_subcommands_read_api_show(host: str) -> None:
    child = spawn(host, "llava")
    info = ask(child, "/show info")
    assert "architecture" in info and "qwen3" in info and "vision" in info
    assert "Llava licence text" in ask(child, "/show license")
    assert "# from the fake" in ask(child, "/show modelfile")
    assert "num_ctx" in ask(child, "/show parameters")
    assert "{{ .Prompt }}" in ask(child, "/show template")
    assert "No system message was specified for this model." in ask(child, "/show system")
    assert "/show info" in ask(child, "/show")  # no field: the list of them
    bye(child)


def test_load_switches_models_and_forgets_the_conversation(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "qwen3")
    ask(child, "Hi")
    assert "Loading model 'think'" in ask(child, "/load think")
    ask(child, "Hello")
    assert "model 'nope' not found" in ask(child, "/load nope")  # an error, and the model stays
    ask(child, "Still here")
    bye(child)
    sent = chats(fake, start)
    assert [b["model"] for b in sent][-3:] == ["qwen3:latest", "think:latest", "think:latest"]
    assert [m["content"] for m in sent[-2]["messages"]] == ["Hello"]
    assert [m["content"] for m in sent[-1]["messages"]] == ["Hello", "Hello from Ollama!", "Still here"]


def test_save_creates_a_model_listed_in_tags(host: str, backend: tuple[VisionOllama, str]) -> None:
    child = spawn(host, "qwen3")
    ask(child, "/set system Be a saved model.")
    ask(child, "/set parameter temperature 0.3")
    ask(child, "Hi")
    assert "Created new model 'saved-session'" in ask(child, "/save saved-session")
    bye(child)
    names = [m["name"] for m in httpx.get(f"http://{host}/api/tags").json()["models"]]
    assert "saved-session:latest" in names
    fake, start = backend[0], len(backend[0].requests)
    assert run_cli(host, "saved-session", "Again").returncode == 0  # the saved session answers from where it was
    sent = chats(fake, start)[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be a saved model."}
    assert [m["content"] for m in sent["messages"][1:]] == ["Hi", "Hello from Ollama!", "Again"]
    assert sent["options"]["temperature"] == 0.3


def test_clear_forgets_the_conversation(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "qwen3")
    ask(child, "First")
    assert "Cleared session context" in ask(child, "/clear")
    ask(child, "Second")
    bye(child)
    assert [m["content"] for m in chats(fake, start)[-1]["messages"]] == ["Second"]


def test_help_lists_the_commands(host: str) -> None:
    child = spawn(host, "qwen3")
    for cmd in ("/?", "/help"):
        out = ask(child, cmd)
        for name in ("/set", "/show", "/load", "/save", "/clear", "/bye", '"""'):
            assert name in out
    assert "/set parameter" in ask(child, "/? set")
    bye(child)


def test_an_unknown_command_never_reaches_the_model(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "qwen3")
    assert "Unknown command '/x'. Type /? for help" in ask(child, "/x")
    assert "Unknown command '/frobnicate'. Type /? for help" in ask(child, "/frobnicate now")
    bye(child)
    assert chats(fake, start) == []


def test_multi_line_input_is_one_message(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "qwen3")
    child.sendline('"""Line one')
    child.expect_exact("... ")
    child.sendline("/not a command")
    child.expect_exact("... ")
    child.sendline('line three"""')
    child.expect_exact(">>> ")
    bye(child)
    sent = chats(fake, start)
    assert len(sent) == 1 and sent[0]["messages"][-1]["content"] == "Line one\n/not a command\nline three"


def test_an_image_path_is_sent_to_a_vision_model(host: str, backend: tuple[VisionOllama, str], tmp_path: Path) -> None:
    fake, start = backend[0], len(backend[0].requests)
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG fake image bytes")
    child = spawn(host, "llava")
    assert f"Added image '{image}'" in ask(child, f"What is in {image} ?")
    bye(child)
    child = spawn(host, "qwen3")  # no vision: said so, and the path stays text
    assert "cannot read images (no vision capability)" in ask(child, f"What is in {image} ?")
    bye(child)
    seeing, blind = chats(fake, start)
    assert seeing["messages"][-1] == {
        "role": "user",
        "content": "What is in ?",
        "images": [base64.b64encode(image.read_bytes()).decode()],
    }
    assert "images" not in blind["messages"][-1] and str(image) in blind["messages"][-1]["content"]


def test_flags_reach_the_backend(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    child = spawn(host, "think", "--keepalive", "10m", "--format", "json", "--think=high", "--nowordwrap")
    ask(child, "Hi")
    bye(child)
    sent = chats(fake, start)[-1]
    assert sent["format"] == "json" and sent["think"] == "high" and sent["keep_alive"] == "10m"


def test_verbose_flag_prints_stats(host: str) -> None:
    child = spawn(host, "qwen3", "--verbose")
    out = ask(child, "Hi")
    assert "eval rate:            1500.00 tokens/s" in out
    bye(child)


def test_word_wrap_on_a_narrow_terminal(host: str) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "ollamux", "run", "qwen3"],
        env=env_for(host),
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 12),
    )
    child.expect_exact(">>> ")
    assert "Hello from\r\nOllama!" in ask(child, "Hi")
    assert "Set 'nowordwrap' mode." in ask(child, "/set nowordwrap")
    assert "Hello from Ollama!" in ask(child, "Hi")  # the terminal may fold it, but no line break is sent
    bye(child)


def run_cli(host: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ollamux", "run", *args]
    return subprocess.run(cmd, env=env_for(host), capture_output=True, text=True, input=stdin, timeout=60)


def test_one_shot_with_a_prompt_and_with_stdin(host: str, backend: tuple[VisionOllama, str]) -> None:
    fake, start = backend[0], len(backend[0].requests)
    r = run_cli(host, "qwen3", "Say", "hi", "--think=false")
    assert r.returncode == 0 and r.stdout == "Hello from Ollama!\n", r.stderr
    r = run_cli(host, "qwen3", "Summarise this", stdin="piped text\n")
    assert r.returncode == 0 and r.stdout == "Hello from Ollama!\n", r.stderr
    r = run_cli(host, "qwen3", "--verbose", stdin="just stdin")
    assert r.returncode == 0 and "eval rate:" in r.stderr
    first, second, third = chats(fake, start)[:3]
    assert first["messages"] == [{"role": "user", "content": "Say hi"}] and first["think"] is False
    assert second["messages"][-1]["content"] == "piped text\n Summarise this"  # stdin first, as ollama joins
    assert third["messages"][-1]["content"] == "just stdin"
    r = run_cli(host, "think", "--think", "high", "--hidethinking", "flags", "first")  # words after flags
    assert r.returncode == 0 and r.stdout == "Hello from Ollama!\n", r.stderr
    r = run_cli(host, "think", "--think", "Why", "--verbose", "so?")  # not a level: the prompt's first word
    assert r.returncode == 0 and "Thinking..." in r.stdout and "eval rate:" in r.stderr
    assert run_cli(host, "qwen3", "--bogus", "x").returncode == 2
    *_, words, why = chats(fake, start)
    assert (words["think"], words["messages"][-1]["content"]) == ("high", "flags first")
    assert (why["think"], why["messages"][-1]["content"]) == (True, "Why so?")
    r = run_cli(host, "nope", "hi")
    assert r.returncode == 1 and "Error: model 'nope' not found" in r.stderr


SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"  # rich's "dots"


def test_spinner_turns_on_a_terminal_until_the_first_token(host: str) -> None:
    env = {**env_for(host), "TERM": "xterm"}
    child = pexpect.spawn(sys.executable, ["-m", "ollamux", "run", "slow"], env=env, encoding="utf-8", timeout=30)
    child.expect_exact(">>> ")  # loading took 1.5 s, under the spinner
    assert any(c in str(child.before) for c in SPINNER)
    child.sendline("Hi")
    child.expect_exact("Hello from Ollama!")
    assert any(c in str(child.before) for c in SPINNER)
    child.expect_exact(">>> ")
    bye(child)
    r = run_cli(host, "slow", "Hi")  # no terminal: the answer alone
    assert r.stdout == "Hello from Ollama!\n" and not any(c in r.stderr for c in SPINNER)


# ------------------------------------------------------------------ two commands on a fresh clone
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
FAKE_SETUP = """#!/usr/bin/env bash
# stands in for scripts/setup: makes what the real one would, with tools that say how they were called
set -euo pipefail
echo "fake setup ran"
mkdir -p .venv/bin "$OLLAMUX_MODELS"
for tool in ollamux pytest ruff mypy; do printf '#!/bin/sh\\necho "%s $*"\\n' "$tool" > .venv/bin/$tool; done
printf '#!/bin/sh\\n[ "$1" = -m ] && echo "python $*" && exit 0\\nexec %s "$@"\\n' "$REAL_PYTHON" > .venv/bin/python
chmod +x .venv/bin/*
touch "$OLLAMUX_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
"""


@pytest.fixture
def clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh clone's scripts folder, with scripts/setup replaced by a fast stand-in."""
    (tmp_path / "scripts").mkdir()
    for name in ("serve", "test", "setup_check.sh"):
        (tmp_path / "scripts" / name).write_text((SCRIPTS / name).read_text())
    (tmp_path / "scripts" / "setup").write_text(FAKE_SETUP)
    env = {**os.environ, "OLLAMUX_MODELS": str(tmp_path / "models"), "REAL_PYTHON": sys.executable}
    return tmp_path, env


def test_scripts_serve_sets_up_a_fresh_clone_then_serves(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    first = subprocess.run(["bash", "scripts/serve", "--port", "1"], cwd=root, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "serve: the virtualenv .venv with ollamux is missing: running scripts/setup first" in first.stderr
    assert first.stdout.splitlines() == ["fake setup ran", "ollamux serve --port 1"]
    again = subprocess.run(["bash", "scripts/serve"], cwd=root, env=env, capture_output=True, text=True)
    assert again.stdout.splitlines() == ["ollamux serve"] and again.stderr == ""  # nothing missing: no set-up
    (root / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").unlink()
    gone = subprocess.run(["bash", "scripts/serve"], cwd=root, env=env, capture_output=True, text=True)
    assert "the model SmolLM2-135M-Instruct" in gone.stderr and "fake setup ran" in gone.stdout


def test_scripts_test_sets_up_a_fresh_clone_then_tests(clone: tuple[Path, dict[str, str]]) -> None:
    root, env = clone
    r = subprocess.run(["bash", "scripts/test", "-x"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "test: the virtualenv .venv with ollamux is missing: running scripts/setup first" in r.stderr
    assert r.stdout.splitlines()[0] == "fake setup ran" and "ruff check src tests bench" in r.stdout
    assert r.stdout.splitlines()[-1] == "python -m pytest -x"
