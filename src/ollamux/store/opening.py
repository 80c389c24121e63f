"""Which store a `request_log` section names: PostgreSQL with `url`, else the SQLite file at `path`.

The one place that knows both kinds, above them: `reader.py`/`pg_reader.py` and `responses.py`/
`pg_responses.py` are each a base and its PostgreSQL variant, and the variant imports its base, so the
choice between them lives here (importing the base's module never pulls in psycopg, which only the
postgres extra installs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .reader import LogReader
from .responses import MemoryResponses, ResponseStore, SQLiteResponses

if TYPE_CHECKING:
    from ..config import RequestLogSettings

__all__ = ["open_reader", "open_responses"]


def open_reader(settings: RequestLogSettings) -> LogReader:
    """The reader of the log these settings write: PostgreSQL with `url`, else the file at `path`
    (`FileNotFoundError` when there is none yet; `ConnectionError` with a masked message when the database
    cannot be reached)."""
    if settings.url is not None:
        from .pg_reader import PostgresLogReader  # psycopg is optional: only the postgres extra has it

        return PostgresLogReader(settings.url, settings.shown_url)
    return LogReader(settings.path)


def open_responses(settings: RequestLogSettings) -> ResponseStore:
    """Beside the request log when it is on (its database or its file), else in memory."""
    if not settings.enabled:
        return MemoryResponses()
    if settings.url is not None:
        from .pg_responses import PostgresResponses  # psycopg is optional: only the postgres extra has it

        return PostgresResponses(settings.url, settings.shown_url, settings.retention_days)
    return SQLiteResponses(settings.path, settings.retention_days)
