"""The request log's writer process: the only code that touches the SQLite file on the server's behalf.

Why a separate process: SQLite in WAL mode memory-maps the WAL index (the `-shm` file), so a storage fault on
that file (truncated, replaced under us, a full disk when a page is first touched) reaches the writer as
SIGBUS, not as an exception, and SIGBUS ends the whole process. In a child process it ends only the child:
the server counts the batch it had handed over as dropped, marks the log failed (readiness degraded) and
starts a new child with backoff. Exclusive locking mode would avoid the mapping, but then `ollamux logs`
could not read the file while the server runs.

Protocol, one message each way per command over stdin/stdout (the parent is the only peer), each a 4-byte
little-endian length and that many bytes of `marshal` (tuples, lists, str, int, float, None: all a message
holds; marshal is built into the interpreter, pickle would add ~1 MB of modules to this process):
  ("open", path, retention_days, retention_rows) -> ("ok", schema_version) | ("error", message)
  ("write", entries)                             -> ("ok", written, dropped, error | None, [log lines])
                                                  | ("gone", message), then the child exits
  ("retain",)                                    -> ("ok", warning | None)
  ("close",) or end of input                     -> the child closes the database and exits 0

Run by path (`python .../writer_process.py`), not with `-m`: importing the ollamux package would load
aiohttp and the rest of the server, 0.4 s added to every start and restart. For the same reason (this process
is part of the server's memory) it imports nothing beyond sqlite3 and the interpreter's built-in modules.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C half: `signal` imports enum, 0.4 MB more
import itertools
import marshal
import os
import sqlite3
import sys
import time

# Annotations only (they are strings here): importing typing would add ~0.7 MB to this process's RSS, and
# mypy treats any `TYPE_CHECKING` as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import IO, Any, BinaryIO

# Rows go in 32 to a statement: one statement step per row costs ~5x more per row than the insert itself.
_MULTI = 32
# Statements made for a shape of batch (see `Store._statement`), for the process's life: each one prepared
# costs ~2.5 ms once and ~100 KB of this process's memory for good (sqlite3 keeps what it prepared), so a few.
_SHAPES_MAX = 8
# What a column of a statement is (see `Store._statement`): NULL in the SQL, one parameter for all rows, one a row
_NULL, _SHARED, _EACH = 0, 1, 2
# The page cache: rows are appended at the right edge of the table and of its one index (ts), so a few pages
# are hot; SQLite's default (2 MB) would only grow this process as the file grows.
_CACHE_KIB = 256


def read_message(inp: IO[bytes]) -> Any:
    """One framed message, or EOFError when the peer closed the pipe (also mid-message: a dead peer)."""
    head = inp.read(4)
    if len(head) < 4:
        raise EOFError("end of input")
    n = int.from_bytes(head, "little")
    data = inp.read(n)
    if len(data) < n:
        raise EOFError("end of input within a message")
    return marshal.loads(data)


def frame(msg: tuple[Any, ...]) -> bytes:
    """A message as written on the pipe (ValueError for a value marshal cannot carry)."""
    data = marshal.dumps(msg)
    return len(data).to_bytes(4, "little") + data


def _schema() -> ModuleType:
    if __package__:
        from . import schema

        return schema
    # schema.py needs only the standard library: run it from its path, without the ollamux package (and
    # without importlib.util, which brings contextlib and more)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.py")
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    mod = type(sys)("_ollamux_store_schema")
    mod.__file__ = path
    exec(code, mod.__dict__)
    return mod


def _repair(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """What SQLite can store of a row: valid UTF-8 text, 64-bit integers, and any other value as its text."""
    out: list[Any] = []
    for v in row:
        if isinstance(v, str):
            v = v.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
        elif isinstance(v, int) and not -(2**63) <= v < 2**63:
            v = None
        elif v is not None and not isinstance(v, int | float | bytes):
            v = repr(v)  # a list or dict a handler left in a field: kept as text, not the row lost
        out.append(v)
    return tuple(out)


class FileGone(Exception):
    """The database file was deleted or replaced: writing on would put rows into a file no one can read."""


class Store:
    def __init__(self, path: str, retention_days: float | None, retention_rows: int | None) -> None:
        schema = _schema()
        self.path = path
        self.retention_days = retention_days
        self.retention_rows = retention_rows
        self.conn: sqlite3.Connection = schema.connect(path)
        self.conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        # the file as opened: an unlinked file stays writable through our descriptor, so without this check
        # a deleted log directory would swallow every later row without a single error
        st = os.stat(path)
        self.identity = (st.st_dev, st.st_ino)
        cols: tuple[str, ...] = schema.COLUMNS
        self.insert_head = f"INSERT INTO requests ({', '.join(cols)}) VALUES "
        self._derived = schema.derived_sql
        self.insert_one = self._make_statement(1, [_EACH] * len(cols))  # ?1 .. ?23, for executemany
        self._shapes: dict[tuple[int, ...], str] = {}
        self._generic = self._make_statement(_MULTI, [_EACH] * len(cols))  # every value a parameter of its own
        row = self.conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        self.schema_version = int(row[0] or 0)
        self.retain()

    def check_file(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise FileGone(f"request log {self.path} is gone ({exc.strerror})") from None
        if (st.st_dev, st.st_ino) != self.identity:
            raise FileGone(f"request log {self.path} was replaced")

    def write(self, rows: list[tuple[Any, ...]]) -> tuple[int, int, str | None, list[str]]:
        """(written, dropped, error, log lines) for one batch."""
        self.check_file()
        error: str | None = None
        for attempt in range(3):
            try:
                self._insert(rows)
                return len(rows), 0, None, []
            except (UnicodeEncodeError, OverflowError, ValueError, sqlite3.InterfaceError, sqlite3.ProgrammingError):
                # one odd row (a lone surrogate in a client-sent string, a token count beyond 64 bits, a value
                # of a type sqlite3 cannot bind) must not cost the whole batch: write row by row, repairing
                # what SQLite cannot take
                return self._write_one_by_one(rows)
            except sqlite3.Error as exc:
                error = f"write failed: {exc}"
                if attempt < 2:
                    time.sleep(0.1 * (attempt + 1))  # a reader holding a lock (ollamux logs) may let go
        # the rows are lost: counted as dropped so the metric tells the operator
        return 0, len(rows), error, [f"request log: {error}; {len(rows)} rows dropped"]

    def _statement(self, rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        """One INSERT for `_MULTI` rows and its parameters, a text the rows share bound once.

        Binding is most of this process's work (a copy and a mutex round trip per value), and a batch's rows
        repeat themselves: the same api, route, model, backend, client and instance, the same columns empty.
        So per column: NULL written into the SQL when no row has a value, one numbered parameter (`?N`, used
        by every row) when all rows hold the same string, else one parameter a row. Only strings and None
        are shared: equality says nothing of type between numbers (1 == 1.0 == True), and ints bind cheaply.
        """
        n = len(rows)
        columns = list(zip(*rows, strict=True))  # in C: one tuple of n values per column
        kinds: list[int] = []
        shared: list[Any] = []
        each: list[tuple[Any, ...]] = []
        for col in columns:
            first = col[0]
            if first is None and col.count(None) == n:
                kinds.append(_NULL)
            elif type(first) is str and col.count(first) == n:
                kinds.append(_SHARED)
                shared.append(first)
            else:
                kinds.append(_EACH)
                each.append(col)
        key = tuple(kinds)
        sql = self._shapes.get(key)
        if sql is None:
            if len(self._shapes) >= _SHAPES_MAX:
                # shapes enough: this one as the generic statement, which binds every value as before
                return self._generic, list(itertools.chain.from_iterable(columns))
            sql = self._shapes[key] = self._make_statement(n, kinds)
        return sql, [*shared, *itertools.chain.from_iterable(each)]

    def _make_statement(self, n: int, kinds: list[int]) -> str:
        # parameters: the shared strings first (?1..), then each per-row column's n values in turn
        cells: list[list[str]] = []
        next_shared, next_each = 1, kinds.count(_SHARED) + 1
        for kind in kinds:
            if kind == _NULL:
                cells.append(["NULL"] * n)
            elif kind == _SHARED:
                cells.append([f"?{next_shared}"] * n)
                next_shared += 1
            else:
                cells.append([f"?{next_each + r}" for r in range(n)])
                next_each += n
        # a row's values are the entry's: latency, TTFT and tokens/s computed here from its raw times
        rows = (self._derived([col[r] for col in cells]) for r in range(n))
        return self.insert_head + ", ".join("(" + ", ".join(row) + ")" for row in rows)

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            whole = len(rows) - len(rows) % _MULTI
            for i in range(0, whole, _MULTI):
                conn.execute(*self._statement(rows[i : i + _MULTI]))
            if whole < len(rows):
                # the rest one statement for all: a shape per remainder size would be SQL made and prepared
                # for every timer-flushed batch of a quiet server, several times what binding saves
                conn.executemany(self.insert_one, rows[whole:])
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def _write_one_by_one(self, rows: list[tuple[Any, ...]]) -> tuple[int, int, str | None, list[str]]:
        written = dropped = 0
        lines: list[str] = []
        for row in rows:
            try:
                self._insert([_repair(row)])
                written += 1
            except (sqlite3.Error, UnicodeEncodeError, OverflowError, ValueError) as exc:
                lines.append(f"request log: row {row[0]!r} dropped: {exc}")
                dropped += 1
        return written, dropped, None, lines

    def retain(self) -> str | None:
        """Delete rows older than retention_days and beyond retention_rows; a warning when that failed."""
        try:
            if self.retention_days:
                self.conn.execute("DELETE FROM requests WHERE ts < ?", (time.time() - self.retention_days * 86400,))
            if self.retention_rows:
                self.conn.execute(
                    "DELETE FROM requests WHERE seq <= (SELECT MAX(seq) FROM requests) - ?", (self.retention_rows,)
                )
        except sqlite3.Error as exc:
            return f"request log retention failed: {exc}"
        return None

    def close(self) -> None:
        try:
            self.conn.close()
        except sqlite3.Error:
            pass


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Answer the parent's commands until it says close or goes away."""
    store: Store | None = None

    def reply(msg: tuple[Any, ...]) -> None:
        out.write(frame(msg))
        out.flush()

    try:
        while True:
            try:
                msg = read_message(inp)
            except EOFError:  # the parent closed the pipe or died: nothing more will come
                return 0
            kind = msg[0]
            if kind == "write":
                if store is None:
                    reply(("error", "request log is not open"))
                    continue
                try:
                    reply(("ok", *store.write(msg[1])))
                except FileGone as exc:
                    reply(("gone", str(exc)))
                    return 3
            elif kind == "retain":
                reply(("ok", store.retain() if store is not None else None))
            elif kind == "open":
                try:
                    store = Store(msg[1], msg[2], msg[3])
                except (sqlite3.Error, OSError) as exc:
                    reply(("error", str(exc)))
                    continue
                reply(("ok", store.schema_version))
            elif kind == "close":
                return 0
            else:
                reply(("error", f"unknown command {kind!r}"))
    finally:
        if store is not None:
            store.close()


_NOTHING: dict[None, None] = {}


def bind_none_fast() -> None:
    """Bind None as NULL without the adaptation search sqlite3 makes for every value not exactly an int, float
    or str: a registered adapter for None is found at the first look-up, and `{}.get` (C) answers None.
    A row holds 4-8 None values; each cost ~600 ns to bind, ~230 ns this way (an int: ~130 ns). The same
    for the entries' two flags (streamed, abandoned: bool), bound as `int` (C) answers them: 1 or 0."""
    sqlite3.register_adapter(type(None), _NOTHING.get)
    sqlite3.register_adapter(bool, int)


def main() -> int:
    bind_none_fast()  # process-wide: this process binds nothing else
    # the parent decides when to stop: a Ctrl-C or a SIGTERM sent to the whole group (a terminal, systemd)
    # must not end the child before the parent has handed over the rows it still holds
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries replies only: a stray print would break the protocol
    return serve(inp, out)


if __name__ == "__main__":
    sys.exit(main())
