"""The request log: one row per request in SQLite or PostgreSQL, written off the request path; read by
`ollamux logs`."""

from __future__ import annotations

from .opening import open_reader
from .reader import Filters, LogReader, percentile
from .schema import SCHEMA_VERSION, connect, migrate
from .writer import RequestLog, instance_name, record_row

__all__ = [
    "SCHEMA_VERSION",
    "Filters",
    "LogReader",
    "RequestLog",
    "connect",
    "instance_name",
    "migrate",
    "open_reader",
    "percentile",
    "record_row",
]
