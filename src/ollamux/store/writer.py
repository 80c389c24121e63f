"""The request log's writer: records queue on the event loop, a feeder thread turns them into rows and hands
them in batches to a writer process, which inserts them into SQLite.

The event loop's only cost per request is one bounded `deque.append` (a full queue drops the row and counts
it); converting and capping happen on the feeder thread, inserting in `writer_process.py`, one transaction
per batch. Why a process: see `RequestLog`.
"""

from __future__ import annotations

import collections
import logging
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import RequestLogSettings
from ..observe import RequestRecord

__all__ = ["RequestLog", "record_row"]

log = logging.getLogger("ollamux.store")

_CHILD_SCRIPT = str(Path(__file__).with_name("writer_process.py"))
# a batch takes milliseconds; a reader's lock can hold it up to 3 x 5 s busy timeout: past this the child
# is taken for hung (a dead network mount) and replaced
_REPLY_TIMEOUT = 60.0
_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 30.0


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


class _ChildGone(Exception):
    """The writer process died, hung or gave up on the file: the rows handed to it are lost."""


class RequestLog:
    """An observer that logs every finished request to SQLite, off the request path and out of the process.

    `open()` (blocking: run it in a thread) starts the writer process, which creates or migrates the file,
    and the feeder thread; `close()` writes what is queued and stops both. Until `open()` succeeds, records
    are dropped and counted.

    A storage fault never stops serving: SQLite maps the WAL index (`-shm`) into memory, and a fault on that
    mapping is SIGBUS, which no exception handler catches. So the file is written by a child process
    (`writer_process.py`); when it dies, whatever the cause, the batch it held is counted as dropped, the
    log reports "failed" (readiness degraded) and a new child is started with backoff (0.5 s doubling to
    30 s; back to 0.5 s once a batch is written) while rows wait in the queue, still bounded by `queue_size`.
    The log is "ok" again as soon as a new child has opened the file. A deleted or replaced log file counts
    as a fault too (the child checks before each batch): an unlinked file stays writable, and rows written
    to it would be lost without a word; the restarted child creates a fresh file.
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
        self._dropped_failed = 0  # rows the writer process refused or lost: only the feeder thread writes it
        self.written = 0  # only the feeder thread writes it
        self.restarts = 0  # writer processes started after the first: only the feeder thread writes it
        self.error: str | None = None
        self.schema_version = 0
        self._queue: collections.deque[RequestRecord] = collections.deque()
        self._max = settings.queue_size
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._accepting = False
        self._child: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._last_retention = 0.0
        self._backoff = _BACKOFF_MIN
        self._next_start = 0.0  # monotonic time before which no new writer process is started

    # ------------------------------------------------------------------------------ event-loop side
    def request_started(self, rec: RequestRecord) -> None:
        return None

    def request_finished(self, rec: RequestRecord) -> None:
        q = self._queue
        if not self._accepting or len(q) >= self._max:
            self._dropped_full += 1
            return
        q.append(rec)  # deque.append is atomic: no lock shared with the feeder thread
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
            "restarts": self.restarts,
            "error": self.error,
        }

    # ------------------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Start the writer process, which creates or migrates the database, and the feeder thread (blocking)."""
        opened = self._start_child()
        if opened is not None:
            self.error = f"cannot open request log {self.path}: {opened}"
            log.error("%s; requests are not logged", self.error)
            return
        self._last_retention = time.monotonic()  # the child applied retention on opening
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
                child = self._child
                if child is not None:
                    child.kill()  # stuck on the file: the process must not outlive the server
        else:
            self._stop_child()

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

    # ------------------------------------------------------------------------------ the writer process
    def _start_child(self) -> str | None:
        """Start a writer process and open the file in it; None when that worked, else why not."""
        s = self.settings
        try:
            child = subprocess.Popen(
                [sys.executable, _CHILD_SCRIPT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # its own session: a Ctrl-C in the terminal reaches the server, which then stops the child
                # after handing over the last rows, never the child first
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            return f"cannot start the writer process: {exc}"
        self._child = child
        try:
            reply = self._call(("open", str(self.path), s.retention_days, s.retention_rows))
        except _ChildGone as exc:
            return str(exc)
        if reply[0] != "ok":
            self._stop_child()
            return str(reply[1])
        self.schema_version = int(reply[1])
        return None

    def _call(self, msg: tuple[Any, ...], timeout: float = _REPLY_TIMEOUT) -> tuple[Any, ...]:
        """Send one command to the writer process and read its answer; `_ChildGone` when it cannot answer."""
        child = self._child
        if child is None or child.stdin is None or child.stdout is None:
            raise _ChildGone("the writer process is not running")
        try:
            child.stdin.write(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
            child.stdin.flush()
            # each answer is read whole, so nothing is left buffered between calls and select sees it all
            ready, _, _ = select.select([child.stdout], [], [], timeout)
            if not ready:
                raise _ChildGone(f"the writer process did not answer within {timeout:.0f} s")
            reply: tuple[Any, ...] = pickle.load(child.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self._reap()
            raise _ChildGone(self._death_reason(child, exc)) from None
        except _ChildGone:
            self._reap()
            raise
        if reply[0] == "gone":
            self._reap()
            raise _ChildGone(str(reply[1]))
        return reply

    @staticmethod
    def _death_reason(child: subprocess.Popen[bytes], exc: BaseException | None) -> str:
        try:
            code = child.wait(2.0)
        except subprocess.TimeoutExpired:
            return f"the writer process stopped answering ({exc!r})"
        if code < 0:
            try:
                return f"the writer process died of {signal.Signals(-code).name}"
            except ValueError:
                return f"the writer process died of signal {-code}"
        return f"the writer process exited with status {code}"

    def _reap(self) -> None:
        """Forget the current writer process, killing it if it still runs (a hung one, say)."""
        child, self._child = self._child, None
        if child is None:
            return
        for f in (child.stdin, child.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if child.poll() is None:
            child.kill()
        try:
            child.wait(5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel (a dead NFS mount)
            log.error("request log writer process %d did not exit after SIGKILL", child.pid)

    def _stop_child(self) -> None:
        """Ask the writer process to close the database and exit; kill it if it will not."""
        child = self._child
        if child is None:
            return
        try:
            if child.stdin is not None:
                child.stdin.write(pickle.dumps(("close",), protocol=pickle.HIGHEST_PROTOCOL))
                child.stdin.close()
            child.wait(10.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._reap()

    def _child_died(self, reason: str, lost: int) -> None:
        self._dropped_failed += lost
        self.error = f"{reason}; restarting it"
        log.error("request log: %s; %d rows dropped; restarting it in %.1fs", reason, lost, self._backoff)
        self._next_start = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _ensure_child(self, stopping: bool) -> bool:
        """A running writer process, starting one when the backoff allows (or at once when stopping)."""
        child = self._child
        if child is not None:
            if child.poll() is None:
                return True
            # died between batches (killed, say): nothing was in its hands, so nothing is lost yet
            reason = self._death_reason(child, None)
            self._reap()
            self._child_died(reason, 0)
        if not stopping and time.monotonic() < self._next_start:
            return False
        self.restarts += 1
        why = self._start_child()
        if why is None:
            # the file opened, migrated and took a retention pass: healthy again, no request needed (a
            # readiness that waited for the next row could keep a load balancer from ever sending one)
            self.error = None
            log.warning("request log: writer process restarted")
            return True
        self._child_died(f"cannot reopen {self.path}: {why}", 0)
        return False

    # ------------------------------------------------------------------------------ feeder thread
    def _run(self) -> None:
        try:
            while True:
                # waiting out a backoff: wake when the next start is due
                wait = self.flush_interval
                if self._child is None:
                    wait = max(0.01, min(wait, self._next_start - time.monotonic()))
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
            self._stop_child()

    def _drain_safely(self, stopping: bool) -> None:
        # the feeder thread must outlive any bug: a dead feeder would silently drop every later row
        try:
            self._drain(stopping)
        except Exception:
            log.exception("request log writer: unexpected error (the batch is lost)")
            self._idle.set()

    def _drain(self, stopping: bool) -> None:
        q = self._queue
        # checked on every wake-up, rows or not, so a death shows in readiness and a restart follows unasked
        # (but no process is started at shutdown only to be stopped)
        up = self._ensure_child(stopping) if q or not stopping else False
        while q:
            if not up:
                if stopping:
                    # shutting down with no way to write: count what is left rather than wait on a backoff
                    lost = len(q)
                    q.clear()
                    self._dropped_failed += lost
                    log.error("request log: %d queued rows dropped at shutdown (%s)", lost, self.error)
                break  # rows stay queued, bounded by queue_size, until a writer process runs again
            self._idle.clear()
            batch: list[RequestRecord] = []
            while q and len(batch) < 4096:
                batch.append(q.popleft())
            self._write(batch)
            up = self._ensure_child(stopping)
        self._idle.set()

    def _write(self, batch: Iterable[RequestRecord]) -> None:
        capture, cap = self.settings.capture_bodies, self.settings.body_cap_bytes
        rows = [_row_or_repaired(r, capture, cap) for r in batch]
        try:
            reply = self._call(("write", rows))
        except _ChildGone as exc:
            self._child_died(str(exc), len(rows))
            return
        if reply[0] != "ok":  # pragma: no cover - the protocol's own error: this batch is lost
            self._dropped_failed += len(rows)
            self.error = str(reply[1])
            log.error("request log: %s; %d rows dropped", reply[1], len(rows))
            return
        _, written, dropped, error, lines = reply
        self.written += written
        self._dropped_failed += dropped
        self.error = error
        for line in lines:
            log.error("%s", line)
        if error is None:
            self._backoff = _BACKOFF_MIN  # a batch went in: the next fault starts the backoff afresh

    def _retain(self) -> None:
        self._last_retention = time.monotonic()
        if self._child is None:
            return
        try:
            reply = self._call(("retain",))
        except _ChildGone as exc:
            self._child_died(str(exc), 0)
            return
        if reply[1] is not None:
            log.warning("%s", reply[1])
