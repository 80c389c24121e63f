"""Ollama NDJSON with each line's `model` turned back into the client's name (sans-IO, bounded, linear)."""

from __future__ import annotations

import orjson

from ..translate.passthrough import pair_pattern
from .codecs import DEFAULT_MAX_EVENT_BYTES, LineBuffer

__all__ = ["ModelLineRewriter"]


class ModelLineRewriter:
    """NDJSON bytes with each line's top-level `"model":"<old>"` turned back into the client's name.

    Ollama writes `model` as the first key of every line, so the check is a prefix test per line; lines
    cut across chunks are held until their newline arrives, as a list of reads joined once (`LineBuffer`:
    linear in the input, and a line past `max_line_bytes` raises `EventTooLarge`).
    """

    __slots__ = ("_lines", "_new", "_new_value", "_old", "_old_len", "_pair", "_prefix")

    def __init__(self, old: str, new: str, max_line_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        old_json = orjson.dumps(old)
        self._new_value = orjson.dumps(new)
        self._old = b'"model":' + old_json
        self._new = b'"model":' + self._new_value
        self._prefix = b"{" + self._old
        self._old_len = len(old_json)
        self._pair = pair_pattern(old_json)  # other spellings (`"model": "x"`) from servers that are not Go
        self._lines = LineBuffer(max_line_bytes)

    def feed(self, chunk: bytes) -> bytes:
        block = self._lines.feed(chunk)
        return self._rewrite(block) if block else b""

    def flush(self) -> bytes:
        return self._rewrite(self._lines.flush())

    def _rewrite(self, data: bytes) -> bytes:
        if data.find(b'"model"') < 0:
            return data
        prefix = self._prefix
        if data.startswith(prefix):
            line_starts = b"\n" + prefix
            if data.count(line_starts) + 1 == data.count(b"\n") + (data[-1:] != b"\n"):
                # every line begins with the pair (Ollama's own lines): swapped in C with one copy of the
                # data, where the loop below copies a line three times (split, slice, concatenation)
                swapped = data.replace(line_starts, b"\n{" + self._new)
                return b"".join((b"{", self._new, memoryview(swapped)[len(prefix) :]))
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
