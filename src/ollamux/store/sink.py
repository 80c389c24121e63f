"""Where the request log's batches go: one small protocol, a SQLite file (through a writer process,
`sqlite_sink.py`) or a PostgreSQL database (`pg_sink.py`). `writer.py` queues, batches, backs off and
counts; a sink only opens, writes, prunes and closes, on the writer's feeder thread, one call at a time."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Sink", "SinkDown"]


class SinkDown(Exception):
    """The store cannot take rows now: a writer process that died, a database that went away.

    `transient`: the store is expected back (a database restarting, a network blip): the batch being
    written is *not* in it and stays queued to be written again after the sink reopens, and a first `open`
    that fails keeps the log accepting rows while it retries. Otherwise the batch in hand is lost (counted
    as dropped) and a first `open` that fails leaves the log off.
    """

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


class Sink(Protocol):
    schema_version: int  # of the store as last opened

    def describe(self) -> dict[str, Any]:
        """Where the rows go, for readiness and messages (never a password)."""
        ...

    def open(self) -> None:
        """Open (or reopen) the store, creating or migrating its schema and applying retention once;
        `SinkDown` when it cannot."""
        ...

    def check(self) -> str | None:
        """Why the store is known to be down since the last call (no I/O beyond a process poll), or None."""
        ...

    def write(self, entries: list[tuple[Any, ...]]) -> tuple[int, int, str | None]:
        """Insert one batch of entries (`schema.ENTRY_FIELDS`, one a request: the sink derives each row's
        latency, TTFT and tokens/s, `schema.row_of`) in one transaction: (written, dropped, error); `SinkDown`
        when the store went away."""
        ...

    def retain(self) -> str | None:
        """Delete rows past retention_days / retention_rows; a warning when that failed."""
        ...

    def close(self) -> None: ...

    def abort(self) -> None:
        """From another thread, at shutdown: stop a write that hangs (a dead network mount or peer)."""
        ...
