"""The request log's writer: records queue on the event loop, a thread writes them to SQLite in batches.

The event loop's only cost per request is one bounded `deque.append` (a full queue drops the row and counts
it); converting, capping and inserting happen on the writer thread, one transaction per batch.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..config import RequestLogSettings
from ..observe import RequestRecord
from .schema import COLUMNS, connect

__all__ = ["RequestLog", "record_row"]

log = logging.getLogger("ollamux.store")

_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# Rows go in 32 to a statement: Python's sqlite3 releases the GIL around every statement step, and one
# step per row made the writer thread and the event loop trade the GIL thousands of times per batch
# (measured: 16% of throughput at 4,000 req/s, against ~5 us of real work per row).
_MULTI = 32
_INSERT_MULTI = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES " + ", ".join(
    [f"({', '.join('?' * len(COLUMNS))})"] * _MULTI
)


def _cap_bytes(data: bytes | None, cap: int) -> str | None:
    if data is None:
        return None
    if len(data) <= cap:
        return data.decode("utf-8", "replace")
    # cut on a byte budget, then drop a split multi-byte character rather than store mojibake
    return data[:cap].decode("utf-8", "ignore") + f"...[{len(data) - cap} more bytes]"


def _cap_text(text: str | None, cap: int) -> str | None:
    if text is None or len(text) * 4 <= cap:  # 4: the most bytes one character can take in UTF-8
        return text
    return _cap_bytes(text.encode("utf-8"), cap)


def record_row(rec: RequestRecord, capture: bool, cap: int) -> tuple[Any, ...]:
    """The row for one finished request, in `COLUMNS` order."""
    end_ns = rec.end_ns if rec.end_ns is not None else time.perf_counter_ns()
    latency_ms = (end_ns - rec.start_ns) / 1e6
    ttft_ms = None if rec.first_token_ns is None else (rec.first_token_ns - rec.start_ns) / 1e6
    tps = None
    if rec.completion_tokens:
        # decode speed: from the first token on when streamed, else over the whole request
        gen_ns = end_ns - rec.first_token_ns if rec.streamed and rec.first_token_ns is not None else 0
        if gen_ns <= 0:
            gen_ns = end_ns - rec.start_ns
        tps = rec.completion_tokens / (gen_ns / 1e9) if gen_ns > 0 else None
    return (
        rec.id,
        rec.started,
        rec.api,
        rec.method,
        rec.route,
        rec.model_requested,
        rec.model_served,
        rec.backend,
        rec.upstream_url,
        rec.status,
        int(rec.streamed),
        int(rec.abandoned),
        latency_ms,
        ttft_ms,
        rec.prompt_tokens,
        rec.completion_tokens,
        tps,
        rec.error,
        rec.client,
        rec.key_name,
        _cap_bytes(rec.request_body, cap) if capture else None,
        _cap_text(rec.response_text, cap) if capture else None,
    )


def _row_or_repaired(rec: RequestRecord, capture: bool, cap: int) -> tuple[Any, ...]:
    """`record_row`, and when a field holds what no column can (a handler's bug), that field as text:
    one odd record must never cost the rows of the others in its batch."""
    try:
        return record_row(rec, capture, cap)
    except Exception:
        log.warning("request log: record %s had a field of the wrong type; stored as text", rec.id)
        for name in ("request_body", "response_text", "error", "model_requested", "model_served"):
            value = getattr(rec, name)
            if value is not None and not isinstance(value, str | bytes):
                setattr(rec, name, repr(value))
        return record_row(rec, capture, cap)


def _repair(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """What SQLite can store of a row: valid UTF-8 text, 64-bit integers."""
    out: list[Any] = []
    for v in row:
        if isinstance(v, str):
            v = v.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
        elif isinstance(v, int) and not -(2**63) <= v < 2**63:
            v = None
        out.append(v)
    return tuple(out)


class RequestLog:
    """An observer that logs every finished request to SQLite, off the request path.

    `open()` (blocking: run it in a thread) creates or migrates the file and starts the writer;
    `close()` writes what is queued and stops it. Until `open()` succeeds, records are dropped and counted.
    """

    def __init__(
        self,
        settings: RequestLogSettings,
        *,
        # at most one wake-up a second when idle-ish, one per 1,024 rows under load: each wake-up takes
        # the GIL from the event loop, so fewer, larger batches cost the request path least
        flush_interval: float = 1.0,
        batch_size: int = 1024,
        retention_interval: float = 300.0,
    ) -> None:
        self.settings = settings
        self.path = settings.path
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.retention_interval = retention_interval
        self._dropped_full = 0  # queue full or log not open: only the event loop writes it
        self._dropped_failed = 0  # a batch SQLite refused: only the writer thread writes it
        self.written = 0  # only the writer thread writes it
        self.error: str | None = None
        self.schema_version = 0
        self._queue: collections.deque[RequestRecord] = collections.deque()
        self._max = settings.queue_size
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._accepting = False
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._last_retention = 0.0

    # ------------------------------------------------------------------------------ event-loop side
    def request_started(self, rec: RequestRecord) -> None:
        return None

    def request_finished(self, rec: RequestRecord) -> None:
        q = self._queue
        if not self._accepting or len(q) >= self._max:
            self._dropped_full += 1
            return
        q.append(rec)  # deque.append is atomic: no lock shared with the writer thread
        if len(q) >= self.batch_size:
            self._wake.set()

    @property
    def dropped(self) -> int:
        return self._dropped_full + self._dropped_failed

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """What /health/ready shows of the log."""
        return {
            "enabled": True,
            "path": str(self.path),
            "state": "ok" if self.running and self.error is None else ("failed" if self.error else "stopped"),
            "schema_version": self.schema_version,
            "queued": self.queued,
            "written": self.written,
            "dropped": self.dropped,
            "error": self.error,
        }

    # ------------------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Create or migrate the database and start the writer thread (blocking)."""
        try:
            self._conn = connect(self.path)
            row = self._conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
            self.schema_version = int(row[0] or 0)
            self._retain()
        except (sqlite3.Error, OSError) as exc:
            self.error = f"cannot open request log {self.path}: {exc}"
            log.error("%s; requests are not logged", self.error)
            return
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="ollamux-request-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 15.0) -> None:
        """Write every queued row, then stop (blocking: run it in a thread)."""
        self._accepting = False
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("request log writer did not finish within %.0fs; %d rows lost", timeout, self.queued)
        elif self._conn is not None:
            self._conn.close()
            self._conn = None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued row is written (for tests and `close`); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            if not self._queue and self._idle.wait(0.01) and not self._queue:
                return True
            time.sleep(0.005)
        return False

    # ------------------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        assert self._conn is not None
        try:
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                stopping = self._stop
                self._drain_safely()
                if time.monotonic() - self._last_retention > self.retention_interval:
                    self._retain()
                if stopping:
                    self._drain_safely()
                    break
        finally:
            try:
                self._conn.close()
            except sqlite3.Error:  # pragma: no cover
                pass
            self._conn = None

    def _drain_safely(self) -> None:
        # the writer thread must outlive any bug: a dead writer would silently drop every later row
        try:
            self._drain()
        except Exception:
            log.exception("request log writer: unexpected error (the batch is lost)")
            self._idle.set()

    def _drain(self) -> None:
        q = self._queue
        while q:
            self._idle.clear()
            batch: list[RequestRecord] = []
            while q and len(batch) < 4096:
                batch.append(q.popleft())
            self._write(batch)
        self._idle.set()

    def _write(self, batch: Iterable[RequestRecord]) -> None:
        assert self._conn is not None
        capture, cap = self.settings.capture_bodies, self.settings.body_cap_bytes
        rows = [_row_or_repaired(r, capture, cap) for r in batch]
        for attempt in range(3):
            try:
                self._insert(rows)
                self.written += len(rows)
                self.error = None
                return
            except (UnicodeEncodeError, OverflowError, ValueError):
                # one odd row (a lone surrogate in a client-sent string, a token count beyond 64 bits) must
                # not cost the whole batch: write row by row, repairing what SQLite cannot take
                self._write_one_by_one(rows)
                return
            except sqlite3.Error as exc:
                self.error = f"write failed: {exc}"
                if attempt == 2:
                    # the rows are lost: count them as dropped so the metric tells the operator
                    log.error("request log: %s; %d rows dropped", exc, len(rows))
                    self._dropped_failed += len(rows)
                    return
                time.sleep(0.1 * (attempt + 1))  # a reader holding a lock (ollamux logs) may let go

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        assert self._conn is not None
        self._conn.execute("BEGIN")
        try:
            whole = len(rows) - len(rows) % _MULTI
            for i in range(0, whole, _MULTI):
                self._conn.execute(_INSERT_MULTI, [v for row in rows[i : i + _MULTI] for v in row])
            if whole < len(rows):
                self._conn.executemany(_INSERT, rows[whole:])
            self._conn.execute("COMMIT")
        except BaseException:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def _write_one_by_one(self, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            try:
                self._insert([_repair(row)])
                self.written += 1
            except (sqlite3.Error, UnicodeEncodeError, OverflowError, ValueError) as exc:
                log.error("request log: row %r dropped: %s", row[0], exc)
                self._dropped_failed += 1

    def _retain(self) -> None:
        """Delete rows older than retention_days and beyond retention_rows."""
        assert self._conn is not None
        self._last_retention = time.monotonic()
        s = self.settings
        try:
            if s.retention_days:
                self._conn.execute("DELETE FROM requests WHERE ts < ?", (time.time() - s.retention_days * 86400,))
            if s.retention_rows:
                self._conn.execute(
                    "DELETE FROM requests WHERE seq <= (SELECT MAX(seq) FROM requests) - ?", (s.retention_rows,)
                )
        except sqlite3.Error as exc:
            log.warning("request log retention failed: %s", exc)

    def retain_now(self) -> None:
        """Ask the writer to apply retention at its next wake-up (tests, and after a config change)."""
        self._last_retention = 0.0
        self._wake.set()
