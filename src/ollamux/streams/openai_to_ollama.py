"""OpenAI SSE chunks to Ollama NDJSON lines, statefully: one object per upstream `data:` payload.

Tool-call fragments are assembled by index and emitted whole; `finish_reason` and `usage` (which comes
after the finish chunk when include_usage is on) are held until the stream ends, so that exactly one
`done: true` line carries the done reason and the metrics.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson

from ..errors import UpstreamError
from ..jsonutil import dumps_line, escape_line_breakers, now_rfc3339
from ..translate.from_openai import Timing, done_reason, final_metrics
from ..translate.tools import arguments_to_object

__all__ = ["OpenAIToOllamaStream", "upstream_error_message"]

Kind = Literal["chat", "generate", "raw"]


def upstream_error_message(err: Any) -> str:
    if isinstance(err, dict):
        msg = err.get("message")
        return str(msg) if msg else orjson.dumps(err).decode()
    return str(err)


class _Call:
    __slots__ = ("args", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.args: list[str] = []


class OpenAIToOllamaStream:
    """Feed each SSE data payload; get NDJSON lines to send. Call `finish()` once at the end."""

    def __init__(self, model: str, kind: Kind, timing: Timing, *, think: Any = None) -> None:
        self.model = model
        self.kind = kind
        self.timing = timing
        self.drop_thinking = think is False
        self.finish_reason: Any = None
        self.usage: Any = None
        self.timings: Any = None
        self.done_seen = False
        self.text_parts: list[str] = []  # what the model said, for the request log
        self._calls: list[_Call] = []
        self._by_index: dict[int, _Call] = {}
        # byte templates of a content line; same key order as the dict form (Go's struct order)
        self._head = b'{"model":' + orjson.dumps(model) + b',"created_at":"'
        if kind == "chat":
            self._mid = b'","message":{"role":"assistant","content":'
            self._tail = b'},"done":false}\n'
        else:
            self._mid = b'","response":'
            self._tail = b',"done":false}\n'

    # -------------------------------------------------------------------------------------- chunks
    def _chunk(self, content: str = "", thinking: str | None = None) -> bytes:
        if thinking is None:
            # the common line (a content delta) from prebuilt bytes: ~3x cheaper than a dict + dumps_line
            line = self._head + now_rfc3339().encode() + self._mid + orjson.dumps(content) + self._tail
            if b"\xe2\x80" in line or b"\xc2\x85" in line:
                line = escape_line_breakers(line)
            return line
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content, "thinking": thinking}
            return dumps_line(
                {"model": self.model, "created_at": now_rfc3339(), "message": message, "done": False}
            )
        obj: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339(), "response": content}
        obj["thinking"] = thinking
        obj["done"] = False
        return dumps_line(obj)

    def feed(self, data: bytes) -> list[bytes]:
        if data == b"[DONE]":
            self.done_seen = True
            return []
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("backend sent a stream event that is not JSON", status=502) from None
        if not isinstance(obj, dict):
            return []
        if obj.get("error") is not None:
            raise UpstreamError(upstream_error_message(obj["error"]), status=500)
        usage = obj.get("usage")
        if usage:
            self.usage = usage
        timings = obj.get("timings")
        if timings:
            self.timings = timings
        choices = obj.get("choices")
        if not choices:
            return []
        ch = choices[0]
        if not isinstance(ch, dict):
            return []
        out: list[bytes] = []
        if self.kind == "raw":
            text = ch.get("text")
            if text:
                self._first()
                self.text_parts.append(text)
                out.append(self._chunk(text))
        else:
            delta = ch.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and not self.drop_thinking:
                self._first()
                out.append(self._chunk("", reasoning))
            content = delta.get("content")
            if content:
                self._first()
                self.text_parts.append(content)
                out.append(self._chunk(content))
            calls = delta.get("tool_calls")
            if calls:
                self._first()
                self._add_calls(calls)
        fr = ch.get("finish_reason")
        if fr:
            self.finish_reason = fr
        return out

    def _first(self) -> None:
        if self.timing.first_token_ns is None:
            self.timing.first_token_ns = time.perf_counter_ns()

    def _add_calls(self, calls: Any) -> None:
        if not isinstance(calls, list):
            return
        for frag in calls:
            if not isinstance(frag, dict):
                continue
            idx = frag.get("index")
            fid = frag.get("id")
            call = self._by_index.get(idx) if isinstance(idx, int) else (self._calls[-1] if self._calls else None)
            # a new non-empty id on a known index is a new call (backends that reuse index 0)
            if call is None or (fid and call.id and fid != call.id):
                call = _Call()
                self._calls.append(call)
                if isinstance(idx, int):
                    self._by_index[idx] = call
            if fid and not call.id:
                call.id = fid
            fn = frag.get("function") or {}
            if fn.get("name"):
                call.name += fn["name"]
            if fn.get("arguments"):
                call.args.append(fn["arguments"])

    def tool_calls(self) -> list[dict[str, Any]]:
        out = []
        for i, c in enumerate(self._calls):
            call: dict[str, Any] = {}
            if c.id:
                call["id"] = c.id
            call["function"] = {"index": i, "name": c.name, "arguments": arguments_to_object("".join(c.args))}
            out.append(call)
        return out

    def finish(self, end_ns: int | None = None) -> list[bytes]:
        """The assembled tool calls (if any) and the one final `done: true` line."""
        out: list[bytes] = []
        if self._calls and self.kind == "chat":
            out.append(
                dumps_line(
                    {
                        "model": self.model,
                        "created_at": now_rfc3339(),
                        "message": {"role": "assistant", "content": "", "tool_calls": self.tool_calls()},
                        "done": False,
                    }
                )
            )
        out.append(dumps_line(self.final_object(end_ns)))
        return out

    def final_object(self, end_ns: int | None = None) -> dict[str, Any]:
        end = end_ns if end_ns is not None else time.perf_counter_ns()
        obj: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339()}
        if self.kind == "chat":
            obj["message"] = {"role": "assistant", "content": ""}
        else:
            obj["response"] = ""
        obj["done"] = True
        obj["done_reason"] = done_reason(self.finish_reason)
        obj.update(final_metrics(self.usage, self.timings, self.timing, end))
        return obj
