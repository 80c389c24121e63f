"""The hostile relay matrix of test_relay.py, for the two newer fronts: OpenAI's Responses API and
Anthropic's Messages API, on both kinds of backend (an OpenAI-compatible one through the chat pivot, an
Ollama one through the pivot after its NDJSON is read), against the same hostile upstream.

Each asserts what the client and the operator see, as test_relay.py does: the exact bytes (one response,
well-formed chunks), the text that came before a failure, exactly one final error in the front's own
format (Anthropic's `event: error`; the Responses API's `response.failed` then `error`), what the
official `openai` and `anthropic` SDKs make of it, the request-log row, and no backend secret anywhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import anthropic
import openai
import pytest

from .fakes.hostile_upstream import CRASH
from .test_relay import (  # noqa: F401  (the fixtures are used by name)
    GOOD,
    Kind,
    RelayFactory,
    assert_no_count_kept,
    assert_no_secret_kept,
    hostile,
    new_rid,
    raw_post,
    relay,
)

Front = Literal["responses", "messages"]


@dataclass(frozen=True)
class FrontCall:
    front: Front

    @property
    def path(self) -> str:
        return "/v1/responses" if self.front == "responses" else "/v1/messages"

    def body(self, model: str, *, stream: bool) -> dict[str, Any]:
        if self.front == "responses":
            return {"model": model, "input": "hi", "stream": stream}
        return {"model": model, "max_tokens": 16, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


RESPONSES = FrontCall("responses")
MESSAGES = FrontCall("messages")


def named_events(payload: bytes) -> list[tuple[str | None, Any]]:
    """Each SSE event as (its `event:` name, its data JSON-decoded); comments skipped."""
    out: list[tuple[str | None, Any]] = []
    for block in payload.split(b"\n\n"):
        lines = [x for x in block.split(b"\n") if x and not x.startswith(b":")]
        if not lines:
            continue
        names = [x[6:].strip().decode() for x in lines if x.startswith(b"event:")]
        datas = [x[5:].lstrip(b" ") for x in lines if x.startswith(b"data:")]
        assert datas, f"an SSE event without data: {block[:200]!r}"
        out.append((names[-1] if names else None, json.loads(b"\n".join(datas))))
    return out


def text_of(call: FrontCall, events: list[tuple[str | None, Any]]) -> str:
    """What the model said, as the front streams it (every piece a string)."""
    pieces: list[Any] = []
    for name, data in events:
        if call.front == "responses" and name == "response.output_text.delta":
            pieces.append(data["delta"])
        elif call.front == "messages" and name == "content_block_delta" and data["delta"]["type"] == "text_delta":
            pieces.append(data["delta"]["text"])
    assert all(isinstance(p, str) for p in pieces), f"a non-string piece reached the client: {pieces}"
    return "".join(pieces)


def final_error(call: FrontCall, events: list[tuple[str | None, Any]]) -> str:
    """The one error event that ends the stream, in the front's format; its message."""
    names = [name for name, _ in events]
    assert names.count("error") == 1 and names[-1] == "error", f"want one error event, the last: {names[-4:]}"
    data = events[-1][1]
    if call.front == "messages":
        assert "message_stop" not in names, names  # a failed message never says it ended well
        assert data["type"] == "error" and isinstance(data["error"], dict), data
        msg = data["error"]["message"]
    else:
        assert names[-2] == "response.failed", names[-4:]  # what lifecycle-following clients read
        assert "response.completed" not in names, names
        assert data["type"] == "error" and data["code"], data
        msg = data["message"]
    assert isinstance(msg, str) and msg and "internal error" not in msg, data
    return msg


def envelope_message(call: FrontCall, payload: bytes) -> str:
    obj = json.loads(payload)
    if call.front == "messages":
        assert obj["type"] == "error" and isinstance(obj["error"]["type"], str), obj
    err = obj["error"]
    assert isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"], obj
    return str(err["message"])


def sdk_stream(url: str, call: FrontCall, model: str) -> tuple[str, Exception | None]:
    """The official SDK reading the stream: the text it got, and the error it raised."""
    text: list[str] = []
    try:
        if call.front == "responses":
            with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as oc:
                for event in oc.responses.create(model=model, input="hi", stream=True):
                    if event.type == "response.output_text.delta":
                        text.append(event.delta)
        else:
            with anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=30) as ac:
                messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]
                with ac.messages.stream(model=model, max_tokens=16, messages=messages) as s:
                    text.extend(s.text_stream)
    except (openai.APIError, anthropic.APIError) as exc:
        return "".join(text), exc
    return "".join(text), None


def sdk_whole(url: str, call: FrontCall, model: str) -> None:
    if call.front == "responses":
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as oc:
            oc.responses.create(model=model, input="hi")
    else:
        with anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=30) as ac:
            ac.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}])


FRONTS = [pytest.param(RESPONSES, id="responses"), pytest.param(MESSAGES, id="messages")]


def _cases(models: dict[Kind, list[str]]) -> list[Any]:
    return [
        pytest.param(kind, call, model, id=f"{call.front}-{kind}-{model}")
        for call in (RESPONSES, MESSAGES)
        for kind, names in models.items()
        for model in names
    ]


# ======================================================================= 1. wrong types mid-stream


@pytest.mark.parametrize(
    ("kind", "call", "model"),
    _cases(
        {
            "openai": ["choices-int", "delta-str", "content-int", "choice-str", "error-midstream"],
            "ollama": ["content-int", "message-str", "error-midstream"],
        }
    ),
)
def test_a_failure_mid_stream_keeps_the_tokens_before_it_and_ends_in_one_error_event(
    relay: RelayFactory,  # noqa: F811
    kind: Kind,
    call: FrontCall,
    model: str,
) -> None:
    # wrong types after two good tokens, or the backend's own error event: the fake writes the second token
    # and the failure back to back, so they usually arrive in one read, and that token must still go out
    p = relay(kind)
    rid = new_rid("front-midstream")
    ans = raw_post(p.url, call.path, call.body(model, stream=True), rid)
    assert ans.status == 200  # the stream had started
    assert b"HTTP/1.1" not in ans.body, f"a second HTTP response inside the body: {ans.body[-400:]!r}"
    events = named_events(ans.payload)  # well-formed chunked framing, to the last chunk
    assert text_of(call, events) == GOOD  # the tokens before the failure, and nothing of the bad event
    said = final_error(call, events)
    text, err = sdk_stream(p.url, call, model)
    assert text == GOOD and err is not None, (text, err)
    row = p.row(rid)
    assert row["streamed"] == 1 and row["error"] and "internal error" not in row["error"], row
    if model == "error-midstream":  # the backend's words reach the client and the log
        assert CRASH in said and CRASH in str(err) and CRASH in row["error"] and row["status"] >= 500, row
    else:
        assert row["status"] == 502, row


# ================================================================== 2. 200 text/html where JSON was due


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("kind", ["openai", "ollama"])
@pytest.mark.parametrize("call", FRONTS)
def test_html_200_from_the_backend_is_a_502_before_any_byte(
    relay: RelayFactory,  # noqa: F811
    kind: Kind,
    call: FrontCall,
    stream: bool,
) -> None:
    p = relay(kind)
    rid = new_rid("front-html")
    ans = raw_post(p.url, call.path, call.body("html", stream=stream), rid)
    assert ans.status == 502, f"HTTP {ans.status}: {ans.payload[:400]!r}"  # never a fake success
    assert ans.headers.get("content-type", "").startswith("application/json"), ans.headers
    assert "text/html" in envelope_message(call, ans.payload)  # it says what came back
    row = p.row(rid)
    assert row["status"] == 502 and "text/html" in row["error"], row
    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as e:
        if stream:
            _, err = sdk_stream(p.url, call, "html")
            if err is not None:
                raise err
        else:
            sdk_whole(p.url, call, "html")
    assert getattr(e.value, "status_code", None) == 502


# ============================================================ 3. wrong types in a non-streamed answer


@pytest.mark.parametrize(
    ("kind", "call", "model"),
    _cases({"openai": ["message-str", "choices-int", "usage-str", "content-int"], "ollama": ["message-str"]}),
)
def test_wrong_types_in_a_whole_answer_are_502(
    relay: RelayFactory,  # noqa: F811
    kind: Kind,
    call: FrontCall,
    model: str,
) -> None:
    p = relay(kind)
    rid = new_rid("front-whole-type")
    ans = raw_post(p.url, call.path, call.body(model, stream=False), rid)
    assert ans.status == 502, f"HTTP {ans.status}: {ans.payload[:400]!r}"
    assert "internal error" not in envelope_message(call, ans.payload)
    row = p.row(rid)
    assert row["status"] == 502 and row["error"] and "internal error" not in row["error"], row


# ===================================================================== 4. a key echoed by the upstream


@pytest.mark.parametrize(
    ("kind", "call", "model", "stream"),
    [
        pytest.param(kind, call, model, stream, id=f"{call.front}-{kind}-{model}{'-stream' if stream else ''}")
        for call in (RESPONSES, MESSAGES)
        for kind, model, stream in (
            ("openai", "secret-openai", False),
            ("openai", "secret-text", True),
            ("openai", "secret-midstream", True),
            ("ollama", "secret-ollama", False),
            ("ollama", "secret-midstream", True),
        )
    ],
)
def test_a_backend_key_echoed_by_the_upstream_is_masked_everywhere(
    relay: RelayFactory,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    kind: Kind,
    call: FrontCall,
    model: str,
    stream: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    p = relay(kind)
    rid = new_rid("front-secret")
    ans = raw_post(p.url, call.path, call.body(model, stream=stream), rid)
    if model == "secret-midstream":
        assert ans.status == 200
        msg = final_error(call, named_events(ans.payload))
    else:
        assert ans.status == 401, f"HTTP {ans.status}: {ans.payload[:400]!r}"  # the upstream's own status
        msg = envelope_message(call, ans.payload)
    assert "invalid key" in msg, msg  # the client still learns what went wrong
    row = p.row(rid)
    assert row["error"] and "invalid key" in row["error"], row
    assert_no_secret_kept(p, ans, caplog)


# ======================================================= 6. token counts that are not counts a log column holds


@pytest.mark.parametrize(
    ("kind", "call", "stream"),
    [
        pytest.param(kind, call, stream, id=f"{call.front}-{kind}{'-stream' if stream else ''}")
        for call in (RESPONSES, MESSAGES)
        for kind in ("openai", "ollama")
        for stream in (False, True)
    ],
)
def test_token_counts_no_log_column_holds_are_left_out_of_the_record(
    relay: RelayFactory,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    kind: Kind,
    call: FrontCall,
    stream: bool,
) -> None:
    # test_relay.py's case for the two newer fronts: a count as a string or past 64 bits is no count
    caplog.set_level(logging.WARNING)
    p = relay(kind)
    rid = new_rid("front-odd-counts")
    ans = raw_post(p.url, call.path, call.body("odd-counts", stream=stream), rid)
    assert ans.status == 200, f"HTTP {ans.status}: {ans.payload[:400]!r}"
    text = text_of(call, named_events(ans.payload)) if stream else json.dumps(json.loads(ans.payload))
    assert GOOD in text, ans.payload[:400]
    assert_no_count_kept(p, rid, caplog)
