"""Sans-IO incremental decoders: `feed(bytes) -> events`, `flush() -> events`.

They accept any split of the byte stream (a frame cut mid-line, mid-CRLF or mid-UTF-8 sequence), which
the unit tests prove by feeding byte by byte and in random splits.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["NDJSONDecoder", "SSEDecoder", "SSEEvent", "encode_sse"]


class SSEEvent(NamedTuple):
    # a tuple, not a frozen dataclass: one is built per token, and this is 3x cheaper to build
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Server-sent events per the WHATWG parsing rules, reduced to what LLM backends send."""

    __slots__ = ("_buf", "_data", "_event", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr:
            # a CR ended the previous chunk: a LF right after it belongs to the same line break
            self._pending_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buf = self._buf + chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                self._pending_cr = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            self._line(line, events)
        return events

    def payloads(self, chunk: bytes) -> list[bytes]:
        """The data of every event this chunk completes, event names dropped: the per-token hot path.

        Backends send one `data: {...}` line per event; such an event is cut out whole, without the line
        loop. Anything else (CRs, comments, named or multi-line events, an event begun in an earlier
        chunk) goes through `feed`, so both give the same data for any split of the stream.
        """
        if self._pending_cr or self._data or self._event is not None or b"\r" in chunk:
            return [ev.data for ev in self.feed(chunk)]
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            return [ev.data for ev in self.feed(chunk)]  # no event ends in this chunk
        self._buf = b""
        rest = buf[end + 2 :]  # the start of an unfinished event: `feed` keeps it
        if buf.startswith(b"data: "):
            # the usual case, counted and split in C: every complete event is one `data: ` line
            out = buf[6:end].split(b"\n\ndata: ")
            if buf.count(b"\n", 0, end) == 2 * len(out) - 2:
                if rest:
                    out.extend(ev.data for ev in self.feed(rest))
                return out
        out = []
        for block in buf[:end].split(b"\n\n"):
            if block[:6] == b"data: " and b"\n" not in block:
                out.append(block[6:])
            else:  # comments, named or multi-line events: the line-by-line rules
                out.extend(ev.data for ev in self.feed(block + b"\n\n"))
        if rest:
            out.extend(ev.data for ev in self.feed(rest))
        return out

    def flush(self) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf, events)
            self._buf = b""
        self._line(b"", events)  # an unterminated last event still counts at end of stream
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(b"\n".join(self._data), self._event))
            self._data = []
            self._event = None
            return
        if line[0] == 0x3A:  # ':' comment / keep-alive
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # id: and retry: mean nothing to a one-shot LLM stream


class NDJSONDecoder:
    """Newline-delimited JSON: yields each non-blank line's bytes (parsing is the caller's choice)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\n" not in buf:
            self._buf = buf
            return []
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        return [ln for ln in lines if ln.strip()]

    def flush(self) -> list[bytes]:
        rest, self._buf = self._buf, b""
        return [rest] if rest.strip() else []


def encode_sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
