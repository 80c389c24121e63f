"""The pivot's SSE (chat.completion.chunk events) as Anthropic's Messages stream (sans-IO).

The shapes and their order are what the `anthropic` SDK consumes: `types/raw_message_stream_event.py` and
the `raw_*_event.py` files it names, accumulated by `lib/streaming/_messages.py` (`accumulate_event`):
`message_start`, `ping`, then per content block `content_block_start` / `content_block_delta` /
`content_block_stop` (one block open at a time, numbered in order), then `message_delta` (stop reason
and usage) and `message_stop`. `_streaming.py` skips an event that has no `event:` line, so every frame
names its event; Claude Code needs them too.

Tool calls come as fragments keyed by `index`, possibly interleaved. A call streams live while it is the
open block; fragments of any other call are held, and the open call gives way to the next only once its
arguments so far are a whole JSON value (so no fragment arrives for a closed block), else at the end.
Text or thinking arriving in the middle of a call's arguments (no real parser does that) closes its block
where they start; a fragment for that call after it is lost.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import OllamuxError, UpstreamError
from ..translate.anthropic import MessageMeta, message_usage, stop_reason, tool_use_id
from .codecs import DEFAULT_MAX_EVENT_BYTES, SSEDecoder
from .pivot_chunk import read_chunk
from .translator import anthropic_sse_error

if TYPE_CHECKING:
    from ..observe import RequestRecord

__all__ = ["PivotToAnthropicStream"]

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_DELTA_END = b"}}\n\n"

# the states of a tool call
_HELD = 0  # seen, its fragments held: not yet a block
_OPEN = 1  # the open block: its fragments go out as they come
_CLOSED = 2


def _frame(event: bytes, obj: Any) -> bytes:
    return b"event: " + event + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


class _Call:
    __slots__ = ("checked", "complete", "held", "id", "n", "name", "seen", "state")

    def __init__(self, n: int) -> None:
        self.n = n  # its rank in the message, for an id when the backend gave none
        self.id = ""
        self.name = ""
        self.state = _HELD
        self.held: list[str] = []  # argument fragments not yet sent
        self.seen: list[str] = []  # every argument fragment, for the completeness check
        self.checked = -1  # how many fragments `complete` was computed over
        self.complete = False

    def is_complete(self) -> bool:
        """Whether the arguments so far are a whole JSON value (parsed again only when they grew)."""
        if self.checked != len(self.seen):
            self.checked = len(self.seen)
            try:
                orjson.loads("".join(self.seen))
            except orjson.JSONDecodeError:
                self.complete = False
            else:
                self.complete = True
        return self.complete


class PivotToAnthropicStream:
    """Pivot SSE bytes in (any split), Anthropic SSE frames out; `finish()` once at the end."""

    content_type = "text/event-stream"

    def __init__(self, meta: MessageMeta, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.meta = meta
        self._decoder = SSEDecoder(max_event_bytes=max_event_bytes)
        self._out: list[bytes] = []  # frames of the current read; kept for error_frame if it raises
        self._started = False
        self._ended = False
        self._index = -1  # the last block's index
        self._open: str | _Call | None = None  # "text", "thinking", a tool call, or no block
        self._head = b""  # the open block's delta frame up to its JSON string
        self._calls: list[_Call] = []
        self._by_index: dict[int, _Call] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.text_parts: list[str] = []  # what the model said, for the request log
        self.first_token_ns: int | None = None

    # ------------------------------------------------------------------------ the translator protocol
    def feed(self, chunk: bytes) -> bytes:
        if not self._started:
            self._start()
        for data in self._decoder.payloads(chunk):
            self._event(data)
        return self._take()

    def finish(self) -> bytes:
        if not self._started:
            self._start()
        for ev in self._decoder.flush():
            if ev.data != b"[DONE]" and not _is_json(ev.data):
                continue  # the stream was cut inside its last event: `_end` says so if it had not ended
            self._event(ev.data)
        if not self._ended:
            self._end()
        return self._take()

    def pending(self) -> bytes:
        return self._take()

    def error_frame(self, err: OllamuxError) -> bytes:
        # the frames made before the failure (same read) still go out, then the error
        return self._take() + anthropic_sse_error(err)

    def report(self, rec: RequestRecord) -> None:
        rec.first_token_ns = self.first_token_ns
        usage = self.usage or {}
        rec.count_tokens(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        rec.response_text = "".join(self.text_parts)

    # ------------------------------------------------------------------------------------- events in
    def _take(self) -> bytes:
        out = self._out
        if not out:
            return b""
        made = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return made

    def _event(self, data: bytes) -> None:
        if self._ended:
            return
        if data == b"[DONE]":
            self._end()
            return
        chunk = read_chunk(data)
        if chunk is None:
            return
        if chunk.usage:
            self.usage = chunk.usage
        if chunk.reasoning:
            self._say("thinking", chunk.reasoning)
        if chunk.content:
            self.text_parts.append(chunk.content)
            self._say("text", chunk.content)
        if chunk.tool_calls and isinstance(chunk.tool_calls, list):
            self._fragments(chunk.tool_calls)
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
            self._close_all()  # the blocks end now; message_delta waits for the usage chunk after this one

    # ----------------------------------------------------------------------------------- frames out
    def _first(self) -> None:
        if self.first_token_ns is None:
            self.first_token_ns = time.perf_counter_ns()

    def _start(self) -> None:
        self._started = True
        message: dict[str, Any] = {
            "id": self.meta.id,
            "type": "message",
            "role": "assistant",
            "model": self.meta.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # the counts are known only at the end: message_delta carries them (the SDK overwrites these)
            "usage": message_usage(None),
        }
        self._out.append(_frame(b"message_start", {"type": "message_start", "message": message}))
        self._out.append(_PING)

    def _say(self, kind: str, text: str) -> None:
        """A text or thinking delta, in a block of its kind (opened after closing another)."""
        if self.first_token_ns is None:
            self.first_token_ns = time.perf_counter_ns()
        if self._open != kind:
            self._close()
            self._index += 1
            if kind == "text":
                block: dict[str, Any] = {"type": "text", "text": ""}
                delta = b'"type":"text_delta","text":'
            else:
                block = {"type": "thinking", "thinking": "", "signature": ""}
                delta = b'"type":"thinking_delta","thinking":'
            self._block_start(block)
            self._head = self._delta_head(delta)
            self._open = kind
        self._out.append(self._head + orjson.dumps(text) + _DELTA_END)

    def _block_start(self, block: dict[str, Any]) -> None:
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        self._out.append(_frame(b"content_block_start", start))

    def _delta_head(self, delta: bytes) -> bytes:
        # one delta frame is this prefix, the JSON string, `}}`: built once a block, not per token
        return (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
            + str(self._index).encode()
            + b',"delta":{'
            + delta
        )

    def _close(self) -> None:
        open_ = self._open
        if open_ is None:
            return
        if open_ == "thinking":
            # Anthropic ends a thinking block with its signature; a local model has none to give
            signature = {"type": "signature_delta", "signature": ""}
            delta = {"type": "content_block_delta", "index": self._index, "delta": signature}
            self._out.append(_frame(b"content_block_delta", delta))
        elif isinstance(open_, _Call):
            open_.state = _CLOSED
        self._out.append(_frame(b"content_block_stop", {"type": "content_block_stop", "index": self._index}))
        self._open = None

    def _open_call(self, call: _Call) -> None:
        self._close()
        self._index += 1
        block = {"type": "tool_use", "id": call.id or tool_use_id(self.meta, call.n), "name": call.name, "input": {}}
        self._block_start(block)
        self._head = self._delta_head(b'"type":"input_json_delta","partial_json":')
        self._open = call
        call.state = _OPEN
        if call.held:
            self._out.append(self._head + orjson.dumps("".join(call.held)) + _DELTA_END)
            call.held.clear()

    def _fragments(self, frags: list[Any]) -> None:
        """Tool-call fragments: assembled by index, like `openai_to_ollama`'s. A new id on a known index is
        a new call (backends that reuse index 0), and so is an id on an id-less call that already has its
        name and arguments: OpenAI sends the id only in a call's first fragment."""
        self._first()
        for frag in frags:
            if not isinstance(frag, dict):
                continue
            idx = frag.get("index")
            fid = frag.get("id")
            fid = fid if isinstance(fid, str) else ""
            call = self._by_index.get(idx) if isinstance(idx, int) else (self._calls[-1] if self._calls else None)
            if call is None or (fid and fid != call.id and (call.id or (call.name and call.seen))):
                call = _Call(len(self._calls))
                self._calls.append(call)
                if isinstance(idx, int):
                    self._by_index[idx] = call
            fn = frag.get("function")
            fn = fn if isinstance(fn, dict) else {}
            if call.state == _HELD:
                if fid and not call.id:
                    call.id = fid
                name = fn.get("name")
                # a name repeated in every fragment (some servers do) is the same name, not more of it
                if isinstance(name, str) and name and name != call.name:
                    call.name += name
            args = fn.get("arguments")
            if isinstance(args, str) and args:
                if call.state == _OPEN:
                    self._out.append(self._head + orjson.dumps(args) + _DELTA_END)
                    call.seen.append(args)
                elif call.state == _HELD:
                    call.held.append(args)
                    call.seen.append(args)
            if call.state == _HELD and call.name and self._may_open():
                self._open_call(call)

    def _may_open(self) -> bool:
        """Whether another block may start: the open one is not a tool call still writing its arguments."""
        open_ = self._open
        return not isinstance(open_, _Call) or open_.is_complete()

    def _close_all(self) -> None:
        """The open block, then every held call as a whole block, in the order they came."""
        self._close()
        for call in self._calls:
            if call.state == _HELD:
                self._open_call(call)
                self._close()

    def _end(self) -> None:
        if self.finish_reason is None:
            raise UpstreamError("backend stream ended before it said why it stopped (no finish_reason)", status=502)
        self._close_all()
        delta = {"stop_reason": stop_reason(self.finish_reason, bool(self._calls)), "stop_sequence": None}
        usage = message_usage(self.usage)
        self._out.append(_frame(b"message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        self._out.append(_MESSAGE_STOP)
        self._ended = True
