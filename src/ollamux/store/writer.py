"""The request log's writer: each finished request's values queue on the event loop as one tuple (an entry,
`schema.ENTRY_FIELDS`), and a feeder thread hands them in batches to a sink: a writer process that inserts
them into SQLite (`sqlite_sink.py`), or a PostgreSQL connection (`pg_sink.py`).

The event loop's cost per request is reading the record into its entry and one bounded `deque.append` (a full
queue drops the row and counts it); the feeder caps captured bodies (only when they are captured) and marshals
the batch, the sink derives latency, TTFT and tokens/s and inserts, one transaction per batch.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import threading
import time
from typing import Any

from ..config import RequestLogSettings, ServerSettings
from ..observe import RequestRecord
from .schema import ENTRY_FIELDS
from .sink import Sink, SinkDown

__all__ = ["RequestLog", "capped_entry", "entry_of", "instance_name", "make_sink"]

log = logging.getLogger("ollamux.store")

_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 30.0
_BATCH_MAX = 4096  # rows a sink gets at once


def _cap_bytes(data: bytes, cap: int) -> str:
    if len(data) <= cap:
        return data.decode("utf-8", "replace")
    # cut on a byte budget, then drop a split multi-byte character rather than store mojibake
    return data[:cap].decode("utf-8", "ignore") + f"...[{len(data) - cap} more bytes]"


def _cap_text(text: str, cap: int) -> str:
    if len(text) * 4 <= cap:  # 4: the most bytes one character can take in UTF-8
        return text
    return _cap_bytes(text.encode("utf-8", "surrogatepass"), cap)


def _capped(value: Any, cap: int) -> str | None:
    """A captured body or answer as stored: text of at most `cap` bytes (any other value as its text)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return _cap_bytes(value, cap)
    return _cap_text(value if isinstance(value, str) else repr(value), cap)


_BODY, _TEXT = ENTRY_FIELDS.index("request_body"), ENTRY_FIELDS.index("response_text")


def entry_of(rec: RequestRecord, instance: str | None = None, capture: bool = False) -> tuple[Any, ...]:
    """What the request log queues for one finished request, in `ENTRY_FIELDS` order: the record's values,
    nothing derived or converted (the sink does that, off the event loop), bodies uncapped (the feeder caps)."""
    start, end, first = rec.start_ns, rec.end_ns, rec.first_token_ns
    if end is None:  # a record no `Observers.finished` closed (a guard refusal path, a test)
        end = time.perf_counter_ns()
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
        rec.streamed,
        rec.abandoned,
        end - start,
        None if first is None else first - start,
        rec.prompt_tokens,
        rec.completion_tokens,
        None,  # tokens/s: the sink's to derive
        rec.error,
        rec.client,
        rec.key_name,
        rec.request_body if capture else None,
        rec.response_text if capture else None,
        instance,
    )


def capped_entry(entry: tuple[Any, ...], cap: int) -> tuple[Any, ...]:
    """`entry` with its captured body and answer capped to `cap` bytes each, as text."""
    return (*entry[:_BODY], _capped(entry[_BODY], cap), _capped(entry[_TEXT], cap), *entry[_TEXT + 1 :])


def instance_name(server: ServerSettings) -> str:
    """What this ollamux writes into each row's `instance`: `server.instance_id`, else <hostname>:<port>."""
    return server.instance_id or f"{socket.gethostname()}:{server.port}"


def make_sink(settings: RequestLogSettings) -> Sink:
    """The sink the settings name: PostgreSQL with `url`, else the SQLite file at `path`."""
    if settings.url is not None:
        # imported here: psycopg is an optional dependency (the `postgres` extra), checked by the config
        from .pg import PgTarget
        from .pg_sink import PostgresSink

        target = PgTarget(settings.url, settings.shown_url)
        return PostgresSink(target, settings.retention_days, settings.retention_rows)
    from .sqlite_sink import SQLiteSink

    return SQLiteSink(settings.path, settings.retention_days, settings.retention_rows)


class RequestLog:
    """An observer that logs every finished request to its sink, off the request path.

    `open()` (blocking: run it in a thread) opens the sink, which creates or migrates the schema, and
    starts the feeder thread; `close()` writes what is queued and stops both. Until `open()` succeeds, records
    are dropped and counted (except for a sink that says its store is only away: see below).

    The queue holds at most `queue_size` rows, the batch being written included: a batch is taken from the
    queue only once the sink has answered for it, so what waits while the store is away is bounded and
    everything beyond is dropped and counted, exactly.

    A storage fault never stops serving. When the sink goes down (`SinkDown`), the log reports it (readiness:
    "failed" for a store that broke, "degraded" for one that is only away, a database restarting) and the
    sink is reopened with backoff (0.5 s doubling to 30 s; back to 0.5 s once a batch is written) while rows
    wait in the queue. The batch in hand is lost (counted) when the store broke under it (SQLite's writer
    process died: see `writer_process.py` for why a process), and written again when the store was only away
    (a transaction that never committed). The log is "ok" again as soon as the sink has reopened.
    """

    def __init__(
        self,
        settings: RequestLogSettings,
        *,
        instance: str | None = None,
        # at most one wake-up a second when idle-ish, one per 1,024 rows under load: each wake-up takes
        # the GIL from the event loop, so fewer, larger batches cost the request path least
        flush_interval: float = 1.0,
        batch_size: int = 1024,
        retention_interval: float = 300.0,
        sink: Sink | None = None,
    ) -> None:
        self.settings = settings
        self.path = settings.path
        self.instance = instance
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.retention_interval = retention_interval
        self._sink = sink if sink is not None else make_sink(settings)
        self._dropped_full = 0  # queue full or log not open: only the event loop writes it
        self._dropped_failed = 0  # rows the sink refused or lost: only the feeder thread writes it
        self.written = 0  # only the feeder thread writes it
        self.restarts = 0  # sink reopenings after the first open: only the feeder thread writes it
        self.error: str | None = None
        self._away = False  # the error is a store that is away (rows wait), not one that broke
        self.schema_version = 0
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()  # entries (`entry_of`)
        self._capture = settings.capture_bodies
        self._max = settings.queue_size
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._accepting = False
        self._up = False  # the sink is open: only the feeder thread (and open()) writes it
        self._thread: threading.Thread | None = None
        self._last_retention = 0.0
        self._backoff = _BACKOFF_MIN
        self._next_open = 0.0  # monotonic time before which the sink is not reopened

    # ------------------------------------------------------------------------------ event-loop side
    def request_finished(self, rec: RequestRecord) -> None:
        q = self._queue
        if not self._accepting or len(q) >= self._max:
            self._dropped_full += 1
            return
        # the entry is made here, while the record is hot in the cache, and the record is freed with its
        # request; the feeder only marshals entries (C), and the sink derives what a row computes
        q.append(entry_of(rec, self.instance, self._capture))  # deque.append is atomic: no lock with the feeder
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

    def _state(self) -> str:
        if self.error is not None:
            return "degraded" if self._away and self._accepting else "failed"
        return "ok" if self.running else "stopped"

    def status(self) -> dict[str, Any]:
        """What /health/ready shows of the log."""
        return {
            "enabled": True,
            **self._sink.describe(),
            "state": self._state(),
            "schema_version": self.schema_version,
            "queued": self.queued,
            "written": self.written,
            "dropped": self.dropped,
            "restarts": self.restarts,
            "error": self.error,
        }

    # ------------------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open the sink, which creates or migrates the schema, and start the feeder thread (blocking)."""
        try:
            self._sink.open()
        except SinkDown as exc:
            where = ", ".join(str(v) for v in self._sink.describe().values())
            self.error = f"cannot open request log {where}: {exc}"
            if not exc.transient:
                log.error("%s; requests are not logged", self.error)
                return
            # the store is only away (a database still starting): rows queue meanwhile, reopened with backoff
            self._away = True
            log.error("%s; rows wait (up to %d) while it is retried", self.error, self._max)
            self._next_open = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        else:
            self._up = True
            self.schema_version = self._sink.schema_version
        self._last_retention = time.monotonic()  # the sink applied retention on opening
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
                self._sink.abort()
        else:
            self._sink.close()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued row is written (for tests and `close`); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            if not self._queue and self._idle.wait(0.01) and not self._queue:
                return True
            time.sleep(0.005)
        return False

    def retain_now(self) -> None:
        """Ask the writer to apply retention at its next wake-up (tests, and after a config change)."""
        self._last_retention = 0.0
        self._wake.set()

    # ------------------------------------------------------------------------------ the sink
    def _went_down(self, reason: str, lost: int, away: bool) -> None:
        self._up = False
        self._dropped_failed += lost
        self._away = away
        self.error = f"{reason}; reopening it"
        log.error("request log: %s; %d rows dropped; reopening it in %.1fs", reason, lost, self._backoff)
        self._next_open = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _ensure_open(self, stopping: bool) -> bool:
        """An open sink, reopening it when the backoff allows (or at once when stopping)."""
        if self._up:
            why = self._sink.check()
            if why is None:
                return True
            self._went_down(why, 0, self._away)
        if not stopping and time.monotonic() < self._next_open:
            return False
        self.restarts += 1
        where = ", ".join(str(v) for v in self._sink.describe().values())
        try:
            self._sink.open()
        except SinkDown as exc:
            self._went_down(f"cannot reopen {where}: {exc}", 0, exc.transient)
            return False
        # the store opened, migrated and took a retention pass: healthy again, no request needed (a
        # readiness that waited for the next row could keep a load balancer from ever sending one)
        self._up = True
        self.error = None
        self._away = False
        self.schema_version = self._sink.schema_version
        log.warning("request log: %s reopened", where)
        return True

    # ------------------------------------------------------------------------------ feeder thread
    def _run(self) -> None:
        try:
            while True:
                # waiting out a backoff: wake when the next open is due
                wait = self.flush_interval
                if not self._up:
                    wait = max(0.01, min(wait, self._next_open - time.monotonic()))
                self._wake.wait(wait)
                self._wake.clear()
                stopping = self._stop
                self._drain_safely(stopping)
                if time.monotonic() - self._last_retention > self.retention_interval:
                    self._retain()
                if stopping:
                    self._drain_safely(stopping)
                    break
        finally:
            self._sink.close()

    def _drain_safely(self, stopping: bool) -> None:
        # the feeder thread must outlive any bug: a dead feeder would silently drop every later row
        try:
            self._drain(stopping)
        except Exception:
            log.exception("request log writer: unexpected error (the batch is lost)")
            self._idle.set()

    def _drain(self, stopping: bool) -> None:
        q = self._queue
        # checked on every wake-up, rows or not, so a death shows in readiness and a reopen follows unasked
        # (but nothing is opened at shutdown only to be closed)
        up = self._ensure_open(stopping) if q or not stopping else False
        while q:
            if not up:
                if stopping:
                    # shutting down with no way to write: count what is left rather than wait on a backoff
                    lost = len(q)
                    q.clear()
                    self._dropped_failed += lost
                    log.error("request log: %d queued rows dropped at shutdown (%s)", lost, self.error)
                break  # rows stay queued, bounded by queue_size, until the sink is open again
            self._idle.clear()
            # peeked, not popped: the rows stay in the queue (and count against its bound) until the sink
            # has answered for them. Only this thread pops, so the first n are stable while the loop appends.
            n = min(len(q), _BATCH_MAX)
            self._write(list(itertools.islice(q, n)))
            up = self._ensure_open(stopping)
        self._idle.set()

    def _pop(self, n: int) -> None:
        q = self._queue
        for _ in range(n):
            q.popleft()

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        if self._capture:
            cap = self.settings.body_cap_bytes
            rows = [capped_entry(e, cap) for e in batch]
        else:
            rows = batch
        try:
            written, dropped, error = self._sink.write(rows)
        except SinkDown as exc:
            # the batch stays queued, written after the reopen; but not at shutdown, where a store that takes
            # connections and fails every write would otherwise be retried until close() gives up
            if exc.transient and not self._stop:
                self._went_down(str(exc), 0, True)
                return
            self._pop(len(batch))
            self._went_down(str(exc), len(rows), False)
            return
        except Exception:
            # a bug, not an outage: the batch must leave the queue, or it would fail again on every wake-up
            # and hold back every row behind it
            self._pop(len(batch))
            self._dropped_failed += len(rows)
            log.exception("request log writer: unexpected error; %d rows dropped", len(rows))
            return
        self._pop(len(batch))
        self.written += written
        self._dropped_failed += dropped
        self.error = error
        self._away = False
        if error is None:
            self._backoff = _BACKOFF_MIN  # a batch went in: the next fault starts the backoff afresh

    def _retain(self) -> None:
        self._last_retention = time.monotonic()
        if not self._up:
            return
        try:
            warning = self._sink.retain()
        except SinkDown as exc:
            self._went_down(str(exc), 0, exc.transient)
            return
        if warning is not None:
            log.warning("%s", warning)
