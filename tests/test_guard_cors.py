"""CORS as Ollama answers it (its default origins and headers, plus configured ones) on both APIs, and
the Host-header guard against DNS rebinding on a loopback bind."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ollamux.guard.hostguard import HostGuard, host_name, is_loopback_bind

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .test_guard_auth import keyed_config

HI = [{"role": "user", "content": "hi"}]
ROUTES = ["/api/chat", "/api/generate", "/v1/chat/completions", "/v1/embeddings", "/api/tags", "/v1/models"]


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _preflight(
    http: httpx.Client, url: str, origin: str, headers: str = "content-type,authorization"
) -> httpx.Response:
    return http.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "http://localhost:3000",
        "https://localhost:8443",
        "http://127.0.0.1:5173",
        "https://0.0.0.0",
        "http://0.0.0.0:80",
        "app://obsidian.md",
        "file://",
        "tauri://localhost",
        "vscode-webview://abc123",
        "vscode-file://vscode-app",
    ],
)
def test_default_origins_preflight(proxy: str, http: httpx.Client, origin: str) -> None:
    for route in ROUTES:
        r = _preflight(http, proxy + route, origin)
        assert r.status_code == 204, (route, origin)
        assert r.headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "openai-beta", "x-stainless-os", "x-requested-with"} <= allowed
        assert r.headers["Access-Control-Max-Age"] == "43200"
        assert "Origin" in r.headers["Vary"]
        assert r.content == b""


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://localhost.evil.example",
        "https://127.0.0.1.nip.io",
        "null",
        "chrome-extension://abc",
        "http://192.168.1.5:3000",
    ],
)
def test_other_origins_are_refused(proxy: str, http: httpx.Client, origin: str) -> None:
    r = _preflight(http, proxy + "/api/chat", origin)
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    assert "origin" in r.json()["error"] and "not allowed" in r.json()["error"]
    r = http.post(
        proxy + "/v1/chat/completions", json={"model": "fake-model", "messages": HI}, headers={"Origin": origin}
    )
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_allowed_origin_on_answers_streamed_and_not(proxy: str, http: httpx.Client) -> None:
    o = {"Origin": "http://localhost:3000"}
    r = http.post(proxy + "/api/chat", json={"model": "fake-model", "messages": HI, "stream": False}, headers=o)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "x-request-id" in r.headers["Access-Control-Expose-Headers"] and r.headers["Vary"] == "Origin"
    with http.stream("POST", proxy + "/api/chat", json={"model": "fake-model", "messages": HI}, headers=o) as s:
        assert s.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert s.read().count(b"\n") >= 2  # the stream itself is untouched
    with http.stream(
        "POST", proxy + "/v1/chat/completions", headers=o, json={"model": "fake-model", "messages": HI, "stream": True}
    ) as s:
        assert s.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert b"[DONE]" in s.read()
    r = http.post(proxy + "/api/chat", json={"model": "nope", "messages": HI}, headers=o)
    assert r.status_code == 404 and r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    r = http.get(proxy + "/api/tags")  # no Origin: no CORS headers
    assert "Access-Control-Allow-Origin" not in r.headers


def test_same_origin_is_not_cors(proxy: str, http: httpx.Client) -> None:
    host = proxy.removeprefix("http://")
    r = http.get(proxy + "/api/tags", headers={"Origin": f"http://{host}"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_configured_origins_and_wildcards(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client
) -> None:
    cfg = basic_config(fake_openai[1])
    cfg["server"] = {"cors_origins": ["https://chat.example.com", "https://*.corp.example", "chrome-extension://*"]}
    url = start_proxy(cfg)
    for origin in (
        "https://chat.example.com",
        "https://a.corp.example",
        "chrome-extension://abcdef",
        "http://localhost:8080",
    ):
        assert _preflight(http, url + "/api/chat", origin).status_code == 204, origin
    assert _preflight(http, url + "/api/chat", "https://example.com").status_code == 403
    # allow-all, as OLLAMA_ORIGINS=* does: the origin is echoed
    cfg["server"] = {"cors_origins": ["*"]}
    url = start_proxy(cfg)
    r = _preflight(http, url + "/v1/models", "https://anything.example")
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == "https://anything.example"


def test_preflight_needs_no_key_but_the_request_does(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, http: httpx.Client
) -> None:
    url = start_proxy(keyed_config(fake_openai[1]))
    o = "http://localhost:5173"
    assert _preflight(http, url + "/v1/chat/completions", o, "authorization,x-stainless-new-thing").status_code == 204
    r = _preflight(http, url + "/v1/chat/completions", o, "authorization,x-stainless-new-thing")
    assert "x-stainless-new-thing" in r.headers["Access-Control-Allow-Headers"]  # any x-stainless-* is fine
    r = http.post(url + "/v1/chat/completions", json={"model": "fake-model", "messages": HI}, headers={"Origin": o})
    assert r.status_code == 401  # a browser can read why: the CORS headers are on the refusal too
    assert r.headers["Access-Control-Allow-Origin"] == o


def _raw_get(url: str, host_header: str | None, path: str = "/api/version") -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        hh = f"Host: {host_header}\r\n" if host_header is not None else ""
        s.sendall(f"GET {path} HTTP/1.1\r\n{hh}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:11434",
        "127.0.0.1:8080",
        "[::1]:11434",
        "10.0.0.7",
        "8.8.8.8:80",
        "ollama.localhost",
        "nas.local:11434",
        "gpu.internal",
        socket.gethostname(),
        "LOCALHOST",
        "localhost.",
    ],
)
def test_host_guard_allows_local_names(proxy: str, host: str) -> None:
    assert _raw_get(proxy, host).startswith(b"HTTP/1.1 200"), host


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:11434", "localhost.evil.example", "local", "x.localhost.com"]
)
def test_host_guard_refuses_other_names(proxy: str, host: str) -> None:
    data = _raw_get(proxy, host, "/api/tags")
    assert data.startswith(b"HTTP/1.1 403") and b"is not allowed" in data, data
    data = _raw_get(proxy, host, "/v1/models")
    assert data.startswith(b"HTTP/1.1 403") and b'"type":"permission_error"' in data


def test_host_guard_off_when_not_loopback_or_turned_off(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    cfg: dict[str, Any] = basic_config(fake_openai[1])
    cfg["server"] = {"host": "0.0.0.0"}  # bound to every interface: Ollama does not guard
    url = start_proxy(cfg)
    assert _raw_get(url, "evil.example").startswith(b"HTTP/1.1 200")
    cfg["server"] = {}
    cfg["limits"] = {"allowed_hosts": ["ollama.example.com"]}  # a reverse proxy in front
    url = start_proxy(cfg)
    assert _raw_get(url, "ollama.example.com:443").startswith(b"HTTP/1.1 200")
    assert _raw_get(url, "evil.example").startswith(b"HTTP/1.1 403")
    cfg["limits"] = {"host_guard": False}
    url = start_proxy(cfg)
    assert _raw_get(url, "evil.example").startswith(b"HTTP/1.1 200")


def test_host_helpers() -> None:
    assert host_name("[::1]:80") == "::1" and host_name("Example.LOCAL:1") == "example.local"
    assert host_name("::1") == "::1" and host_name("") == ""
    assert is_loopback_bind("127.0.0.1") and is_loopback_bind("localhost") and is_loopback_bind("::1")
    assert not is_loopback_bind("0.0.0.0") and not is_loopback_bind("192.168.1.2")
    g = HostGuard()
    assert g.allowed("") and g.allowed("[fe80::1]") and not g.allowed("[garbage") and not g.allowed("a b")
