"""How the request log's PostgreSQL sink should send a batch: `COPY ... FROM STDIN` against `executemany` in
pipeline mode, 1,024 typical rows a transaction, into a throw-away PostgreSQL 15 (tests/pg_server.py).

    .venv/bin/python bench/pg_log_insert.py

Measured on the 2-core dev machine (psycopg 3.3, binary), over four runs: COPY 5.4-6.7 us a row (a cold
first round up to 9.6), executemany + pipeline 15-23 us a row; store/pg_sink.py uses COPY.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import psycopg

from ollamux.store.pg import COPY_REQUESTS, PgTarget, connect, migrate
from ollamux.store.schema import COLUMNS
from tests.pg_server import PgServer, missing_reason

BATCH, BATCHES, ROUNDS = 1024, 20, 3


def main() -> int:
    reason = missing_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    server = PgServer()
    try:
        server.init()
        server.start()
        server.wait_ready()
        url = server.new_database()
        conn = connect(PgTarget(url, "bench"))
        migrate(conn)
        row = (
            "abcdef123456", time.time(), "openai", "POST", "/v1/chat/completions", "llama3.2", "llama3.2",
            "fake", "http://127.0.0.1:1/v1", 200, 1, 0, 12.5, 3.1, 10, 20, 100.0, None, "127.0.0.1", None,
            None, None, "host:11434",
        )  # fmt: skip
        assert len(row) == len(COLUMNS)
        rows = [row] * BATCH
        insert = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
        for _ in range(ROUNDS):
            t = time.perf_counter()
            for _ in range(BATCHES):
                with conn.transaction(), conn.cursor() as cur, cur.copy(COPY_REQUESTS) as copy:
                    for r in rows:
                        copy.write_row(r)
            copy_us = (time.perf_counter() - t) / (BATCH * BATCHES) * 1e6
            t = time.perf_counter()
            for _ in range(BATCHES):
                with conn.transaction(), conn.pipeline(), conn.cursor() as cur:
                    cur.executemany(insert, rows)
            many_us = (time.perf_counter() - t) / (BATCH * BATCHES) * 1e6
            print(f"COPY {copy_us:.1f} us/row   executemany+pipeline {many_us:.1f} us/row")
        conn.close()
    except psycopg.Error as exc:
        print(f"failed: {exc}")
        return 1
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
