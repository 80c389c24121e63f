"""The sans-IO decoders accept any split of the byte stream."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ollamux.jsonutil import dumps_line, loads
from ollamux.streams.codecs import NDJSONDecoder, SSEDecoder, encode_sse

SSE = (
    b": keep-alive comment\r\n"
    b"data: {\"a\": 1}\r\n\r\n"
    b"event: message\n"
    b"data: {\"b\":\n"
    b"data: 2}\n\n"
    b"data:{\"c\":\"\xc3\xa9\xe2\x82\xac\"}\r\r"
    b"id: 7\nretry: 100\ndata: [DONE]\n\n"
)
EXPECTED = [b'{"a": 1}', b'{"b":\n2}', '{"c":"é€"}'.encode(), b"[DONE]"]


def _feed_all(dec: SSEDecoder, parts: list[bytes]) -> list[bytes]:
    out = []
    for p in parts:
        out.extend(e.data for e in dec.feed(p))
    out.extend(e.data for e in dec.flush())
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts, last = [], 0
    for p in points:
        parts.append(data[last:p])
        last = p
    parts.append(data[last:])
    return parts


def test_sse_whole() -> None:
    assert _feed_all(SSEDecoder(), [SSE]) == EXPECTED


def test_sse_byte_by_byte() -> None:
    assert _feed_all(SSEDecoder(), [SSE[i : i + 1] for i in range(len(SSE))]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
@settings(max_examples=300)
def test_sse_random_splits(cuts: list[int]) -> None:
    assert _feed_all(SSEDecoder(), _split(SSE, cuts)) == EXPECTED


# what backends send (one `data:` line per event, the fast path), then everything else SSE allows
TYPICAL = b"".join(b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i for i in range(5))
MIXED = TYPICAL + b"\n" + SSE + TYPICAL + b"data: last"
MIXED_EXPECTED = [b'{"choices":[{"delta":{"content":"t%d"}}]}' % i for i in range(5)]
MIXED_EXPECTED = MIXED_EXPECTED + EXPECTED + MIXED_EXPECTED + [b"last"]


def _payloads_all(dec: SSEDecoder, parts: list[bytes]) -> list[bytes]:
    out = []
    for p in parts:
        out.extend(dec.payloads(p))
    out.extend(e.data for e in dec.flush())
    return out


def test_sse_payloads_match_feed() -> None:
    assert _feed_all(SSEDecoder(), [MIXED]) == MIXED_EXPECTED
    assert _payloads_all(SSEDecoder(), [MIXED]) == MIXED_EXPECTED
    assert _payloads_all(SSEDecoder(), [MIXED[i : i + 1] for i in range(len(MIXED))]) == MIXED_EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
@settings(max_examples=300)
def test_sse_payloads_random_splits(cuts: list[int]) -> None:
    assert _payloads_all(SSEDecoder(), _split(MIXED, cuts)) == MIXED_EXPECTED


def test_sse_event_name_and_unterminated_last_event() -> None:
    dec = SSEDecoder()
    events = dec.feed(b"event: error\ndata: {\"x\":1}\n\ndata: tail")
    assert events[0].event == "error" and events[0].data == b'{"x":1}'
    assert [e.data for e in dec.flush()] == [b"tail"]


def test_encode_sse_roundtrip() -> None:
    dec = SSEDecoder()
    assert [e.data for e in dec.feed(encode_sse(b'{"k":"v"}'))] == [b'{"k":"v"}']


def test_ndjson_random_splits() -> None:
    objs = [{"i": i, "text": "é" * i} for i in range(20)]
    data = b"".join(dumps_line(o) for o in objs) + b"\n\n"  # stray blank lines are skipped
    rng = random.Random(7)
    for _ in range(200):
        dec = NDJSONDecoder()
        out = []
        for part in _split(data, [rng.randrange(len(data)) for _ in range(rng.randrange(12))]):
            out.extend(dec.feed(part))
        out.extend(dec.flush())
        assert [loads(x) for x in out] == objs


def test_ndjson_unterminated_last_line() -> None:
    dec = NDJSONDecoder()
    assert dec.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert dec.flush() == [b'{"b"']


def test_dumps_line_escapes_unicode_line_breakers() -> None:
    line = dumps_line({"t": "a\u2028b\u2029c\u0085d"})
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert len(line.decode().splitlines()) == 1  # what httpx (ollama-python) does to a stream
    assert loads(line) == {"t": "a\u2028b\u2029c\u0085d"}
