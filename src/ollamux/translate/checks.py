"""Upstream JSON is untrusted: typed reads that turn a wrong type into a 502 naming the field (pure).

A backend that sends `"message": "oops"` or `"content": 5` is broken, and the client must hear so (a 502
before the first byte, or the stream's final error frame after it), never get a silent empty answer or a
500 from a TypeError deep in a translator.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import orjson

from ..errors import UpstreamError

__all__ = ["json_type", "opt_field", "upstream_error_message"]

T = TypeVar("T")

_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def json_type(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)


@overload
def opt_field(obj: dict[str, Any], key: str, kind: type[T], where: str) -> T | None: ...


@overload
def opt_field(obj: dict[str, Any], key: str, kind: tuple[type[Any], ...], where: str) -> Any: ...


def opt_field(obj: dict[str, Any], key: str, kind: Any, where: str) -> Any:
    """`obj[key]` when it is absent, null or of `kind`; else an UpstreamError (502) that names it."""
    value = obj.get(key)
    if value is None or isinstance(value, kind):
        return value
    want = kind[0] if isinstance(kind, tuple) else kind
    raise UpstreamError(
        f"backend sent {where} whose '{key}' is {json_type(value)}, not {_NAMES.get(want, want.__name__)}",
        status=502,
    )


def upstream_error_message(err: Any) -> str:
    """The message of an error object a backend sent where an answer was due (`{"error": ...}`)."""
    if isinstance(err, dict):
        msg = err.get("message")
        return str(msg) if msg else orjson.dumps(err).decode()
    return str(err)
