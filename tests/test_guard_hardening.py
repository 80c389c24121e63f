"""The guard sees every request: any body's Content-Type, undecodable Content-Encodings, odd HTTP versions."""

from __future__ import annotations

import gzip
import logging
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .test_guard_auth import keyed_config

HI = [{"role": "user", "content": "hi"}]
# a `format` schema 130 levels deep: once parsed, the translators' recursion fails on it (a 500)
DEEP = b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],"format":' + b'{"a":' * 130 + b"1"
DEEP += b"}" * 130 + b"}"
MULTIPART = "multipart/form-data; boundary=x"
CONTENT_TYPES = [MULTIPART, "text/plain", None]
PATHS = ["/api/chat", "/v1/chat/completions"]


def _cfg(upstream: str, **limits: Any) -> dict[str, Any]:
    cfg = basic_config(upstream)
    cfg["limits"] = limits
    return cfg


def _connect(url: str, timeout: float = 5) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes: the request asked for it (or the answer forces it)."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def exchange(url: str, head: bytes, body: bytes = b"") -> tuple[bytes, bytes]:
    """Send one request as exact bytes; the status line and headers, and the body, of the answer."""
    with _connect(url) as s:
        s.sendall(head + body)
        data = _until_closed(s)
    head_out, _, body_out = data.partition(b"\r\n\r\n")
    return head_out, body_out


def post_head(path: str, body: bytes, content_type: str | None, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def error_message(path: str, body: bytes) -> str:
    """The error's message, after checking the envelope is the one the path's API speaks."""
    doc = orjson.loads(body)
    if path.startswith("/v1/"):
        err = doc["error"]
        assert set(err) == {"message", "type", "param", "code"}, doc
        return str(err["message"])
    assert set(doc) == {"error"} and isinstance(doc["error"], str), doc
    return doc["error"]


# ------------------------------------------------------------------------- every body, every type
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_too_deep_body_is_400_whatever_its_content_type(proxy: str, path: str, content_type: str | None) -> None:
    head, body = exchange(proxy, post_head(path, DEEP, content_type), DEEP)
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert "more than 100 levels deep (limits.max_json_depth)" in error_message(path, body)


def test_public_paths_still_get_the_body_limits(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> None:
    # a public path skips the key and the rate limit, not the limits that keep a body from hurting the server
    cfg = basic_config(fake_openai[1])
    cfg["auth"] = {"public_paths": ["/api/chat"]}
    url = start_proxy(cfg)
    head, body = exchange(url, post_head("/api/chat", DEEP, MULTIPART), DEEP)
    assert head.startswith(b"HTTP/1.1 400 ") and "limits.max_json_depth" in error_message("/api/chat", body)


def test_concurrency_gate_applies_whatever_the_content_type(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    fake = fake_openai[0]
    url = start_proxy(_cfg(fake_openai[1], concurrency={"models": {"x-*": {"max": 1, "queue": 0}}}))

    def call(content_type: str | None, path: str = "/api/chat", model: str = "x-slow") -> httpx.Response:
        headers = {} if content_type is None else {"Content-Type": content_type}
        payload = {"model": model, "messages": HI, "stream": True}
        with httpx.Client(timeout=10) as c:
            return c.post(url + path, content=orjson.dumps(payload), headers=headers)

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(call, MULTIPART, model="x-held")  # holds the only slot until released
        assert fake.held.wait(10)
        try:
            for ct in CONTENT_TYPES:
                r = call(ct)
                assert r.status_code == 503 and "is busy" in r.json()["error"], (ct, r.text)
            r = call("text/plain", "/v1/chat/completions")
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        finally:
            fake.release_held.set()
        assert first.result().status_code == 200
    assert call(MULTIPART).status_code == 200  # the slot came back


def test_concurrency_gate_sees_the_model_as_the_handler_does(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    # the handlers also take Ollama's deprecated "name" key, and the default model for a body without one
    cfg = _cfg(fake_openai[1], concurrency={"models": {"x-*": {"max": 1, "queue": 0}}})
    cfg["default_model"] = "x-slow"
    url = start_proxy(cfg)

    def call(body: dict[str, Any]) -> httpx.Response:
        with httpx.Client(timeout=10) as c:
            return c.post(url + "/api/chat", json={"messages": HI, "stream": True, **body})

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(call, {"model": "x-slow"})
        time.sleep(0.15)
        assert call({"name": "x-slow"}).status_code == 503
        assert call({}).status_code == 503
        assert first.result().status_code == 200


@pytest.mark.parametrize("content_type", [MULTIPART, "application/json"])
def test_slow_body_gets_408_and_the_connection_is_dropped(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, content_type: str
) -> None:
    url = start_proxy(_cfg(fake_openai[1], body_timeout=0.3))
    for path in PATHS:
        with _connect(url) as s:
            s.sendall(post_head(path, b"x" * 100, content_type) + b'{"model"')
            t0 = time.monotonic()
            # the server hangs up at once: aiohttp would otherwise wait up to 10 s more for the rest of the body
            data = _until_closed(s)
            assert time.monotonic() - t0 < 3, data
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), data
        assert "limits.body_timeout" in error_message(path, body)


# ------------------------------------------------------------------------------ content encodings
def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)  # HTTP's "deflate" is the zlib format


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_undecodable_content_encoding_is_400_without_a_traceback(
    proxy: str, caplog: pytest.LogCaptureFixture, path: str, encoding: str
) -> None:
    caplog.set_level(logging.DEBUG)
    junk = b'{"model":"fake-model"} is not compressed'
    head, body = exchange(proxy, post_head(path, junk, "application/json", f"Content-Encoding: {encoding}"), junk)
    assert head.startswith(b"HTTP/1.1 400 "), head
    msg = error_message(path, body)
    assert f"could not be decoded with its Content-Encoding ({encoding})" in msg, msg
    # the connection is closed by now, so aiohttp has logged all it was going to about this request
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Traceback" not in caplog.text
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, caplog.text
    assert "Content-Encoding" in lines[0].getMessage()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", _deflate)])
def test_valid_compressed_body_still_works(proxy: str, path: str, encoding: str, compress: Any) -> None:
    plain = orjson.dumps({"model": "fake-model", "messages": HI, "stream": False})
    packed = compress(plain)
    head, body = exchange(proxy, post_head(path, packed, "application/json", f"Content-Encoding: {encoding}"), packed)
    assert head.startswith(b"HTTP/1.1 200 "), head + body
    assert b"Hello from the fake!" in body


def test_compressed_body_gets_the_depth_limit(proxy: str) -> None:
    # the limit applies to what the handler would parse: the decompressed body
    packed = gzip.compress(DEEP)
    head, body = exchange(proxy, post_head("/api/chat", packed, None, "Content-Encoding: gzip"), packed)
    assert head.startswith(b"HTTP/1.1 400 ") and "limits.max_json_depth" in error_message("/api/chat", body)


# ---------------------------------------------------------------------------------- HTTP versions
@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
@pytest.mark.parametrize("path", ["/", "/api/tags", "/v1/models"])
def test_other_http_versions_get_505(proxy: str, version: str, path: str) -> None:
    head, body = exchange(proxy, f"GET {path} {version}\r\nHost: localhost\r\n\r\n".encode())
    # answered in the highest version this server speaks, not in the one it refuses
    assert head.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), head
    assert b"\r\nConnection: close" in head
    assert f"{version} is not supported" in error_message(path, body)


def test_505_comes_before_the_host_and_key_checks(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    url = start_proxy(keyed_config(fake_openai[1]))
    head, body = exchange(url, b"GET /api/tags HTTP/2.0\r\nHost: evil.example\r\n\r\n")  # no key, foreign Host
    assert head.startswith(b"HTTP/1.1 505 ") and "HTTP/2.0 is not supported" in error_message("/api/tags", body)
    head, _ = exchange(url, b"POST /api/chat HTTP/2.0\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
    assert head.startswith(b"HTTP/1.1 505 "), head


def test_http_10_and_11_are_served(proxy: str) -> None:
    head, body = exchange(proxy, b"GET /api/version HTTP/1.0\r\nHost: localhost\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and b"version" in body
    head, body = exchange(proxy, b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"version" in body


@pytest.mark.parametrize("path", ["/api/chat", "/no/such/route", "/v1/responses/{response_id}", "/ui/nothing.js"])
def test_an_undecodable_expect_header_is_a_417_on_every_path(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, path: str
) -> None:
    # aiohttp's own Expect handler raises on bytes it cannot encode back (a 500 and a traceback); ollamux's
    # answers 417 on matched routes and, since the fuzz suite found the gap, on paths no route matches too
    url = start_proxy(_cfg(fake_openai[1]))
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n".encode()
    status, _ = exchange(url, head + b"Expect: \xed\xa0\x80x\r\n\r\n")
    assert status.split(b" ")[1] == b"417", status
