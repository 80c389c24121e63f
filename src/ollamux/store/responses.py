"""Stored Responses-API answers: what `previous_response_id` continues and `GET /v1/responses/{id}` reads.

OpenAI keeps a response unless the request said `store: false`; ollamux keeps it beside the request log
(the same SQLite file, its own table) so a restart keeps it too, or in memory (bounded) when the request
log is off; in PostgreSQL (`pg_responses.py`) when the log is there, so every instance reads what any
one stored. A stored response belongs to the key that made it: another key neither reads nor deletes it.
Each call is one short statement, run in a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    pass

__all__ = [
    "MemoryResponses",
    "ResponseStore",
    "SQLiteResponses",
    "StoredResponse",
    "WrittenInBackground",
]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: dict[str, Any]  # the Response object as the client got it
    conversation: list[dict[str, Any]]  # the exchange as pivot messages, for previous_response_id
    key_name: str | None


class ResponseStore(Protocol):
    # other instances read this store (PostgreSQL): what one `put` is readable there only once written
    shared: bool

    def put(self, rid: str, stored: StoredResponse) -> None:
        """Keep it: readable at once (the client may name it in its next request before a disk write
        would be done), written to disk in the background."""
        ...

    async def written(self, rid: str) -> None:
        """Return once `rid`'s put has reached the store (or failed: that is said where it fails)."""
        ...

    async def get(self, rid: str, key_name: str | None) -> StoredResponse | None: ...

    async def delete(self, rid: str, key_name: str | None) -> bool: ...

    def close(self) -> None: ...


class MemoryResponses:
    """The last `limit` responses in memory (the request log is off)."""

    shared = False

    def __init__(self, limit: int = 1000) -> None:
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._limit = limit

    def put(self, rid: str, stored: StoredResponse) -> None:
        self._items[rid] = stored
        self._items.move_to_end(rid)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    async def written(self, rid: str) -> None:
        return None

    async def get(self, rid: str, key_name: str | None) -> StoredResponse | None:
        s = self._items.get(rid)
        return s if s is not None and s.key_name == key_name else None

    async def delete(self, rid: str, key_name: str | None) -> bool:
        if await self.get(rid, key_name) is None:
            return False
        del self._items[rid]
        return True

    def close(self) -> None:
        self._items.clear()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id           TEXT PRIMARY KEY,  -- resp_...
    ts           REAL NOT NULL,     -- unix seconds when it was stored (retention)
    key_name     TEXT,              -- the key that made it, never the key itself
    response     BLOB NOT NULL,     -- the Response object, JSON
    conversation BLOB NOT NULL      -- the exchange as pivot messages, JSON
)
"""
_PRUNE_EVERY = 256  # puts between two retention passes


class WrittenInBackground:
    """A store on disk or in a database: `put` keeps the response in memory until its write (in a worker
    thread) is done, so it is readable at once. Subclasses give the blocking `_put`, `_fetch`, `_delete`
    and `_close`."""

    shared = False

    def __init__(self) -> None:
        self._pending: dict[str, StoredResponse] = {}  # put, not yet on disk
        self._writes: set[asyncio.Task[None]] = set()
        self._write_of: dict[str, asyncio.Task[None]] = {}  # rid -> its write in flight

    def _put(self, rid: str, stored: StoredResponse) -> None:
        raise NotImplementedError

    def _fetch(self, rid: str, key_name: str | None) -> StoredResponse | None:
        raise NotImplementedError

    def _delete(self, rid: str, key_name: str | None) -> bool:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _get(self, rid: str, key_name: str | None) -> StoredResponse | None:
        pending = self._pending.get(rid)
        if pending is not None:
            return pending if pending.key_name == key_name else None
        return self._fetch(rid, key_name)

    def put(self, rid: str, stored: StoredResponse) -> None:
        self._pending[rid] = stored
        task = asyncio.get_running_loop().create_task(self._write(rid, stored))
        self._writes.add(task)
        self._write_of[rid] = task
        task.add_done_callback(self._writes.discard)
        task.add_done_callback(lambda t: self._write_of.pop(rid, None) if self._write_of.get(rid) is t else None)

    async def written(self, rid: str) -> None:
        task = self._write_of.get(rid)
        if task is not None:
            # wait(), not await: a client gone while it waits does not cancel the write; a failure is said by it
            await asyncio.wait([task])

    async def _write(self, rid: str, stored: StoredResponse) -> None:
        try:
            await asyncio.to_thread(self._put, rid, stored)
        finally:
            if self._pending.get(rid) is stored:
                del self._pending[rid]

    async def get(self, rid: str, key_name: str | None) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, rid, key_name)

    async def delete(self, rid: str, key_name: str | None) -> bool:
        pending = self._pending.get(rid)
        mine = pending is not None and pending.key_name == key_name
        if mine:
            del self._pending[rid]
            if self._writes:  # its write may still be on its way: delete after it lands
                await asyncio.wait(list(self._writes))
        return await asyncio.to_thread(self._delete, rid, key_name) or mine

    def close(self) -> None:
        """Write what is still pending (a shutdown keeps every stored response), then close."""
        try:
            for rid, stored in list(self._pending.items()):
                self._put(rid, stored)
        finally:
            self._pending.clear()
            self._close()


class SQLiteResponses(WrittenInBackground):
    """Responses in the request log's SQLite file (WAL: the log's writer process writes beside us)."""

    def __init__(self, path: Path, retention_days: float | None) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time
        self._retention = retention_days
        self._puts = 0

    def _put(self, rid: str, stored: StoredResponse) -> None:
        row = (rid, time.time(), stored.key_name, orjson.dumps(stored.response), orjson.dumps(stored.conversation))
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", row)
            self._puts += 1
            if self._retention is not None and self._puts % _PRUNE_EVERY == 0:
                self._db.execute("DELETE FROM responses WHERE ts < ?", (time.time() - self._retention * 86400,))

    def _fetch(self, rid: str, key_name: str | None) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response, conversation, key_name FROM responses WHERE id = ? AND key_name IS ?",
                (rid, key_name),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(orjson.loads(row[0]), orjson.loads(row[1]), row[2])

    def _delete(self, rid: str, key_name: str | None) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM responses WHERE id = ? AND key_name IS ?", (rid, key_name))
        return cur.rowcount > 0

    def _close(self) -> None:
        with self._lock:
            self._db.close()
