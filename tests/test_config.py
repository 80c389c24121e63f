"""Config: the documented shape loads; every mistake names its key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ollamux.config import BackendSettings, ConfigError, load_settings, parse_settings

EXAMPLE = """
server: {host: 127.0.0.1, port: 11434}
backends:
  local: {type: openai, url: "http://127.0.0.1:8080/v1"}
  cloud: {type: openai, url: "https://api.example.com/v1", api_key: "${CLOUD_KEY}", timeout: 300}
models:
  llama3.2: {backend: local, upstream: "Llama-3.2-3B-Instruct-Q4_K_M", aliases: ["llama3.2:3b"]}
  gpt-4o-mini: {backend: cloud}          # upstream name defaults to the model's own name
"""


def test_issue_example_loads(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(EXAMPLE)
    s = load_settings(p, {"CLOUD_KEY": "sk-123"})
    assert s.backends["cloud"].api_key == "sk-123"
    assert s.backends["cloud"].timeouts.total == 300
    assert s.backends["local"].url == "http://127.0.0.1:8080/v1"
    names = {m.name: m for m in s.models}
    assert names["llama3.2"].upstream == "Llama-3.2-3B-Instruct-Q4_K_M"
    assert names["gpt-4o-mini"].upstream is None
    assert s.server.port == 11434


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"backends": {"b": {"url": "http://x/v1", "api_key": "${NOPE}"}}}, "backends.b.api_key", "NOPE is not set"),
        ({"backends": {"b": {"url": "ftp://x"}}}, "backends.b.url", "not an http"),
        ({"backends": {"b": {"type": "grpc", "url": "http://x"}}}, "backends.b.type", "not a backend type"),
        ({"backends": {"b": {}}}, "backends.b.url", "required"),
        ({"models": {"m": {"backend": "ghost"}}}, "models.m.backend", "not a configured backend"),
        ({"models": {"m": {}}}, "models.m.backend", "required"),
        ({"server": {"port": "http"}}, "server.port", "number"),
        ({"server": {"port": 70000}}, "server.port", "at most"),
        ({"server": {"version": "latest"}}, "server.version", "numeric version"),
        ({"servr": {}}, "servr", "unknown key"),
        ({"backends": {"b": {"url": "http://x", "timout": 3}}}, "backends.b.timout", "unknown key"),
        (
            {"backends": {"b": {"url": "http://x"}}, "models": {"a": {"backend": "b", "aliases": ["A:latest"]}}},
            "models.a.aliases",
            "already used",
        ),
        (
            {"backends": {"b": {"url": "http://x"}}, "models": {"a": {"backend": "b", "fallbacks": ["zz"]}}},
            "models.a.fallbacks[0]",
            "not a configured model",
        ),
        ({"models": {"m": {"runtime": {"ctx": 512}}}}, "models.m.runtime", "exactly one of"),
    ],
)
def test_errors_name_the_key(raw: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_settings(raw, {})
    assert e.value.key == key
    assert words in str(e.value)


def test_runtime_cmd_keeps_port_placeholders() -> None:
    s = parse_settings(
        {"models": {"q": {"runtime": {"cmd": ["llama-server", "--port", "${PORT}", "-c", "${CTX}", "${HOME}"]}}}},
        {"HOME": "/root"},
    )
    rt = s.models[0].runtime
    assert rt is not None and rt.cmd == ("llama-server", "--port", "${PORT}", "-c", "${CTX}", "/root")
    assert s.models[0].backend == "runtime:q"


def _cmd(cmd: object, environ: dict[str, str]) -> tuple[str, ...]:
    s = parse_settings({"models": {"q": {"runtime": {"cmd": cmd}}}}, environ)
    rt = s.models[0].runtime
    assert rt is not None and rt.cmd is not None
    return rt.cmd


# PORT and HOST are set here on purpose: the runtime placeholders must survive even when the environment has them.
CMD_ENV = {"MODELS": "/my models", "EXTRA": "--flash-attn on", "PORT": "1", "HOST": "0.0.0.0"}
CMD_EXPECTED = (
    "llama-server",
    "--port",
    "${PORT}",
    "--host",
    "${HOST}",
    "-c",
    "${CTX}",
    "--alias",
    "${MODEL}",
    "-m",
    "/my models/a b.gguf",
    "--flash-attn on",
)


def test_runtime_cmd_string_expands_like_the_list() -> None:
    as_string = "llama-server --port ${PORT} --host ${HOST} -c ${CTX} --alias ${MODEL} -m '${MODELS}/a b.gguf' ${EXTRA}"
    as_list = [
        "llama-server",
        "--port",
        "${PORT}",
        "--host",
        "${HOST}",
        "-c",
        "${CTX}",
        "--alias",
        "${MODEL}",
        "-m",
        "${MODELS}/a b.gguf",
        "${EXTRA}",
    ]
    # split before expanding: a value with spaces (EXTRA) stays one argument, as in the list form
    assert _cmd(as_string, CMD_ENV) == CMD_EXPECTED
    assert _cmd(as_list, CMD_ENV) == CMD_EXPECTED


@pytest.mark.parametrize(
    ("cmd", "key", "words"),
    [
        ("llama-server -m ${NOPE}/m.gguf --port ${PORT}", "models.q.runtime.cmd", "NOPE is not set"),
        (["llama-server", "-m", "${NOPE}/m.gguf", "--port", "${PORT}"], "models.q.runtime.cmd[2]", "NOPE is not set"),
        ("llama-server -m 'unclosed.gguf", "models.q.runtime.cmd", "not a valid command line"),
        ("", "models.q.runtime.cmd", "must not be empty"),
        ([], "models.q.runtime.cmd", "must not be empty"),
        (["llama-server", {"a": 1}], "models.q.runtime.cmd[1]", "must be a string"),
    ],
)
def test_runtime_cmd_errors_name_the_key(cmd: object, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        _cmd(cmd, {})
    assert e.value.key == key
    assert words in str(e.value)


def test_backend_stream_limits() -> None:
    s = parse_settings(
        {
            "backends": {
                "d": {"url": "http://d/v1"},
                "b": {"url": "http://b/v1", "max_event_bytes": 1024, "max_response_bytes": "${MAXRESP}"},
            }
        },
        {"MAXRESP": "1048576"},
    )
    assert s.backends["d"].max_event_bytes == 128 * 1024 * 1024
    assert s.backends["d"].max_response_bytes == 256 * 1024 * 1024
    assert s.backends["b"].max_event_bytes == 1024
    assert s.backends["b"].max_response_bytes == 1024 * 1024
    # backends ollamux builds itself (managed models, --backend) get the same defaults
    bs = BackendSettings(name="runtime:m", type="openai", urls=("http://127.0.0.1:1/v1",))
    assert (bs.max_event_bytes, bs.max_response_bytes) == (128 * 1024 * 1024, 256 * 1024 * 1024)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("max_event_bytes", 1023, "at least 1024"),
        ("max_event_bytes", 0, "at least 1024"),
        ("max_event_bytes", -5, "at least 1024"),
        ("max_event_bytes", 4096.5, "must be an integer"),
        ("max_event_bytes", "64MB", "must be a number"),
        ("max_response_bytes", True, "must be an integer"),
        ("max_response_bytes", 10, "at least 1024"),
        ("max_response_bytes", [1], "must be an integer"),
    ],
)
def test_backend_stream_limit_errors(key: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_settings({"backends": {"b": {"url": "http://b/v1", key: value}}}, {})
    assert e.value.key == f"backends.b.{key}"
    assert words in str(e.value)


def test_dialect_auto() -> None:
    s = parse_settings({"backends": {"o": {"url": "https://api.openai.com/v1"}, "l": {"url": "http://l/v1"}}}, {})
    assert s.backends["o"].dialect == "openai" and s.backends["l"].dialect == "llama.cpp"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollamux", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_prints_models(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(EXAMPLE)
    r = run_cli("check", "--config", str(p), env={"CLOUD_KEY": "k"})
    assert r.returncode == 0, r.stderr
    assert "model llama3.2:latest -> backend local as 'Llama-3.2-3B-Instruct-Q4_K_M' aliases: llama3.2:3b" in r.stdout
    assert "model gpt-4o-mini:latest -> backend cloud as 'gpt-4o-mini'" in r.stdout
    assert "k" not in r.stdout.split("backend cloud")[1].split("\n")[0]  # never print a key


def test_check_and_serve_refuse_bad_config(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(EXAMPLE)
    env_missing = {k: v for k, v in os.environ.items() if k != "CLOUD_KEY"}
    r = subprocess.run(
        [sys.executable, "-m", "ollamux", "check", "--config", str(p)],
        capture_output=True,
        text=True,
        env=env_missing,
        timeout=60,
    )
    assert r.returncode == 1
    assert "backends.cloud.api_key" in r.stderr and "CLOUD_KEY" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "ollamux", "serve", "--config", str(p), "--port", "0"],
        capture_output=True,
        text=True,
        env=env_missing,
        timeout=60,
    )
    assert r.returncode == 1 and "backends.cloud.api_key" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [1, 2\n")
    r = run_cli("check", "--config", str(bad))
    assert r.returncode == 1 and "not valid YAML" in r.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("backends: {b: {url: 'http://127.0.0.1:1/v1'}}\nmodels: {m: {backend: b}}\n")
    r = run_cli("check", env={"OLLAMUX_CONFIG": str(p)})
    assert r.returncode == 0 and "model m:latest" in r.stdout


def test_runtime_restart_defaults_to_on_failure() -> None:
    s = parse_settings(
        {"models": {"a": {"runtime": {"cmd": "srv"}}, "b": {"runtime": {"cmd": "srv", "restart": "never"}}}},
        {},
    )
    restart = {m.name: m.runtime.restart for m in s.models if m.runtime is not None}
    assert restart == {"a": "on-failure", "b": "never"}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("always", "must be on-failure or never, not 'always'"),
        (False, "quote it"),  # what YAML makes of a bare `restart: no`
        (3, "must be on-failure or never, not 3"),
    ],
)
def test_runtime_restart_errors_name_the_key(value: object, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_settings({"models": {"m": {"runtime": {"cmd": "srv", "restart": value}}}}, {})
    assert e.value.key == "models.m.runtime.restart"
    assert words in str(e.value)


@pytest.mark.parametrize(
    ("extra", "named"),
    [({"api_key": "sk-1"}, "backends.b.api_key"), ({"headers": {"Authorization": "Bearer x"}}, "backends.b.headers")],
)
def test_url_credentials_and_another_authorization_are_refused_at_load(extra: dict[str, Any], named: str) -> None:
    # both would set Authorization: aiohttp refuses such a request, so every request to it would be a 500
    raw = {"backends": {"b": {"url": "http://user:pw@127.0.0.1:9/v1", **extra}}, "models": {"m": {"backend": "b"}}}
    with pytest.raises(ConfigError) as e:
        parse_settings(raw, {})
    assert named in str(e.value) and "pw" not in str(e.value)
    ok = parse_settings({"backends": {"b": {"url": "http://user:pw@127.0.0.1:9/v1"}}}, {})
    assert ok.backends["b"].urls == ("http://user:pw@127.0.0.1:9/v1",)
