"""JSON on the hot path (orjson) and the two wire details every encoder here must get right."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import BadRequest

__all__ = [
    "count_or_none",
    "dumps",
    "dumps_line",
    "escape_line_breakers",
    "loads",
    "loads_object",
    "now_rfc3339",
    "rfc3339",
]

# httpx (and so ollama-python) splits lines like str.splitlines(), which also breaks on these three.
# orjson writes them raw, so they are escaped after the fact (escape_line_breakers).
_LINE_BREAKERS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))
_NEL = (b"\xc2\x85", b"\\u0085")


_COUNT_MAX = 2**63 - 1  # what a log column holds (SQLite INTEGER, PostgreSQL BIGINT); orjson writes up to 2**64 - 1


def count_or_none(value: object) -> int | None:
    """A count (of tokens) read from a backend's JSON, when it is one: an int, not a bool, from 0 to 2**63 - 1.

    Anything else is no count: a string, a negative number, or one past 64 bits, which orjson cannot write
    (a sum of two such counts made the answer a 500) and no log column holds. Every count a backend reports
    goes through here before ollamux adds it, writes it or keeps it."""
    return value if type(value) is int and 0 <= value <= _COUNT_MAX else None


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def dumps_line(obj: Any) -> bytes:
    """One compact JSON object and a newline: a safe NDJSON line."""
    return escape_line_breakers(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))


def escape_line_breakers(data: bytes) -> bytes:
    """`data` with U+2028, U+2029 and U+0085 escaped, the same object when it holds none (the usual case).

    Each is first looked for by its lead byte alone, as an int: `0xE2 in data` is one memchr (~0.06 ns a
    byte), while CPython 3.11 scans for a two- or three-byte needle at ~1 ns a byte (which made this check
    a third of a translated token stream's line building), and `bytes in bytes` first tries the needle as
    an int and formats a TypeError (~2 K instructions, whatever the sizes: use `find` for longer needles)."""
    if 0xE2 in data:
        for raw, escaped in _LINE_BREAKERS:
            if data.find(raw) >= 0:
                data = data.replace(raw, escaped)
    if 0xC2 in data and data.find(_NEL[0]) >= 0:
        data = data.replace(*_NEL)
    return data


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def loads_object(body: bytes) -> dict[str, Any]:
    """Parse a request body as a JSON object whatever the Content-Type said (as Ollama's Gin does)."""
    if not body or not body.strip():
        raise BadRequest("missing request body")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _fraction(digits: str) -> str:
    """Go's RFC3339Nano fraction: trailing zeros trimmed, and no dot at all for a whole second."""
    digits = digits.rstrip("0")
    return f".{digits}" if digits else ""


def rfc3339(ts: float) -> str:
    """Go's time.Time JSON form (RFC3339Nano) for UTC: 'Z', the fraction without trailing zeros.

    A float timestamp (a file's mtime) holds microseconds at best, so the fraction stops there."""
    sec = math.floor(ts)
    us = round((ts - sec) * 1e6)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + _fraction(f"{us:06d}") + "Z"


_ts_cache: list[object] = [-1, ""]  # [whole second, its "YYYY-MM-DDTHH:MM:SS" text]


def now_rfc3339() -> str:
    """Now as Ollama writes `created_at` (Go's time.Now().UTC() in JSON: RFC3339Nano, nanoseconds, trailing
    zeros trimmed: `2025-01-31T09:00:00.12345678Z`); the date part is formatted once a second, since every
    streamed line carries one."""
    now = time.time_ns()
    sec = now // 1_000_000_000
    if _ts_cache[0] != sec:
        _ts_cache[0] = sec
        _ts_cache[1] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    # the nine digits with their leading zeros (a 1 in front, cut off), trailing ones trimmed: inline, since
    # this runs for every line of a stream and a call and a format spec cost more than the rest
    digits = str(now % 1_000_000_000 + 1_000_000_000)[1:].rstrip("0")
    return f"{_ts_cache[1]}.{digits}Z" if digits else f"{_ts_cache[1]}Z"
