"""`ollamux logs`: the request log from the terminal: last N rows, follow, filters, per-model stats, JSON."""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import orjson

from ..config import ConfigError, RequestLogSettings, load_settings
from ..config.parse_log_url import shown_db_url
from ..store import Filters, LogReader, open_reader
from ..store.follow import Follower, settled_seq

__all__ = ["follow", "parse_time", "register"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(sub: Any) -> None:
    p = sub.add_parser("logs", help="show the request log (last requests, follow, filters, per-model stats)")
    p.add_argument("-n", "--last", type=int, default=20, metavar="N", help="how many of the newest requests (20)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing requests as they are logged")
    p.add_argument("--model", help="only this model (as asked for, or as served)")
    p.add_argument("--status", help="a status code, 4xx/5xx, 'ok' (< 400) or 'error' (>= 400)")
    p.add_argument("--api", choices=("ollama", "openai", "responses", "anthropic"), help="only requests on this API")
    p.add_argument("--since", help="from this time: ISO 8601 (2025-01-31T12:00) or an age (30s, 15m, 2h, 7d)")
    p.add_argument("--until", help="before this time (same forms as --since)")
    p.add_argument("--stats", action="store_true", help="per model: count, errors, p50/p95 latency and TTFT, tokens")
    p.add_argument("--json", action="store_true", help="one JSON object per line (stats: one JSON document)")
    p.add_argument("--config", help="YAML config whose request_log (path or url) to read (default: $OLLAMUX_CONFIG)")
    p.add_argument("--db", help="the request log file to read (overrides the config)")
    p.add_argument(
        "--url", help="the PostgreSQL database to read, postgresql://user:pass@host:port/db (overrides the config)"
    )
    p.set_defaults(func=cmd_logs)


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from an age (`15m` ago) or an ISO 8601 time (local time unless it says otherwise)."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        dt = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is neither an age (30s, 15m, 2h, 7d) nor an ISO 8601 time") from None
    return dt.timestamp()


def _log_settings(args: argparse.Namespace) -> RequestLogSettings:
    """Where the log is: --db, --url, else the config's request_log, else the default file."""
    if args.db and args.url:
        raise ConfigError("", "--db (a SQLite file) and --url (a PostgreSQL database) are exclusive")
    if args.db:
        return RequestLogSettings(path=Path(args.db).expanduser())
    if args.url:
        if not args.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("", f"--url '{shown_db_url(args.url)}' must start with postgresql://")
        return RequestLogSettings(url=args.url, shown_url=shown_db_url(args.url))
    config = args.config or os.environ.get("OLLAMUX_CONFIG")
    if config:
        return replace(load_settings(config, os.environ).request_log, enabled=True)
    return RequestLogSettings()


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}ms" if v >= 10 else f"{v:.1f}ms"


def _line(row: dict[str, Any]) -> str:
    ts = datetime.datetime.fromtimestamp(row["ts"]).strftime("%Y-%m-%d %H:%M:%S")
    model = row["model_requested"] or "-"
    if row["model_served"] and row["model_served"] != row["model_requested"]:
        model += f"->{row['model_served']}"
    tokens = (
        "-"
        if row["prompt_tokens"] is None and row["completion_tokens"] is None
        else (f"{row['prompt_tokens'] or 0}/{row['completion_tokens'] or 0}tok")
    )
    tps = f"{row['tokens_per_s']:.1f}tok/s" if row["tokens_per_s"] else ""
    parts = [
        ts,
        row["id"],  # whole: ids share a per-process prefix, and this is what /admin/requests/{id} takes
        f"{row['api']:<9}",
        f"{row['method']} {row['route']}",
        model,
        str(row["status"]),
        ("stream" if row["streamed"] else "") + (" abandoned" if row["abandoned"] else ""),
        _fmt_ms(row["latency_ms"]),
        f"ttft={_fmt_ms(row['ttft_ms'])}",
        tokens,
        tps,
        row["backend"] or "",
        row["client"] or "",
        f"key={row['key_name']}" if row["key_name"] else "",
        f"on={row['instance']}" if row.get("instance") else "",  # which ollamux, when many share a log
    ]
    line = " ".join(p for p in parts if p)
    if row["error"]:
        line += f"  error: {row['error']}"
    return line


def _emit(rows: list[dict[str, Any]], as_json: bool, out: TextIO) -> None:
    for row in rows:
        if as_json:
            out.write(orjson.dumps(row).decode() + "\n")
        else:
            out.write(_line(row) + "\n")
    out.flush()


def _stats_table(stats: list[dict[str, Any]]) -> str:
    head = (
        "model",
        "count",
        "errors",
        "abandoned",
        "p50",
        "p95",
        "ttft p50",
        "ttft p95",
        "prompt tok",
        "compl tok",
        "tok/s",
    )
    rows = [head]
    for s in stats:
        rows.append(
            (
                s["model"],
                str(s["count"]),
                str(s["errors"]),
                str(s["abandoned"]),
                _fmt_ms(s["latency_p50_ms"]),
                _fmt_ms(s["latency_p95_ms"]),
                _fmt_ms(s["ttft_p50_ms"]),
                _fmt_ms(s["ttft_p95_ms"]),
                str(s["prompt_tokens"]),
                str(s["completion_tokens"]),
                f"{s['tokens_per_s']:.1f}" if s["tokens_per_s"] is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def follow(
    reader: LogReader,
    filters: Filters,
    after: int,
    emit: Callable[[list[dict[str, Any]]], None],
    *,
    interval: float = 0.5,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Print rows as they are written (polling: SQLite has no notifications across processes), each once,
    even when instances sharing a PostgreSQL log commit out of seq order (`store.follow`)."""
    follower = Follower(reader, filters, after)
    while not should_stop():
        rows = follower.poll()
        if rows:
            emit(rows)
        if not follower.full:
            time.sleep(interval)
    return follower.last


def cmd_logs(args: argparse.Namespace) -> int:
    try:
        where = _log_settings(args)
        filters = Filters(
            model=args.model,
            status=args.status,
            api=args.api,
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
        )
        filters.where()  # validates --status before anything is printed
    except (ConfigError, ValueError) as exc:
        print(f"ollamux logs: {exc}", file=sys.stderr)
        return 2
    try:
        reader = open_reader(where)
    except ImportError:
        print("ollamux logs: reading PostgreSQL needs psycopg: pip install 'ollamux[postgres]'", file=sys.stderr)
        return 1
    except (FileNotFoundError, OSError) as exc:
        # messages name the database by its masked URL only (pg_reader.py)
        print(f"ollamux logs: {exc} (is request_log enabled? pass --db, --url or --config)", file=sys.stderr)
        return 1
    try:
        return _show(reader, filters, args)
    except BrokenPipeError:  # `ollamux logs | head`: the reader has what it wanted (a ConnectionError too)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except (FileNotFoundError, ConnectionError) as exc:  # PostgreSQL: no table yet, or the server went away
        print(f"ollamux logs: {exc}", file=sys.stderr)
        return 1


def _show(reader: LogReader, filters: Filters, args: argparse.Namespace) -> int:
    out = sys.stdout
    with reader:
        if args.stats:
            stats = reader.stats(filters)
            if args.json:
                out.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                out.write((_stats_table(stats) if stats else "no requests") + "\n")
            return 0
        # the rows shown stop where following starts, below any batch still committing (`settled_seq`)
        start = settled_seq(reader)
        rows = [r for r in reader.last(max(0, args.last), filters) if r["seq"] <= start]
        _emit(rows, args.json, out)
        if args.follow:
            try:
                follow(reader, filters, start, lambda rs: _emit(rs, args.json, out))
            except KeyboardInterrupt:
                pass
    return 0
