"""Pass-through bodies: the client's bytes, with only the model name swapped (pure, no I/O).

Re-serialising a request would reorder nothing (orjson keeps key order) but would still change bytes
(whitespace, number spellings, escapes) and cost a full encode of bodies that can hold megabytes of
base64 images, so the `"model"` value is replaced in place whenever that is unambiguous.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

__all__ = ["ModelLineRewriter", "replace_model_in_body"]


def replace_model_in_body(raw: bytes, body: dict[str, Any], new: str) -> bytes:
    """`raw` (which parsed to `body`) with its top-level `model` set to `new`, other bytes untouched.

    In place when exactly one `"model": <old>` pair occurs (a pair spelled with unescaped quotes cannot
    hide inside a JSON string, so the only one is the top-level key); otherwise re-serialised.
    """
    old = body.get("model")
    if old == new:
        return raw
    if isinstance(old, str):
        old_json = orjson.dumps(old)
        found = _pair_re(old_json).finditer(raw)
        first = next(found, None)
        if first is not None and next(found, None) is None:
            return raw[: first.end() - len(old_json)] + orjson.dumps(new) + raw[first.end() :]
    # absent (a default model), escaped, or duplicated: keep the meaning, lose the exact bytes
    return orjson.dumps({**body, "model": new})


@functools.lru_cache(maxsize=256)
def _pair_re(old_json: bytes) -> re.Pattern[bytes]:
    return re.compile(rb'"model"\s*:\s*' + re.escape(old_json))


class ModelLineRewriter:
    """NDJSON bytes with each line's top-level `"model":"<old>"` turned back into the client's name.

    Ollama writes `model` as the first key of every line, so the check is a prefix test per line; lines
    cut across chunks are held until their newline arrives (only the unfinished tail is copied).
    """

    __slots__ = ("_new", "_new_value", "_old", "_old_len", "_pair", "_prefix", "_tail")

    def __init__(self, old: str, new: str) -> None:
        old_json = orjson.dumps(old)
        self._new_value = orjson.dumps(new)
        self._old = b'"model":' + old_json
        self._new = b'"model":' + self._new_value
        self._prefix = b"{" + self._old
        self._old_len = len(old_json)
        self._pair = _pair_re(old_json)  # other spellings (`"model": "x"`) from servers that are not Go
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        buf = self._tail + chunk if self._tail else chunk
        cut = buf.rfind(b"\n") + 1
        self._tail = buf[cut:]
        return self._rewrite(buf[:cut]) if cut else b""

    def flush(self) -> bytes:
        rest, self._tail = self._tail, b""
        return self._rewrite(rest)

    def _rewrite(self, data: bytes) -> bytes:
        if b'"model"' not in data:
            return data
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(self._prefix):
                lines[i] = b"{" + self._new + line[len(self._prefix) :]
            elif self._old in line:
                lines[i] = line.replace(self._old, self._new, 1)
            else:
                m = self._pair.search(line)
                if m is not None:  # keep the key and spacing, swap the value
                    lines[i] = line[: m.end() - self._old_len] + self._new_value + line[m.end() :]
        return b"\n".join(lines)
