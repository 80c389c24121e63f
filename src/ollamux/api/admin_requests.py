"""The request log over the admin API: filtered rows, a poll for new ones, a live event stream, one request.

Every query runs in a worker thread on its own read-only connection (WAL: the writer never waits for it).
The live stream polls the log twice a second: the writer commits its batches at most once a second
anyway, so hooking its batches would save little and tie the stream to the SQLite writer's internals.
Each event's `id:` is its row's seq, so a client that lost the stream reopens it from the last one it saw
(`after=SEQ`, or the `Last-Event-ID` header an EventSource sends by itself) and misses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web

from ..config import RequestLogSettings
from ..errors import BadRequest, OllamuxError, ServiceUnavailable
from ..guard.core import printable
from ..state import AppState
from ..store import Filters
from ..store.dashboard import ROW_FIELDS, reader_or_none, request_by_id, rows_after, rows_newest, shown_row
from ..store.follow import Follower, settled_seq
from .admin_common import ADMIN, json_ok, query_int, query_time, start_stream

__all__ = ["filters_from", "request_detail", "requests", "requests_stream"]

POLL_INTERVAL = 0.5  # seconds between the live stream's looks at the log
BATCH = 500  # rows a look reads at most; a full batch means more are waiting, read at once
PING_INTERVAL = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
T = TypeVar("T")


def filters_from(query: Mapping[str, str]) -> Filters:
    """`ollamux logs`' filters from the query string; a bad one is a 400 that says what would do."""
    filters = Filters(
        model=query.get("model") or None,
        status=query.get("status") or None,
        api=query.get("api") or None,
        since=query_time(query, "since"),
        until=query_time(query, "until"),
    )
    try:
        filters.where()
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return filters


def _log_settings(state: AppState) -> RequestLogSettings:
    if state.request_log is None:
        raise OllamuxError(
            "the request log is off (request_log.enabled: false), so there are no requests to show",
            status=404,
            code="request_log_off",
        )
    return state.settings.request_log


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """A blocking read of the log, off the loop; a database that cannot be reached is a 503."""
    try:
        return await asyncio.to_thread(fn, *args)
    except ConnectionError as exc:
        raise ServiceUnavailable(f"cannot read the request log: {exc}") from None


def _read_page(settings: RequestLogSettings, filters: Filters, after: int | None, limit: int) -> dict[str, Any]:
    reader = reader_or_none(settings)
    if reader is None:
        return {"rows": [], "last_seq": after or 0}
    with reader:
        # the rows up to the settled position only (`store.follow.settled_seq`): a row above it may have a
        # batch still committing below it, which a poll from a higher `last_seq` would never see
        top = settled_seq(reader, after)
        if after is None:
            return {"rows": rows_newest(reader, filters, limit, top), "last_seq": top}
        rows = rows_after(reader, after, filters, limit, top)
    # a full page may stop below the settled position: the next poll goes on from its last row
    return {"rows": rows, "last_seq": rows[-1]["seq"] if len(rows) == limit else top}


async def requests(request: web.Request, state: AppState) -> web.StreamResponse:
    """Newest first; with `after=SEQ`, only the rows written since, oldest first (the page's poll), and
    `last_seq` to poll from next."""
    q = request.query
    filters = filters_from(q)
    limit = query_int(q, "limit", 100, 1, 1000)
    after = query_int(q, "after", -1, 0, 2**62) if q.get("after", "").strip() else None
    return json_ok(await _in_thread(_read_page, _log_settings(state), filters, after, limit))


async def request_detail(request: web.Request, state: AppState) -> web.StreamResponse:
    rid = request.match_info["id"]
    settings = _log_settings(state)

    def read() -> dict[str, Any] | None:
        reader = reader_or_none(settings)
        if reader is None:
            return None
        with reader:
            return request_by_id(reader, rid)

    row = await _in_thread(read)
    if row is None:
        raise OllamuxError(
            f"no request '{printable(rid, 100)}' in the request log", status=404, code="request_not_found"
        )
    return json_ok(row)


def _resume_from(request: web.Request) -> int | None:
    """The seq a stream picks up after: `after=SEQ`, else the `Last-Event-ID` header; None for "from now"."""
    if request.query.get("after", "").strip():
        return query_int(request.query, "after", 0, 0, 2**62)
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 2**62:  # not "²", which isdigit() lets by
        raise BadRequest(
            f"header 'Last-Event-ID' must be the id (a seq) of a request event, not '{printable(raw, 50)}'"
        )
    return int(raw)


def _event(row: dict[str, Any]) -> bytes:
    return b"id: %d\nevent: request\ndata: %s\n\n" % (row["seq"], orjson.dumps(row))


async def requests_stream(request: web.Request, state: AppState) -> web.StreamResponse:
    """`text/event-stream`: one `request` event (`id:` its seq) per row written after the stream opened, or
    after `after=SEQ` / `Last-Event-ID` (those first, oldest first), until the client goes or the server stops."""
    filters = filters_from(request.query)
    resume = _resume_from(request)
    settings = _log_settings(state)
    closing = request.app[ADMIN].closing
    reader = await _in_thread(reader_or_none, settings)
    try:
        if resume is not None:
            last = resume
        else:
            # from now, but below any batch still committing (`settled_seq`): its rows are not lost
            last = await _in_thread(settled_seq, reader) if reader is not None else 0
        resp = await start_stream(request, "text/event-stream; charset=utf-8")
        await resp.write(b": connected\n\n")
        pinged = time.monotonic()
        follower = Follower(reader, filters, last, ROW_FIELDS, limit=BATCH) if reader is not None else None
        behind = resume is not None  # what a resumed stream missed goes out at once, not after a pause
        while not closing.is_set():
            if not behind:
                try:
                    await asyncio.wait_for(closing.wait(), POLL_INTERVAL)
                    break
                except TimeoutError:
                    pass
            if follower is None:
                behind = False
                reader = await _in_thread(reader_or_none, settings)  # the writer made the file since
                if reader is not None:
                    follower = Follower(reader, filters, last, ROW_FIELDS, limit=BATCH)
                continue
            try:
                rows = await asyncio.to_thread(follower.poll)
            except Exception as exc:  # the file went away or broke: say so in the stream, then end it
                err = ServiceUnavailable(f"cannot read the request log: {exc}")
                await resp.write(b"event: error\ndata: " + err.openai_body() + b"\n\n")
                break
            behind = follower.full
            for row in rows:
                await resp.write(_event(shown_row(row)))
            now = time.monotonic()
            if rows:
                pinged = now
            elif now - pinged >= PING_INTERVAL:
                await resp.write(b": ping\n\n")
                pinged = now
        return resp
    finally:
        if reader is not None:
            reader.close()
