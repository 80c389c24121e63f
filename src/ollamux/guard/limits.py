"""Limits on input: JSON nesting depth, and a deadline for the request body.

Depth matters beyond memory: orjson refuses to write more than 254 levels, and the translators walk
bodies recursively, so a body that parses could still fail deep inside a handler. The check runs on
the raw bytes before any parse and costs two C-speed counts in the usual case: a body with fewer
brackets than the limit cannot nest deeper than it.
"""

from __future__ import annotations

import re

__all__ = ["json_depth_exceeds"]

# a JSON string: quote, then runs of plain characters or escapes, then quote (unrolled: no backtracking)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """True if the JSON text in `raw` nests arrays/objects more than `limit` deep.

    Works on malformed text too (it only looks at brackets outside strings), so it can run first.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # brackets inside strings do not nest: drop the strings, then everything but the brackets
    brackets = _STRING.sub(b"", raw).translate(_TO_SQUARE, _NOT_BRACKETS)
    if brackets.count(b"[") <= limit:
        return False
    # each pass removes one level of innermost pairs; more passes than `limit` means deeper than it.
    # an unbalanced remainder is malformed JSON: the parser will reject it, no need to count it here.
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return False
        brackets = shorter
        if not brackets:
            return False
    # the pairs left after `limit` passes sit deeper than the limit, unless only stray brackets remain
    return b"[]" in brackets
