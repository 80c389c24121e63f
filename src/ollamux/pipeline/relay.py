"""The relay: the one place upstream bytes become a client's answer, for every front and backend.

It is where
- an upstream's status and media type are checked before the first byte (a 200 that is not what was asked
  for is a 502 that says what came back);
- any failure after the first byte, expected or not, becomes exactly one final error frame in the client's
  format, and the request's record learns what the client really got;
- a prepared response is never followed by a second one (`PREPARED` tells the endpoint wrapper it started);
- the upstream answer is released (a client gone cancels the upstream request, freeing a backend slot);
- a backend's secrets are masked out of whatever it sent back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from ..backends.http import UpstreamResponse, error_message_from_body
from ..errors import OllamuxError, UpstreamError
from ..observe import ApiName, RequestRecord
from ..streams.pivot_collect import PivotCollector
from ..streams.translator import SSEPassthrough, StreamTranslator, sse_error_for, usage_from_bytes

__all__ = [
    "FINISHED",
    "PREPARED",
    "relay_collected",
    "relay_json",
    "relay_passthrough",
    "relay_stream",
    "stream_headers",
]

log = logging.getLogger("ollamux.relay")

# the response whose status line is already on the wire (the endpoint wrapper must not write another)
PREPARED = web.RequestKey("ollamux_prepared", web.StreamResponse)
# set once the relay has written a prepared response's end (its last frame, maybe an error frame): a
# failure after PREPARED but before that (a model start kept alive by `warmup`) still owes the client one
FINISHED = web.RequestKey("ollamux_finished", bool)
REQUEST_ID = "x-request-id"
SMALL_BODY = 1 << 20  # a non-streamed pass-through answer up to this size is read whole (cheaper than chunks)
# Bytes fed without output past which the next feed runs in a worker thread: a huge event is being
# gathered, and the read that completes it parses and rebuilds it whole; the loop keeps serving meanwhile.
HEAVY = 1 << 20
JSON_TYPES = frozenset({"", "application/json"})
SSE_CT = "text/event-stream"

# never relayed: they describe one connection, not the answer (RFC 9110 section 7.6.1), or aiohttp
# writes its own (length, date, server), or ours replaces the backend's (request id)
_NOT_RELAYED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
        REQUEST_ID,
    }
)


def stream_headers(content_type: str, rec: RequestRecord) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx in front must not hold the stream back
        REQUEST_ID: rec.id,
    }


def _relayed_headers(upstream: Mapping[str, str], rec: RequestRecord) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for k, v in upstream.items():
        if k.lower() not in _NOT_RELAYED:
            headers.add(k, v)
    headers[REQUEST_ID] = rec.id
    return headers


def _unreadable(up: UpstreamResponse, what: str, exc: Exception) -> UpstreamError:
    """An answer a translator could not read (a wrong type anywhere): the backend's fault, a 502."""
    log.warning(
        "backend '%s' sent %s ollamux cannot read (%s): %s: %s", up.backend.name, what, up.url, type(exc).__name__, exc
    )
    return UpstreamError(
        f"backend '{up.backend.name}' sent {what} ollamux cannot read ({type(exc).__name__}: {exc})", status=502
    )


def _masked(up: UpstreamResponse, err: OllamuxError) -> OllamuxError:
    redacted = up.backend.redact.text(err.message)
    if redacted != err.message:
        err.message = redacted
        err.args = (redacted,)
    return err


def wrong_type(up: UpstreamResponse, expected: str) -> UpstreamError:
    return UpstreamError(
        f"backend '{up.backend.name}' answered HTTP {up.status} with Content-Type '{up.content_type}' where "
        f"'{expected}' was expected ({up.url})",
        status=502,
    )


async def relay_stream(
    request: web.Request,
    rec: RequestRecord,
    up: UpstreamResponse,
    translator: StreamTranslator,
    *,
    expect: str | None,
    status: int = 200,
    headers: Mapping[str, str] | CIMultiDict[str] | None = None,
    before_finish: Callable[[], Awaitable[None]] | None = None,
) -> web.StreamResponse:
    """Run `translator` over the upstream's body and stream what it makes, one write per upstream read.

    `expect` is the media type the upstream must answer with (None: anything, for pass-through); an
    upstream that sent none is taken at its word. `before_finish` runs once the upstream's last byte is in
    and before the translator's final frame (what the final frame needs to ask first: a generate's
    `context`), so it costs the stream's tokens nothing; an OllamuxError from it is the error frame.
    """
    early = request.get(PREPARED)  # the status line went out while a model started (pipeline.warmup)
    try:
        if expect is not None and up.content_type not in ("", expect):
            raise wrong_type(up, expect)
        if early is None:
            resp = web.StreamResponse(status=status, headers=headers or stream_headers(translator.content_type, rec))
            rec.streamed = True
            rec.status = status
            await resp.prepare(request)
        else:
            resp = early
    except BaseException:
        up.release()
        raise
    request[PREPARED] = resp
    tail = b""
    # what the upstream's last read made, when nothing runs between it and the final frame: it goes out
    # with the final frame and the stream's end in one write (one send() instead of two or three)
    last = b""
    # frames sent, counted by their ends: what the stream is charged by when no usage frame comes
    # (guard.core's token limits, which start the count); one C scan of each write
    end = b"\n\n" if translator.content_type.startswith(SSE_CT) else b"\n"
    try:
        try:
            held = 0  # bytes the translator holds for an event not yet complete
            async for chunk in up.iter_chunks():
                held += len(chunk)
                data = translator.feed(chunk) if held < HEAVY else await asyncio.to_thread(translator.feed, chunk)
                if data:
                    held = 0
                    if rec.frames is not None:
                        rec.frames += data.count(end)
                    if before_finish is None and up.at_eof():
                        last = data
                    else:
                        await resp.write(data)
            if before_finish is not None:
                await before_finish()
            tail = translator.finish() if held < HEAVY else await asyncio.to_thread(translator.finish)
        except OllamuxError as exc:
            err = _masked(up, exc)
            rec.error, rec.status = err.message, err.status
            tail = translator.error_frame(err)
        except ConnectionError:
            raise  # the client went away: nothing more to write; the endpoint records the 499
        except Exception as exc:  # a translator meeting what it did not expect: still one clean final frame
            err = _unreadable(up, "a stream", exc)
            rec.error, rec.status = err.message, err.status
            tail = translator.error_frame(err)
    finally:
        up.release()  # now, not when the generator is collected: a client gone frees the backend slot
        try:
            translator.report(rec)
        except Exception:  # the log row is worth less than the answer
            log.exception("could not read the usage of a stream (request %s)", rec.id)
    request[FINISHED] = True
    if rec.frames is not None:
        rec.frames += tail.count(end)
    await resp.write_eof(last + tail if last else tail)
    return resp


async def relay_json(up: UpstreamResponse, translate: Callable[[Any], Any]) -> Any:
    """A non-streamed answer: checked to be JSON, read (bounded by max_response_bytes), translated; any
    failure of the translator on it is the backend's 502, never a 500."""
    if up.content_type not in JSON_TYPES and not up.content_type.endswith("+json"):
        up.release()
        raise wrong_type(up, "application/json")
    data = await up.json()
    try:
        return translate(data)
    except OllamuxError as exc:
        raise _masked(up, exc) from None
    except Exception as exc:
        raise _unreadable(up, "an answer", exc) from None


async def relay_collected(up: UpstreamResponse, collector: PivotCollector, translate: Callable[[Any], Any]) -> Any:
    """A pivot stream gathered whole for a client that asked for no stream (`PivotCollector`), translated.

    Nothing has been sent, so a failure is an error answer with its own status, as for `relay_json`: the
    stream is bounded by `max_response_bytes` like any whole answer, an error event is the backend's, and
    what cannot be read is a 502."""
    if up.content_type not in ("", SSE_CT):
        up.release()
        raise wrong_type(up, SSE_CT)
    limit = up.backend.settings.max_response_bytes
    size = 0
    try:
        async with contextlib.aclosing(up.iter_chunks()) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UpstreamError(
                        f"backend '{up.backend.name}' answered with more than {limit} bytes "
                        f"(max_response_bytes; {up.url})",
                        status=502,
                    )
                collector.feed(chunk)
        data = collector.finish()
        return translate(data)
    except OllamuxError as exc:
        raise _masked(up, exc) from None
    except Exception as exc:
        raise _unreadable(up, "a stream", exc) from None
    finally:
        up.release()


async def relay_passthrough(
    request: web.Request, rec: RequestRecord, up: UpstreamResponse, *, api: ApiName = "openai"
) -> web.StreamResponse:
    """The backend's status, headers and body as they came (same API on both sides): an error body in the
    client's envelope (`api`'s), a small answer whole, anything else streamed as it arrives, never limited."""
    rec.upstream_url = up.url
    status = up.status
    headers = _relayed_headers(up.headers, rec)
    redact = up.backend.redact
    if status >= 400:
        data = redact.data(await up.read())
        rec.status = status
        rec.error = error_message_from_body(data, status)
        if request.get(PREPARED) is not None:  # a 200 went out while the model started: say it in the stream
            raise UpstreamError(rec.error, status=status)
        if not _in_envelope(data, api):  # keep the client's envelope: wrap plain text, {"detail"}, ...
            data = OllamuxError(rec.error, status=status).body_for(api)
            headers["Content-Type"] = "application/json; charset=utf-8"
        return web.Response(body=data, status=status, headers=headers)
    length = up.resp.content_length
    small = up.content_type != "text/event-stream" and length is not None and length <= SMALL_BODY
    if small and request.get(PREPARED) is None:
        data = await up.read()
        rec.first_token_ns = time.perf_counter_ns()
        counts = usage_from_bytes(data)
        if counts is not None:
            rec.count_tokens(*counts)
        return web.Response(body=data, status=status, headers=headers)
    # a stream (or a big answer) as it arrives: only the backend's echoed secrets are masked
    translator = SSEPassthrough(
        up.headers.get("Content-Type", "text/event-stream"), redact.data if redact else None, sse_error_for(api)
    )
    return await relay_stream(request, rec, up, translator, expect=None, status=status, headers=headers)


def _in_envelope(data: bytes, api: ApiName) -> bool:
    """An error body already in the client's envelope: OpenAI's `{"error": {...}}`, or Anthropic's
    `{"type": "error", "error": {...}}`."""
    if not (data.lstrip()[:1] == b"{" and b'"error"' in data and b'"message"' in data):
        return False
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    if not (isinstance(obj, dict) and isinstance(obj.get("error"), dict)):
        return False
    return obj.get("type") == "error" if api == "anthropic" else True
