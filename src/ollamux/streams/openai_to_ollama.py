"""OpenAI SSE chunks to Ollama NDJSON lines, statefully: one object per upstream `data:` payload.

Tool-call fragments are assembled by index and emitted whole; `finish_reason` and `usage` (which comes
after the finish chunk when include_usage is on) are held until the stream ends, so that exactly one
`done: true` line carries the done reason and the metrics.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal

import orjson

from ..errors import OllamuxError, UpstreamError
from ..jsonutil import dumps_line, escape_line_breakers, now_rfc3339
from ..translate.checks import json_type, opt_field, upstream_error_message
from ..translate.from_openai import Timing, done_reason, final_metrics
from ..translate.logprobs import ollama_logprobs
from ..translate.tools import arguments_to_object
from .codecs import DEFAULT_MAX_EVENT_BYTES, SSEDecoder
from .translator import ndjson_error

if TYPE_CHECKING:
    from ..observe import RequestRecord

__all__ = ["OpenAIToOllamaStream"]

Kind = Literal["chat", "generate", "raw"]

# The fast path (see `feed_batch`): what a plain token event may hold besides its text.
_PLAIN_TOP = frozenset({"id", "object", "created", "model", "system_fingerprint", "choices", "usage", "service_tier"})
_PLAIN_CHOICE = frozenset({"index", "delta", "text", "finish_reason", "logprobs"})
_PLAIN_DELTA = frozenset({"content", "role"})
_TEMPLATE_MAX = 4096
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _fits(data: bytes, pre: bytes, suf: bytes) -> bool:
    """Whether an event's payload is a plain token event's template around a token (see `feed_batch`)."""
    return data.startswith(pre) and data.endswith(suf) and len(data) >= len(pre) + len(suf) + 2


class _Call:
    __slots__ = ("args", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.args: list[str] = []


class OpenAIToOllamaStream:
    """OpenAI SSE bytes in (`feed`), Ollama NDJSON out; `finish()` once at the end.

    `feed_event` / `feed_batch` take decoded SSE data payloads, `finish_lines` gives the last lines as a
    list: the event-level API the unit tests drive.
    """

    content_type = "application/x-ndjson"

    def __init__(
        self,
        model: str,
        kind: Kind,
        timing: Timing,
        *,
        think: Any = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        top_logprobs: int | None = None,
        context: Callable[[str], list[int]] | None = None,
    ) -> None:
        self._decoder = SSEDecoder(max_event_bytes=max_event_bytes)
        self.context = context  # a generate's final `context` from its answer (translate.gen_context)
        self.top_logprobs = top_logprobs  # None: the client asked for no logprobs (translate.logprobs)
        self._lines: list[bytes] = []
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
        self._template: tuple[bytes, bytes] | None = None  # bytes around a plain event's token (feed_batch)
        self._stamp: str | None = None  # the created_at of this read's lines (`_now`)
        # byte templates of a content line; same key order as the dict form (Go's struct order)
        self._head = b'{"model":' + orjson.dumps(model) + b',"created_at":"'
        if kind == "chat":
            self._mid = b'","message":{"role":"assistant","content":'
            self._tail = b'},"done":false}\n'
        else:
            self._mid = b'","response":'
            self._tail = b',"done":false}\n'

    # ------------------------------------------------------------------------ the translator protocol
    def feed(self, chunk: bytes) -> bytes:
        """One upstream read: its events decoded and translated in one batch (see `feed_batch`)."""
        lines = self._lines
        self._stamp = None
        self.feed_batch(self._decoder.payloads(chunk), lines)  # on a failure the lines wait for error_frame
        out = b"".join(lines) if len(lines) != 1 else lines[0]
        lines.clear()
        return out

    def finish(self) -> bytes:
        lines = self._lines
        self._stamp = None
        self.feed_batch([ev.data for ev in self._decoder.flush()], lines)
        lines.extend(self.finish_lines())
        out = b"".join(lines)
        lines.clear()
        return out

    def pending(self) -> bytes:
        made, self._lines = b"".join(self._lines), []
        return made

    def error_frame(self, err: OllamuxError) -> bytes:
        # the lines made before the failure (same read) still go out, then the error
        return self.pending() + ndjson_error(err)

    def report(self, rec: RequestRecord) -> None:
        rec.first_token_ns = self.timing.first_token_ns
        usage = self.usage if isinstance(self.usage, dict) else {}
        rec.count_tokens(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        rec.response_text = "".join(self.text_parts)

    # -------------------------------------------------------------------------------------- chunks
    def _chunk(
        self, content: str = "", thinking: str | None = None, logprobs: list[dict[str, Any]] | None = None
    ) -> bytes:
        """One line; `logprobs` (this event's tokens) after `done`, in api/types.go's field order."""
        if thinking is None and not logprobs:
            return self._content_lines([content])
        obj: dict[str, Any] = {"model": self.model, "created_at": self._now()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking is not None:
                message["thinking"] = thinking
            obj["message"] = message
        else:
            obj["response"] = content
            if thinking is not None:
                obj["thinking"] = thinking
        obj["done"] = False
        if logprobs:
            obj["logprobs"] = logprobs
        return dumps_line(obj)

    def _now(self) -> str:
        """The lines of one read share one `created_at` (they arrived together): made once a read."""
        stamp = self._stamp
        if stamp is None:
            stamp = self._stamp = now_rfc3339()
        return stamp

    def _logprobs(self, ch: dict[str, Any]) -> list[dict[str, Any]] | None:
        if self.top_logprobs is None:
            return None
        return ollama_logprobs(ch.get("logprobs"), self.top_logprobs) or None

    def feed_batch(self, datas: list[bytes], out: list[bytes]) -> None:
        """`feed` for every event of one upstream read, with a fast path for plain token events.

        In a stream, the events that carry one token differ only in the token: same id, model, created,
        same keys in the same order. The first such event is parsed in full (`feed`), which learns its
        bytes before and after the token's JSON string. Every later event with exactly those bytes
        around a string is the same kind of event, so its string is cut out by two comparisons, and
        all strings of the read are parsed in one call: ~1 us an event instead of ~3. Anything else
        (another key, a finish reason, usage, tool calls, thinking, a new `created`) takes the full path,
        in order. The lines of one read share one timestamp (they arrived together). Lines are appended
        to `out` as they are made, so those before an event that raises are kept.
        """
        i, n = 0, len(datas)
        while i < n:
            template = self._template
            if template is not None:
                pre, suf = template
                lp, ls = len(pre), len(suf)
                # the run is most often all of the rest but its end (the finish event, [DONE]): tried first, by
                # one compare of the joined bytes (each event is pre + token + suf exactly when pre, the tokens
                # joined by suf + pre, and suf are the events joined), before an event by event check
                j = n if _fits(datas[i], pre, suf) else i  # (a first event with a role does not fit the next)
                while j > i and not _fits(datas[j - 1], pre, suf):
                    j -= 1
                run = datas[i:j] if i or j < n else datas
                raws = list(map(itemgetter(slice(lp, -ls or None)), run))  # in C: ~40% cheaper than a loop
                if j > i and pre + (suf + pre).join(raws) + suf != b"".join(run):
                    fits = [_fits(d, pre, suf) for d in run]
                    j = i + fits.index(False)
                    run, raws = run[: j - i], raws[: j - i]
                if j > i:
                    self._plain(raws, run, out)
                    i = j
                    if i == n:
                        break
            out.extend(self.feed_event(datas[i]))
            i += 1

    def _plain(self, raws: list[bytes], datas: list[bytes], out: list[bytes]) -> None:
        """Lines for plain token events from their raw JSON strings (validated and decoded in one parse)."""
        joined = b",".join(raws)
        try:
            texts = orjson.loads(b"[" + joined + b"]")
            said = "".join(texts)  # a TypeError unless every one is a string
        except (orjson.JSONDecodeError, TypeError):
            texts = None
        if texts is None or len(texts) != len(raws):
            for d in datas:  # not one string each after all: the full path says what they are
                out.extend(self.feed_event(d))
            return
        if not said:
            return  # empty tokens make no line
        self._first()
        self.text_parts.append(said)
        if 0x5C not in joined and all(texts):  # no backslash (an int: one memchr, see escape_line_breakers)
            # a valid JSON string without an escape is what orjson writes for its text (no quote, backslash
            # or control character inside, UTF-8 checked by the parse): the upstream's bytes, not re-encoded
            out.append(self._lines_of(raws))
        else:
            out.append(self._content_lines([t for t in texts if t]))  # an empty token makes no line

    def _content_lines(self, texts: list[str]) -> bytes:
        """One content line per text, from prebuilt bytes (~3x cheaper than a dict and dumps_line each)."""
        return self._lines_of([orjson.dumps(t) for t in texts])

    def _lines_of(self, strings: list[bytes]) -> bytes:
        """One content line per JSON-encoded string (as orjson encodes it)."""
        head = self._head + self._now().encode() + self._mid
        return escape_line_breakers(head + (self._tail + head).join(strings) + self._tail)

    def _learn(self, data: bytes, obj: dict[str, Any], ch: dict[str, Any], text: Any) -> None:
        """Remember the bytes around this event's token if it is a plain token event (see `feed_batch`)."""
        self._template = None
        if len(data) > _TEMPLATE_MAX:
            return  # a template is for the small token events that come by the thousand
        if not isinstance(text, str) or not text or not obj.keys() <= _PLAIN_TOP or obj.get("usage") is not None:
            return
        if len(obj["choices"]) != 1 or not ch.keys() <= _PLAIN_CHOICE or ch.get("index", 0) != 0:
            return
        if ch.get("finish_reason") is not None or ch.get("logprobs") is not None:
            return
        key = b'"text":' if self.kind == "raw" else b'"content":'
        if self.kind != "raw":
            delta = ch.get("delta")
            if "text" in ch or not isinstance(delta, dict) or not delta.keys() <= _PLAIN_DELTA:
                return
            if delta.get("role", "assistant") != "assistant":
                return
        elif "delta" in ch:
            return
        if data.count(key) != 1:  # an unescaped `"key":` is a key: there must be just the one
            return
        m = _JSON_STRING.match(data, data.index(key) + len(key))
        if m is None or orjson.loads(m.group()) != text:
            return
        self._template = (data[: m.start()], data[m.end() :])

    def feed_event(self, data: bytes) -> list[bytes]:
        """One SSE data payload."""
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
        usage = opt_field(obj, "usage", dict, "a stream event")
        if usage:
            self.usage = usage
        timings = opt_field(obj, "timings", dict, "a stream event")
        if timings:
            self.timings = timings
        choices = opt_field(obj, "choices", list, "a stream event")
        if not choices:
            return []
        ch = choices[0]
        if not isinstance(ch, dict):
            raise UpstreamError(
                f"backend sent a stream event whose choice is {json_type(ch)}, not an object", status=502
            )
        out: list[bytes] = []
        lps = self._logprobs(ch)  # the tokens of this event ride on its first line
        if self.kind == "raw":
            text = opt_field(ch, "text", str, "a stream choice")
            if text:
                self._first()
                self.text_parts.append(text)
                out.append(self._chunk(text, None, lps))
                lps = None
            self._learn(data, obj, ch, text)
        else:
            delta = opt_field(ch, "delta", dict, "a stream choice") or {}
            reasoning = opt_field(delta, "reasoning_content", str, "a delta") or opt_field(
                delta, "reasoning", str, "a delta"
            )
            if reasoning and not self.drop_thinking:
                self._first()
                out.append(self._chunk("", reasoning, lps))
                lps = None
            content = opt_field(delta, "content", str, "a delta")
            if content:
                self._first()
                self.text_parts.append(content)
                out.append(self._chunk(content, None, lps))
                lps = None
            self._learn(data, obj, ch, content)
            calls = delta.get("tool_calls")
            if calls:
                self._first()
                self._add_calls(calls)
        if lps:
            out.append(self._chunk("", None, lps))  # tokens without text of their own (a tool call's)
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

    def finish_lines(self, end_ns: int | None = None) -> list[bytes]:
        """The assembled tool calls (if any) and the one final `done: true` line."""
        out: list[bytes] = []
        if self._calls and self.kind == "chat":
            out.append(
                dumps_line(
                    {
                        "model": self.model,
                        "created_at": self._now(),
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
        if self.context is not None:
            obj["context"] = self.context("".join(self.text_parts))
        obj.update(final_metrics(self.usage, self.timings, self.timing, end))
        return obj
