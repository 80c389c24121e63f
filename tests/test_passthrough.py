"""The pass-through model rewriter: any split, renamed line by line, linear in its input and bounded."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamux.errors import EventTooLarge
from ollamux.streams.codecs import DEFAULT_MAX_EVENT_BYTES
from ollamux.streams.rewrite import ModelLineRewriter

OLD, NEW = "qwen3:latest", "mine"
MIB = 1024 * 1024
READ = 64 * 1024


def _expected_line(line: bytes, old: str = OLD, new: str = NEW) -> bytes:
    """The rule, written out on its own: the first `"model":<old>` pair of a line gets the new name."""
    old_json, new_json = orjson.dumps(old), orjson.dumps(new)
    m = re.search(rb'"model"\s*:\s*' + re.escape(old_json), line)
    return line if m is None else line[: m.end() - len(old_json)] + new_json + line[m.end() :]


def _rewrite_all(parts: list[bytes], limit: int = DEFAULT_MAX_EVENT_BYTES) -> bytes:
    r = ModelLineRewriter(OLD, NEW, max_line_bytes=limit)
    return b"".join(r.feed(p) for p in parts) + r.flush()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


_LINE = st.one_of(
    st.builds(lambda t: b'{"model":"qwen3:latest","response":' + orjson.dumps(t) + b',"done":false}', st.text()),
    st.just(b'{"model":"qwen3:latest","created_at":"x","done":true}'),
    st.builds(lambda t: b'{"created_at": "x", "model" : "qwen3:latest", "t":' + orjson.dumps(t) + b"}", st.text()),
    st.just(b'{"a":1,"model":"qwen3:latest"}'),  # not the first key
    st.just(b'{"model":"qwen3:latest-2"}'),  # another model whose name starts with the same bytes: a JSON string
    st.just(b'{"model":"other"}'),
    st.just(b'{"response":"a \\"model\\":\\"qwen3:latest\\""}'),  # escaped inside a string: left alone
    st.just(b""),
    st.integers(min_value=20_000, max_value=120_000).map(
        lambda n: b'{"model":"qwen3:latest","response":"' + b"z" * n + b'"}'
    ),
)


@given(
    st.lists(_LINE, min_size=1, max_size=8),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=10**7), max_size=20),
)
@settings(max_examples=300, deadline=None)
def test_renamed_line_by_line_in_any_split(lines: list[bytes], terminated: bool, cuts: list[int]) -> None:
    data = b"\n".join(lines) + (b"\n" if terminated else b"")
    expected = b"\n".join(_expected_line(ln) for ln in lines) + (b"\n" if terminated else b"")
    assert _rewrite_all([data]) == expected
    assert _rewrite_all(_split(data, cuts)) == expected


def test_renamed_byte_by_byte() -> None:
    data = b'{"model":"qwen3:latest","response":"a"}\n{"x": 1, "model": "qwen3:latest"}\n{"model":"qwen3:latest"}'
    expected = b'{"model":"mine","response":"a"}\n{"x": 1, "model": "mine"}\n{"model":"mine"}'
    assert _rewrite_all([data[i : i + 1] for i in range(len(data))]) == expected


def test_names_that_need_escaping() -> None:
    r = ModelLineRewriter('we"ird', "new\\name")  # keyword-compatible: the default limit
    line = b'{"model":"we\\"ird","done":true}\n'
    assert r.feed(line) == b'{"model":"new\\\\name","done":true}\n' and r.flush() == b""
    assert orjson.loads(b'{"model":"new\\\\name"}') == {"model": "new\\name"}


def test_100mb_line_in_64k_reads() -> None:
    # the held line is kept as reads and joined once (~0.2 s; joined to every read it was quadratic)
    body = b"z" * (100 * 1000 * 1000)
    data = b'{"model":"qwen3:latest","response":"' + body + b'"}\n{"model":"qwen3:latest","done":true}\n'
    out = _rewrite_all([data[i : i + READ] for i in range(0, len(data), READ)], limit=128 * MIB)
    assert out == b'{"model":"mine","response":"' + body + b'"}\n{"model":"mine","done":true}\n'


@pytest.mark.parametrize("bytewise", [False, True])
def test_limit_exactly_and_one_past(bytewise: bool) -> None:
    def run(data: bytes) -> bytes:
        return _rewrite_all([data[i : i + 1] for i in range(len(data))] if bytewise else [data], limit=100)

    at = b'{"model":"qwen3:latest","r":"' + b"x" * 69 + b'"}'  # 100 bytes, without its LF
    assert len(at) == 100
    renamed = at.replace(b"qwen3:latest", b"mine")
    assert run(b"{}\n" + at + b"\n") == b"{}\n" + renamed + b"\n"
    assert run(at) == renamed  # unterminated at end of stream
    with pytest.raises(EventTooLarge, match=r"^backend sent a stream line larger than 100 bytes \(max_event_bytes\)$"):
        run(b"{}\n" + at + b"x\n")


def test_raises_as_soon_as_the_unfinished_line_passes() -> None:
    r = ModelLineRewriter(OLD, NEW, max_line_bytes=100)
    assert r.feed(b'{"model":"qwen3:latest"}\n{"r":"') == b'{"model":"mine"}\n'
    assert r.feed(b"x" * 94) == b""  # 100 bytes held
    with pytest.raises(EventTooLarge):
        r.feed(b"x")
