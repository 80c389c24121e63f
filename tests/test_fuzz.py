"""Hostile input at every route of a running proxy, over real sockets: malformed bodies, wrong types,
deep and huge JSON, invalid UTF-8, broken headers. The server must answer every one with a 4xx (or a
2xx when the input happens to be valid) carrying a useful message in the envelope of the API that was
called, and must never crash or log an unhandled error.

Kept fast (about 1,500 examples): one proxy for the module, one keep-alive client, no shrinking database.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollamux import create_app
from ollamux.config import parse_settings
from ollamux.guard.core import api_of

from .conftest import basic_config
from .fakes.openai_upstream import FakeOpenAI
from .servers import LoopThread

FUZZ = settings(
    max_examples=int(os.environ.get("OLLAMUX_FUZZ_EXAMPLES", "350")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


class _Errors(logging.Handler):
    """Collects ERROR records: an unhandled exception anywhere in the server is a failed example."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return  # a crash comes with a traceback; plain error lines (a backend down...) are no crash
        if isinstance(exc, HttpProcessingError):
            return  # aiohttp logs the requests its HTTP parser refused (and answers them 400): no crash
        tb = exc.__traceback__
        while tb is not None:
            if "/tests/fakes/" in tb.tb_frame.f_code.co_filename:
                return  # the scripted upstream choking on a body is the backend's problem, not ours
            tb = tb.tb_next
        self.records.append(record)


class Target:
    def __init__(self, url: str, routes: list[tuple[str, str]], errors: _Errors) -> None:
        self.url = url
        self.routes = routes
        self.errors = errors
        self.http = httpx.Client(timeout=30)
        self.seen: Counter[tuple[str, int]] = Counter()  # (path, status): OLLAMUX_FUZZ_STATS=1 prints it


@web.middleware
async def _validating(request: web.Request, handler: Any) -> web.StreamResponse:
    """A real backend answers 400 to a body it cannot use; the scripted fake would raise instead."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException:
        raise
    except Exception as exc:
        if request.writer.output_size:
            raise  # a stream had begun: aiohttp drops the connection, as a crashing backend would
        body = {"error": {"message": f"bad request: {exc}", "type": "invalid_request_error"}}
        return web.json_response(body, status=400)


@pytest.fixture(scope="module")
def target(loop_thread: LoopThread, tmp_path_factory: Any) -> Iterator[Target]:
    fake = FakeOpenAI()
    upstream = fake.app()
    upstream.middlewares.append(_validating)
    up_runner, up_url = loop_thread.start_app(upstream)
    cfg = basic_config(up_url)
    cfg["request_log"] = {"path": str(tmp_path_factory.mktemp("fuzz") / "requests.sqlite")}
    cfg["server"] = {"max_body_bytes": 4 * 1024 * 1024}
    app = create_app(parse_settings(cfg, dict(os.environ)))
    routes = list(
        {
            (r.method, r.resource.canonical)
            for r in app.router.routes()
            if r.resource is not None and r.method != "HEAD" and r.resource.canonical not in _ENDLESS
        }
    )
    errors = _Errors()
    for name in ("ollamux", "aiohttp.server", "aiohttp.web", "asyncio"):
        logging.getLogger(name).addHandler(errors)
    runner, url = loop_thread.start_app(app)
    # hypothesis favours the first choices of sampled_from: the routes with the most code behind them first
    routes.sort(key=lambda r: (_FIRST.index(r[1]) if r[1] in _FIRST else len(_FIRST), r))
    t = Target(url, [(m, _concrete(p)) for m, p in routes], errors)
    yield t
    if os.environ.get("OLLAMUX_FUZZ_STATS"):
        print("\n".join(f"{n:6} {p} {st}" for (p, st), n in sorted(t.seen.items())))
    t.http.close()
    loop_thread.stop_app(runner)
    loop_thread.stop_app(up_runner)
    for name in ("ollamux", "aiohttp.server", "aiohttp.web", "asyncio"):
        logging.getLogger(name).removeHandler(errors)


_FIRST = [
    "/api/chat",
    "/v1/chat/completions",
    "/api/generate",
    "/v1/completions",
    "/api/embed",
    "/v1/embeddings",
    "/api/embeddings",
    "/api/show",
    "/api/pull",
]


# answers that never end by design (a live event stream): a client reads them until it hangs up
_ENDLESS = frozenset({"/admin/requests/stream"})


def _concrete(path: str) -> str:
    return path.replace("{digest}", "sha256-" + "0" * 64).replace("{model}", "fake-model")


# routes ollamux answers 501 on purpose: it does not manage model files (the message says so)
_UNMANAGED = ("/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs/")


def check(target: Target, method: str, path: str, status: int, headers: Any, body: bytes) -> None:
    """The contract for every answer to hostile input."""
    target.seen[(path.split("?")[0] if not path.startswith(("/api/blobs/", "/v1/models/")) else path[:11], status)] += 1
    if target.errors.records:
        crashes, target.errors.records = target.errors.records, []  # report each crash once
        fmt = logging.Formatter()
        raise AssertionError("the server crashed:\n" + "\n".join(fmt.format(r) for r in crashes[:3]))
    if status == 501 and path.startswith(_UNMANAGED):
        pass
    else:
        assert status < 500, (method, path, status, body[:500])
    if status < 400 or (status in (404, 405) and not body.startswith(b"{")):
        return  # aiohttp's own plain-text 404/405 for unknown routes and methods, as Ollama's Gin does
    if status == 400 and headers.get("content-type", "").startswith("text/plain"):
        return  # the HTTP parser refused the request line or headers before any route saw it
    data = json.loads(body)
    api = api_of(path.split("?")[0])  # the envelope of the API the path belongs to
    if api == "ollama":
        msg = data["error"]
    else:
        msg = data["error"]["message"]
        assert data["error"]["type"], data
        assert api != "anthropic" or data["type"] == "error", data
    assert isinstance(msg, str) and len(msg) > 5, data


def send(target: Target, method: str, path: str, content: bytes | None, headers: dict[str, str] | None = None) -> None:
    r = target.http.request(method, target.url + path, content=content, headers=headers)
    check(target, method, path, r.status_code, r.headers, r.content)


# ------------------------------------------------------------------------------------------ bodies
MODELS = st.sampled_from(["fake-model", "llama3.2", "fm:7b", "tools", "think", "embed-model", "nope", "", "x-"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=10
)
ROLES = st.sampled_from(["user", "assistant", "system", "tool", "developer", "USER", "", "nobody"]) | values
content = st.one_of(
    st.text(max_size=30),
    values,
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "input_audio", "x"]) | values},
            optional={"text": values, "image_url": values | st.fixed_dictionaries({"url": values})},
        ),
        max_size=3,
    ),
)
tool_call = st.fixed_dictionaries(
    {},
    optional={
        "id": values,
        "type": st.just("function") | values,
        "index": values,
        "function": st.fixed_dictionaries(
            {}, optional={"name": st.text(max_size=8) | values, "arguments": values | st.text(max_size=20)}
        )
        | values,
    },
)
message = st.fixed_dictionaries(
    {"role": ROLES},
    optional={
        "content": content,
        "images": st.lists(st.text(max_size=20) | values, max_size=2) | values,
        "tool_calls": st.lists(tool_call, max_size=2) | values,
        "thinking": values,
        "tool_name": values,
        "tool_call_id": values,
        "name": values,
        "reasoning_content": values,
    },
)
tool = st.fixed_dictionaries(
    {"type": st.just("function") | values},
    optional={
        "function": st.fixed_dictionaries(
            {"name": st.text(max_size=8) | values}, optional={"parameters": values, "description": values}
        )
        | values
    },
)
FIELDS: dict[str, Any] = {
    "messages": st.lists(message, max_size=3) | values,
    "prompt": st.text(max_size=30) | values,
    "input": st.text(max_size=10) | st.lists(st.text(max_size=5)) | values,
    "stream": st.booleans() | values,
    "options": st.dictionaries(
        st.sampled_from(
            [
                "num_ctx",
                "temperature",
                "top_k",
                "top_p",
                "stop",
                "seed",
                "num_predict",
                "min_p",
                "repeat_penalty",
                "mirostat",
                "unknown",
            ]
        ),
        values,
        max_size=4,
    )
    | values,
    "format": st.sampled_from(["json", ""]) | values,
    "tools": st.lists(tool, max_size=2) | values,
    "images": st.lists(st.text(max_size=20), max_size=2) | values,
    "keep_alive": values | st.sampled_from(["5m", "0", "-1", "1h30m", "10", "bogus", "-5s"]),
    "think": values | st.sampled_from(["low", "high", "max"]),
    "raw": values,
    "template": values,
    "system": values,
    "suffix": values,
    "context": values,
    "dimensions": values,
    "truncate": values,
    "max_tokens": values,
    "temperature": values,
    "n": values,
    "stop": values,
    "response_format": values
    | st.fixed_dictionaries(
        {"type": st.sampled_from(["json_object", "json_schema", "text"])}, optional={"json_schema": values}
    ),
    "tool_choice": values,
    "stream_options": values,
    "logprobs": values,
    "top_logprobs": values,
    "seed": values,
    "encoding_format": values,
    "name": values,
    "user": values,
    "max_completion_tokens": values,
    "reasoning_effort": values,
    "insecure": values,
}
bodies = st.fixed_dictionaries({"model": st.one_of(MODELS, MODELS, MODELS, values)}, optional=FIELDS)


def _post_routes(target: Target) -> list[tuple[str, str]]:
    return [(m, p) for m, p in target.routes if m in ("POST", "DELETE")]


@FUZZ
@given(data=st.data(), body=bodies)
def test_wrong_types_at_every_route(target: Target, data: st.DataObject, body: dict[str, Any]) -> None:
    method, path = data.draw(st.sampled_from(_post_routes(target)))
    send(target, method, path, json.dumps(body).encode(), {"Content-Type": "application/json"})


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
    values.map(lambda v: json.dumps(v).encode()),  # valid JSON that is not an object, mostly
    bodies.map(lambda b: json.dumps(b).encode()).flatmap(
        lambda raw: st.integers(0, max(0, len(raw) - 1)).map(lambda i: raw[:i])  # truncated
    ),
    bodies.map(lambda b: json.dumps(b).encode()).flatmap(
        lambda raw: st.binary(min_size=1, max_size=4).map(lambda junk: raw.replace(b'"', b'"' + junk, 1))
    ),
    st.sampled_from(
        [
            b"\xff\xfe{}",
            b'{"model":"fake-model\xc3\x28"}',
            b'{"model":"\xed\xa0\x80"}',
            b"\x00",
            b'{"model":"fake-model","messages":[{"role":"user","content":"\\ud800"}]}',
            b"null",
            b'{"model": "fake-model"}' * 3,
            b"{" * 5000,
            b"[" * 100000,
            b'{"a":' * 2000,
        ]
    ),
)


@FUZZ
@given(data=st.data(), raw=raw_bodies)
def test_malformed_bytes_at_every_route(target: Target, data: st.DataObject, raw: bytes) -> None:
    method, path = data.draw(st.sampled_from(_post_routes(target)))
    ctype = data.draw(st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
    send(target, method, path, raw, {"Content-Type": ctype} if ctype else {})


@settings(FUZZ, max_examples=max(50, FUZZ.max_examples // 3))
@given(
    data=st.data(), depth=st.integers(1, 400), wrap=st.sampled_from(["messages", "options", "format", "tools", "input"])
)
def test_deep_nesting(target: Target, data: st.DataObject, depth: int, wrap: str) -> None:
    method, path = data.draw(st.sampled_from(_post_routes(target)))
    inner = data.draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"type":"object","properties":{"p":', "}}]")]))
    nested = inner[0] * depth + "1" + inner[1] * depth
    raw = f'{{"model":"fake-model","stream":false,"{wrap}":{nested},"prompt":"hi"}}'.encode()
    send(target, method, path, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"fake-model","stream":false,"prompt":"' + b"a" * 3_000_000 + b'"}',
        b'{"model":"fake-model","stream":false,"messages":['
        + b'{"role":"user","content":"x"},' * 40_000
        + b'{"role":"user","content":"x"}]}',
        b'{"model":"fake-model","input":[' + b'"x",' * 200_000 + b'"x"]}',
        b'{"model":"fake-model","prompt":"' + b"\\u00e9" * 200_000 + b'","stream":false}',
        b'{"model":"fake-model","images":["' + b"A" * 5_000_000 + b'"]}',  # over the 4 MiB limit: 413
    ],
)
def test_huge_bodies(target: Target, raw: bytes) -> None:
    for method, path in [
        ("POST", "/api/generate"),
        ("POST", "/api/chat"),
        ("POST", "/api/embed"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
    ]:
        send(target, method, path, raw)


# ----------------------------------------------------------------------------------------- headers
header_value = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
header_name = st.sampled_from(
    [
        b"Content-Type",
        b"Content-Length",
        b"Authorization",
        b"x-api-key",
        b"Origin",
        b"Host",
        b"x-request-id",
        b"Transfer-Encoding",
        b"Accept",
        b"User-Agent",
        b"Access-Control-Request-Method",
        b"Expect",
        b"Content-Encoding",
        b"Connection",
        b"X-\xff\xfe",
        b"",
        b" ",
        b"Bad Name",
        b"\x00",
    ]
)


@FUZZ
@given(
    data=st.data(),
    headers=st.lists(st.tuples(header_name, header_value), max_size=6),
    body=bodies.map(lambda b: json.dumps(b).encode()),
)
def test_broken_headers(target: Target, data: st.DataObject, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    method, path = data.draw(st.sampled_from([*target.routes, ("OPTIONS", "/api/chat"), ("GET", "/api/chat")]))
    status, resp_headers, resp_body = raw_request(target.url, method.encode(), path.encode(), headers, body)
    if status is None:
        return  # the server closed the connection on a request it could not parse: allowed
    check(target, method, path, status, resp_headers, resp_body)


def raw_request(
    url: str, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int | None, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: " + host.encode(), b"Connection: close"]
    names = {n.lower() for n, _ in headers}
    lines += [n + b": " + v for n, v in headers]
    if b"content-length" not in names and b"transfer-encoding" not in names:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    with socket.create_connection((host, int(port)), timeout=10) as s:
        try:
            s.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if not data:
        return None, {}, b""
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *hlines = head.split(b"\r\n")
    status = int(status_line.split()[1])
    hdrs = {}
    for h in hlines:
        k, _, v = h.decode("latin-1").partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if hdrs.get("transfer-encoding") == "chunked":
        rest = _dechunk(rest)
    return status, hdrs, rest


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


@FUZZ
@given(data=st.data(), junk=st.text(max_size=40))
def test_junk_in_paths_and_queries(target: Target, data: st.DataObject, junk: str) -> None:
    method, path = data.draw(st.sampled_from(target.routes))
    quoted = urllib.parse.quote(junk, safe="/:@")
    path = data.draw(
        st.sampled_from(
            [
                path + "?" + urllib.parse.urlencode({"q": junk, junk: "1"}),
                "/v1/models/" + quoted.lstrip("/"),
                "/api/blobs/" + quoted.lstrip("/"),
            ]
        )
    )
    r = target.http.request(method, target.url + path)
    check(target, method, path, r.status_code, r.headers, r.content)


def test_still_alive_after_the_storm(target: Target) -> None:
    r = target.http.post(
        target.url + "/api/chat",
        json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": False},
    )
    assert r.status_code == 200 and r.json()["message"]["content"] == "Hello from the fake!"
    assert not target.errors.records
