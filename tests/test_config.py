"""Config: the documented shape loads; every mistake names its key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ollamux.config import ConfigError, load_settings, parse_settings

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
        ({"backends": {"b": {"url": "http://x"}}, "models": {"a": {"backend": "b", "aliases": ["A:latest"]}}},
         "models.a.aliases", "already used"),
        ({"backends": {"b": {"url": "http://x"}}, "models": {"a": {"backend": "b", "fallbacks": ["zz"]}}},
         "models.a.fallbacks[0]", "not a configured model"),
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


def test_dialect_auto() -> None:
    s = parse_settings({"backends": {"o": {"url": "https://api.openai.com/v1"}, "l": {"url": "http://l/v1"}}}, {})
    assert s.backends["o"].dialect == "openai" and s.backends["l"].dialect == "llama.cpp"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollamux", *args], capture_output=True, text=True, timeout=60,
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
    r = subprocess.run([sys.executable, "-m", "ollamux", "check", "--config", str(p)], capture_output=True,
                       text=True, env=env_missing, timeout=60)
    assert r.returncode == 1
    assert "backends.cloud.api_key" in r.stderr and "CLOUD_KEY" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ollamux", "serve", "--config", str(p), "--port", "0"],
                       capture_output=True, text=True, env=env_missing, timeout=60)
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
