"""The relay between the two APIs and the two kinds of backend, over real sockets, against a hostile
upstream (`fakes/hostile_upstream.py`): wrong types mid-stream and in whole answers, HTML where an
answer was due, a backend key echoed back, 100 MB events, and a breaker probe nobody clears.

Directions, where they apply:
  (a) the Ollama API (`/api/chat`, `/api/generate`) on an OpenAI-compatible backend (translated);
  (b) the OpenAI API (`/v1/chat/completions`, `/v1/completions`) on an Ollama backend (translated);
  (c) the OpenAI API on an OpenAI backend (byte pass-through) and the Ollama API on an Ollama backend
      (native pass-through).

Every test asserts behaviour a client or an operator can see: the exact bytes on the wire (a raw socket,
so a second HTTP response written inside a chunked body cannot hide behind a lenient parser), what the
official `ollama` and `openai` clients make of the stream, the request-log row (SQLite) and the operator
log.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from .conftest import ProxyFactory
from .fakes.hostile_upstream import CRASH, HTML, SECRET_HEADER, SECRET_KEY, TOKENS, Hostile
from .servers import LoopThread, log_row

Kind = Literal["openai", "ollama"]
Api = Literal["openai", "ollama"]

HI = [{"role": "user", "content": "hi"}]
OA_HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
GOOD = "".join(TOKENS)  # what the two good tokens before every malformed piece say
MIB = 1024 * 1024
# what must never leave the proxy: the backend's key, its configured header value, and their tails
# (a mask that keeps half the key is no mask)
SECRETS = (SECRET_KEY, SECRET_HEADER, "SECRET-123", "SECRET-456")


# ------------------------------------------------------------------------------------------ the proxy


@dataclass
class Relay:
    """A proxy in front of the hostile upstream, with its request log."""

    url: str
    db: Path

    def row(self, rid: str, timeout: float = 5.0) -> dict[str, Any]:
        """The request log's row for `rid` (the writer flushes it within a second)."""
        return log_row(self.db, rid, timeout)

    def db_bytes(self) -> bytes:
        """Every byte of the request log: the main file, its -wal and its -shm."""
        files = sorted(p for p in self.db.parent.iterdir() if p.name.startswith(self.db.name))
        assert files, "the request log was not written"
        return b"".join(p.read_bytes() for p in files)


RelayFactory = Callable[..., Relay]


def relay_config(kind: Kind, fake_url: str, db: Path, **backend: Any) -> dict[str, Any]:
    """One backend 'up' of `kind` on the fake (with a key and a secret header), serving every model name."""
    url = f"{fake_url}/v1" if kind == "openai" else fake_url
    return {
        "backends": {
            "up": {
                "type": kind,
                "url": url,
                "retries": 0,
                "api_key": SECRET_KEY,
                "headers": {"X-Org-Token": SECRET_HEADER},
                **backend,
            }
        },
        "models": {"*": {"backend": "up"}},
        "request_log": {"path": str(db), "capture_bodies": True},
        "metrics": {"backend_probe_interval": 0},
    }


@pytest.fixture(scope="module")
def hostile(loop_thread: LoopThread) -> Iterator[str]:
    runner, url = loop_thread.start_app(Hostile().app())
    yield url
    loop_thread.stop_app(runner)


@pytest.fixture
def relay(start_proxy: ProxyFactory, hostile: str, tmp_path: Path) -> RelayFactory:
    made: list[Relay] = []

    def start(kind: Kind, *, fake_url: str | None = None, **backend: Any) -> Relay:
        db = tmp_path / f"requests-{len(made)}.sqlite"
        r = Relay(start_proxy(relay_config(kind, fake_url or hostile, db, **backend)), db)
        made.append(r)
        return r

    return start


# ---------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Call:
    """A client route, and how to ask it."""

    path: str
    raw: bool = False  # /api/generate with raw: true goes to the backend's /completions

    @property
    def api(self) -> Api:
        return "openai" if self.path.startswith("/v1/") else "ollama"

    @property
    def chat(self) -> bool:
        return self.path in ("/api/chat", "/v1/chat/completions")

    def body(self, model: str, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model}
        if self.path in ("/api/embed", "/v1/embeddings"):
            body["input"] = "hi"
            return body
        body["stream"] = stream
        if self.chat:
            body["messages"] = HI
        else:
            body["prompt"] = "hi"
        if self.raw:
            body["raw"] = True
        return body


API_CHAT = Call("/api/chat")
API_GENERATE = Call("/api/generate")
API_RAW = Call("/api/generate", raw=True)
API_EMBED = Call("/api/embed")
V1_CHAT = Call("/v1/chat/completions")
V1_COMPLETIONS = Call("/v1/completions")
V1_EMBEDDINGS = Call("/v1/embeddings")

_rids = iter(range(1, 1_000_000))


def new_rid(what: str) -> str:
    return f"relay-{what}-{next(_rids)}"


@dataclass
class RawAnswer:
    """An HTTP answer exactly as it came off the socket."""

    status: int
    headers: dict[str, str]  # names lower-cased
    head: bytes  # the status line and the header block
    body: bytes  # every byte after the header block, chunk framing included

    @property
    def payload(self) -> bytes:
        """The body without its transfer framing; a malformed chunked body fails the test."""
        if "chunked" in self.headers.get("transfer-encoding", ""):
            return dechunk(self.body)
        if "content-length" in self.headers:
            n = int(self.headers["content-length"])
            assert len(self.body) == n, f"Content-Length {n} but {len(self.body)} bytes followed: {self.body[:300]!r}"
        return self.body


def raw_post(base: str, path: str, body: dict[str, Any], rid: str, timeout: float = 30) -> RawAnswer:
    """POST over a plain socket and read to EOF (`Connection: close`): every byte the proxy wrote."""
    u = urlsplit(base)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    data = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nx-request-id: {rid}\r\nConnection: close\r\n\r\n"
    ).encode() + data
    parts: list[bytes] = []
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        while chunk := s.recv(1 << 16):
            parts.append(chunk)
    raw = b"".join(parts)
    end = raw.find(b"\r\n\r\n")
    assert end > 0, f"no header block in {raw[:300]!r}"
    head, rest = raw[:end], raw[end + 4 :]
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.[01] (\d{3})(?: .*)?", status_line)
    assert m, f"bad status line {status_line!r}"
    headers: dict[str, str] = {}
    for h in header_lines:
        name, _, value = h.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawAnswer(int(m[1]), headers, head, rest)


def dechunk(body: bytes) -> bytes:
    """A chunked body's payload, strictly: hex size lines, CRLFs where they belong, a last chunk, nothing after."""
    out = bytearray()
    i = 0
    while True:
        j = body.find(b"\r\n", i)
        assert j >= 0, f"chunked body cut off at byte {i}: {body[i : i + 200]!r}"
        size = body[i:j].split(b";")[0].strip()
        assert re.fullmatch(rb"[0-9a-fA-F]+", size), f"not a chunk size line at byte {i}: {body[i : i + 200]!r}"
        n = int(size, 16)
        start = j + 2
        if n == 0:
            assert body[start:] == b"\r\n", f"bytes after the last chunk: {body[start : start + 200]!r}"
            return bytes(out)
        assert body[start + n : start + n + 2] == b"\r\n", f"chunk at byte {i} not followed by CRLF"
        out += body[start : start + n]
        i = start + n + 2


# ------------------------------------------------------------------------------------ stream formats


def ndjson_lines(payload: bytes) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in payload.split(b"\n") if x.strip()]
    assert all(isinstance(x, dict) for x in lines), lines
    return lines


def sse_events(payload: bytes) -> list[Any]:
    """Each SSE event's data, JSON-decoded ("[DONE]" kept as the string)."""
    out: list[Any] = []
    for event in payload.split(b"\n\n"):
        if not event.strip():
            continue
        datas = [x[5:].lstrip(b" ") for x in event.split(b"\n") if x.startswith(b"data:")]
        assert datas, f"an SSE event without data: {event[:200]!r}"
        data = b"\n".join(datas)
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def ollama_text(lines: list[dict[str, Any]]) -> str:
    """What the model said in an Ollama stream (every piece must be a string)."""
    pieces: list[Any] = []
    for x in lines:
        if "error" in x:
            continue
        if "message" in x:
            assert isinstance(x["message"], dict), x
            pieces.append(x["message"].get("content", ""))
        else:
            pieces.append(x.get("response", ""))
    assert all(isinstance(p, str) for p in pieces), f"a non-string piece reached the client: {pieces}"
    return "".join(pieces)


def openai_text(events: list[Any]) -> str:
    pieces: list[Any] = []
    for e in events:
        if not isinstance(e, dict) or "error" in e:
            continue
        for ch in e["choices"]:
            if "delta" in ch:
                assert isinstance(ch["delta"], dict), f"a malformed delta reached the client: {e}"
                pieces.append(ch["delta"].get("content") or "")
            else:
                pieces.append(ch.get("text") or "")
    assert all(isinstance(p, str) for p in pieces), f"a non-string piece reached the client: {pieces}"
    return "".join(pieces)


def ollama_final_error(lines: list[dict[str, Any]]) -> str:
    """The one error line that ends an Ollama stream (no done line anywhere); its message."""
    errors = [i for i, x in enumerate(lines) if "error" in x]
    assert errors == [len(lines) - 1], f"want exactly one error line, the last; got lines {lines[-4:]}"
    assert not any(x.get("done") is True for x in lines), f"a done line in a failed stream: {lines[-4:]}"
    msg = lines[-1]["error"]
    assert isinstance(msg, str) and msg, lines[-1]
    assert "internal error" not in msg, msg
    return msg


def openai_final_error(events: list[Any]) -> str:
    """The one error frame that ends an OpenAI stream; its message."""
    errors = [i for i, e in enumerate(events) if isinstance(e, dict) and "error" in e]
    assert errors == [len(events) - 1], f"want exactly one error frame, the last; got frames {events[-4:]}"
    err = events[-1]["error"]
    assert isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"], events[-1]
    assert "internal error" not in err["message"], err
    return str(err["message"])


def envelope_message(payload: bytes, api: Api) -> str:
    """The message of an error answer, which must be in the client's envelope."""
    obj = json.loads(payload)
    assert isinstance(obj, dict) and "error" in obj, obj
    if api == "ollama":
        assert isinstance(obj["error"], str) and obj["error"], obj
        return obj["error"]
    err = obj["error"]
    assert isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"], obj
    return str(err["message"])


def ollama_client_stream(url: str, call: Call, model: str) -> tuple[str, ollama.ResponseError | None]:
    """The official ollama client reading the stream: the text it got, and the error it raised."""
    text: list[str] = []
    with ollama.Client(host=url, timeout=30) as c:
        try:
            if call.chat:
                for part in c.chat(model=model, messages=HI, stream=True):
                    text.append(part.message.content or "")
            else:
                for gpart in c.generate(model=model, prompt="hi", stream=True, raw=call.raw or None):
                    text.append(gpart.response or "")
        except ollama.ResponseError as exc:
            return "".join(text), exc
    return "".join(text), None


def openai_client_stream(url: str, call: Call, model: str) -> tuple[str, openai.APIError | None]:
    """The official openai client reading the stream: the text it got, and the error it raised."""
    text: list[str] = []
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
        try:
            if call.chat:
                for chunk in c.chat.completions.create(model=model, messages=OA_HI, stream=True):
                    text.extend(ch.delta.content or "" for ch in chunk.choices)
            else:
                for cchunk in c.completions.create(model=model, prompt="hi", stream=True):
                    text.extend(ch.text or "" for ch in cchunk.choices)
        except openai.APIError as exc:
            return "".join(text), exc
    return "".join(text), None


# ======================================================================= 1. wrong types mid-stream

STREAM_WRONG_TYPES = [
    pytest.param("openai", API_CHAT, "choices-int", id="a-api-chat-choices-int"),
    pytest.param("openai", API_CHAT, "delta-str", id="a-api-chat-delta-str"),
    pytest.param("openai", API_CHAT, "content-int", id="a-api-chat-content-int"),
    pytest.param("openai", API_CHAT, "choice-str", id="a-api-chat-choice-str"),
    pytest.param("openai", API_GENERATE, "choices-int", id="a-api-generate-choices-int"),
    pytest.param("openai", API_GENERATE, "delta-str", id="a-api-generate-delta-str"),
    pytest.param("openai", API_RAW, "choices-int", id="a-api-generate-raw-choices-int"),
    pytest.param("openai", API_RAW, "text-int", id="a-api-generate-raw-text-int"),
    pytest.param("ollama", V1_CHAT, "content-int", id="b-v1-chat-content-int"),
    pytest.param("ollama", V1_CHAT, "message-str", id="b-v1-chat-message-str"),
    pytest.param("ollama", V1_COMPLETIONS, "response-int", id="b-v1-completions-response-int"),
]


@pytest.mark.parametrize(("kind", "call", "model"), STREAM_WRONG_TYPES)
def test_wrong_types_mid_stream_end_in_one_error_in_the_clients_format(
    relay: RelayFactory, kind: Kind, call: Call, model: str
) -> None:
    p = relay(kind)
    rid = new_rid("midstream-type")
    ans = raw_post(p.url, call.path, call.body(model, stream=True), rid)
    assert ans.status == 200  # the stream had started
    # one response per request: no second status line written inside the body
    assert b"HTTP/1.1" not in ans.body, f"a second HTTP response inside the body: {ans.body[-400:]!r}"
    payload = ans.payload  # well-formed chunked framing, to the last chunk
    if call.api == "ollama":
        lines = ndjson_lines(payload)
        assert ollama_text(lines) == GOOD  # the tokens before the bad event, and nothing of it
        ollama_final_error(lines)
        text, err = ollama_client_stream(p.url, call, model)
        assert text == GOOD and isinstance(err, ollama.ResponseError), (text, err)
    else:
        events = sse_events(payload)
        assert openai_text(events) == GOOD
        openai_final_error(events)
        text, oerr = openai_client_stream(p.url, call, model)
        assert text == GOOD and isinstance(oerr, openai.APIError), (text, oerr)
    row = p.row(rid)
    assert row["streamed"] == 1 and row["status"] == 502, row
    assert row["error"] and "internal error" not in row["error"], row["error"]


@pytest.mark.parametrize(
    ("kind", "call"),
    [
        pytest.param("openai", API_CHAT, id="a-api-chat"),
        pytest.param("openai", API_RAW, id="a-api-generate-raw"),
        pytest.param("ollama", V1_CHAT, id="b-v1-chat"),
        pytest.param("ollama", V1_COMPLETIONS, id="b-v1-completions"),
    ],
)
def test_upstream_error_mid_stream_keeps_the_tokens_before_it(relay: RelayFactory, kind: Kind, call: Call) -> None:
    # the fake writes two tokens and the error event back to back: they usually arrive in one read, and
    # the tokens translated from that read must still go out before the error
    p = relay(kind)
    rid = new_rid("midstream-error")
    ans = raw_post(p.url, call.path, call.body("error-midstream", stream=True), rid)
    assert ans.status == 200
    assert b"HTTP/1.1" not in ans.body
    if call.api == "ollama":
        lines = ndjson_lines(ans.payload)
        assert ollama_text(lines) == GOOD, lines
        assert CRASH in ollama_final_error(lines)
    else:
        events = sse_events(ans.payload)
        assert openai_text(events) == GOOD, events
        assert CRASH in openai_final_error(events)
    row = p.row(rid)
    assert row["streamed"] == 1 and row["status"] >= 500 and CRASH in row["error"], row


# ================================================================== 2. 200 text/html where JSON was due

HTML_CASES = [
    pytest.param("openai", API_CHAT, True, id="a-api-chat-stream"),
    pytest.param("openai", API_CHAT, False, id="a-api-chat"),
    pytest.param("openai", API_GENERATE, True, id="a-api-generate-stream"),
    pytest.param("openai", API_GENERATE, False, id="a-api-generate"),
    pytest.param("openai", API_RAW, True, id="a-api-generate-raw-stream"),
    pytest.param("ollama", V1_CHAT, True, id="b-v1-chat-stream"),
    pytest.param("ollama", V1_CHAT, False, id="b-v1-chat"),
    pytest.param("ollama", V1_COMPLETIONS, True, id="b-v1-completions-stream"),
    pytest.param("ollama", V1_COMPLETIONS, False, id="b-v1-completions"),
]


@pytest.mark.parametrize(("kind", "call", "stream"), HTML_CASES)
def test_html_200_from_the_backend_is_a_502_before_any_byte(
    relay: RelayFactory, kind: Kind, call: Call, stream: bool
) -> None:
    p = relay(kind)
    rid = new_rid("html")
    ans = raw_post(p.url, call.path, call.body("html", stream=stream), rid)
    assert ans.status == 502, f"HTTP {ans.status}: {ans.payload[:400]!r}"  # never a fake success
    assert ans.headers.get("content-type", "").startswith("application/json"), ans.headers
    msg = envelope_message(ans.payload, call.api)
    assert "text/html" in msg, f"the message does not say what came back: {msg!r}"
    row = p.row(rid)
    assert row["status"] == 502 and "text/html" in row["error"], row
    # and the official clients see a 502, not an empty answer
    if call.api == "ollama":
        with ollama.Client(host=p.url, timeout=30) as c, pytest.raises(ollama.ResponseError) as e:
            if call.chat and stream:
                list(c.chat(model="html", messages=HI, stream=True))
            elif call.chat:
                c.chat(model="html", messages=HI)
            elif stream:
                list(c.generate(model="html", prompt="hi", stream=True, raw=call.raw or None))
            else:
                c.generate(model="html", prompt="hi")
        assert e.value.status_code == 502
    else:
        with (
            openai.OpenAI(base_url=p.url + "/v1", api_key="unused", max_retries=0, timeout=30) as oc,
            pytest.raises(openai.APIStatusError) as oe,
        ):
            if call.chat and stream:
                list(oc.chat.completions.create(model="html", messages=OA_HI, stream=True))
            elif call.chat:
                oc.chat.completions.create(model="html", messages=OA_HI)
            elif stream:
                list(oc.completions.create(model="html", prompt="hi", stream=True))
            else:
                oc.completions.create(model="html", prompt="hi")
        assert oe.value.status_code == 502


def test_html_200_through_the_byte_pass_through_is_relayed_as_is(relay: RelayFactory) -> None:
    # (c) pass-through does not judge an answer: what the backend said is what the client gets
    p = relay("openai")
    ans = raw_post(p.url, V1_CHAT.path, V1_CHAT.body("html", stream=True), new_rid("html-pass"))
    assert ans.status == 200 and ans.headers["content-type"].startswith("text/html")
    assert ans.payload.decode() == HTML


# ============================================================ 3. wrong types in a non-streamed answer

WHOLE_WRONG_TYPES = [
    pytest.param("openai", API_CHAT, "message-str", id="a-api-chat-message-str"),
    pytest.param("openai", API_CHAT, "choices-int", id="a-api-chat-choices-int"),
    pytest.param("openai", API_CHAT, "choice-str", id="a-api-chat-choice-str"),
    pytest.param("openai", API_CHAT, "usage-str", id="a-api-chat-usage-str"),
    pytest.param("openai", API_CHAT, "content-int", id="a-api-chat-content-int"),
    pytest.param("openai", API_GENERATE, "message-str", id="a-api-generate-message-str"),
    pytest.param("openai", API_GENERATE, "choices-int", id="a-api-generate-choices-int"),
    pytest.param("openai", API_RAW, "text-int", id="a-api-generate-raw-text-int"),
    pytest.param("openai", API_RAW, "usage-str", id="a-api-generate-raw-usage-str"),
    pytest.param("openai", API_EMBED, "data-int", id="a-api-embed-data-int"),
    pytest.param("openai", API_EMBED, "usage-str", id="a-api-embed-usage-str"),
    pytest.param("ollama", V1_CHAT, "message-str", id="b-v1-chat-message-str"),
    pytest.param("ollama", V1_CHAT, "content-int", id="b-v1-chat-content-int"),
    pytest.param("ollama", V1_CHAT, "usage-str", id="b-v1-chat-counts-str"),
    pytest.param("ollama", V1_COMPLETIONS, "response-int", id="b-v1-completions-response-int"),
    pytest.param("ollama", V1_COMPLETIONS, "usage-str", id="b-v1-completions-counts-str"),
    pytest.param("ollama", V1_EMBEDDINGS, "data-int", id="b-v1-embeddings-embeddings-int"),
    pytest.param("ollama", V1_EMBEDDINGS, "usage-str", id="b-v1-embeddings-counts-str"),
]


@pytest.mark.parametrize(("kind", "call", "model"), WHOLE_WRONG_TYPES)
def test_wrong_types_in_a_whole_translated_answer_are_502(
    relay: RelayFactory, kind: Kind, call: Call, model: str
) -> None:
    p = relay(kind)
    rid = new_rid("whole-type")
    ans = raw_post(p.url, call.path, call.body(model, stream=False), rid)
    assert ans.status == 502, f"HTTP {ans.status}: {ans.payload[:400]!r}"
    msg = envelope_message(ans.payload, call.api)
    assert "internal error" not in msg, msg
    row = p.row(rid)
    assert row["status"] == 502 and row["error"] and "internal error" not in row["error"], row


# ===================================================================== 4. a key echoed by the upstream

SECRET_CASES = [
    # (a) translated, Ollama API on an OpenAI backend
    pytest.param("openai", API_CHAT, "secret-openai", False, id="a-api-chat-openai-envelope"),
    pytest.param("openai", API_CHAT, "secret-text", True, id="a-api-chat-stream-text"),
    pytest.param("openai", API_GENERATE, "secret-ollama", False, id="a-api-generate-ollama-envelope"),
    pytest.param("openai", API_CHAT, "secret-midstream", True, id="a-api-chat-midstream"),
    pytest.param("openai", API_RAW, "secret-midstream", True, id="a-api-generate-raw-midstream"),
    # (b) translated, OpenAI API on an Ollama backend
    pytest.param("ollama", V1_CHAT, "secret-ollama", False, id="b-v1-chat-ollama-envelope"),
    pytest.param("ollama", V1_CHAT, "secret-text", True, id="b-v1-chat-stream-text"),
    pytest.param("ollama", V1_COMPLETIONS, "secret-openai", False, id="b-v1-completions-openai-envelope"),
    pytest.param("ollama", V1_CHAT, "secret-midstream", True, id="b-v1-chat-midstream"),
    pytest.param("ollama", V1_COMPLETIONS, "secret-midstream", True, id="b-v1-completions-midstream"),
    # (c) byte pass-through, OpenAI API on an OpenAI backend
    pytest.param("openai", V1_CHAT, "secret-openai", False, id="c-v1-chat-openai-envelope"),
    pytest.param("openai", V1_CHAT, "secret-text", True, id="c-v1-chat-stream-text"),
    pytest.param("openai", V1_COMPLETIONS, "secret-ollama", False, id="c-v1-completions-ollama-envelope"),
    pytest.param("openai", V1_CHAT, "secret-midstream", True, id="c-v1-chat-midstream"),
    # (c) native pass-through, Ollama API on an Ollama backend
    pytest.param("ollama", API_CHAT, "secret-ollama", False, id="c-api-chat-ollama-envelope"),
    pytest.param("ollama", API_CHAT, "secret-text", True, id="c-api-chat-stream-text"),
    pytest.param("ollama", API_GENERATE, "secret-openai", False, id="c-api-generate-openai-envelope"),
    pytest.param("ollama", API_CHAT, "secret-midstream", True, id="c-api-chat-midstream"),
]


@pytest.mark.parametrize(("kind", "call", "model", "stream"), SECRET_CASES)
def test_a_backend_key_echoed_by_the_upstream_is_masked_everywhere(
    relay: RelayFactory, caplog: pytest.LogCaptureFixture, kind: Kind, call: Call, model: str, stream: bool
) -> None:
    caplog.set_level(logging.DEBUG)  # every operator line, whatever its level
    p = relay(kind)
    rid = new_rid("secret")
    ans = raw_post(p.url, call.path, call.body(model, stream=stream), rid)
    payload = ans.payload
    if model == "secret-midstream":
        assert ans.status == 200
        if call.api == "ollama":
            found = [x["error"] for x in ndjson_lines(payload) if "error" in x]
        else:
            found = [e["error"]["message"] for e in sse_events(payload) if isinstance(e, dict) and "error" in e]
        assert len(found) == 1, payload[-600:]
        msg = str(found[0])
    else:
        assert ans.status == 401, f"HTTP {ans.status}: {payload[:400]!r}"  # the upstream's own status
        msg = envelope_message(payload, call.api)
    assert "invalid key" in msg, msg  # the client still learns what went wrong
    row = p.row(rid)  # the row is written: everything the proxy keeps about this request is on disk
    passthrough = kind == call.api  # (c): the relay does not read the events, so it need not log this one
    if not (passthrough and model == "secret-midstream"):
        assert row["error"] and "invalid key" in row["error"], row
    assert_no_secret_kept(p, ans, caplog)


def assert_no_secret_kept(p: Relay, ans: RawAnswer, caplog: pytest.LogCaptureFixture) -> None:
    """No backend secret in what the client got, the request log's files or the operator log."""
    places = {
        "the response head": ans.head,
        "the response body": ans.body,
        "the request log": p.db_bytes(),
        "the operator log": caplog.text.encode(),
    }
    leaks = [f"{s!r} in {where}" for s in SECRETS for where, data in places.items() if s.encode() in data]
    assert not leaks, "; ".join(leaks)


# ====================================================================== 5. a 100 MB event, streamed

HUGE = 100 * MIB


class HealthPoller(threading.Thread):
    """GET /health every 20 ms on one keep-alive connection; the latency of each answer."""

    def __init__(self, url: str) -> None:
        super().__init__(name="health-poller", daemon=True)
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            while not self.done.is_set():
                t0 = time.perf_counter()
                conn.request("GET", "/health")
                r = conn.getresponse()
                r.read()
                self.latencies.append(time.perf_counter() - t0)
                if r.status != 200:
                    raise AssertionError(f"/health answered {r.status}")
                self.done.wait(0.02)
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()

    def stop(self) -> None:
        self.done.set()
        self.join(15)


@pytest.fixture(scope="module")
def far_hostile() -> Iterator[str]:
    """The hostile upstream on an event loop of its own, so writing 100 MB never delays the proxy's loop:
    /health latency then measures the proxy alone."""
    lt = LoopThread()
    runner, url = lt.start_app(Hostile().app())
    yield url
    lt.stop_app(runner)
    lt.close()


def stream_with_health_polled(
    url: str, call: Call, model: str, rid: str, deadline_s: float = 20
) -> tuple[int, bytes, HealthPoller]:
    """Stream an answer (kept as bytes, parsed only afterwards: the test's own CPU must not hold the GIL
    while latency is measured) while /health is polled."""
    poller = HealthPoller(url)
    poller.start()
    chunks: list[bytes] = []
    got = 0
    t0 = time.monotonic()
    try:
        with (
            httpx.Client(timeout=deadline_s) as c,
            c.stream("POST", url + call.path, json=call.body(model, stream=True), headers={"x-request-id": rid}) as r,
        ):
            status = r.status_code
            for b in r.iter_raw():
                chunks.append(b)
                got += len(b)
                if time.monotonic() - t0 > deadline_s:
                    raise AssertionError(f"the stream took over {deadline_s}s ({got / MIB:.0f} MiB arrived)")
    except httpx.ReadTimeout:
        raise AssertionError(f"nothing arrived for {deadline_s}s ({got / MIB:.0f} MiB had)") from None
    finally:
        poller.stop()
    return status, b"".join(chunks), poller


def assert_responsive(poller: HealthPoller) -> None:
    assert poller.error is None, f"/health failed while the event was relayed: {poller.error!r}"
    assert len(poller.latencies) >= 3, poller.latencies
    worst = max(poller.latencies)
    # The property is "/health answers within 100 ms while a huge event is processed". In this process the
    # fake, the client and the poller share the GIL with the proxy, and orjson holds the GIL for its one
    # ~0.2 s parse of the 100 MB event; on a quiet machine the worst poll is 0.2-0.4 s (bench/README.md),
    # on a busy one (CI beside other jobs) over 1 s was seen. 2.5 s still catches a loop stalled for the
    # whole event by quadratic decoding (6-40 s before the linear decoders).
    assert worst < 2.5, f"/health took up to {worst * 1000:.0f} ms ({len(poller.latencies)} polls)"


def test_a_100mb_sse_event_reaches_an_ollama_client_whole_and_health_stays_responsive(
    start_proxy: ProxyFactory, far_hostile: str, tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    p = Relay(start_proxy(relay_config("openai", far_hostile, db)), db)  # the default max_event_bytes
    rid = new_rid("huge-sse")
    status, payload, poller = stream_with_health_polled(p.url, API_CHAT, f"huge-event-{HUGE}", rid)
    assert status == 200
    assert_responsive(poller)
    lines = ndjson_lines(payload)
    assert "error" not in lines[-1] and lines[-1]["done"] is True, lines[-1]
    text = ollama_text(lines)
    assert len(text) == len(GOOD) + HUGE and text == GOOD + "x" * HUGE
    row = p.row(rid)
    assert row["status"] == 200 and row["streamed"] == 1, row


def test_a_100mb_ndjson_line_reaches_an_openai_client_whole_and_health_stays_responsive(
    start_proxy: ProxyFactory, far_hostile: str, tmp_path: Path
) -> None:
    db = tmp_path / "r.sqlite"
    p = Relay(start_proxy(relay_config("ollama", far_hostile, db)), db)
    rid = new_rid("huge-ndjson")
    status, payload, poller = stream_with_health_polled(p.url, V1_CHAT, f"huge-event-{HUGE}", rid)
    assert status == 200
    assert_responsive(poller)
    events = sse_events(payload)
    assert events[-1] == "[DONE]", events[-2:]
    text = openai_text(events)
    assert len(text) == len(GOOD) + HUGE and text == GOOD + "x" * HUGE
    row = p.row(rid)
    assert row["status"] == 200 and row["streamed"] == 1, row


# ================================================== 6. token counts that are not counts a log column holds

ODD_COUNT_CASES = [
    pytest.param(
        kind,
        call,
        stream,
        id=f"{kind}-{call.path.strip('/').replace('/', '-')}{'-raw' if call.raw else ''}{'-stream' if stream else ''}",
    )
    for kind, calls in (
        ("openai", (API_CHAT, API_GENERATE, API_RAW, API_EMBED, V1_CHAT, V1_COMPLETIONS, V1_EMBEDDINGS)),
        ("ollama", (API_CHAT, API_GENERATE, API_EMBED, V1_CHAT, V1_COMPLETIONS, V1_EMBEDDINGS)),
    )
    for call in calls
    for stream in ((False,) if "embed" in call.path else (False, True))
]


@pytest.mark.parametrize(("kind", "call", "stream"), ODD_COUNT_CASES)
def test_token_counts_no_log_column_holds_are_left_out_of_the_record(
    relay: RelayFactory, caplog: pytest.LogCaptureFixture, kind: Kind, call: Call, stream: bool
) -> None:
    # a count sent as a string, one past 2**64, 2**63: the answer is fine, so the client gets it; the
    # record (which the log, the metrics' sums and the token limits read as integers) keeps no count
    caplog.set_level(logging.WARNING)
    p = relay(kind)
    rid = new_rid("odd-counts")
    ans = raw_post(p.url, call.path, call.body("odd-counts", stream=stream), rid)
    assert ans.status == 200, f"HTTP {ans.status}: {ans.payload[:400]!r}"
    if "embed" not in call.path:
        assert b"Hel" in ans.payload and b"lo" in ans.payload, ans.payload[:400]
    assert_no_count_kept(p, rid, caplog)


def assert_no_count_kept(p: Relay, rid: str, caplog: pytest.LogCaptureFixture) -> None:
    """The request of `rid` (an `odd-counts` answer) logged as a success with no count, no observer failed
    on it, and the metrics still scrape."""
    row = p.row(rid)
    assert row["status"] == 200 and row["error"] is None, row
    # none kept: None, or 0 where a translated answer must carry a count and the backend gave none usable
    assert row["prompt_tokens"] in (None, 0) and row["completion_tokens"] in (None, 0), row
    assert "observer failed" not in caplog.text, caplog.text[-2000:]
    with httpx.Client(base_url=p.url, timeout=10) as c:
        metrics = c.get("/metrics")
    assert metrics.status_code == 200 and "ollamux_requests_total" in metrics.text


# =================================================================== 7. a half-open probe left stuck


def test_show_after_the_cooldown_does_not_leave_the_breaker_half_open_for_good(
    loop_thread: LoopThread, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    fake = Hostile()  # its own instance: this test switches it from failing to healthy
    runner, fake_url = loop_thread.start_app(fake.app())
    try:
        cooldown = 0.3
        url = start_proxy(
            relay_config("openai", fake_url, tmp_path / "r.sqlite", breaker={"failures": 2, "cooldown": cooldown})
        )
        body = {"model": "flaky", "messages": HI, "stream": False}
        with httpx.Client(base_url=url, timeout=10) as c:
            assert [c.post("/api/chat", json=body).status_code for _ in range(2)] == [500, 500]
            r = c.post("/api/chat", json=body)
            assert r.status_code == 503 and "circuit breaker open" in r.json()["error"]  # open now
            time.sleep(cooldown + 0.1)  # half-open: the next request may probe
            show = c.post("/api/show", json={"model": "flaky"})  # asks llama-server's /props on the way
            assert show.status_code == 200, show.text
            fake.flaky_healthy = True
            answers: list[tuple[int, str]] = []
            for _ in range(2):
                r = c.post("/api/chat", json=body)
                answers.append((r.status_code, r.text[:200]))
                time.sleep(cooldown + 0.1)
        # the backend is healthy again: the next request is the probe and closes the breaker
        assert [s for s, _ in answers] == [200, 200], answers
    finally:
        loop_thread.stop_app(runner)
