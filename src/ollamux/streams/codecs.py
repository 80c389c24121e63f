"""Sans-IO incremental decoders: `feed(bytes) -> events`, `flush() -> events`.

They accept any split of the byte stream (a frame cut mid-line, mid-CRLF or mid-UTF-8 sequence), which
the unit tests prove by feeding byte by byte and in random splits.

They are linear in their input and bounded. A read is searched once for line breaks; the unfinished line
it ends with is kept as a list of reads and joined once, when its line break arrives. (Joining the held
bytes to every new read and searching them again made one 100 MB event cost 33 s, in ~64 KiB reads.) A
line or event whose held bytes pass `max_event_bytes` raises `EventTooLarge` at once, before the decoder
holds any more of it.
"""

from __future__ import annotations

from typing import NamedTuple, NoReturn

from ..errors import EventTooLarge

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "LineBuffer", "NDJSONDecoder", "SSEDecoder", "SSEEvent", "encode_sse"]

# bytes looked for as ints: `0x0A in data` is one memchr, `b"\n" in data` ~2 K instructions more (see
# jsonutil.escape_line_breakers)
_CR, _LF = 0x0D, 0x0A

# The default of the backend setting `max_event_bytes`: far above any token event, and a base64 image in
# one event still fits
DEFAULT_MAX_EVENT_BYTES = 128 * 1024 * 1024  # = config.BackendSettings.max_event_bytes


class SSEEvent(NamedTuple):
    # a tuple, not a frozen dataclass: one is built per token, and this is 3x cheaper to build
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Server-sent events per the WHATWG parsing rules, reduced to what LLM backends send.

    An event's size is its lines joined by one LF each, without the line break that ends its last line
    and the blank line after it (so CRLF streams measure as LF ones, and `data: x` is 7 bytes); comment,
    `id:` and `event:` lines count too. An event of exactly `max_event_bytes` passes; one byte more raises
    `EventTooLarge`, for any split of the stream. Events completed earlier in the read that raises are
    not returned: the stream ends in an error anyway. A decoder that raised is spent.
    """

    __slots__ = ("_data", "_event", "_held", "_held_len", "_max", "_pending_cr", "_size")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._held: list[bytes] = []  # the unfinished line, one part per read (LF-only, never empty parts)
        self._held_len = 0
        # the current event's finished lines and their line breaks: 0 exactly when no line of it has ended
        self._size = 0
        self._data: list[bytes] = []
        self._event: str | None = None
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr:
            # a CR ended the previous chunk: a LF right after it belongs to the same line break
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if _CR in chunk:
            if chunk[-1:] == b"\r":
                self._pending_cr = True
            # per read, so linear; a CRLF cut between two reads is the pending CR above
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return self._lines(chunk)

    def payloads(self, chunk: bytes) -> list[bytes]:
        """The data of every event this chunk completes, event names dropped: the per-token hot path.

        Backends send one `data: {...}` line per event; such an event is cut out whole, without the line
        loop. Anything else (CRs, comments, named or multi-line events, an event whose lines began in an
        earlier chunk, a read larger than the limit) goes through the line loop, so both give the same
        data for any split of the stream.
        """
        if self._pending_cr or self._size or _CR in chunk:
            return [ev.data for ev in self.feed(chunk)]
        end = chunk.rfind(b"\n\n")
        if end < 0:
            return [ev.data for ev in self._lines(chunk)]  # no event ends in this chunk
        if self._held_len:
            # the first line of this event began in an earlier read; it has no line break yet (`_size` is 0),
            # so the last blank line is in this chunk, and the held bytes are joined once, now
            if self._held_len + len(chunk) > self._max:
                return [ev.data for ev in self._lines(chunk)]  # the line loop measures the event
            end += self._held_len
            held = self._held
            held.append(chunk)
            buf = b"".join(held)
            held.clear()
            self._held_len = 0
        elif len(chunk) > self._max:
            # an event in here may pass the limit: the line loop measures each one (never on a token stream)
            return [ev.data for ev in self._lines(chunk)]
        else:
            buf = chunk
        rest = buf[end + 2 :]  # the start of an unfinished event: the line loop keeps it
        if buf.startswith(b"data: "):
            # the usual case, counted and split in C: every complete event is one `data: ` line
            out = buf[6:end].split(b"\n\ndata: ")
            # no line break inside any: one line each (a join and memchr: ~5x fewer instructions than
            # counting the read's line breaks, which CPython does byte by byte)
            if _LF not in b"".join(out):
                if rest:
                    out.extend(ev.data for ev in self._lines(rest))
                return out
        out = []
        for block in buf[:end].split(b"\n\n"):
            if block[:6] == b"data: " and _LF not in block:
                out.append(block[6:])
            else:  # comments, named or multi-line events: the line-by-line rules
                out.extend(ev.data for ev in self._lines(block + b"\n\n"))
        if rest:
            out.extend(ev.data for ev in self._lines(rest))
        return out

    def flush(self) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self._held:
            self._line(self._join(b""), events)
        self._line(b"", events)  # an unterminated last event still counts at end of stream
        return events

    def _lines(self, chunk: bytes) -> list[SSEEvent]:
        """The events that LF-only `chunk` completes; its unfinished last line is held."""
        lines = chunk.split(b"\n")
        tail = lines.pop()
        events: list[SSEEvent] = []
        if lines:
            if self._held:
                lines[0] = self._join(lines[0])
            for line in lines:
                self._line(line, events)
        if tail:
            n = self._held_len + len(tail)
            if self._size + n > self._max:
                self._too_large()
            self._held.append(tail)
            self._held_len = n
        return events

    def _join(self, part: bytes) -> bytes:
        """The held line with its last part: checked before it is joined, so it is never built past the limit."""
        if self._size + self._held_len + len(part) > self._max:
            self._too_large()
        held = self._held
        held.append(part)
        line = b"".join(held)
        held.clear()
        self._held_len = 0
        return line

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(b"\n".join(self._data), self._event))
            self._data = []
            self._event = None
            self._size = 0
            return
        size = self._size + len(line)
        if size > self._max:
            self._too_large()
        self._size = size + 1
        if line[0] == 0x3A:  # ':' comment / keep-alive
            return
        # the value is sliced once (partition, then dropping the space, copied a big event's data twice)
        if line.startswith(b"data:"):
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line == b"data":  # a field name alone has an empty value
            self._data.append(b"")
        elif line.startswith(b"event:"):
            self._event = (line[7:] if line[6:7] == b" " else line[6:]).decode("utf-8", "replace")
        elif line == b"event":
            self._event = ""
        # id: and retry: mean nothing to a one-shot LLM stream

    def _too_large(self) -> NoReturn:
        # let go of what the event holds now, even if the caller keeps the decoder
        self._held.clear()
        self._held_len = 0
        self._data = []
        raise EventTooLarge(self._max)


class LineBuffer:
    """LF-ended lines from any split of a byte stream, handed out in blocks: the core of the NDJSON decoder
    and of the pass-through model rewriter.

    A line's size is its bytes without the LF. A line of exactly `max_line_bytes` passes; one byte more
    raises `EventTooLarge` as soon as the buffer sees it (the buffer is then spent).
    """

    __slots__ = ("_held", "_held_len", "_max")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_line_bytes
        self._held: list[bytes] = []  # the unfinished line, one part per read, joined once when it ends
        self._held_len = 0

    def feed(self, chunk: bytes) -> bytes:
        """The lines `chunk` completes, the held start of the first one included, through the last LF (or b"")."""
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            self._hold(chunk)
            return b""
        block = chunk if cut == len(chunk) else chunk[:cut]
        held = self._held
        if held:
            if self._held_len + chunk.find(b"\n") > self._max:  # checked before the join: never built past it
                self._too_large()
            held.append(block)
            block = b"".join(held)
            held.clear()
            self._held_len = 0
        if len(chunk) > self._max and max(map(len, block.split(b"\n"))) > self._max:
            self._too_large()  # only a read larger than the limit can bring a whole line past it
        if cut < len(chunk):
            self._hold(chunk[cut:])
        return block

    def flush(self) -> bytes:
        """The unfinished last line (b"" if none): the stream has ended."""
        rest = b"".join(self._held)
        self._held.clear()
        self._held_len = 0
        return rest

    def _hold(self, part: bytes) -> None:
        n = self._held_len + len(part)
        if n > self._max:
            self._too_large()
        self._held.append(part)
        self._held_len = n

    def _too_large(self) -> NoReturn:
        self._held.clear()
        self._held_len = 0
        raise EventTooLarge(self._max, unit="line")


class NDJSONDecoder:
    """Newline-delimited JSON: yields each non-blank line's bytes (parsing is the caller's choice).

    Bounded as `LineBuffer` is: a line past `max_line_bytes` raises `EventTooLarge` (the lines completed
    earlier in that read are not returned: the stream ends in an error anyway).
    """

    __slots__ = ("_lines",)

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._lines = LineBuffer(max_line_bytes)

    def feed(self, chunk: bytes) -> list[bytes]:
        block = self._lines.feed(chunk)
        if not block:
            return []
        lines = block.split(b"\n")
        lines.pop()  # the b"" after the block's last LF
        return [ln for ln in lines if ln.strip()]

    def flush(self) -> list[bytes]:
        rest = self._lines.flush()
        return [rest] if rest.strip() else []


def encode_sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
