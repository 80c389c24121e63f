"""Reading the request log: filtered queries, follow-from-a-position, and per-model statistics.

The SQL is written once, in SQLite's dialect with `?` placeholders, and kept to what PostgreSQL reads the
same way; `pg_reader.py` runs it there (placeholders become `%s`). `opening.open_reader` picks the reader the
settings name.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import COLUMNS, connect

__all__ = ["Filters", "LogReader", "percentile"]

_FIELDS = ("seq", *COLUMNS)  # a row as the reader returns it: the writer's columns after seq


@dataclass(frozen=True)
class Filters:
    """What `ollamux logs` narrows the rows to; None means no condition."""

    model: str | None = None  # matches the model asked for or the model served
    status: str | None = None  # "200", "4xx", "5xx", "error" (any status >= 400) or "ok" (< 400)
    api: str | None = None
    since: float | None = None  # unix seconds, inclusive
    until: float | None = None  # unix seconds, exclusive

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.model:
            clauses.append("(model_requested = ? OR model_served = ?)")
            args += [self.model, self.model]
        if self.api:
            clauses.append("api = ?")
            args.append(self.api)
        if self.since is not None:
            clauses.append("ts >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("ts < ?")
            args.append(self.until)
        if self.status:
            s = self.status.lower()
            if s == "error":
                clauses.append("status >= 400")
            elif s == "ok":
                clauses.append("status < 400")
            elif len(s) == 3 and s[0].isdigit() and s[1:] == "xx":
                clauses.append("status >= ? AND status < ?")
                args += [int(s[0]) * 100, int(s[0]) * 100 + 100]
            elif s.isdigit():
                clauses.append("status = ?")
                args.append(int(s))
            else:
                raise ValueError(f"status filter '{self.status}' is not a code, 4xx/5xx, 'ok' or 'error'")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None for none)."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1))
    return values[k]


class LogReader:
    """Read-only access to a request log file; safe while `ollamux serve` writes it (WAL).

    `PostgresLogReader` (pg_reader.py) is the same reader on a PostgreSQL database: it replaces the
    connection and `query`/`query_tuples`, every other method is shared.
    """

    # whether rows may commit out of seq order (many writers): never here, SQLite has one writer process
    many_writers = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection = connect(path, readonly=True)
        self.conn.row_factory = sqlite3.Row

    @property
    def where(self) -> str:
        """What is read, for messages: the file, or the database URL with its password masked."""
        return str(self.path)

    def close(self) -> None:
        self.conn.close()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of one SELECT written with `?` placeholders, as dicts by column name."""
        cur = self.conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur]

    def query_tuples(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one SELECT written with `?` placeholders, as tuples."""
        return [tuple(r) for r in self.conn.execute(sql, args)]

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last(self, n: int, filters: Filters = Filters()) -> list[dict[str, Any]]:
        """The newest n matching rows, oldest first (as a terminal reads them)."""
        where, args = filters.where()
        sql = f"SELECT {', '.join(_FIELDS)} FROM requests{where} ORDER BY seq DESC LIMIT ?"
        rows = self.query(sql, [*args, n])
        rows.reverse()
        return rows

    def after(self, seq: int, filters: Filters = Filters(), limit: int = 1000) -> list[dict[str, Any]]:
        """Matching rows written after position `seq`, oldest first (follow mode)."""
        where, args = filters.where()
        where = (where + " AND seq > ?") if where else " WHERE seq > ?"
        sql = f"SELECT {', '.join(_FIELDS)} FROM requests{where} ORDER BY seq LIMIT ?"
        return self.query(sql, [*args, seq, limit])

    def max_seq(self) -> int:
        rows = self.query_tuples("SELECT MAX(seq) FROM requests")
        return int(rows[0][0] or 0) if rows else 0

    def stats(self, filters: Filters = Filters()) -> list[dict[str, Any]]:
        """Per model asked for: count, errors, abandoned, p50/p95 latency and TTFT, tokens, mean tokens/s."""
        where, args = filters.where()
        sql = (
            "SELECT COALESCE(model_requested, '-') AS model, status, abandoned, latency_ms, ttft_ms, "
            f"prompt_tokens, completion_tokens, tokens_per_s FROM requests{where}"
        )
        groups: dict[str, dict[str, Any]] = {}
        for model, status, abandoned, lat, ttft, pt, ct, tps in self.query_tuples(sql, args):
            g = groups.setdefault(
                model, {"count": 0, "errors": 0, "abandoned": 0, "lat": [], "ttft": [], "pt": 0, "ct": 0, "tps": []}
            )
            g["count"] += 1
            if abandoned:
                g["abandoned"] += 1
            elif status >= 400:
                g["errors"] += 1
            g["lat"].append(lat)
            if ttft is not None:
                g["ttft"].append(ttft)
            g["pt"] += pt or 0
            g["ct"] += ct or 0
            if tps is not None:
                g["tps"].append(tps)
        out = []
        for model in sorted(groups):
            g = groups[model]
            lat, ttft = sorted(g["lat"]), sorted(g["ttft"])
            out.append(
                {
                    "model": model,
                    "count": g["count"],
                    "errors": g["errors"],
                    "abandoned": g["abandoned"],
                    "latency_p50_ms": percentile(lat, 50),
                    "latency_p95_ms": percentile(lat, 95),
                    "ttft_p50_ms": percentile(ttft, 50),
                    "ttft_p95_ms": percentile(ttft, 95),
                    "prompt_tokens": g["pt"],
                    "completion_tokens": g["ct"],
                    "tokens_per_s": (sum(g["tps"]) / len(g["tps"])) if g["tps"] else None,
                }
            )
        return out
