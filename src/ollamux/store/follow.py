"""Following the request log as it is written: every matching row exactly once, on SQLite and PostgreSQL
(blocking: call `poll` in a worker thread from the loop).

A row's `seq` is taken when it is inserted, and the row can be read once its transaction commits. With one
writer (SQLite's writer process) the two orders agree. With many instances writing one PostgreSQL log they
need not: one instance's batch may take seqs 100-150 and commit after another's 151-160, and a reader that
asks only for `seq > last` once it saw 160 never sees 100-150. So a `Follower` remembers the gaps in the
seqs it has seen (seqs of a transaction not committed yet, or of one that rolled back: no reader can tell
which) and asks for them again each poll until they are `HOLE_TTL` seconds old; a batch commits well
within that, a rolled-back one's seqs never fill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .reader import Filters, LogReader
from .schema import COLUMNS

__all__ = ["HOLE_TTL", "Follower"]

HOLE_TTL = 30.0  # seconds a gap in the seqs is asked for again
MAX_HOLES = 256  # a burst of rolled-back batches must not make every poll a long query: oldest dropped


@dataclass(slots=True)
class _Hole:
    lo: int  # the missing seqs, inclusive
    hi: int
    seen: float  # when the gap was first seen (the follower's clock)


class Follower:
    """The rows matching `filters` written after `after`, `poll` by `poll`, in seq order within a poll."""

    def __init__(
        self,
        reader: LogReader,
        filters: Filters,
        after: int,
        fields: Sequence[str] = ("seq", *COLUMNS),
        *,
        limit: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.last = after  # the highest seq seen, committed and read
        self.limit = limit
        self._filters = filters
        self._fields = ", ".join(fields)
        self._holes: list[_Hole] = []
        self._clock = clock
        self.full = False  # the last poll read `limit` seqs: more are waiting, poll again at once

    @property
    def holes(self) -> list[tuple[int, int]]:
        """The gaps still asked for (for tests and messages)."""
        return [(h.lo, h.hi) for h in self._holes]

    def poll(self) -> list[dict[str, Any]]:
        """The matching rows committed since the last poll (at most `limit` new seqs read), oldest first."""
        now = self._clock()
        self._holes = [h for h in self._holes if now - h.seen < HOLE_TTL]
        # every seq committed after `last`, filtered or not (the primary key only): where the gaps are
        found = self.reader.query_tuples(
            "SELECT seq FROM requests WHERE seq > ? ORDER BY seq LIMIT ?", [self.last, self.limit]
        )
        seqs = [int(r[0]) for r in found]
        self.full = len(seqs) == self.limit
        top = seqs[-1] if seqs else self.last
        prev = self.last
        for s in seqs:
            if s > prev + 1:
                self._holes.append(_Hole(prev + 1, s - 1, now))
            prev = s
        if not seqs and not self._holes:
            return []
        where, args = self._filters.where()
        ranges = ["(seq > ? AND seq <= ?)"] + ["(seq BETWEEN ? AND ?)"] * len(self._holes)
        args += [self.last, top]
        for h in self._holes:
            args += [h.lo, h.hi]
        cond = "(" + " OR ".join(ranges) + ")"
        where = f"{where} AND {cond}" if where else f" WHERE {cond}"
        rows = self.reader.query(f"SELECT {self._fields} FROM requests{where} ORDER BY seq", args)
        for row in rows:
            self._fill(int(row["seq"]))
        self.last = top
        if len(self._holes) > MAX_HOLES:
            del self._holes[: len(self._holes) - MAX_HOLES]
        return rows

    def _fill(self, seq: int) -> None:
        """`seq` was read: take it out of the gap that held it (a gap may split in two)."""
        for i, h in enumerate(self._holes):
            if h.lo <= seq <= h.hi:
                parts = [_Hole(lo, hi, h.seen) for lo, hi in ((h.lo, seq - 1), (seq + 1, h.hi)) if lo <= hi]
                self._holes[i : i + 1] = parts
                return
