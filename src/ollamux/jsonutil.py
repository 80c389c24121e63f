"""JSON on the hot path (orjson) and the two wire details every encoder here must get right."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import BadRequest

__all__ = ["dumps", "dumps_line", "escape_line_breakers", "loads", "loads_object", "now_rfc3339", "rfc3339"]

# httpx (and so ollama-python) splits lines like str.splitlines(), which also breaks on these three.
# orjson writes them raw, so they are escaped after the fact; the check is a cheap bytes scan.
_LINE_BREAKERS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def dumps_line(obj: Any) -> bytes:
    """One compact JSON object and a newline: a safe NDJSON line."""
    data = orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    if b"\xe2\x80" in data or b"\xc2\x85" in data:
        data = escape_line_breakers(data)
    return data


def escape_line_breakers(data: bytes) -> bytes:
    for raw, escaped in _LINE_BREAKERS:
        data = data.replace(raw, escaped)
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


def rfc3339(ts: float) -> str:
    """Go's time.Time JSON form for UTC: microseconds and 'Z' (Go clients reject zoneless times)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_ts_cache: list[object] = [-1, ""]  # [whole second, its "YYYY-MM-DDTHH:MM:SS" text]


def now_rfc3339() -> str:
    """rfc3339(time.time()), formatting the date part once a second: every streamed line carries one."""
    now = time.time()
    sec = int(now)
    if _ts_cache[0] != sec:
        _ts_cache[0] = sec
        _ts_cache[1] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_ts_cache[1]}.{int((now - sec) * 1e6):06d}Z"
