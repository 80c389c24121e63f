"""The one shape of a stream translator, and the small ones that need no state of their own (sans-IO).

The relay (`pipeline.relay`) runs any `StreamTranslator` over any upstream answer: `feed(bytes) -> bytes`
for each read, `finish() -> bytes` at the end, `error_frame(err)` for a failure after the first byte, and
`report(rec)` for what it saw (tokens, first token, text). Translators compose: `Chain(a, b)` feeds what `a`
makes into `b` (an Ollama backend's NDJSON -> the pivot's SSE -> a third front's frames).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import orjson

from ..errors import OllamuxError, openai_error_type
from .rewrite import ModelLineRewriter

if TYPE_CHECKING:
    from ..observe import RequestRecord

__all__ = [
    "Chain",
    "NDJSONPassthrough",
    "SSEPassthrough",
    "StreamTranslator",
    "ndjson_error",
    "ollama_counts",
    "sse_error",
    "sse_error_for",
    "usage_from_bytes",
]


class StreamTranslator(Protocol):
    """Upstream bytes in (any split), client bytes out."""

    content_type: str  # what the client is told the stream is

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes:
        """What is left once the upstream ended (the final object, `[DONE]`); raises if it ended early."""
        ...

    def pending(self) -> bytes:
        """What the last `feed` (or `finish`) made before it raised, taken once: `error_frame` sends it
        ahead of the error, and a `Chain` passes its first's on through its second, so the tokens that
        came in the same read as a failure still reach the client."""
        ...

    def error_frame(self, err: OllamuxError) -> bytes:
        """`pending()`, then the one final frame that tells the client, in its own format, that the
        stream failed."""
        ...

    def report(self, rec: RequestRecord) -> None:
        """Tokens, first token time and text seen so far, into the request's record."""
        ...


def sse_error(err: OllamuxError) -> bytes:
    """A failure after the first byte, as the one frame the openai SDKs turn into an APIError."""
    return b"data: " + orjson.dumps(err.openai_payload()) + b"\n\n"


def anthropic_sse_error(err: OllamuxError) -> bytes:
    """A failure after the first byte as Anthropic writes it mid-stream: `event: error` with the error
    envelope. The SDK's `Stream.__stream__` (`_streaming.py`) raises an APIStatusError carrying it; a bare
    `data:` frame it would skip, and the stream would end as if cut (`stream ended without message_start`)."""
    return b"event: error\ndata: " + orjson.dumps(err.anthropic_payload()) + b"\n\n"


def responses_sse_error(err: OllamuxError) -> bytes:
    """A failure after the first byte of a Responses stream: OpenAI's `error` event (`ResponseErrorEvent`),
    with the chat API's `error` object too, which is what makes the SDK raise (see pivot_to_responses)."""
    event = {"type": "error", "code": err.code or openai_error_type(err.status), "message": err.message}
    payload = err.openai_payload()["error"]
    return b"event: error\ndata: " + orjson.dumps({**event, "param": err.param, "error": payload}) + b"\n\n"


def sse_error_for(api: str) -> Callable[[OllamuxError], bytes]:
    """The mid-stream error frame of the API the client speaks: a stream relayed untouched still ends, on a
    failure, in a frame the client's own SDK reads as one (each front's translator renders its own)."""
    if api == "anthropic":
        return anthropic_sse_error
    if api == "responses":
        return responses_sse_error
    return sse_error


def ndjson_error(err: OllamuxError) -> bytes:
    """A failure after the first byte as Ollama writes it: one last `{"error": ...}` line."""
    return orjson.dumps({"error": err.message}) + b"\n"


_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_USAGE_SPAN = 1024  # a usage object, with its *_details, fits in this


def usage_from_bytes(data: bytes) -> tuple[int | None, int | None] | None:
    """Token counts from the last `"usage"` object in an OpenAI answer's bytes, without parsing it
    (the counts are plain integers wherever they sit); None when there is none."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    usage = data[at : at + _USAGE_SPAN]
    prompt = _PROMPT_TOKENS.search(usage)
    completion = _COMPLETION_TOKENS.search(usage)
    return (int(prompt[1]) if prompt else None, int(completion[1]) if completion else None)


Redact = Callable[[bytes], bytes]
_TAIL = 4096  # the last bytes of a relayed stream searched for an upstream error event (for the log row)


def error_in(data: bytes, prefix: bytes) -> str | None:
    """The message of an error object a relayed stream carries in `data` (its lines start with `prefix`),
    for the request log: relayed bytes are not parsed otherwise, so this runs only when `"error"` is in them."""
    for line in data.splitlines():
        if not line.startswith(prefix) or b'"error"' not in line:
            continue
        try:
            obj = orjson.loads(line[len(prefix) :])
        except orjson.JSONDecodeError:
            continue
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict):
            err = err.get("message")
        if isinstance(err, str) and err:
            return err
    return None


class SSEPassthrough:
    """An OpenAI stream relayed as it came: the bytes untouched (but for a backend's echoed secrets), usage
    read from the last frames."""

    __slots__ = ("_error_frame", "_first_ns", "_last", "_prev", "_redact", "content_type")

    def __init__(
        self,
        content_type: str,
        redact: Redact | None = None,
        error_frame: Callable[[OllamuxError], bytes] = sse_error,
    ) -> None:
        self.content_type = content_type
        self._redact = redact
        self._error_frame = error_frame
        self._prev = self._last = b""
        self._first_ns: int | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self._first_ns is None:
            self._first_ns = time.perf_counter_ns()
        if self._redact is not None:
            chunk = self._redact(chunk)
        self._prev, self._last = self._last, chunk
        return chunk

    def finish(self) -> bytes:
        return b""

    def pending(self) -> bytes:
        return b""  # every read goes out as it came

    def error_frame(self, err: OllamuxError) -> bytes:
        return self._error_frame(err)

    def report(self, rec: RequestRecord) -> None:
        rec.first_token_ns = self._first_ns
        # an upstream error event ends its stream, so it is among the last bytes; scanning only those keeps
        # the per-chunk path free of a search (`"error"` is slow to find in JSON full of quotes)
        tail = self._prev[-_TAIL:] + self._last[-_TAIL:]
        if rec.error is None and tail.find(b'"error"') >= 0:
            rec.error = error_in(tail, b"data: ")
        # the usage chunk is among the last frames, perhaps cut between the last two reads
        counts = usage_from_bytes(self._last) or usage_from_bytes(self._prev[-_USAGE_SPAN:] + self._last)
        if counts is not None:
            rec.count_tokens(*counts)


_PROMPT_COUNT = re.compile(rb'"prompt_eval_count"\s*:\s*(\d+)')
_EVAL_COUNT = re.compile(rb'"eval_count"\s*:\s*(\d+)')


def ollama_counts(data: bytes) -> tuple[int | None, int | None]:
    """Token counts from the last Ollama object in `data` (the final `done` line carries them)."""
    prompt = _PROMPT_COUNT.findall(data)
    evals = _EVAL_COUNT.findall(data)
    return (int(prompt[-1]) if prompt else None, int(evals[-1]) if evals else None)


class NDJSONPassthrough:
    """An Ollama stream relayed as it came, each line's `model` turned back into the client's name (when
    the backend serves it under another), usage read from the final line."""

    __slots__ = ("_first_ns", "_last", "_redact", "_rewriter", "content_type")

    def __init__(self, content_type: str, rewriter: ModelLineRewriter | None, redact: Redact | None = None) -> None:
        self.content_type = content_type
        self._rewriter = rewriter
        self._redact = redact
        self._last = b""
        self._first_ns: int | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self._first_ns is None:
            self._first_ns = time.perf_counter_ns()
        if self._rewriter is not None:
            chunk = self._rewriter.feed(chunk)
        if self._redact is not None:
            chunk = self._redact(chunk)
        if chunk:
            self._last = chunk
        return chunk

    def finish(self) -> bytes:
        rest = self._rewriter.flush() if self._rewriter is not None else b""
        if rest:
            self._last = rest
        return rest

    def pending(self) -> bytes:
        return b""  # every read goes out as it came

    def error_frame(self, err: OllamuxError) -> bytes:
        return ndjson_error(err)

    def report(self, rec: RequestRecord) -> None:
        rec.first_token_ns = self._first_ns
        tail = self._last[-_TAIL:]
        if rec.error is None and tail.find(b'"error"') >= 0:
            rec.error = error_in(tail, b"")
        rec.count_tokens(*ollama_counts(self._last[-2048:]))


class Chain:
    """`first`'s output fed into `second`: a backend's stream to the pivot, the pivot to the client's API."""

    __slots__ = ("content_type", "first", "second")

    def __init__(self, first: StreamTranslator, second: StreamTranslator) -> None:
        self.first = first
        self.second = second
        self.content_type = second.content_type

    def feed(self, chunk: bytes) -> bytes:
        mid = self.first.feed(chunk)
        return self.second.feed(mid) if mid else b""

    def finish(self) -> bytes:
        out = self.second.feed(self.first.finish())
        return out + self.second.finish()

    def pending(self) -> bytes:
        # one of the two raised: if `first`, what it made never reached `second`, and goes through it now
        made = self.second.pending()
        mid = self.first.pending()
        if mid:
            try:
                made += self.second.feed(mid)
            except Exception:  # the failure's own error frame follows; keep what `second` made of it
                made += self.second.pending()
        return made

    def error_frame(self, err: OllamuxError) -> bytes:
        return self.pending() + self.second.error_frame(err)

    def report(self, rec: RequestRecord) -> None:
        self.first.report(rec)
        self.second.report(rec)
