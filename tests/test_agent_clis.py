"""Two agent CLIs complete a one-shot prompt through a real `ollamux serve`, offline.

Claude Code (`claude -p`, Anthropic's Messages API: `POST /v1/messages?beta=true`) and Codex (`codex exec`,
OpenAI's Responses API: `POST /v1/responses`) each talk to ollamux, which routes their model to a scripted
OpenAI-compatible backend that speaks chat completions only: the request must go through ollamux's
translation to the chat-completions pivot and the answer ("pong") back into each CLI's own stream.

The CLIs are npm packages at pinned versions that scripts/npm_tools.sh (run by scripts/setup) installs under
~/.cache/ollamux/npm; a missing binary fails the test (CI must prove both CLIs work, not skip them).

Each CLI runs with a scratch HOME (and CODEX_HOME) and only the variables it needs, so nothing of the
caller's (API keys, proxies, a logged-in account) leaks in, and with everything that would reach another
host switched off:
  Claude Code: CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 (alone it stops the feature-flag, event-logging
    and server-URL requests to api.anthropic.com and the `HEAD /api/hello` preconnect to the base URL);
    DISABLE_TELEMETRY and DISABLE_AUTOUPDATER besides. CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK=1 and
    CLAUDE_CODE_MAX_RETRIES=0 make a broken stream fail at once instead of being retried or re-asked
    without streaming (which would hide a broken streamed front); stdin is /dev/null (`-p` appends stdin
    to the prompt).
  Codex: config.toml with the provider (`wire_api = "responses"`), `check_for_update_on_startup = false`,
    analytics off and `[features] plugins = false` (else it runs `git ls-remote` on github.com's
    openai/plugins.git); no retries, for the same reason as above.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from .servers import LoopThread, start_serve

NPM_PREFIX = Path(os.environ.get("OLLAMUX_NPM_PREFIX", str(Path.home() / ".cache" / "ollamux" / "npm")))
NPM_BIN = NPM_PREFIX / "node_modules" / ".bin"
PROMPT = "Reply with exactly: pong"
ANSWER = "pong"
MODEL = "agent-model"  # what each CLI is told (`claude --model`, codex's `model =`)
UPSTREAM = "pong-upstream"  # what ollamux must send the backend for it
KEY = "sk-agent-cli-0123456789abcdef"  # ollamux requires a key: Claude Code sends x-api-key, Codex a Bearer
CLI_TIMEOUT = 120

pytestmark = pytest.mark.timeout(CLI_TIMEOUT + 60)


# ------------------------------------------------------------------------------------------ the backend
@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class PongBackend:
    """OpenAI-compatible, chat completions only: every chat answers "pong" (streamed or whole)."""

    requests: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_route("*", "/{tail:.*}", self.other)
        return app

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(Seen(request.method, request.path, dict(request.headers), body))
        return body

    async def models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response(
            {"object": "list", "data": [{"id": UPSTREAM, "object": "model", "created": 1, "owned_by": "fake"}]}
        )

    async def other(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"error": {"message": f"no {request.path} here", "type": "not_found"}}, status=404)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        body = body if isinstance(body, dict) else {}
        model = str(body.get("model", UPSTREAM))
        usage = {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-pong",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {"id": "chatcmpl-pong", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [choice]}  # fmt: skip

        events = [chunk({"role": "assistant", "content": ""}), chunk({"content": ANSWER}), chunk({}, "stop")]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk({}), "choices": [], "usage": usage})
        for event in events:
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


# ------------------------------------------------------------------------------------------ the stack
@dataclass
class Stack:
    backend: PongBackend
    url: str  # ollamux
    tmp: Path
    stderr: Path  # ollamux's text log
    db: Path  # ollamux's request log

    def ollamux_log(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""

    def request_rows(self, wait: float = 3.0) -> list[dict[str, Any]]:
        """ollamux's request-log rows (for a failure's message), waiting a little for the writer's flush."""
        deadline = time.monotonic() + wait
        while True:
            rows: list[dict[str, Any]] = []
            if self.db.exists():
                con = sqlite3.connect(self.db)
                con.row_factory = sqlite3.Row
                try:
                    q = "SELECT method, route, model_requested, status, streamed, error FROM requests"
                    rows = [dict(r) for r in con.execute(q)]
                except sqlite3.OperationalError:
                    pass
                finally:
                    con.close()
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


@pytest.fixture
def stack(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Stack]:
    backend = PongBackend()
    runner, backend_url = loop_thread.start_app(backend.app())
    db = tmp_path / "logs" / "requests.sqlite"
    config = {
        "backends": {"fake": {"type": "openai", "url": f"{backend_url}/v1"}},  # no `apis`: through the pivot
        "models": {MODEL: {"backend": "fake", "upstream": UPSTREAM}},
        "auth": {"keys": {"agent": {"key": KEY}}},
        "request_log": {"path": str(db)},
        "metrics": {"backend_probe_interval": 0},
    }
    proc, url, stderr = start_serve(config, tmp_path)
    try:
        yield Stack(backend, url, tmp_path, stderr, db)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        loop_thread.stop_app(runner)


# ------------------------------------------------------------------------------------------ helpers
def _binary(name: str) -> Path:
    path = NPM_BIN / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run scripts/setup (it installs the agent CLIs with scripts/npm_tools.sh)")
    return path


def _base_env(home: Path) -> dict[str, str]:
    """Only what a CLI needs: PATH (Codex's launcher is a node script) and a scratch HOME."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(
            cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"{cmd[0]} did not finish in {CLI_TIMEOUT} s\nstdout: {out}\nstderr: {(err or '')[-3000:]}")


def _text(content: Any) -> str:
    """A chat message's text: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _check(stack: Stack, name: str, route: str, result: subprocess.CompletedProcess[str]) -> None:
    """Exit 0 and "pong" printed; ollamux served one streamed request on `route`, and the backend got one chat
    request for the upstream model whose user messages hold the prompt."""
    chats = [s for s in stack.backend.requests if s.method == "POST" and s.path == "/v1/chat/completions"]

    def context() -> str:  # only built for a failure's message
        return (
            f"\n{name} exit code {result.returncode}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-3000:]}"
            f"\nollamux request log: {stack.request_rows()}"
            f"\nbackend saw: {[(s.method, s.path) for s in stack.backend.requests]}"
            f"\nollamux log (tail): {stack.ollamux_log()}"
        )

    assert result.returncode == 0, f"{name} failed{context()}"
    assert ANSWER in result.stdout, f"{name} did not print {ANSWER!r}{context()}"
    rows = [(r["method"], r["route"], r["status"], r["streamed"]) for r in stack.request_rows()]
    assert rows == [("POST", route, 200, 1)], f"ollamux served {rows}, not one streamed {route}{context()}"
    # one chat request: no retry, no non-streamed fallback and no re-ask after an answer the CLI saw as empty
    assert len(chats) == 1, f"{len(chats)} chat-completions requests reached the backend{context()}"
    body = chats[0].body
    assert isinstance(body, dict), f"the backend got no JSON object{context()}"
    assert body.get("model") == UPSTREAM, f"the backend was asked for {body.get('model')!r}{context()}"
    messages = body.get("messages")
    assert isinstance(messages, list) and messages, f"no messages in the pivot request{context()}"
    users = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    assert any(PROMPT in u for u in users), f"no user message holds the prompt: {[u[:200] for u in users]}{context()}"


# ------------------------------------------------------------------------------------------ the tests
def test_claude_code_one_shot(stack: Stack) -> None:
    claude = _binary("claude")
    env = {
        **_base_env(stack.tmp / "claude-home"),
        "ANTHROPIC_BASE_URL": stack.url,
        "ANTHROPIC_API_KEY": KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    result = _run([str(claude), "-p", PROMPT, "--model", MODEL], env, stack.tmp / "claude-work")
    _check(stack, "claude", "/v1/messages", result)


def test_codex_exec(stack: Stack) -> None:
    codex = _binary("codex")
    codex_home = stack.tmp / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        f"""model = "{MODEL}"
model_provider = "ollamux"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false

[model_providers.ollamux]
name = "ollamux"
base_url = "{stack.url}/v1"
wire_api = "responses"
env_key = "OLLAMUX_API_KEY"
request_max_retries = 0
stream_max_retries = 0
"""
    )
    env = {**_base_env(stack.tmp / "home"), "CODEX_HOME": str(codex_home), "OLLAMUX_API_KEY": KEY}
    result = _run([str(codex), "exec", "--skip-git-repo-check", PROMPT], env, stack.tmp / "codex-work")
    _check(stack, "codex", "/v1/responses", result)
