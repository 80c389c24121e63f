"""The request log's queries for the dashboard's admin API (blocking: call them in a worker thread).

Written through the reader's `query`/`query_tuples`, so they run on SQLite and PostgreSQL alike. Rows leave
without their bodies unless asked for by id; a missing file (the log was never written yet) reads as an
empty log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .opening import open_reader
from .reader import Filters, LogReader
from .schema import COLUMNS
from .series import SERIES_COLUMNS, Window

if TYPE_CHECKING:
    from ..config import RequestLogSettings

__all__ = [
    "ROW_FIELDS",
    "reader_or_none",
    "request_by_id",
    "rows_after",
    "rows_newest",
    "shown_row",
    "window_rows",
]

_BODIES = ("request_body", "response_text")
ROW_FIELDS = ("seq", *(c for c in COLUMNS if c not in _BODIES))


def reader_or_none(settings: RequestLogSettings) -> LogReader | None:
    """A reader of the log these settings write, or None when its file does not exist yet
    (`ConnectionError` when a database cannot be reached)."""
    try:
        return open_reader(settings)
    except FileNotFoundError:
        return None


def shown_row(out: dict[str, Any]) -> dict[str, Any]:
    """A row as the admin API shows it (flags as booleans)."""
    for flag in ("streamed", "abandoned"):
        if flag in out:
            out[flag] = bool(out[flag])
    return out


def rows_newest(reader: LogReader, filters: Filters, limit: int, upto: int) -> list[dict[str, Any]]:
    """The newest `limit` matching rows up to seq `upto`, newest first."""
    where, args = filters.where()
    where = (where + " AND seq <= ?") if where else " WHERE seq <= ?"
    sql = f"SELECT {', '.join(ROW_FIELDS)} FROM requests{where} ORDER BY seq DESC LIMIT ?"
    return [shown_row(r) for r in reader.query(sql, [*args, upto, limit])]


def rows_after(reader: LogReader, seq: int, filters: Filters, limit: int, upto: int) -> list[dict[str, Any]]:
    """Matching rows after position `seq` up to `upto`, oldest first (what a poll has not seen)."""
    where, args = filters.where()
    where = (where + " AND seq > ? AND seq <= ?") if where else " WHERE seq > ? AND seq <= ?"
    sql = f"SELECT {', '.join(ROW_FIELDS)} FROM requests{where} ORDER BY seq LIMIT ?"
    return [shown_row(r) for r in reader.query(sql, [*args, seq, upto, limit])]


def request_by_id(reader: LogReader, rid: str) -> dict[str, Any] | None:
    """The newest row of request `rid` (a client may reuse an id), bodies included as captured."""
    sql = f"SELECT {', '.join(('seq', *COLUMNS))} FROM requests WHERE id = ? ORDER BY seq DESC LIMIT 1"
    found = reader.query(sql, (rid,))
    if not found:
        return None
    row = shown_row(found[0])
    row["response_body"] = row.pop("response_text")  # what the client got, as the admin API names it
    return row


def window_rows(reader: LogReader, window: Window, model: str | None, backend: str | None) -> list[tuple[Any, ...]]:
    """`SERIES_COLUMNS` of the rows inside `window` (uses the log's one index, on ts)."""
    where, args = Filters(model=model or None, since=window.start).where()
    if backend:
        where += " AND backend = ?"
        args.append(backend)
    sql = f"SELECT {', '.join(SERIES_COLUMNS)} FROM requests{where}"
    return reader.query_tuples(sql, args)
