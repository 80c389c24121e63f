"""The pivot's SSE (chat.completion.chunk objects) as a Responses API event stream (sans-IO).

The events and their order are those the official SDK's accumulator builds a Response from
(`openai/lib/streaming/responses/_responses.py`, `ResponseStreamState`), with the shapes of
`openai/types/responses/response_*_event.py`: `response.created` and `response.in_progress` first; per
output item `response.output_item.added`, its parts and deltas, their `.done` events and
`response.output_item.done`; `response.completed` (or `response.incomplete`) last, carrying the whole
Response, the same object `translate.responses.from_pivot` makes of a JSON answer. Every event has the
next `sequence_number`.

Items follow the pivot's deltas: reasoning deltas are a `reasoning` item (as a summary), text deltas a
`message` item, each tool call (fragments by index, possibly interleaved) a `function_call` item. A new
reasoning or message item, or a tool call, closes the reasoning or message item before it; tool calls
stay open to the end, since their fragments may interleave. Open items are closed in order before the
final event.

A text delta costs one small `orjson.dumps` of the text between prebuilt bytes: the response object is
serialised only at the start and at the end.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import OllamuxError, UpstreamError, openai_error_type
from ..translate.checks import json_type
from ..translate.responses import (
    ResponseMeta,
    client_names,
    function_call_item,
    incomplete_reason,
    item_id,
    request_echo,
    response_object,
    usage_object,
)
from .codecs import DEFAULT_MAX_EVENT_BYTES, SSEDecoder
from .pivot_chunk import read_chunk

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..observe import RequestRecord

__all__ = ["PivotToResponsesStream"]


class _Item:
    """One output item while it streams: its deltas, and the bytes every delta frame of it starts with."""

    __slots__ = ("call_id", "done", "head", "id", "index", "kind", "name", "parts", "tail", "upstream_id")

    def __init__(self, kind: str, index: int, id_: str) -> None:
        self.kind = kind  # "reasoning", "message" or "function_call"
        self.index = index
        self.id = id_
        self.parts: list[str] = []
        self.head = b""
        self.tail = b',"sequence_number":'
        self.done: dict[str, Any] | None = None  # the finished item, once closed
        self.call_id = ""
        self.name = ""  # a call's pivot name
        self.upstream_id = ""  # a call's id as the backend sent it ("" when it sent none)


def _delta_head(kind: str, fields: dict[str, Any]) -> bytes:
    """`event: <kind>\\ndata: {"type": <kind>, <fields>, "delta":` - a delta frame up to its text."""
    obj = orjson.dumps({"type": kind, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + obj[:-1] + b',"delta":'


class PivotToResponsesStream:
    """Pivot SSE bytes in (any split), Responses SSE frames out; `response` is the final Response."""

    content_type = "text/event-stream"

    def __init__(
        self, request: Mapping[str, Any], meta: ResponseMeta, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> None:
        self._decoder = SSEDecoder(max_event_bytes=max_event_bytes)
        self._meta = meta
        self._echo = request_echo(request)  # once: every Response object of the stream repeats it
        self._names = client_names(request)
        self._out: list[bytes] = []  # frames made and not yet handed out (kept for error_frame on a failure)
        self._seq = 0
        self._started = False
        self._upstream_done = False  # `[DONE]` seen
        self._items: list[_Item] = []
        self._reasoning: _Item | None = None  # the open reasoning item
        self._message: _Item | None = None  # the open message item
        self._calls: dict[int, _Item] = {}  # tool calls by the pivot's index
        self._last_call: _Item | None = None
        self.finish_reason: Any = None
        self.usage: Any = None
        self.first_token_ns: int | None = None
        self.response: dict[str, Any] | None = None  # the final Response, once completed or incomplete

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
            self._event(ev.data)
        if self.response is None:
            if not self.finish_reason:
                raise UpstreamError("backend's stream ended before the answer was complete", status=502)
            self._final()
        return self._take()

    def pending(self) -> bytes:
        return self._take()

    def error_frame(self, err: OllamuxError) -> bytes:
        """`response.failed`, then the `error` event, after the frames made before the failure.

        The event is OpenAI's documented one (`type`, `code`, `message`, `param`: the SDK's
        `ResponseErrorEvent`) with the chat API's `error` object as well: the SDK raises an APIError
        with the message only for an event whose data has `error` (`openai/_streaming.py`, `Stream.
        __stream__`); without it, `responses.create(stream=True)` would yield the event and end quietly.
        `response.failed` before it is what clients that follow the lifecycle (Codex) read the failure
        from. It is skipped when the final event already went out.
        """
        if not self._started:
            self._start()
        if self.response is None:
            output = [it.done or self._item(it, "incomplete") for it in self._items]
            code = "rate_limit_exceeded" if err.status == 429 else "server_error"
            failed = response_object(
                self._meta,
                self._echo,
                status="failed",
                output=output,
                usage=usage_object(self.usage),
                error={"code": code, "message": err.message},
            )
            self._emit("response.failed", {"response": failed})
        payload = err.openai_payload()["error"]
        code = err.code or openai_error_type(err.status)
        self._emit("error", {"code": code, "message": err.message, "param": err.param, "error": payload})
        return self._take()

    def report(self, rec: RequestRecord) -> None:
        rec.first_token_ns = self.first_token_ns
        usage = self.usage if isinstance(self.usage, dict) else {}
        rec.count_tokens(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        rec.response_text = "".join(t for it in self._items if it.kind == "message" for t in it.parts)

    # ----------------------------------------------------------------------------------------- frames
    def _take(self) -> bytes:
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        obj = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        self._out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n")

    def _delta(self, item: _Item, text: str) -> None:
        if self.first_token_ns is None:
            self.first_token_ns = time.perf_counter_ns()
        item.parts.append(text)
        seq = self._seq
        self._seq = seq + 1
        self._out.append(item.head + orjson.dumps(text) + item.tail + str(seq).encode() + b"}\n\n")

    def _start(self) -> None:
        self._started = True
        created = response_object(self._meta, self._echo, status="in_progress", output=[])
        self._emit("response.created", {"response": created})
        self._emit("response.in_progress", {"response": created})

    # ----------------------------------------------------------------------------------------- events
    def _event(self, data: bytes) -> None:
        """One pivot SSE data payload."""
        if self.response is not None or self._upstream_done:
            return  # nothing counts after the end
        if data == b"[DONE]":
            self._upstream_done = True
            if self.finish_reason:
                self._final()  # now, not when the upstream closes: the client is done reading
            return
        chunk = read_chunk(data)
        if chunk is None:
            return
        if chunk.usage:
            self.usage = chunk.usage  # after the finish chunk when include_usage asked for it
        if chunk.reasoning:
            self._delta(self._reasoning or self._open_reasoning(), chunk.reasoning)
        if chunk.content:
            self._delta(self._message or self._open_message(), chunk.content)
        if chunk.tool_calls:
            self._fragments(chunk.tool_calls)
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason

    def _fragments(self, calls: Any) -> None:
        """Tool-call fragments: by index; a new non-empty id on a known index is a new call (backends that
        reuse index 0), as in `openai_to_ollama`."""
        if not isinstance(calls, list):
            raise UpstreamError(f"backend sent tool_calls that are {json_type(calls)}, not an array", status=502)
        for frag in calls:
            if not isinstance(frag, dict):
                continue
            idx = frag.get("index")
            fid = frag.get("id")
            fid = fid if isinstance(fid, str) else ""
            fn = frag.get("function")
            fn = fn if isinstance(fn, dict) else {}
            name = fn.get("name")
            name = name if isinstance(name, str) else ""
            args = fn.get("arguments")
            call = self._calls.get(idx) if isinstance(idx, int) else self._last_call
            if call is None or (fid and call.upstream_id and fid != call.upstream_id):
                call = self._open_call(fid, name)
                if isinstance(idx, int):
                    self._calls[idx] = call
            elif name:
                call.name += name  # a name in pieces: the added event had its start, the done one has it all
            self._last_call = call
            if self.first_token_ns is None:
                self.first_token_ns = time.perf_counter_ns()
            if isinstance(args, str) and args:
                self._delta(call, args)
            elif isinstance(args, dict):  # a backend that sends an object, not a string
                self._delta(call, orjson.dumps(args).decode())

    # ---------------------------------------------------------------------------------------- items
    def _new(self, kind: str, prefix: str) -> _Item:
        item = _Item(kind, len(self._items), item_id(self._meta, prefix, len(self._items)))
        self._items.append(item)
        return item

    def _open_reasoning(self) -> _Item:
        if self._message is not None:
            self._close(self._message, "completed")
        it = self._reasoning = self._new("reasoning", "rs")
        self._emit("response.output_item.added", {"output_index": it.index, "item": self._item(it, "in_progress")})
        where = {"item_id": it.id, "output_index": it.index, "summary_index": 0}
        self._emit("response.reasoning_summary_part.added", {**where, "part": {"type": "summary_text", "text": ""}})
        it.head = _delta_head("response.reasoning_summary_text.delta", where)
        return it

    def _open_message(self) -> _Item:
        if self._reasoning is not None:
            self._close(self._reasoning, "completed")
        it = self._message = self._new("message", "msg")
        self._emit("response.output_item.added", {"output_index": it.index, "item": self._item(it, "in_progress")})
        where = {"item_id": it.id, "output_index": it.index, "content_index": 0}
        self._emit("response.content_part.added", {**where, "part": _text_part("")})
        it.head = _delta_head("response.output_text.delta", where)
        it.tail = b',"logprobs":[],"sequence_number":'
        return it

    def _open_call(self, upstream_id: str, name: str) -> _Item:
        for open_item in (self._reasoning, self._message):
            if open_item is not None:
                self._close(open_item, "completed")
        it = self._new("function_call", "fc")
        it.upstream_id = upstream_id
        # the call_id is fixed now: the SDK matches the added and done items by it
        it.call_id = upstream_id or item_id(self._meta, "call", it.index)
        it.name = name
        self._emit("response.output_item.added", {"output_index": it.index, "item": self._item(it, "in_progress")})
        it.head = _delta_head("response.function_call_arguments.delta", {"item_id": it.id, "output_index": it.index})
        return it

    def _item(self, it: _Item, status: str) -> dict[str, Any]:
        """The item as it stands: "in_progress" is its form in `output_item.added` (nothing in it yet)."""
        text = "".join(it.parts)
        if it.kind == "reasoning":
            summary = [] if status == "in_progress" else [{"type": "summary_text", "text": text}]
            item: dict[str, Any] = {"id": it.id, "type": "reasoning", "summary": summary}
            if status == "incomplete":  # a finished reasoning item has no status, as in `from_pivot`
                item["status"] = status
            return item
        if it.kind == "message":
            content = [] if status == "in_progress" else [_text_part(text)]
            return {"id": it.id, "type": "message", "status": status, "role": "assistant", "content": content}
        return function_call_item(self._meta, it.index, it.call_id, it.name, text, self._names, status)

    def _close(self, it: _Item, status: str) -> None:
        text = "".join(it.parts)
        if it.kind == "reasoning":
            where: dict[str, Any] = {"item_id": it.id, "output_index": it.index, "summary_index": 0}
            self._emit("response.reasoning_summary_text.done", {**where, "text": text})
            self._emit(
                "response.reasoning_summary_part.done", {**where, "part": {"type": "summary_text", "text": text}}
            )
            self._reasoning = None
        elif it.kind == "message":
            where = {"item_id": it.id, "output_index": it.index, "content_index": 0}
            self._emit("response.output_text.done", {**where, "text": text, "logprobs": []})
            self._emit("response.content_part.done", {**where, "part": _text_part(text)})
            self._message = None
        else:
            self._emit(
                "response.function_call_arguments.done", {"item_id": it.id, "output_index": it.index, "arguments": text}
            )
        it.done = self._item(it, status)
        self._emit("response.output_item.done", {"output_index": it.index, "item": it.done})

    def _final(self) -> None:
        """Close what is open, in order, then `response.completed` (or `.incomplete`) with the Response."""
        incomplete = incomplete_reason(self.finish_reason)
        last = self._items[-1] if self._items else None
        for it in self._items:
            if it.done is None:
                self._close(it, "incomplete" if incomplete and it is last else "completed")
        response = response_object(
            self._meta,
            self._echo,
            status="incomplete" if incomplete else "completed",
            output=[it.done for it in self._items if it.done is not None],
            usage=usage_object(self.usage),
            incomplete=incomplete,
        )
        self._emit("response.incomplete" if incomplete else "response.completed", {"response": response})
        self.response = response


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
