"""Parsing `request_log.url`: the PostgreSQL database that holds the request log (and the Responses API's
stored responses) instead of the SQLite file at `request_log.path`.

    request_log:
      url: postgresql://ollamux:${PG_PASSWORD}@db:5432/ollamux

The URL may hold a password: no message made here repeats the URL as written, only its masked form.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..masks import MASK, mask_url
from .node import Node
from .settings import ConfigError

__all__ = ["parse_log_url", "shown_db_url"]

_SCHEMES = ("postgresql", "postgres")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def shown_db_url(url: str) -> str:
    """The URL fit to show: the password masked, whether in the user info or in `?password=`."""
    return _QUERY_PASSWORD.sub(rf"\1{MASK}", mask_url(url))


def parse_log_url(node: Node) -> tuple[str, str] | None:
    """(url, shown url) of `request_log.url`, or None when it is not set."""
    url = node.opt_str("url")
    if url is None:
        return None
    key = node.key("url")
    shown = shown_db_url(url)
    if node.has("path"):
        raise ConfigError(key, "and request_log.path are exclusive: the log is in PostgreSQL (url) or SQLite (path)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        raise ConfigError(key, f"'{shown}' is not a valid URL (its port must be a number up to 65535)") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(key, f"'{shown}' must start with postgresql:// (PostgreSQL is the only database server)")
    try:  # imported once it is wanted anyway: the log's writer uses both
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise ConfigError(key, "needs psycopg, which is not installed: pip install 'ollamux[postgres]'") from None
    return url, shown
