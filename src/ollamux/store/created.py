"""The models made with /api/copy and /api/create, kept across restarts: one JSON record per model name.

Beside the request log when it is on (its SQLite file, a table of its own, as `store/responses.py` keeps
stored responses), else in a JSON file in the ollamux home. Every call is short and synchronous; the
caller runs it in a worker thread. A record is the `created.CreatedModel` as JSON: this module only keeps
the bytes, so a record written by a newer ollamux is kept as it is.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

__all__ = ["CreatedStore", "JSONCreatedStore", "SQLiteCreatedStore", "open_created_store"]


class CreatedStore(Protocol):
    def load(self) -> dict[str, dict[str, Any]]:
        """Every record, by its key (the normalised model name), oldest first."""
        ...

    def put(self, key: str, record: dict[str, Any]) -> None: ...

    def delete(self, key: str) -> None: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS created_models (
    name    TEXT PRIMARY KEY,  -- the model's normalised name (llama3.2:latest)
    ts      REAL NOT NULL,     -- unix seconds it was last written
    record  BLOB NOT NULL      -- the CreatedModel, JSON
)
"""


class SQLiteCreatedStore:
    """A table in the request log's SQLite file (WAL: the log's writer process writes beside us)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time

    def load(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT name, record FROM created_models ORDER BY ts").fetchall()
        out: dict[str, dict[str, Any]] = {}
        for name, record in rows:
            with contextlib.suppress(orjson.JSONDecodeError):
                out[name] = orjson.loads(record)
        return out

    def put(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO created_models VALUES (?, ?, ?)", (key, time.time(), orjson.dumps(record))
            )

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM created_models WHERE name = ?", (key,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JSONCreatedStore:
    """One JSON file, rewritten whole on each change (a handful of records), atomically: a crash mid-write
    leaves the previous file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] | None = None

    def load(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._read())

    def _read(self) -> dict[str, dict[str, Any]]:
        if self._records is None:
            try:
                data = orjson.loads(self._path.read_bytes())
            except FileNotFoundError:
                data = {}
            models = data.get("models") if isinstance(data, dict) else None
            self._records = {k: v for k, v in (models or {}).items() if isinstance(v, dict)}
        return self._records

    def put(self, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            records = self._read()
            records.pop(key, None)  # a rewritten record goes last, as in the table's order
            records[key] = record
            self._write(records)

    def delete(self, key: str) -> None:
        with self._lock:
            records = self._read()
            if records.pop(key, None) is not None:
                self._write(records)

    def _write(self, records: dict[str, dict[str, Any]]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".created-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps({"version": 1, "models": records}, option=orjson.OPT_INDENT_2))
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def close(self) -> None:
        return None


def open_created_store(log_path: Path | None, home: Path) -> CreatedStore:
    """Beside the request log when it is on, else `created_models.json` in the ollamux home."""
    if log_path is not None:
        return SQLiteCreatedStore(log_path)
    return JSONCreatedStore(home / "created_models.json")
