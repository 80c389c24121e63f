"""The sans-IO decoders accept any split of the byte stream."""

from __future__ import annotations

import random
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamux.errors import EventTooLarge, UpstreamError
from ollamux.jsonutil import dumps_line, loads
from ollamux.streams.codecs import DEFAULT_MAX_EVENT_BYTES, LineBuffer, NDJSONDecoder, SSEDecoder, encode_sse

SSE = (
    b": keep-alive comment\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b"event: message\n"
    b'data: {"b":\n'
    b"data: 2}\n\n"
    b'data:{"c":"\xc3\xa9\xe2\x82\xac"}\r\r'
    b"id: 7\nretry: 100\ndata: [DONE]\n\n"
)
EXPECTED = [b'{"a": 1}', b'{"b":\n2}', '{"c":"é€"}'.encode(), b"[DONE]"]


def _feed_all(dec: SSEDecoder, parts: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
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


# big events among the small ones, in LF, CR and CRLF spellings, cut anywhere (not only in the first 10 KB)
BIG = b"B" * 150_000
BIG_MIXED = TYPICAL + b"data: " + BIG + b"\n\n" + MIXED[: -len(b"data: last")] + b"data: " + BIG[:70_000]
BIG_MIXED += b"\ndata: " + BIG[:90_000] + b"\n\n" + TYPICAL + b"data: last"
BIG_EXPECTED = [*MIXED_EXPECTED[:5], BIG, *MIXED_EXPECTED[:-1], BIG[:70_000] + b"\n" + BIG[:90_000]]
BIG_EXPECTED += [*MIXED_EXPECTED[:5], b"last"]
BIG_SPELLINGS = [BIG_MIXED, BIG_MIXED.replace(b"\n", b"\r\n"), BIG_MIXED.replace(b"\n", b"\r")]


@given(st.sampled_from(BIG_SPELLINGS), st.lists(st.integers(min_value=0, max_value=2_000_000), max_size=30))
@settings(max_examples=200, deadline=None)
def test_sse_payloads_and_feed_around_big_events(stream: bytes, cuts: list[int]) -> None:
    parts = _split(stream, cuts)
    assert _payloads_all(SSEDecoder(), parts) == BIG_EXPECTED
    assert _feed_all(SSEDecoder(), parts) == BIG_EXPECTED


def test_sse_event_name_and_unterminated_last_event() -> None:
    dec = SSEDecoder()
    events = dec.feed(b'event: error\ndata: {"x":1}\n\ndata: tail')
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


# ------------------------------------------------------------------------------ linear and bounded
MIB = 1024 * 1024
READ = 64 * 1024


def _reads(data: bytes) -> list[bytes]:
    return [data[i : i + READ] for i in range(0, len(data), READ)]


def test_sse_100mb_event_in_64k_reads() -> None:
    # the held bytes are kept as reads and joined once: this takes ~0.3 s (it took 33 s when every read
    # was joined to them and the whole event searched again)
    payload = b"x" * (100 * 1000 * 1000)
    reads = _reads(b"data: " + payload + b"\n\ndata: next\n\n")
    dec = SSEDecoder(max_event_bytes=128 * MIB)
    out = [p for r in reads for p in dec.payloads(r)]
    assert len(out) == 2 and out[0] == payload and out[1] == b"next"
    dec = SSEDecoder(max_event_bytes=128 * MIB)
    events = [e for r in reads for e in dec.feed(r)] + dec.flush()
    assert [e.data for e in events] == [payload, b"next"]


def test_ndjson_100mb_line_in_64k_reads() -> None:
    line = b'{"response":"' + b"x" * (100 * 1000 * 1000) + b'"}'
    dec = NDJSONDecoder(max_line_bytes=128 * MIB)
    out = [ln for r in _reads(line + b"\n" + line[:20]) for ln in dec.feed(r)] + dec.flush()
    assert len(out) == 2 and out[0] == line and out[1] == line[:20]


def test_default_limit_is_64_mib() -> None:
    assert DEFAULT_MAX_EVENT_BYTES == 128 * MIB
    # an event of exactly the default limit passes the hot path of a decoder built as the relay builds it
    event = b"data: " + b"x" * (DEFAULT_MAX_EVENT_BYTES - 6)
    dec = SSEDecoder()
    out = [p for r in _reads(event + b"\n\n") for p in dec.payloads(r)]
    assert len(out) == 1 and len(out[0]) == DEFAULT_MAX_EVENT_BYTES - 6
    # one byte more raises in the read that brings it, before the event ends
    reads = _reads(event + b"x")
    dec = SSEDecoder()
    for r in reads[:-1]:
        assert dec.payloads(r) == []
    with pytest.raises(EventTooLarge, match=r"larger than 134217728 bytes \(max_event_bytes\)"):
        dec.payloads(reads[-1])


def test_event_too_large_is_an_upstream_error() -> None:
    exc = EventTooLarge(67108864)
    assert isinstance(exc, UpstreamError) and exc.status == 502 and exc.limit == 67108864
    assert exc.message == "backend sent a stream event larger than 67108864 bytes (max_event_bytes)"
    assert "stream line larger than 1024 bytes (max_event_bytes)" in EventTooLarge(1024, unit="line").message


def _sse_run(parts: list[bytes], limit: int, how: str) -> tuple[list[tuple[bytes, str | None]], bool]:
    """What a decoder gives for `parts` (`how`: "feed" or "payloads"), and whether it raised EventTooLarge."""
    dec = SSEDecoder(max_event_bytes=limit)
    got: list[tuple[bytes, str | None]] = []
    try:
        for p in parts:
            if how == "feed":
                got.extend((e.data, e.event) for e in dec.feed(p))
            else:
                got.extend((d, None) for d in dec.payloads(p))
        got.extend((e.data, e.event if how == "feed" else None) for e in dec.flush())
    except EventTooLarge as exc:
        assert exc.limit == limit and f"larger than {limit} bytes (max_event_bytes)" in exc.message
        return got, True
    return got, False


@pytest.mark.parametrize("how", ["feed", "payloads"])
@pytest.mark.parametrize("bytewise", [False, True])
def test_sse_limit_exactly_and_one_past(how: str, bytewise: bool) -> None:
    def run(stream: bytes) -> tuple[list[tuple[bytes, str | None]], bool]:
        parts = [stream[i : i + 1] for i in range(len(stream))] if bytewise else [stream]
        return _sse_run(parts, 100, how)

    at = b"data: " + b"x" * 94  # 100 bytes: the event's text, without the line breaks that end it
    assert run(b"data: a\n\n" + at + b"\n\n") == ([(b"a", None), (b"x" * 94, None)], False)
    assert run(b"data: a\n\n" + at + b"\r\n\r\n") == ([(b"a", None), (b"x" * 94, None)], False)
    assert run(at) == ([(b"x" * 94, None)], False)  # unterminated at end of stream
    got, raised = run(b"data: a\n\n" + at + b"x\n\n")
    assert raised and got in ([], [(b"a", None)])  # the events of the read that raises are not returned
    # every line of an event counts, with one byte per line break between them, however they are spelled
    multi = b": c\r\nevent: e\rid: 1\ndata: " + b"y" * (100 - 3 - 8 - 4 - 6 - 4)
    assert len(b"\n".join(multi.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"))) == 100
    assert run(multi + b"\n\n")[1] is False
    assert run(multi + b"y\n\n")[1] is True


def test_sse_raises_as_soon_as_the_unfinished_event_passes() -> None:
    for how in ("feed", "payloads"):
        dec = SSEDecoder(max_event_bytes=100)
        step = dec.feed if how == "feed" else dec.payloads
        assert step(b"data: a\n") == []
        assert step(b"data: " + b"x" * 84) == []  # 8 + 6 + 84 = 98 bytes so far, no line break yet
        assert step(b"xx") == []  # 100
        with pytest.raises(EventTooLarge):
            step(b"x")  # 101, and the event has not ended: it is not held any longer
    # the hot path, joining an event's first line held from earlier reads with the read that ends it
    dec = SSEDecoder(max_event_bytes=100)
    assert dec.payloads(b"data: " + b"x" * 90) == []
    assert dec.payloads(b"x" * 4 + b"\n\ndata: b\n\n") == [b"x" * 94, b"b"]
    assert dec.payloads(b"data: " + b"x" * 90) == []
    with pytest.raises(EventTooLarge):
        dec.payloads(b"x" * 5 + b"\n\ndata: b\n\n")
    # a read larger than the limit with every event in it (the hot path checks the read's size first)
    with pytest.raises(EventTooLarge):
        SSEDecoder(max_event_bytes=100).payloads(b"data: a\n\n" + b"data: " + b"x" * 95 + b"\n\n")
    dec = SSEDecoder(max_event_bytes=100)
    assert dec.payloads(b"data: a\n\n" + b"data: " + b"x" * 94 + b"\n\n") == [b"a", b"x" * 94]


# Generated streams: events of comments, `event:`, `id:`, `retry:` and one-or-many `data` lines (some of them
# big), every line ended by LF, CR or CRLF, the last event maybe unterminated; then cut anywhere.
_SMALL = st.text(alphabet=" :xé€a", max_size=12).map(str.encode)
_BIG = st.integers(min_value=20_000, max_value=120_000).map(lambda n: b"v" * n)
_VALUE = st.one_of(_SMALL, _SMALL, _SMALL, _SMALL, _BIG)
_LINE = st.one_of(
    st.builds(lambda v: b"data: " + v, _VALUE),
    st.builds(lambda v: b"data:" + v, _VALUE),
    st.just(b"data"),
    st.builds(lambda v: b":" + v, _VALUE),
    st.builds(lambda v: b"event: " + v, st.sampled_from([b"message", b"error", b""])),
    st.builds(lambda v: b"id: " + v, _SMALL),
    st.just(b"retry: 10"),
)
_ENDS = [b"\n", b"\r", b"\r\n"]


class _Stream(NamedTuple):
    data: bytes
    events: list[tuple[bytes, str | None]]
    biggest: int  # the size of the largest event (lines joined by one LF each)


def _expect(lines: list[bytes]) -> tuple[bytes, str | None] | None:
    data: list[bytes] = []
    name = None
    for line in lines:  # the WHATWG field rules, written out on their own
        if line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode()
    return (b"\n".join(data), name) if data else None


@st.composite
def _sse_streams(draw: st.DrawFn) -> _Stream:
    events = draw(st.lists(st.lists(_LINE, max_size=4), min_size=1, max_size=6))
    terminated = draw(st.booleans())
    out: list[bytes] = []
    expected: list[tuple[bytes, str | None]] = []
    prev = b""
    for i, lines in enumerate(events):
        for line in lines:
            prev = draw(st.sampled_from(_ENDS))
            out += [line, prev]
        if i < len(events) - 1 or terminated:
            # a LF right after a CR would be the same line break, not a blank line
            prev = draw(st.sampled_from(_ENDS[1:] if prev == b"\r" else _ENDS))
            out.append(prev)
        elif bool(lines) and draw(st.booleans()):
            out.pop()  # the stream ends mid-line
        ev = _expect(lines)
        if ev is not None:
            expected.append(ev)
    biggest = max(len(b"\n".join(lines)) for lines in events)
    return _Stream(b"".join(out), expected, biggest)


@given(
    _sse_streams(), st.lists(st.integers(min_value=0, max_value=10**7), max_size=20), st.integers(-2, 2), st.booleans()
)
@settings(max_examples=300, deadline=None)
def test_sse_generated_streams_any_split(stream: _Stream, cuts: list[int], delta: int, limited: bool) -> None:
    parts = _split(stream.data, cuts)
    limit = max(1, stream.biggest + delta) if limited else DEFAULT_MAX_EVENT_BYTES
    for how in ("feed", "payloads"):
        expected = stream.events if how == "feed" else [(d, None) for d, _ in stream.events]
        got, raised = _sse_run(parts, limit, how)
        assert raised == (stream.biggest > limit), how
        assert got == (expected[: len(got)] if raised else expected), how


def test_sse_comments_names_multiline_and_line_ends() -> None:
    stream = (
        b":ok\r\n\r\n"  # a keep-alive, alone: no event
        b"event: delta\rdata: a\rdata:b\r\r"
        b"data\n\n"  # a field name alone: an empty data line
        b"id: 3\r\nretry: 5\r\ndata:  two spaces\r\n: comment inside\r\ndata: \r\n\r\n"
        b"event: skipped\n\n"  # a name without data dispatches nothing, and does not leak into the next event
        b"data: last"
    )
    want = [(b"a\nb", "delta"), (b"", None), (b" two spaces\n", None), (b"last", None)]
    for parts in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        assert _sse_run(parts, DEFAULT_MAX_EVENT_BYTES, "feed") == (want, False)
        assert _sse_run(parts, DEFAULT_MAX_EVENT_BYTES, "payloads") == ([(d, None) for d, _ in want], False)


# --------------------------------------------------------------------------------- NDJSON bounded
def _nd_run(parts: list[bytes], limit: int) -> tuple[list[bytes], bool]:
    dec = NDJSONDecoder(max_line_bytes=limit)
    got: list[bytes] = []
    try:
        for p in parts:
            got.extend(dec.feed(p))
        got.extend(dec.flush())
    except EventTooLarge as exc:
        assert exc.message == f"backend sent a stream line larger than {limit} bytes (max_event_bytes)"
        return got, True
    return got, False


@pytest.mark.parametrize("bytewise", [False, True])
def test_ndjson_limit_exactly_and_one_past(bytewise: bool) -> None:
    def run(data: bytes) -> tuple[list[bytes], bool]:
        return _nd_run([data[i : i + 1] for i in range(len(data))] if bytewise else [data], 100)

    at = b'{"r":"' + b"x" * 92 + b'"}'  # 100 bytes, without its LF
    assert run(b'{"a":1}\n' + at + b"\n") == ([b'{"a":1}', at], False)
    assert run(at) == ([at], False)  # unterminated at end of stream
    got, raised = run(b'{"a":1}\n' + at + b"x\n")
    assert raised and got in ([], [b'{"a":1}'])
    assert run(b" " * 101 + b"\n")[1] is True  # a blank line is still held until its LF


def test_ndjson_raises_as_soon_as_the_unfinished_line_passes() -> None:
    dec = NDJSONDecoder(max_line_bytes=100)
    assert dec.feed(b'{"a":1}\n{"r":"') == [b'{"a":1}']
    assert dec.feed(b"x" * 94) == []  # 100 bytes held
    with pytest.raises(EventTooLarge):
        dec.feed(b"x")
    with pytest.raises(EventTooLarge):  # a read larger than the limit, the long line complete in it
        NDJSONDecoder(max_line_bytes=100).feed(b"{}\n" + b"x" * 101 + b"\n{}\n")
    assert NDJSONDecoder(max_line_bytes=100).feed(b"{}\n" + b"x" * 100 + b"\n{}\n") == [b"{}", b"x" * 100, b"{}"]


_ND_INTS = st.dictionaries(st.sampled_from("abc"), st.integers(-(2**40), 2**40))
_ND_LINE = st.one_of(
    st.builds(lambda o: dumps_line(o)[:-1], st.dictionaries(st.sampled_from("abc"), st.text(max_size=8))),
    st.builds(lambda o: dumps_line(o)[:-1] + b"\r", _ND_INTS),  # CRLF: the CR stays in the line
    st.sampled_from([b"", b"  ", b"\t\r"]),
    st.integers(min_value=20_000, max_value=150_000).map(lambda n: b'{"r":"' + b"y" * n + b'"}'),
)


@given(
    st.lists(_ND_LINE, min_size=1, max_size=8),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=10**7), max_size=20),
    st.integers(-2, 2),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_ndjson_generated_streams_any_split(
    lines: list[bytes], terminated: bool, cuts: list[int], delta: int, limited: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if terminated else b"")
    biggest = max(map(len, lines))
    limit = max(1, biggest + delta) if limited else DEFAULT_MAX_EVENT_BYTES
    expected = [ln for ln in lines if ln.strip()]
    got, raised = _nd_run(_split(data, cuts), limit)
    assert raised == (biggest > limit)
    assert got == (expected[: len(got)] if raised else expected)


def test_line_buffer_hands_out_whole_lines() -> None:
    buf = LineBuffer(max_line_bytes=10)
    assert buf.feed(b"ab") == b""
    assert buf.feed(b"c\nde\nf") == b"abc\nde\n"
    assert buf.feed(b"\n") == b"f\n"
    assert buf.feed(b"0123456789") == b""  # exactly the limit, held
    assert buf.flush() == b"0123456789"
    assert buf.flush() == b""
    with pytest.raises(EventTooLarge, match="stream line larger than 10 bytes"):
        buf.feed(b"0123456789x")
