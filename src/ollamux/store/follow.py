"""Following the request log as it is written: every matching row exactly once, on SQLite and PostgreSQL
(blocking: call `poll` in a worker thread from the loop).

A row's `seq` is taken when it is inserted, and the row can be read once its transaction commits. With one
writer (SQLite's writer process) the two orders agree. With many instances writing one PostgreSQL log they
need not: one instance's batch may take seqs 100-150 and commit after another's 151-160, and a reader that
asks only for `seq > last` once it saw 160 never sees 100-150. So a `Follower` remembers the gaps in the
seqs it has seen (seqs of a transaction not committed yet, or of one that rolled back: no reader can tell
which) and asks for them again each poll until they are `HOLE_TTL` seconds old; a batch commits well
within that, a rolled-back one's seqs never fill.

A reader that keeps no gaps (the admin API's stateless `after=SEQ` poll, and the position a follow starts
from) reads up to `settled_seq` instead: the seq before the first gap that may still fill, so that reading
`seq > it` next time misses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .reader import Filters, LogReader
from .schema import COLUMNS

__all__ = ["HOLE_TTL", "Follower", "settled_seq"]

HOLE_TTL = 30.0  # seconds a gap in the seqs is asked for again
MAX_HOLES = 256  # a burst of rolled-back batches must not make every poll a long query: oldest dropped
# the newest seqs `settled_seq` looks through for a gap: more than a batch of each of several instances
# (a sink takes at most 4,096 rows at once), read from the primary key
SETTLE_WINDOW = 20_000


def settled_seq(reader: LogReader, after: int | None = None, *, now: float | None = None) -> int:
    """The highest seq up to which every row (above `after`) that will ever be readable is readable now.

    Reading `seq <= it` now and `seq > it` later then misses no row. With one writer (SQLite's writer
    process) it is the highest seq. With many instances on one PostgreSQL log, a batch that took its seqs
    first may commit last: the answer stops before the first gap whose next row ended less than `HOLE_TTL`
    seconds ago (a batch still committing). An older gap never fills (a rolled-back batch; rows retention
    removed, as is any gap below the oldest row). A row's end (`ts` + `latency_ms`, wall clock) comes
    before its insert, and a gap's rows were inserted before the row after it, so that row's age bounds
    how long the gap has had to commit.
    """
    if not reader.many_writers:
        top = reader.max_seq()  # one writer commits in seq order: whatever has a seq is readable
        return top if after is None else max(after, top)
    now = time.time() if now is None else now
    ended = "seq, ts + latency_ms / 1000.0"
    if after is None:
        found = reader.query_tuples(f"SELECT {ended} FROM requests ORDER BY seq DESC LIMIT ?", [SETTLE_WINDOW])
        if not found:
            return 0
        found.reverse()
        prev = int(found[0][0])
        found = found[1:]
    else:
        found = reader.query_tuples(
            f"SELECT {ended} FROM requests WHERE seq > ? ORDER BY seq LIMIT ?", [after, SETTLE_WINDOW]
        )
        prev = after
    if found and after is not None and int(found[0][0]) > after + 1:
        # rows below the oldest one left were removed by retention: not a gap that can fill
        lowest = reader.query_tuples("SELECT MIN(seq) FROM requests")[0][0]
        if int(found[0][0]) == int(lowest):
            prev = int(found[0][0])
            found = found[1:]
    for seq, end in found:
        if seq > prev + 1 and now - float(end) < HOLE_TTL:
            return prev
        prev = int(seq)
    return prev


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
