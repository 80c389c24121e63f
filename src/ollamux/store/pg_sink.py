"""The request log's PostgreSQL sink: batches written by the feeder thread itself over one connection,
with `COPY ... FROM STDIN`, one transaction per batch.

COPY, not `executemany` in pipeline mode: on the 2-core dev machine, 1,024-row batches of typical rows into
a local PostgreSQL 15 took 5.4-6.7 us a row with COPY and 15-23 us with executemany + pipeline (psycopg 3.3;
`bench/pg_log_insert.py`).

No process of its own (unlike SQLite's sink): nothing here maps a file into memory, so a fault in the
database is an exception, never a signal. A connection that breaks mid-batch rolls that batch back on the
server: the batch stays queued and is written again once the connection is back (`SinkDown(transient)`).
A failure after COMMIT was sent but before its answer came may write a batch twice; rows are never lost.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

import psycopg

from .pg import COPY_REQUESTS, PgTarget, connect, migrate
from .schema import row_of
from .sink import SinkDown

__all__ = ["PostgresSink"]

log = logging.getLogger("ollamux.store")

_INT64 = 2**63


def _repair(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """What PostgreSQL can store of a row: UTF-8 text without NUL characters, 64-bit integers."""
    out: list[Any] = []
    for v in row:
        if isinstance(v, str):
            v = v.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
        elif isinstance(v, int) and not -_INT64 <= v < _INT64:
            v = None
        out.append(v)
    return tuple(out)


# what one odd row causes (NUL in text, a lone surrogate, a count beyond 64 bits): not the database's fault
# what the database's state causes, for every batch alike, until an operator (or the reopen) mends it
_DATABASE_STATE = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.ReadOnlySqlTransaction,
)
# (and a NULL where the schema wants a value: IntegrityError)
_ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError, UnicodeEncodeError, OverflowError, ValueError)


class PostgresSink:
    def __init__(
        self,
        target: PgTarget,
        retention_days: float | None,
        retention_rows: int | None,
        *,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = target
        self.retention_days = retention_days
        self.retention_rows = retention_rows
        self.connect_timeout = connect_timeout
        self.schema_version = 0
        self._conn: psycopg.Connection[Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"url": self.target.shown}

    def open(self) -> None:
        self.close()
        try:
            conn = connect(self.target, timeout=self.connect_timeout)
        except psycopg.Error as exc:
            raise SinkDown(f"cannot connect to {self.target.shown}: {self.target.error(exc)}", transient=True) from None
        try:
            self.schema_version = migrate(conn)
        except psycopg.Error as exc:
            conn.close()
            # a connection lost mid-migration comes back, and so may a privilege or a read-only primary (granted,
            # failed over: _DATABASE_STATE); a migration the server rejects for what it says will not
            gone = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | _DATABASE_STATE)
            raise SinkDown(
                f"cannot create the request log in {self.target.shown}: {self.target.error(exc)}", transient=gone
            ) from None
        self._conn = conn
        warning = self.retain()
        if warning:
            log.warning("%s", warning)

    def check(self) -> str | None:
        conn = self._conn
        if conn is None:
            return f"not connected to {self.target.shown}"
        if conn.broken or conn.closed:
            self._conn = None
            return f"the connection to {self.target.shown} was lost"
        return None

    def write(self, entries: list[tuple[Any, ...]]) -> tuple[int, int, str | None]:
        rows = [row_of(e) for e in entries]
        try:
            self._copy(rows)
            return len(rows), 0, None
        except _ROW_ERRORS:
            pass
        except psycopg.Error as exc:
            self._failed(exc)
        # one odd row must not cost the batch: repaired, then row by row if the batch still fails
        repaired = [_repair(r) for r in rows]
        try:
            self._copy(repaired)
            return len(rows), 0, None
        except _ROW_ERRORS:
            pass
        except psycopg.Error as exc:
            self._failed(exc)
        written = dropped = 0
        for row in repaired:
            try:
                self._copy([row])
                written += 1
            except _ROW_ERRORS as exc:
                log.error("request log: row %r dropped: %s", row[0], self.target.error(exc))
                dropped += 1
            except psycopg.Error as exc:
                self._failed(exc)
        return written, dropped, None

    def _copy(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._conn
        if conn is None:
            raise SinkDown(f"not connected to {self.target.shown}", transient=True)
        with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_REQUESTS) as copy:
            for row in rows:
                copy.write_row(row)

    def _failed(self, exc: psycopg.Error) -> NoReturn:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or (
            self._conn is not None and (self._conn.broken or self._conn.closed)
        ):
            # the server went away (restart, network, admin shutdown, disk full): the transaction did not
            # commit, so the batch is kept for the next connection
            self.close()
            raise SinkDown(f"lost {self.target.shown}: {self.target.error(exc)}", transient=True) from None
        # the database refuses every batch for now: its table dropped (the reopen's migration makes it again,
        # pg.migrate), a privilege revoked, a primary demoted to read-only in a failover. The sink is down,
        # said once per reopen (with backoff), and the rows wait, bounded by queue_size, since the fault is in
        # the database all instances share: readiness says degraded, not failed, or every instance would
        # leave the load balancer at once over the log
        shown = f"write failed in {self.target.shown}: {self.target.error(exc)}"
        raise SinkDown(shown, transient=isinstance(exc, _DATABASE_STATE)) from None

    def retain(self) -> str | None:
        conn = self._conn
        if conn is None:
            return None
        try:
            if self.retention_days:
                conn.execute("DELETE FROM requests WHERE ts < %s", (time.time() - self.retention_days * 86400,))
            if self.retention_rows:
                conn.execute(
                    "DELETE FROM requests WHERE seq <= (SELECT MAX(seq) FROM requests) - %s", (self.retention_rows,)
                )
        except psycopg.Error as exc:
            return f"request log retention failed: {self.target.error(exc)}"
        return None

    def abort(self) -> None:
        conn = self._conn
        if conn is not None:
            try:
                conn.cancel_safe(timeout=2.0)  # made for another thread: the server ends the running COPY
            except psycopg.Error:
                pass

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass
