"""The times the request log's filters take (`since`, `until`, over the admin API and `ollamux logs`)."""

from __future__ import annotations

import datetime
import re
import time

__all__ = ["parse_time"]

_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from unix seconds, an age (`15m`: that long before `now`) or an ISO 8601 time (local
    time unless it says otherwise); ValueError for anything else."""
    try:
        return float(text)
    except ValueError:
        pass
    m = _AGE.fullmatch(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"'{text}' is neither unix seconds, an age (30s, 15m, 2h, 7d) nor an ISO 8601 time") from None
