"""Ollama NDJSON lines to OpenAI SSE frames, statefully (sans-IO, the mirror of `openai_to_ollama`).

What OpenAI clients rely on and Ollama's own `/v1` layer does: the role in the first chunk, thinking
and content in separate chunks, whole tool calls with string arguments, then a separate finish chunk
(`delta: {}`), the usage chunk (`choices: []`) when `stream_options.include_usage` asked for it, and
`data: [DONE]`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

import orjson

from ..errors import OllamuxError, UpstreamError
from ..translate.checks import opt_field
from ..translate.from_ollama import FINGERPRINT, finish_reason, openai_tool_calls, usage
from .codecs import DEFAULT_MAX_EVENT_BYTES, NDJSONDecoder
from .translator import sse_error

if TYPE_CHECKING:
    from ..observe import RequestRecord

__all__ = ["DONE", "OllamaToOpenAIStream", "error_frame"]

Kind = Literal["chat", "completion"]

DONE = b"data: [DONE]\n\n"


def _frame(obj: Any) -> bytes:
    # orjson escapes CR and LF inside strings, so one JSON value is always one SSE data line
    return b"data: " + orjson.dumps(obj) + b"\n\n"


error_frame = sse_error  # the name callers knew it by


class OllamaToOpenAIStream:
    """Feed upstream bytes (any split) or whole lines; get SSE frames. Call `finish()` once at the end."""

    content_type = "text/event-stream"

    def __init__(
        self,
        model: str,
        kind: Kind,
        *,
        id: str,
        created: int,
        include_usage: bool = False,
        max_line_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.model = model
        self.kind = kind
        self.id = id
        self.created = created
        self.include_usage = include_usage
        self.done = False
        self.done_reason: Any = None
        self.usage: dict[str, int] | None = None
        self.text_parts: list[str] = []  # what the model said, for the request log
        self._decoder = NDJSONDecoder(max_line_bytes=max_line_bytes)
        self._first_ns: int | None = None
        self._pending: list[bytes] = []
        self._role_sent = False
        self._calls_sent = 0
        self._object = "chat.completion.chunk" if kind == "chat" else "text_completion"

    # ------------------------------------------------------------------------------------ framing
    def _chunk(self, choice: dict[str, Any] | None) -> bytes:
        return _frame(
            {
                "id": self.id,
                "object": self._object,
                "created": self.created,
                "model": self.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [choice] if choice is not None else [],
            }
        )

    def _delta(self, fields: dict[str, Any], logprobs: Any = None) -> bytes:
        delta: dict[str, Any] = {}
        if not self._role_sent:
            delta["role"] = "assistant"
            self._role_sent = True
        delta.update(fields)
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return self._chunk(choice)

    def _text(self, text: str) -> bytes:
        self._role_sent = True
        return self._chunk({"text": text, "index": 0, "logprobs": None, "finish_reason": None})

    # -------------------------------------------------------------------------------------- input
    def feed(self, data: bytes) -> bytes:
        """Raw upstream bytes, split anywhere."""
        if self._first_ns is None:
            self._first_ns = time.perf_counter_ns()
        out = self._pending
        for line in self._decoder.feed(data):
            out.extend(self.feed_line(line))  # on a failure the frames made so far wait for error_frame
        frames = b"".join(out)
        out.clear()
        return frames

    def pending(self) -> bytes:
        made = b"".join(self._pending)
        self._pending.clear()
        return made

    def error_frame(self, err: OllamuxError) -> bytes:
        return self.pending() + sse_error(err)

    def report(self, rec: RequestRecord) -> None:
        rec.first_token_ns = rec.first_token_ns or self._first_ns
        if self.usage is not None:
            rec.count_tokens(self.usage["prompt_tokens"], self.usage["completion_tokens"])
        rec.response_text = "".join(self.text_parts)

    def feed_line(self, line: bytes) -> list[bytes]:
        """One complete NDJSON line."""
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise UpstreamError("backend sent a stream line that is not JSON", status=502) from None
        if not isinstance(obj, dict) or self.done:
            return []
        if obj.get("error"):
            err = obj["error"]
            raise UpstreamError(err if isinstance(err, str) else orjson.dumps(err).decode(), status=500)
        out: list[bytes] = []
        done = obj.get("done") is True
        if self.kind == "chat":
            msg = opt_field(obj, "message", dict, "a stream line") or {}
            thinking = opt_field(msg, "thinking", str, "a message")
            content = opt_field(msg, "content", str, "a message") or ""
            calls = opt_field(msg, "tool_calls", list, "a message")
            logprobs = obj.get("logprobs")
            if thinking:
                out.append(self._delta({"reasoning_content": thinking}, logprobs))
                logprobs = None  # logprobs go on the first of the split chunks only
            if content or calls or not (self._role_sent or done):
                fields: dict[str, Any] = {"content": content}
                if calls:
                    fields["tool_calls"] = openai_tool_calls(calls, start=self._calls_sent)
                    self._calls_sent += len(fields["tool_calls"])
                if content:
                    self.text_parts.append(content)
                out.append(self._delta(fields, logprobs))
        else:
            text = opt_field(obj, "response", str, "a stream line") or ""
            if text or not (self._role_sent or done):
                self.text_parts.append(text)
                out.append(self._text(text))
        if done:
            self.done = True
            self.done_reason = obj.get("done_reason")
            self.usage = usage(obj)
        return out

    def finish(self) -> bytes:
        """The finish chunk, the usage chunk if asked, `[DONE]`; after whatever the upstream left."""
        out = self._pending
        for line in self._decoder.flush():
            out.extend(self.feed_line(line))
        if not self.done:
            raise UpstreamError("backend stream ended before its final (done) line", status=502)
        reason = finish_reason(self.done_reason, self._calls_sent > 0)
        if self.kind == "chat":
            if not self._role_sent:  # an empty answer still tells the client who spoke
                out.append(self._delta({"content": ""}))
            out.append(self._chunk({"index": 0, "delta": {}, "finish_reason": reason}))
        else:
            out.append(self._chunk({"text": "", "index": 0, "logprobs": None, "finish_reason": reason}))
        if self.include_usage:
            frame = {
                "id": self.id,
                "object": self._object,
                "created": self.created,
                "model": self.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [],
                "usage": self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
            out.append(_frame(frame))
        out.append(DONE)
        frames = b"".join(out)
        out.clear()
        return frames
