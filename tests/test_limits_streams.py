"""Token limits charge every stream, not only those that end with a usage frame, and whole answers the
client did not wait for.

A stream's token counts come from its last frames, and some never have them: an OpenAI client that does
not ask for `stream_options.include_usage` gets none (ollamux relays its request as it came), and a client
that hangs up mid-stream gets no last frame at all. Such a stream used to be charged nothing, so
`tokens_per_minute` was no limit for them. It is now charged an estimate (the frames it was sent, and the
request's size for the prompt) where the backend counted nothing. A non-streamed request the client
gave up on is charged its prompt's estimate (the backend read the prompt before it was cancelled). The log row
keeps only what the backend counted."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .servers import log_row

HI = [{"role": "user", "content": "hi"}]


def _cfg(upstream: str, db: Path) -> dict[str, object]:
    cfg = basic_config(upstream)
    cfg["limits"] = {"tokens_per_minute": 1, "token_burst": 12}  # no refill to speak of within the test
    cfg["request_log"] = {"path": str(db)}
    return cfg


def _leave_while_held(fake: FakeOpenAI, url: str, rid: str, body: bytes, *, read_first: bool) -> None:
    """POST `body` on a raw connection and hang up once the fake holds the request (after reading what came
    first, with `read_first`); the fake lets it go after."""
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"x-request-id: %s\r\nContent-Length: %d\r\n\r\n%s" % (rid.encode(), len(body), body)
            )
            assert fake.held.wait(10)
            if read_first:
                s.recv(65536)
    finally:
        fake.release_held.set()


def test_a_stream_without_usage_is_charged(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    db = tmp_path / "log.sqlite"
    url = start_proxy(_cfg(fake_openai[1], db))
    body = {"model": "fake-model", "messages": HI, "stream": True}  # no include_usage: no usage frame
    statuses = []
    with httpx.Client(timeout=10) as c:
        for i in range(6):
            r = c.post(url + "/v1/chat/completions", json=body, headers={"x-request-id": f"nousage-{i}"})
            statuses.append(r.status_code)
    assert statuses[0] == 200 and 429 in statuses, statuses  # the bucket emptied: streams cost tokens
    row = log_row(db, "nousage-0")
    assert row["completion_tokens"] is None and row["prompt_tokens"] is None  # the log: what was counted


def test_a_stream_the_client_left_is_charged(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    fake = fake_openai[0]
    db = tmp_path / "log.sqlite"
    url = start_proxy(_cfg(fake_openai[1], db))
    prompt = "tell me everything " * 20  # ~95 tokens' worth of prompt, by size
    raw = (
        b'{"model": "x-held", "stream": true, "stream_options": {"include_usage": true}, '
        b'"messages": [{"role": "user", "content": "' + prompt.encode() + b'"}]}'
    )
    _leave_while_held(fake, url, "left-1", raw, read_first=True)  # the first token read; gone before usage
    row = log_row(db, "left-1")
    assert row["abandoned"] == 1 and row["completion_tokens"] is None
    with httpx.Client(timeout=10) as c:
        r = c.post(url + "/v1/chat/completions", json={"model": "fake-model", "messages": HI})
    assert r.status_code == 429, r.text  # the left stream's prompt and tokens emptied the bucket


def test_a_whole_answer_the_client_left_is_charged(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    fake = fake_openai[0]
    db = tmp_path / "log.sqlite"
    url = start_proxy(_cfg(fake_openai[1], db))
    prompt = "tell me everything " * 20  # ~95 tokens' worth of prompt, by size: more than the burst of 12
    raw = b'{"model": "x-held", "messages": [{"role": "user", "content": "' + prompt.encode() + b'"}]}'
    _leave_while_held(fake, url, "left-whole", raw, read_first=False)  # gone before any answer
    row = log_row(db, "left-whole")
    assert row["abandoned"] == 1 and row["prompt_tokens"] is None  # the log: nothing was counted
    with httpx.Client(timeout=10) as c:
        r = c.post(url + "/v1/chat/completions", json={"model": "fake-model", "messages": HI})
    assert r.status_code == 429, r.text  # the prompt it made the backend read emptied the bucket
