"""Stored Responses-API answers in PostgreSQL, beside the request log: every instance behind a load
balancer continues (`previous_response_id`) and reads what any of them stored.

A small pool (psycopg_pool, used from worker threads): a `get` never queues behind a slow `put`. The pool
opens in the background, so a database that is down at start-up delays nothing; while it is down, calls
fail after `timeout` with a message that names the database by its masked URL only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .pg import PgTarget, missing, schema_lock
from .responses import StoredResponse, WrittenInBackground

__all__ = ["PostgresResponses"]

log = logging.getLogger("ollamux.store")

_SCHEMA = """
CREATE TABLE responses (
    id           TEXT PRIMARY KEY,
    ts           DOUBLE PRECISION NOT NULL,
    key_name     TEXT,
    response     BYTEA NOT NULL,
    conversation BYTEA NOT NULL
)
"""
_PUT = """
INSERT INTO responses VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts, key_name = EXCLUDED.key_name,
    response = EXCLUDED.response, conversation = EXCLUDED.conversation
"""
_PRUNE_EVERY = 256  # puts between two retention passes


class StoreUnavailable(ConnectionError):
    """The database cannot be reached or refused the statement (message masked)."""


class PostgresResponses(WrittenInBackground):
    shared = True  # every instance behind the balancer reads it

    def __init__(self, url: str, shown_url: str, retention_days: float | None, *, timeout: float = 5.0) -> None:
        super().__init__()
        self.target = PgTarget(url, shown_url)
        self._retention = retention_days
        self._puts = 0
        self._schema_ready = False
        self._timeout = timeout
        self._away = False  # the last background write failed (said once, see _write)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=False,
            timeout=timeout,
            kwargs={"autocommit": True, "application_name": "ollamux", "connect_timeout": max(1, int(timeout))},
            name="ollamux-responses",
        )
        self._pool.open(wait=False)

    def _execute(self, sql: str, args: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], int]:
        """(rows, rowcount) of one statement."""
        try:
            with self._pool.connection() as conn:
                if not self._schema_ready:
                    with conn.transaction():
                        schema_lock(conn)  # two instances starting at once: one CREATE at a time
                        if missing(conn, "responses"):  # see pg.missing: no CREATE for a role that needs none
                            conn.execute(_SCHEMA)
                    self._schema_ready = True
                cur = conn.execute(sql, args)
                # read inside the pool block: the connection goes back to the pool at its end
                return (cur.fetchall() if cur.description is not None else []), cur.rowcount
        except PoolTimeout:
            raise StoreUnavailable(f"no connection to {self.target.shown} within {self._timeout:.0f} s") from None
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.UndefinedTable):
                self._schema_ready = False  # dropped while serving: the next call makes it again
            raise StoreUnavailable(f"{self.target.shown}: {self.target.error(exc)}") from None

    async def _write(self, rid: str, stored: StoredResponse) -> None:
        # a background write's failure is said here, once per outage: left in its task it would be one
        # "Task exception was never retrieved" traceback per answer of the Responses API while the database
        # is away. The client already has its answer; what is lost is continuing it later.
        try:
            await super()._write(rid, stored)
        except StoreUnavailable as exc:
            if not self._away:
                self._away = True
                log.warning(
                    "responses store: %s; responses are not stored (previous_response_id cannot continue them) "
                    "until it answers again",
                    exc,
                )
            return
        if self._away:
            self._away = False
            log.warning("responses store: %s stores responses again", self.target.shown)

    def _put(self, rid: str, stored: StoredResponse) -> None:
        row = (rid, time.time(), stored.key_name, orjson.dumps(stored.response), orjson.dumps(stored.conversation))
        self._execute(_PUT, row)
        self._puts += 1
        if self._retention is not None and self._puts % _PRUNE_EVERY == 0:
            self._execute("DELETE FROM responses WHERE ts < %s", (time.time() - self._retention * 86400,))

    def _fetch(self, rid: str, key_name: str | None) -> StoredResponse | None:
        rows, _ = self._execute(
            "SELECT response, conversation, key_name FROM responses WHERE id = %s AND key_name IS NOT DISTINCT FROM %s",
            (rid, key_name),
        )
        if not rows:
            return None
        response, conversation, key = rows[0]
        return StoredResponse(orjson.loads(response), orjson.loads(conversation), key)

    def _delete(self, rid: str, key_name: str | None) -> bool:
        _, count = self._execute(
            "DELETE FROM responses WHERE id = %s AND key_name IS NOT DISTINCT FROM %s", (rid, key_name)
        )
        return count > 0

    def _close(self) -> None:
        self._pool.close()
