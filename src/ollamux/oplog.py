"""Operator logs on stderr: one JSON object a line (or plain text), each with the request id when there is one.

The request id comes from the log call's `extra={"request_id": ...}` or, for lines written while a request
is handled, from `CURRENT_REQUEST_ID`, which the endpoint wrapper sets.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from .observe import CURRENT_REQUEST_ID, RequestRecord

__all__ = ["JSONFormatter", "RequestLines", "TextFormatter", "configure"]

# LogRecord attributes that are not user-supplied `extra` fields
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _request_id(record: logging.LogRecord) -> str | None:
    rid = getattr(record, "request_id", None)
    return rid if isinstance(rid, str) else CURRENT_REQUEST_ID.get()


def _ts(created: float) -> str:
    return datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(timespec="milliseconds")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = _request_id(record)
        if rid:
            out["request_id"] = rid
        for k, v in vars(record).items():
            if k not in _STANDARD and k != "request_id":
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(out, default=str).decode()
        except TypeError:
            # a lone surrogate (undecodable client bytes in a message): the stdlib escapes it as \udcxx
            return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = _request_id(record)
        line = f"{_ts(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if rid:
            line += f" [request {rid}]"
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "request_id"}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records (ollamux's and aiohttp's) to stderr in the chosen format."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    lvl = logging.getLevelName(level.upper())
    root.setLevel(lvl if isinstance(lvl, int) else logging.INFO)
    # aiohttp logs each failed connection at error level with a traceback; that is client noise
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # the hub library's HTTP client logs every request at info ("HTTP Request: GET ..."): a pull would fill
    # the operator log with them; ollamux says what a pull does itself (--log-level debug shows them)
    quiet = logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    for name in ("httpx", "httpx2", "huggingface_hub"):
        logging.getLogger(name).setLevel(quiet)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
    return handler


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs every malformed request (bad request line, broken header) at error level with a full
    traceback: hostile or broken clients could flood the operator log. The client got its 400 already; one
    info line without the traceback is what an operator needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"{record.getMessage()}: malformed request ({printable(str(exc))})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            return logging.getLogger("aiohttp.server").isEnabledFor(logging.INFO)
        return True


def printable(text: str, limit: int = 200) -> str:
    # aiohttp's parser messages span lines with a caret under the bad byte: one line is enough here
    return " ".join("".join(c if c.isprintable() else " " for c in text[:limit]).split())


_ERROR_SHOWN = 300  # characters of a request's error in its line: the request log row holds it whole


def _first_line(error: str) -> str:
    """A request's error as its operator line shows it: the first line, cut. A failed model start's error
    carries the lines its process printed; ten requests for it must not print them ten times (the runtime
    logs them once)."""
    line, _, rest = error.partition("\n")
    if len(line) > _ERROR_SHOWN:
        return line[: _ERROR_SHOWN - 1] + "…"
    return line + (" (…)" if rest.strip() else "")


class RequestLines:
    """An observer writing one operator line per request: 5xx at warning, 4xx at info, the rest at debug.

    Successful requests are not logged at info: the request log holds them, and a stderr write per
    request would cost the hot path more than the log and metrics together.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("ollamux.request")

    def request_finished(self, rec: RequestRecord) -> None:
        if rec.status >= 500:
            level = logging.WARNING
        elif rec.status >= 400 and not rec.abandoned:
            level = logging.INFO  # the client's mistake (unknown model, bad JSON): worth a line, not an alarm
        else:
            level = logging.DEBUG
        if not self.log.isEnabledFor(level):
            return
        self.log.log(
            level,
            "%s %s %s -> %s in %.1f ms%s",
            rec.api,
            rec.method,
            rec.route,
            rec.status,
            rec.latency_s * 1000,
            f": {_first_line(rec.error)}" if rec.error else "",
            extra={
                "request_id": rec.id,
                "model": rec.model_requested,
                "backend": rec.backend,
                "status": rec.status,
                "client": rec.client,
                "abandoned": rec.abandoned,
            },
        )
