"""The request log: one SQLite row per request, written off the request path; read by `ollamux logs`."""

from __future__ import annotations

from .reader import Filters, LogReader, percentile
from .schema import SCHEMA_VERSION, connect, migrate
from .writer import RequestLog, record_row

__all__ = ["SCHEMA_VERSION", "Filters", "LogReader", "RequestLog", "connect", "migrate", "percentile", "record_row"]
