"""The request log: one row per request in SQLite or PostgreSQL, written off the request path; read by
`ollamux logs`."""

from __future__ import annotations

from .opening import open_reader
from .reader import Filters, LogReader, percentile
from .schema import SCHEMA_VERSION, connect, migrate
from .writer import RequestLog, entry_of, instance_name

__all__ = [
    "SCHEMA_VERSION",
    "Filters",
    "LogReader",
    "RequestLog",
    "connect",
    "entry_of",
    "instance_name",
    "migrate",
    "open_reader",
    "percentile",
]
