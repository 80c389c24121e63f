"""The request log's reader on PostgreSQL: `LogReader`'s queries, run on a read-only connection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from .pg import PgTarget, connect
from .reader import LogReader

__all__ = ["PostgresLogReader", "pg_sql"]


def pg_sql(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s` (the shared SQL holds no other `?` and no `%`)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresLogReader(LogReader):
    """Rows of every instance that writes to the database, in one order (`seq` is an identity column)."""

    many_writers = True  # instances' batches may commit out of seq order (`store.follow`)

    def __init__(self, url: str, shown_url: str) -> None:  # no super().__init__: there is no file
        self.path = Path()
        self.target = PgTarget(url, shown_url)
        try:
            conn = connect(self.target)
            # a reader never writes: a mistaken query cannot change the log
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        except psycopg.Error as exc:
            raise ConnectionError(f"cannot connect to {shown_url}: {self.target.error(exc)}") from None
        self.pg = conn

    @property
    def where(self) -> str:
        return self.target.shown

    def close(self) -> None:
        self.pg.close()

    def _run(self, sql: str, args: Sequence[Any]) -> psycopg.Cursor[tuple[Any, ...]]:
        try:
            return self.pg.execute(pg_sql(sql), list(args))
        except psycopg.errors.UndefinedTable:
            # no instance has written to this database yet: as SQLite's reader with no file
            raise FileNotFoundError(f"no request log in {self.target.shown} yet") from None
        except psycopg.Error as exc:
            raise ConnectionError(f"reading {self.target.shown} failed: {self.target.error(exc)}") from None

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._run(sql, args)
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def query_tuples(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._run(sql, args).fetchall())
