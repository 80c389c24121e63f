"""A pivot stream (OpenAI SSE) gathered into the whole pivot answer it stands for, timed as it arrives (sans-IO).

Why: Ollama's non-streamed answers carry measured durations (server/routes.go: `prompt_eval_duration`
and `eval_duration` from the runner's timings, `omitempty`). llama.cpp's server reports its own
(`timings.prompt_ms`, `predicted_ms`, in a whole answer and in a stream's last event); other
OpenAI-compatible servers report none, and a whole answer then shows no time to its first token. For
those, the Ollama front asks for a stream and this collector makes the whole answer of it, with a
`timings` object measured here in llama.cpp's shape when the stream brought none: from `start_ns` (the
request's start, plus the model's load) to the first generated token is `prompt_ms`, the rest `predicted_ms`.

The answer is the chat (or completions) answer the backend would have sent: one choice with the text,
the reasoning, the tool calls (fragments joined by index), the log probabilities and the finish reason;
`usage` from the usage event. An error event is the backend's 500, as it would be on a stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..translate.checks import opt_field
from .codecs import DEFAULT_MAX_EVENT_BYTES, SSEDecoder
from .pivot_chunk import read_chunk

if TYPE_CHECKING:
    from ..backends.plan import PivotKind

__all__ = ["PivotCollector"]


class PivotCollector:
    """Pivot SSE bytes in (`feed`), the whole pivot answer out (`finish`)."""

    def __init__(
        self,
        kind: PivotKind,
        *,
        start_ns: int,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.kind = kind
        self.start_ns = start_ns
        self.clock = clock
        self.first_ns: int | None = None  # when the first generated token arrived
        self._decoder = SSEDecoder(max_event_bytes=max_event_bytes)
        self._head: dict[str, Any] = {}
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[dict[str, Any]] = []
        self._by_index: dict[Any, dict[str, Any]] = {}
        self._logprobs: list[Any] = []
        self._finish: Any = None
        self._usage: Any = None
        self._timings: Any = None

    def feed(self, chunk: bytes) -> None:
        for data in self._decoder.payloads(chunk):
            self._event(data)

    def finish(self) -> dict[str, Any]:
        for ev in self._decoder.flush():
            self._event(ev.data)
        end = self.clock()
        choice: dict[str, Any] = {"index": 0}
        if self.kind == "completion":
            choice["text"] = "".join(self._text)
        else:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text)}
            if self._reasoning:
                message["reasoning_content"] = "".join(self._reasoning)
            if self._calls:
                message["tool_calls"] = self._calls
            choice["message"] = message
        if self._logprobs:
            choice["logprobs"] = {"content": self._logprobs}
        choice["finish_reason"] = self._finish
        out: dict[str, Any] = {**self._head, "choices": [choice]}
        if self._usage is not None:
            out["usage"] = self._usage
        if self._timings is not None:
            out["timings"] = self._timings
        else:
            first = self.first_ns if self.first_ns is not None else end
            out["timings"] = {
                "prompt_ms": max(first - self.start_ns, 0) / 1e6,
                "predicted_ms": max(end - first, 0) / 1e6,
            }
        return out

    def _token(self) -> None:
        if self.first_ns is None:
            self.first_ns = self.clock()

    def _event(self, data: bytes) -> None:
        chunk = read_chunk(data)
        if chunk is None:
            return
        obj = chunk.obj
        if not self._head:
            self._head = {k: obj[k] for k in ("id", "created", "model") if k in obj}
        if chunk.usage:
            self._usage = chunk.usage
        timings = opt_field(obj, "timings", dict, "a stream event")
        if timings:
            self._timings = timings
        ch = chunk.choice
        if ch is None:
            return
        lp = ch.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            self._logprobs.extend(lp["content"])
        if ch.get("finish_reason"):
            self._finish = ch["finish_reason"]
        if self.kind == "completion":
            text = opt_field(ch, "text", str, "a stream choice")
            if text:
                self._token()
                self._text.append(text)
            return
        if chunk.reasoning:
            self._token()
            self._reasoning.append(chunk.reasoning)
        if chunk.content:
            self._token()
            self._text.append(chunk.content)
        calls = chunk.tool_calls
        if isinstance(calls, list):
            self._token()
            for frag in calls:
                if isinstance(frag, dict):
                    self._call_fragment(frag)

    def _call_fragment(self, frag: dict[str, Any]) -> None:
        """As `OpenAIToOllamaStream._add_calls`: by index, a new id on a known index being a new call."""
        idx = frag.get("index")
        fid = frag.get("id")
        known = isinstance(idx, int) and not isinstance(idx, bool)
        call = self._by_index.get(idx) if known else (self._calls[-1] if self._calls else None)
        if call is None or (fid and call["id"] and fid != call["id"]):
            call = {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            self._calls.append(call)
            if known:
                self._by_index[idx] = call
        if fid and not call["id"]:
            call["id"] = fid
        fn = frag.get("function")
        if isinstance(fn, dict):
            if isinstance(fn.get("name"), str):
                call["function"]["name"] += fn["name"]
            if isinstance(fn.get("arguments"), str):
                call["function"]["arguments"] += fn["arguments"]
